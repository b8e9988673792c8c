"""The streamable HTTP transport's door: a request whose bearer token does not verify is answered 401.

The intake checks the token again on every call the server makes with it (the MCP server keeps
no identity of its own). The door checks it first, signature, issuer, audience and expiry,
because a session costs memory for as long as it lives: any string passing for a token would
let anyone pin the server's memory with sessions nobody can use.

The door trusts the keys the intake trusts (``token_verifier``): the identity provider's JWKS
when one is configured (``KEYTURN_JWKS_URL`` or ``KEYTURN_JWKS_PATH``), else the intake's own
development key, read from its ``/.well-known/jwks.json`` and cached (``JwksUrl``).

A session is its opener's: the door names the verified principal to the MCP SDK's session
manager (``scope["user"]``), which binds the session id it issues (the ``mcp-session-id``
header of the answer to ``initialize``) to it, answers a request on that session from anyone
else 404 (DELETE included) as it answers an unknown session, so a session's existence is not
disclosed, and forgets the binding when the session ends. Each call still acts under its own
request's token.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from starlette.responses import JSONResponse

from keyturn.identity.errors import InvalidToken
from keyturn.identity.verifier import bearer_token

if TYPE_CHECKING:
    from keyturn.config import Settings
    from keyturn.core.principal import Principal
    from keyturn.identity.verifier import TokenVerifier


def token_verifier(settings: Settings) -> TokenVerifier:
    """The verifier for the keys the intake at ``settings.intake_url`` trusts (see the module's documentation)."""
    from keyturn.identity.jwks import JwksUrl
    from keyturn.identity.verifier import TokenVerifier, verifier_from_settings

    issuer, audience = settings.jwt_issuer, settings.jwt_audience
    if settings.jwks_url or settings.jwks_path:  # the intake's own rule for a configured provider
        jwks_url, jwks_path = settings.jwks_url or None, settings.jwks_path or None
        return verifier_from_settings(jwks_url, jwks_path, settings.keys_dir, issuer, audience)
    intake_keys = JwksUrl(settings.intake_url.rstrip("/") + "/.well-known/jwks.json")
    return TokenVerifier(intake_keys, issuer=issuer, audience=audience)


def require_bearer(app: Any, verifier: TokenVerifier) -> Any:
    """``app`` behind a door that lets an HTTP request in only with a bearer token ``verifier`` accepts."""

    async def guarded(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
            try:
                # in a thread: a JWKS fetch blocks; a token verified before is a cache hit
                token = bearer_token(headers.get("authorization"))
                principal = await asyncio.to_thread(verifier.verify, token)
            except InvalidToken as exc:  # its message never holds the token
                await refusal(exc)(scope, receive, send)
                return
            scope["user"] = session_owner(principal, token)
        await app(scope, receive, send)

    return guarded


def session_owner(principal: Principal, token: str) -> Any:
    """The user the MCP SDK binds a session to: the principal and whom it acts for (its delegation
    chain), as the owner of an action is; the same agent acting for someone else is someone else."""
    from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
    from mcp.server.auth.provider import AccessToken

    owner = json.dumps([principal.id, *principal.chain])
    return AuthenticatedUser(AccessToken(token=token, client_id=owner, scopes=[], subject=principal.id))


def refusal(exc: InvalidToken) -> JSONResponse:
    """401 for a token refused (the intake's wording); 503 while the keys cannot be read (fail closed)."""
    if exc.code == "jwks_unavailable":
        return JSONResponse(
            {"error": "unavailable", "detail": f"cannot verify tokens right now: {exc}"},
            status_code=503,
            headers={"Retry-After": "5"},
        )
    return JSONResponse(
        {"error": "unauthorized", "detail": f"invalid token ({exc.code}): {exc.message}"},
        status_code=401,
        headers={"WWW-Authenticate": "Bearer"},
    )
