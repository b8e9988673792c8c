"""``keyturn mcp serve/proxy --http``'s door: only a bearer token that verifies (signature, issuer,
audience, expiry) reaches the MCP app, so no session is ever opened for a string that merely looks
like a token; the door trusts the keys the intake trusts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from starlette.testclient import TestClient

from keyturn.config import Settings
from keyturn.identity.jwks import JwksUrl
from keyturn.identity.keys import SigningKey
from keyturn.identity.tokens import issue_token
from keyturn.identity.verifier import TokenVerifier
from keyturn.mcp.http import require_bearer, token_verifier


def door(verifier: TokenVerifier) -> tuple[TestClient, list[str]]:
    """The door in front of an app that records each request it is handed (a session, in the real app)."""
    reached: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"session"})

    return TestClient(require_bearer(app, verifier)), reached


def test_only_a_token_that_verifies_reaches_the_mcp_app() -> None:
    key = SigningKey.generate()
    verifier = TokenVerifier(key.jwks(), issuer="keyturn-dev", audience="keyturn")
    client, reached = door(verifier)
    expired = issue_token(key, subject="agent:a", ttl=timedelta(minutes=1), now=datetime.now(UTC) - timedelta(hours=1))
    stranger = issue_token(SigningKey.generate(), subject="agent:a")
    for authorization in (None, "Bearer x", "Basic eDp5", f"Bearer {expired}", f"Bearer {stranger}"):
        headers = {"Authorization": authorization} if authorization else {}
        answer = client.post("/mcp", json={}, headers=headers)
        assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer", authorization
        assert expired not in answer.text  # a refusal never echoes the token
    assert reached == []
    good = client.post("/mcp", json={}, headers={"Authorization": f"Bearer {issue_token(key, subject='agent:a')}"})
    assert good.status_code == 200 and reached == ["/mcp"]


def test_keys_that_cannot_be_read_refuse_every_token_for_now() -> None:
    unreachable = httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(503)))
    verifier = TokenVerifier(
        JwksUrl("http://intake/.well-known/jwks.json", client=unreachable), issuer="keyturn-dev", audience="keyturn"
    )
    client, reached = door(verifier)
    token = issue_token(SigningKey.generate(), subject="agent:a")
    answer = client.post("/mcp", json={}, headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 503 and "cannot verify tokens" in answer.text and reached == []


def test_the_door_trusts_the_keys_the_intake_trusts(tmp_path) -> None:
    dev = token_verifier(Settings(run_dir=str(tmp_path), intake_url="http://intake.internal:8080/"))
    assert isinstance(dev._source, JwksUrl) and dev._source.url == "http://intake.internal:8080/.well-known/jwks.json"
    provider = token_verifier(Settings(run_dir=str(tmp_path), jwks_url="https://idp.example.com/jwks"))
    assert isinstance(provider._source, JwksUrl) and provider._source.url == "https://idp.example.com/jwks"


def test_a_session_is_its_opener_s_and_to_anyone_else_it_does_not_exist() -> None:
    from keyturn.mcp.server import ActionCalls, build_server, catalog_submission
    from tests.fakes.mcp_gateway import FakeGateway

    async def no_tools() -> list[Any]:
        return []

    key = SigningKey.generate()
    calls = ActionCalls(FakeGateway(lambda s: {"state": "allowed"}), wait_s=1.0)
    app = build_server("keyturn", no_tools, catalog_submission, calls, token=None).streamable_http_app()
    guarded = require_bearer(app, TokenVerifier(key.jwks(), issuer="keyturn-dev", audience="keyturn"))
    alpha = issue_token(key, subject="agent:alpha", acts_for=["human:alice"])
    alpha_again = issue_token(key, subject="agent:alpha", acts_for=["human:alice"])  # a fresh token, same caller
    mallory = issue_token(key, subject="agent:mallory", acts_for=["human:mallory"])
    alpha_for_mallory = issue_token(key, subject="agent:alpha", acts_for=["human:mallory"])

    with TestClient(guarded, base_url="http://127.0.0.1:8070") as client:

        def ask(token: str, body: Any = None, session: str | None = None, method: str = "POST") -> Any:
            headers = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream"}
            if session:
                headers["mcp-session-id"] = session
            return client.request(method, "/mcp", json=body, headers=headers)

        opened = ask(
            alpha,
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "a", "version": "0"},
                },
            },
        )
        session = opened.headers["mcp-session-id"]
        assert ask(alpha, {"jsonrpc": "2.0", "method": "notifications/initialized"}, session).status_code == 202
        tools = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
        unknown = ask(mallory, tools, "0" * 32)
        for stranger in (mallory, alpha_for_mallory):
            used = ask(stranger, tools, session)
            assert (used.status_code, used.text) == (unknown.status_code, unknown.text) == (404, unknown.text)
            assert ask(stranger, None, session, "DELETE").status_code == 404
        assert ask(alpha_again, tools, session).status_code == 200  # still alpha's, and still open
        assert ask(alpha, None, session, "DELETE").status_code == 200
        assert ask(alpha, tools, session).status_code == 404
