"""The OPA client on the decision hot path.

aiohttp directly, not opa-python-client: that library drops OPA's response body on errors
(which names the failing rule), and we need per-call timeouts, bounded retries on connection
errors / 5xx / 429, and the decision id and provenance OPA returns. Not httpx either: against
the same OPA, in alternating slices on the development machine, raw aiohttp answered 378 vs
245 decisions/s one at a time and 486 vs 209/s with 16 in flight (httpx's own per-request
machinery is most of the difference). ``make bench`` compares this client with raw OPA
decisions over HTTP.

A client belongs to the event loop that first uses it (its connection pool is opened then).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
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
    revision: str | None = None  # the bundle revision OPA answered with; None when it loads no bundle


def bundle_revision(provenance: Any) -> str | None:
    """The revision of the bundle(s) OPA evaluated with, from its ``provenance`` (``?provenance=true``).

    One bundle: its revision; several: ``name=revision`` pairs sorted by name; None when OPA
    reports no bundle with a revision (a policy directory loaded with ``opa run --watch``).
    """
    bundles = provenance.get("bundles") if isinstance(provenance, dict) else None
    if not isinstance(bundles, dict):
        return None
    revisions = {name: b.get("revision") for name, b in bundles.items() if isinstance(b, dict) and b.get("revision")}
    if not revisions:
        return None
    if len(revisions) == 1:
        return str(next(iter(revisions.values())))
    return ",".join(f"{name}={revision}" for name, revision in sorted(revisions.items()))


class OpaClient:
    """Pooled async OPA client with a timeout per call and bounded, backed-off retries."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 2.0,
        retries: int = 3,
        backoff_s: float = 0.1,
        revision_max_age_s: float = 1.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff_s = backoff_s
        self.revision_max_age_s = revision_max_age_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        # (monotonic time the fetch started, revision); one fetch at a time under the lock.
        self._revision: tuple[float, str] | None = None
        self._revision_lock = asyncio.Lock()

    def _http(self) -> aiohttp.ClientSession:
        # Opened on first use: a session binds to the running loop, and clients are often built
        # before the worker's loop runs.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=32),
                timeout=self._timeout,
                json_serialize=_compact_json,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def query(self, path: str, input_document: dict[str, Any]) -> OpaAnswer:
        """POST ``input`` to ``/v1/data/<path>``; undefined results raise ``PolicyAnswerInvalid``.

        Asked with ``?provenance=true``, so the answer names the bundle revision it was made by
        (``OpaAnswer.revision``) at no extra request."""
        url = f"/v1/data/{path.strip('/')}?provenance=true"
        started = time.perf_counter()
        try:
            body = await self._post_with_retries(url, {"input": input_document}, path)
        finally:
            DECISION_SECONDS.labels(path).observe(time.perf_counter() - started)
        if "result" not in body:
            OPA_ERRORS.labels(path, "undefined").inc()
            raise PolicyAnswerInvalid(f"OPA returned no result for {path} (undefined decision)")
        return OpaAnswer(body["result"], body.get("decision_id"), bundle_revision(body.get("provenance")))

    async def _post_with_retries(self, url: str, payload: dict[str, Any], path: str) -> dict[str, Any]:
        status, body = await self._send("POST", url, path, payload)
        if status != 200:
            OPA_ERRORS.labels(path, f"http_{status}").inc()
            raise PolicyAnswerInvalid(f"OPA refused the query for {path}: HTTP {status}: {_text(body)}")
        try:
            return orjson.loads(body)
        except ValueError as exc:
            raise PolicyAnswerInvalid(f"OPA answered {path} with invalid JSON: {exc}") from exc

    async def _send(self, method: str, url: str, path: str, payload: dict[str, Any] | None = None) -> tuple[int, bytes]:
        """One request, retried with exponential backoff on connection errors, 5xx and 429:
        the status and the whole body (so an error keeps OPA's message)."""
        last_error = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                async with self._http().request(method, self.base_url + url, json=payload) as response:
                    status, body = response.status, await response.read()
            except (TimeoutError, aiohttp.ClientError) as exc:
                OPA_ERRORS.labels(path, "connection").inc()
                last_error = f"{type(exc).__name__}: {exc}"
                continue
            if status == 429 or status >= 500:
                OPA_ERRORS.labels(path, f"http_{status}").inc()
                last_error = f"HTTP {status}: {_text(body)}"
                continue
            return status, body
        raise PolicyUnavailable(f"OPA at {self.base_url} unavailable after {self.retries + 1} attempts: {last_error}")

    async def revision_of(self, answer: OpaAnswer) -> str:
        """The policy revision a decision was made by: the bundle revision its answer carries,
        else (no bundle loaded) ``policy_revision``."""
        return answer.revision or await self.policy_revision()

    async def policy_revision(self, max_age_s: float | None = None) -> str:
        """The revision of the policy OPA has loaded, at most ``max_age_s`` old
        (default ``revision_max_age_s``; 0 asks OPA now).

        With bundles (production: ``opa build --revision`` served to OPA, or ``opa run
        --bundle``) it is the bundle revision OPA reports in its provenance; decisions read it
        from their own answer (``revision_of``), so this is asked only by commands. A directory
        loaded with ``opa run --watch`` (development) has no bundle revision, so the revision
        is the SHA-256 over every module's id and source and over the policy data, as OPA
        has them loaded (so a hot reload shows as a new revision, within ``max_age_s``).

        Reading every module (OPA sends each with its syntax tree) costs far more than a
        decision, so it is cached, and one caller at a time refreshes it: callers arriving
        meanwhile wait for that answer instead of asking OPA again, so the cost is one read
        per ``max_age_s`` however many decisions are in flight. The age is also how long a
        decision made by a hot-reloaded policy may still name the previous revision in its
        provenance, which is why the default stays at one second.
        """
        max_age = self.revision_max_age_s if max_age_s is None else max_age_s
        asked_at = time.monotonic()
        cached = self._revision
        if cached and asked_at - cached[0] < max_age:
            return cached[1]
        async with self._revision_lock:
            cached = self._revision
            # A fetch that started after we asked is as fresh as any we could make.
            if cached and (cached[0] >= asked_at or time.monotonic() - cached[0] < max_age):
                return cached[1]
            fetched_at = time.monotonic()
            revision = await self._fetch_revision()
            self._revision = (fetched_at, revision)
            return revision

    async def _fetch_revision(self) -> str:
        # the cheapest query there is (the batch entry point with no batch: []), for its provenance
        status, body = await self._send("POST", "/v1/data/keyturn/batch?provenance=true", "revision", {"input": {}})
        if status == 200:
            try:
                revision = bundle_revision(orjson.loads(body).get("provenance"))
            except ValueError:
                revision = None
            if revision:
                return revision
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
        return "sha256:" + digest.hexdigest()[:16]

    async def data(self, path: str) -> Any:
        """The policy data document at ``data.<path>`` (``keyturn/execution``), None when undefined."""
        return (await self._get(f"/v1/data/{path.strip('/')}")).get("result")

    async def _get(self, url: str) -> dict[str, Any]:
        status, body = await self._send("GET", url, "revision")
        if status != 200:
            raise PolicyUnavailable(f"OPA {url} answered HTTP {status}: {_text(body)}")
        return orjson.loads(body)


def _compact_json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _text(body: bytes, limit: int = 500) -> str:
    return body[:limit].decode("utf-8", errors="replace")
