"""The OPA client on the hot path: real OPA answers, and the failures OPA and networks produce."""

from __future__ import annotations

import asyncio

import pytest

from keyturn.policy.opa import OpaClient, PolicyAnswerInvalid, PolicyUnavailable
from tests.conftest import free_port
from tests.peers import JsonPeer

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


def flaky_opa(status: int, failures: int) -> JsonPeer:
    """A peer that fails the first ``failures`` calls with ``status``, then answers like OPA."""

    def respond(method: str, path: str, body: bytes) -> tuple[int, dict]:
        if len(peer.requests) <= failures:
            return status, {"message": "overloaded"}
        return 200, {"result": {"decision": {"outcome": "allowed"}}, "decision_id": "d-1"}

    peer = JsonPeer(respond)
    return peer


@pytest.mark.parametrize("status", [503, 500, 429])
def test_transient_failures_are_retried_with_backoff(status: int) -> None:
    peer = flaky_opa(status, failures=2)
    try:
        answer = run(query(peer.url, "keyturn/decision", {}, retries=3, backoff_s=0.01))
    finally:
        peer.close()
    assert answer.result["decision"]["outcome"] == "allowed"
    assert peer.calls == 3


def test_retries_are_bounded_and_the_error_keeps_opa_s_message() -> None:
    peer = flaky_opa(503, failures=100)
    try:
        with pytest.raises(PolicyUnavailable, match="overloaded"):
            run(query(peer.url, "keyturn/decision", {}, retries=2, backoff_s=0.01))
    finally:
        peer.close()
    assert peer.calls == 3


def test_a_client_error_is_not_retried() -> None:
    peer = flaky_opa(400, failures=100)
    try:
        with pytest.raises(PolicyAnswerInvalid, match="HTTP 400"):
            run(query(peer.url, "keyturn/decision", {}, retries=3, backoff_s=0.01))
    finally:
        peer.close()
    assert peer.calls == 1


def test_nothing_listening_is_policy_unavailable() -> None:
    with pytest.raises(PolicyUnavailable, match="unavailable after 2 attempts"):
        run(query(f"http://127.0.0.1:{free_port()}", "keyturn/decision", {}, retries=1, backoff_s=0.01))
