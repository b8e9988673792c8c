"""The OPA client on the decision hot path.

httpx directly rather than opa-python-client: its errors drop OPA's response body (which
names the failing rule), and we need per-call timeouts, bounded retries on connection
errors / 5xx / 429, and the decision id and provenance OPA returns. ``make bench`` compares
this client with raw OPA decisions over HTTP.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client import Counter, Histogram

DECISION_SECONDS = Histogram("keyturn_opa_decision_seconds", "Latency of one OPA query, retries included", ["path"])
OPA_ERRORS = Counter("keyturn_opa_errors_total", "OPA calls that failed", ["path", "kind"])


class PolicyUnavailable(RuntimeError):
    """OPA could not be reached or kept failing: no decision, so nothing may be allowed."""


class PolicyAnswerInvalid(RuntimeError):
    """OPA answered, but with an undefined or malformed document."""


@dataclass(frozen=True)
class OpaAnswer:
    result: Any
    decision_id: str | None


class OpaClient:
    """Pooled async OPA client with a timeout per call and bounded, backed-off retries."""

    def __init__(self, base_url: str, *, timeout_s: float = 2.0, retries: int = 3, backoff_s: float = 0.1) -> None:
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff_s = backoff_s
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
        )
        self._revision: tuple[float, str] | None = None

    async def close(self) -> None:
        await self._http.aclose()

    async def query(self, path: str, input_document: dict[str, Any]) -> OpaAnswer:
        """POST ``input`` to ``/v1/data/<path>``; undefined results raise ``PolicyAnswerInvalid``."""
        url = f"/v1/data/{path.strip('/')}"
        started = time.perf_counter()
        try:
            body = await self._post_with_retries(url, {"input": input_document}, path)
        finally:
            DECISION_SECONDS.labels(path).observe(time.perf_counter() - started)
        if "result" not in body:
            OPA_ERRORS.labels(path, "undefined").inc()
            raise PolicyAnswerInvalid(f"OPA returned no result for {path} (undefined decision)")
        return OpaAnswer(body["result"], body.get("decision_id"))

    async def _post_with_retries(self, url: str, payload: dict[str, Any], path: str) -> dict[str, Any]:
        response = await self._send("POST", url, path, payload)
        if response.status_code != 200:
            OPA_ERRORS.labels(path, f"http_{response.status_code}").inc()
            raise PolicyAnswerInvalid(f"OPA refused the query for {path}: HTTP {response.status_code}: {response.text[:500]}")
        try:
            return response.json()
        except ValueError as exc:
            raise PolicyAnswerInvalid(f"OPA answered {path} with invalid JSON: {exc}") from exc

    async def _send(self, method: str, url: str, path: str, payload: dict[str, Any] | None = None) -> httpx.Response:
        """One request, retried with exponential backoff on connection errors, 5xx and 429."""
        last_error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                response = await self._http.request(method, url, json=payload)
            except httpx.HTTPError as exc:
                OPA_ERRORS.labels(path, "connection").inc()
                last_error = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code == 429 or response.status_code >= 500:
                OPA_ERRORS.labels(path, f"http_{response.status_code}").inc()
                last_error = f"HTTP {response.status_code}: {response.text[:500]}"
                continue
            return response
        raise PolicyUnavailable(f"OPA at {self.base_url} unavailable after {self.retries + 1} attempts: {last_error}")

    async def policy_revision(self, max_age_s: float = 1.0) -> str:
        """Content hash of the policy modules OPA has loaded (cached for ``max_age_s``).

        A directory loaded with ``opa run --watch`` has no bundle revision, so the revision
        is the SHA-256 over every module's id and source and over the policy data, as OPA
        has them loaded (so a hot reload shows as a new revision).
        """
        now = time.monotonic()
        if self._revision and now - self._revision[0] < max_age_s:
            return self._revision[1]
        modules = (await self._get("/v1/policies")).get("result", [])
        digest = hashlib.sha256()
        packages: set[str] = set()
        for module in sorted(modules, key=lambda m: m["id"]):
            digest.update(module["id"].encode() + b"\0" + module.get("raw", "").encode() + b"\0")
            path = [term.get("value") for term in module.get("ast", {}).get("package", {}).get("path", [])]
            if len(path) > 2 and path[1] == "keyturn":
                packages.add(path[2])
        # base documents (policies.rego/data.json) are data.keyturn minus the rule packages
        document = (await self._get("/v1/data/keyturn")).get("result", {})
        base = {key: value for key, value in document.items() if key not in packages}
        digest.update(json.dumps(base, sort_keys=True, separators=(",", ":")).encode())
        revision = "sha256:" + digest.hexdigest()[:16]
        self._revision = (now, revision)
        return revision

    async def _get(self, url: str) -> dict[str, Any]:
        response = await self._send("GET", url, "revision")
        if response.status_code != 200:
            raise PolicyUnavailable(f"OPA {url} answered HTTP {response.status_code}: {response.text[:300]}")
        return response.json()
