"""The streamable HTTP transport's door: a request without a bearer token is answered 401.

The token itself is checked by the intake on every call the server makes with it (the MCP
server keeps no identity of its own); this only refuses anonymous requests before a session
is opened for them.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse


def require_bearer(app: Any) -> Any:
    async def guarded(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            scheme, _, token = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                answer = JSONResponse(
                    {"error": "unauthorized", "detail": "send the agent's Keyturn token as Authorization: Bearer"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await answer(scope, receive, send)
                return
        await app(scope, receive, send)

    return guarded
