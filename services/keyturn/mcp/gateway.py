"""The intake, as the MCP server needs it: submit an action, wait on it (a port, with a fake in tests).

``SdkGateway`` speaks the intake's HTTP API through the SDK (``keyturn.sdk``) with the
caller's own bearer token, so every action is the caller's: the MCP server holds no identity
of its own. A lost answer to a submission is asked again under the same idempotency key
(never a second action); a 503's Retry-After is honoured.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, Protocol


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


class SdkGateway:
    """The port over the SDK's ``AsyncKeyturn``: its retries under one idempotency key, Retry-After, outage
    patience and typed Problem answers, with the token of the caller each call is made for."""

    def __init__(self, url: str) -> None:
        from keyturn.sdk import AsyncKeyturn

        self._caller: ContextVar[str] = ContextVar("keyturn_mcp_caller")
        self.client = AsyncKeyturn(url, token_provider=self._caller.get)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def submit(
        self, token: str, *, action: str, resource: str, parameters: dict[str, Any], reason: str, key: str
    ) -> dict[str, Any]:
        from keyturn.sdk import RequestError, Unavailable

        bound = self._caller.set(token)
        try:
            submitted = await self.client.submit(action, resource, parameters, reason=reason, idempotency_key=key)
        except Unavailable as exc:
            raise Unreachable(str(exc)) from exc
        except RequestError as exc:
            raise Refused(_refusal(exc), exc.problems) from exc
        finally:
            self._caller.reset(bound)
        return {"action_id": submitted.action_id, "state": submitted.state}

    async def wait(self, token: str, action_id: str, timeout: float) -> dict[str, Any]:
        from keyturn.sdk import RequestError, Unavailable, WaitTimeout

        bound = self._caller.set(token)
        try:
            action = await self.client.wait(action_id, timeout)
        except WaitTimeout as exc:  # not over yet: where it stands
            action = exc.action
        except Unavailable as exc:
            raise Unreachable(str(exc)) from exc
        except RequestError as exc:
            raise Refused(_refusal(exc), exc.problems) from exc
        finally:
            self._caller.reset(bound)
        return dict(action.raw)


def _refusal(exc: Any) -> str:
    return f"HTTP {exc.status}: {exc}" if getattr(exc, "status", 0) else str(exc)
