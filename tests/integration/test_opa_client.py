"""The OPA client on the hot path: real OPA answers, and the failures OPA and networks produce."""

from __future__ import annotations

import asyncio
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from keyturn.policy.opa import OpaClient, PolicyAnswerInvalid, PolicyUnavailable
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def run(coro):
    return asyncio.run(coro)


async def query(url: str, path: str, document: dict, **options):
    client = OpaClient(url, **options)
    try:
        return await client.query(path, document)
    finally:
        await client.close()


def test_a_real_decision_comes_with_opa_s_decision_id(endpoints) -> None:
    answer = run(query(endpoints.opa_url, "keyturn/decision", {"action": "secrets.delete"}))
    assert answer.result["decision"]["outcome"] == "denied"
    assert answer.decision_id


def test_an_undefined_document_is_refused_not_treated_as_allow(endpoints) -> None:
    with pytest.raises(PolicyAnswerInvalid, match="undefined"):
        run(query(endpoints.opa_url, "keyturn/no_such_package/decision", {}))


class FlakyOpa:
    """An HTTP peer that fails the first ``failures`` calls with ``status``, then answers like OPA."""

    def __init__(self, status: int, failures: int) -> None:
        self.calls = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.calls += 1
                failing = outer.calls <= failures
                body = b'{"message": "overloaded"}' if failing else b'{"result": {"decision": {"outcome": "allowed"}}, "decision_id": "d-1"}'
                self.send_response(status if failing else 200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.mark.parametrize("status", [503, 500, 429])
def test_transient_failures_are_retried_with_backoff(status: int) -> None:
    peer = FlakyOpa(status, failures=2)
    try:
        answer = run(query(peer.url, "keyturn/decision", {}, retries=3, backoff_s=0.01))
    finally:
        peer.close()
    assert answer.result["decision"]["outcome"] == "allowed"
    assert peer.calls == 3


def test_retries_are_bounded_and_the_error_keeps_opa_s_message() -> None:
    peer = FlakyOpa(503, failures=100)
    try:
        with pytest.raises(PolicyUnavailable, match="overloaded"):
            run(query(peer.url, "keyturn/decision", {}, retries=2, backoff_s=0.01))
    finally:
        peer.close()
    assert peer.calls == 3


def test_a_client_error_is_not_retried() -> None:
    peer = FlakyOpa(400, failures=100)
    try:
        with pytest.raises(PolicyAnswerInvalid, match="HTTP 400"):
            run(query(peer.url, "keyturn/decision", {}, retries=3, backoff_s=0.01))
    finally:
        peer.close()
    assert peer.calls == 1


def test_nothing_listening_is_policy_unavailable() -> None:
    with pytest.raises(PolicyUnavailable, match="unavailable after 2 attempts"):
        run(query(f"http://127.0.0.1:{free_port()}", "keyturn/decision", {}, retries=1, backoff_s=0.01))
