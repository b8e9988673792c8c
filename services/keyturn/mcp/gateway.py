"""The intake, as the MCP server needs it: submit an action, wait on it (a port, with a fake in tests).

``IntakeGateway`` speaks the intake's HTTP API with the caller's own bearer token, so every
action is the caller's: the MCP server holds no identity of its own. A lost answer to a
submission is asked again under the same idempotency key (never a second action); a 503's
Retry-After is honoured.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import httpx


class Refused(Exception):
    """The intake refused the request (bad token, invalid input, unknown action id); nothing to retry."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class Unreachable(Exception):
    """The intake did not answer (or answered 5xx) after the retries."""


class Gateway(Protocol):
    async def submit(
        self, token: str, *, action: str, resource: str, parameters: dict[str, Any], reason: str, key: str
    ) -> dict[str, Any]:
        """Submit an action; the intake's answer ``{"action_id", "state"}``."""
        ...

    async def wait(self, token: str, action_id: str, timeout: float) -> dict[str, Any]:
        """The action's status once it is terminal, or at ``timeout`` seconds as it stands."""
        ...


class IntakeGateway:
    def __init__(self, url: str, *, retries: int = 4, timeout_s: float = 10.0) -> None:
        self.http = httpx.AsyncClient(base_url=url.rstrip("/"), timeout=timeout_s)
        self.retries = retries

    async def aclose(self) -> None:
        await self.http.aclose()

    async def submit(
        self, token: str, *, action: str, resource: str, parameters: dict[str, Any], reason: str, key: str
    ) -> dict[str, Any]:
        body = {
            "action": action,
            "resource": resource,
            "parameters": parameters,
            "reason": reason,
            "idempotency_key": key,
        }
        return await self._call("POST", "/v1/actions", token, json=body)

    async def wait(self, token: str, action_id: str, timeout: float) -> dict[str, Any]:
        timeout = max(0.0, min(timeout, 300.0))
        return await self._call(
            "GET",
            f"/v1/actions/{action_id}/wait",
            token,
            params={"timeout": round(timeout, 3)},
            read_timeout=timeout + 15.0,
        )

    async def _call(self, method: str, path: str, token: str, *, read_timeout: float | None = None, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {token}"}
        timeout = httpx.Timeout(10.0, read=read_timeout) if read_timeout else None
        for attempt in range(self.retries + 1):
            pause = min(0.5 * 2**attempt, 5.0)
            try:
                answer = await self.http.request(method, path, headers=headers, timeout=timeout, **kw)
            except httpx.TransportError as exc:
                failure = f"the intake did not answer ({type(exc).__name__})"
            else:
                if answer.status_code < 400:
                    return answer.json()
                if answer.status_code < 500 and answer.status_code != 429:
                    raise Refused(*_problem(answer))
                failure = f"the intake answered {answer.status_code}"
                try:
                    pause = min(float(answer.headers.get("retry-after", pause)), 30.0)
                except ValueError:
                    pass
            if attempt < self.retries:
                await asyncio.sleep(pause)
        raise Unreachable(f"{failure}, {self.retries + 1} times")


def _problem(answer: httpx.Response) -> tuple[str, list[str]]:
    """(detail, problems) of a refusal, from the intake's Problem body or FastAPI's ``detail``."""
    try:
        body = answer.json()
    except ValueError:
        return f"HTTP {answer.status_code}", []
    if isinstance(body, dict):
        problems = [str(p) for p in body.get("problems") or ()]
        detail = body.get("detail")
        return f"HTTP {answer.status_code}: {detail if isinstance(detail, str) else body.get('error')}", problems
    return f"HTTP {answer.status_code}", []
