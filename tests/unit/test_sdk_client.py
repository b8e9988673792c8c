"""The SDK against the intake's own HTTP app on in-memory ports (tests/fakes/intake_server.py):
submit, wait, run, the typed exceptions, retries under one idempotency key, Retry-After,
tokens; and the status answers the app cannot produce yet (a receipt, an unknown state)
from a transport that answers in the same shapes."""

from __future__ import annotations

import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from keyturn.intake import app as intake_app
from keyturn.sdk import (
    Action,
    ApprovalRefused,
    AsyncKeyturn,
    AuthenticationFailed,
    Denied,
    ExecutionFailed,
    Expired,
    IdempotencyConflict,
    InvalidRequest,
    Keyturn,
    KeyturnError,
    NotFound,
    OutcomeUnknown,
    RequestError,
    Unavailable,
    UnexpectedState,
    WaitTimeout,
)
from tests.fakes.intake_server import AGENT_TOKEN, IntakeServer, answering, external_result, shaped

STATEMENT = {"statement": "SELECT count(*) FROM orders", "max_rows": 10}


@pytest.fixture(scope="module")
def server() -> Iterator[IntakeServer]:
    with IntakeServer() as running:
        yield running


@pytest.fixture
def kt(server: IntakeServer) -> Iterator[Keyturn]:
    with Keyturn(server.url, token=AGENT_TOKEN, backoff_s=0.01) as client:
        yield client


def submit(kt: Keyturn, **changes) -> str:
    arguments = {"reason": "count the orders", **changes}
    return kt.submit("sql.query", "postgres://staging/app", STATEMENT, **arguments).action_id


def test_submit_answers_at_once_and_status_shows_the_action(kt: Keyturn, server: IntakeServer) -> None:
    submitted = kt.submit("sql.query", "postgres://staging/app", STATEMENT, reason="count the orders")
    assert submitted.created and submitted.state == "requested"
    assert submitted.idempotency_key.startswith("sdk-")  # made by the SDK, so a retry finds the same action
    action = kt.status(submitted.action_id)
    assert (action.action, action.resource, action.state, action.terminal) == (
        "sql.query",
        "postgres://staging/app",
        "requested",
        False,
    )
    assert action.requester == "agent:reporter"


def test_run_returns_the_executors_masked_result_once_approved(kt: Keyturn, server: IntakeServer) -> None:
    def approve_later(action_id: str) -> None:
        decided = server.decide(action_id, "needs_approval", ("writes need a db owner",), groups=("db-owners",))
        server.resolve(decided, "approved")
        server.execute(action_id, "succeeded", {"row_count": 1, "rows": [{"count": 42}]})

    server.on_submission(approve_later, delay=0.3)
    started = time.monotonic()
    done = kt.run("sql.query", "postgres://staging/app", STATEMENT, reason="count the orders", timeout=10)
    assert time.monotonic() - started < 5  # woken by the long poll, not by a slow polling loop
    assert done.state == "succeeded" and done.result == {"row_count": 1, "rows": [{"count": 42}]}
    assert done.approver_groups == ["db-owners"] and done.plugin == "sql"
    assert [h["event"] for h in done.history] == [
        "ActionRequested",
        "ActionDecided",
        "ApprovalResolved",
        "ActionExecuted",
    ]


def test_a_policy_denial_raises_denied_with_the_policys_reasons(kt: Keyturn, server: IntakeServer) -> None:
    action_id = submit(kt)
    server.decide(action_id, "denied", ("production: a DROP or TRUNCATE is never run",))
    with pytest.raises(Denied) as raised:
        kt.wait(action_id, timeout=5).raise_for_outcome()
    assert not isinstance(raised.value, ApprovalRefused)
    assert raised.value.reasons == ["production: a DROP or TRUNCATE is never run"]
    assert raised.value.action_id == action_id and "denied by the policy" in str(raised.value)


def test_an_approvers_refusal_raises_approval_refused(kt: Keyturn, server: IntakeServer) -> None:
    action_id = submit(kt)
    decided = server.decide(action_id, "needs_approval", groups=("db-owners",))
    server.resolve(decided, "denied", why="not during the freeze")
    with pytest.raises(ApprovalRefused) as raised:
        kt.wait(action_id, timeout=5).raise_for_outcome()
    assert isinstance(raised.value, Denied)  # `except Denied` catches both
    assert raised.value.reasons == ["not during the freeze"]


@pytest.mark.parametrize(
    ("end", "exception"),
    [("expired", Expired), ("failed", ExecutionFailed), ("outcome_unknown", OutcomeUnknown)],
)
def test_each_unhappy_end_has_its_exception(kt: Keyturn, server: IntakeServer, end: str, exception: type) -> None:
    action_id = submit(kt)
    if end == "expired":
        server.resolve(server.decide(action_id, "needs_approval", groups=("db-owners",)), "expired")
    else:
        server.decide(action_id, "allowed")
        server.execute(action_id, end, error="sql plugin error: relation orders does not exist")
    with pytest.raises(exception) as raised:
        kt.wait(action_id, timeout=5).raise_for_outcome()
    if end != "expired":
        assert "relation orders does not exist" in str(raised.value)


def test_wait_raises_wait_timeout_with_where_the_action_stands(kt: Keyturn, server: IntakeServer) -> None:
    action_id = submit(kt)
    server.decide(action_id, "needs_approval", groups=("security",), pending_ttl_s=1800)
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as raised:
        kt.wait(action_id, timeout=0.5)
    assert 0.4 < time.monotonic() - started < 3
    assert raised.value.action.state == "needs_approval"
    assert raised.value.action.approver_groups == ["security"]
    decided_at = datetime.fromisoformat(raised.value.action.history[1]["at"])
    assert datetime.fromisoformat(raised.value.action.expires_at or "") == decided_at + timedelta(seconds=1800)
    assert isinstance(raised.value, TimeoutError)


def test_a_lost_answer_is_retried_under_the_same_idempotency_key(server: IntakeServer) -> None:
    server.lose_answers(1)
    before = len(server.store.rows)
    with Keyturn(server.url, token=AGENT_TOKEN, timeout=0.3, backoff_s=0.01) as kt:
        submitted = kt.submit("sql.query", "postgres://staging/app", STATEMENT, reason="count the orders")
    assert len(server.store.rows) == before + 1  # one action, though the request went twice
    assert not submitted.created  # the retry found the action the first attempt created
    posts = [r for r in server.requests if r[0] == "POST"]
    assert len(posts) >= 2


def test_retry_after_is_honoured_while_the_intake_cannot_reach_its_database(
    kt: Keyturn, server: IntakeServer, monkeypatch
) -> None:
    monkeypatch.setattr(intake_app, "RETRY_AFTER_S", 1)
    server.store.down = True
    server.after(0.5, lambda: setattr(server.store, "down", False))
    started = time.monotonic()
    submitted = kt.submit("sql.query", "postgres://staging/app", STATEMENT, reason="count the orders")
    assert time.monotonic() - started >= 1.0  # waited what the server asked, not the 0.01 s backoff
    assert submitted.created


def test_a_retry_after_longer_than_the_client_will_wait_raises_unavailable_at_once(
    server: IntakeServer, monkeypatch
) -> None:
    monkeypatch.setattr(intake_app, "RETRY_AFTER_S", 30)
    server.store.down = True
    try:
        with Keyturn(server.url, token=AGENT_TOKEN, max_retry_after_s=5) as kt:
            started = time.monotonic()
            with pytest.raises(Unavailable) as raised:
                kt.submit("sql.query", "postgres://staging/app", STATEMENT, reason="count the orders")
    finally:
        server.store.down = False
    assert time.monotonic() - started < 2
    assert raised.value.status == 503 and raised.value.retry_after == 30
    assert raised.value.error == "unavailable" and raised.value.problems == ["database: not answering"]
    assert "same idempotency key" in raised.value.detail


def test_no_server_at_all_is_unavailable_after_the_retries() -> None:
    with (
        Keyturn("http://127.0.0.1:9", token=AGENT_TOKEN, retries=2, backoff_s=0.01) as kt,
        pytest.raises(Unavailable) as raised,
    ):
        kt.status("00000000-0000-0000-0000-000000000000")
    assert raised.value.status == 0 and isinstance(raised.value.__cause__, httpx.TransportError)


def test_problem_bodies_become_typed_errors(kt: Keyturn, server: IntakeServer) -> None:
    with pytest.raises(InvalidRequest) as invalid:
        kt.submit("DROP everything", "postgres://staging/app", reason="x")
    assert invalid.value.status == 422 and invalid.value.error == "invalid_request"
    assert any(p.startswith("action:") and "lower-case dotted" in p for p in invalid.value.problems)

    kt.submit("read.table", "postgres://staging/a", {"limit": 1}, reason="r", idempotency_key="reused")
    with pytest.raises(IdempotencyConflict) as conflict:
        kt.submit("read.table", "postgres://staging/a", {"limit": 2}, reason="r", idempotency_key="reused")
    assert conflict.value.status == 409 and "different request" in conflict.value.detail

    with pytest.raises(NotFound):
        kt.status("00000000-0000-0000-0000-000000000000")
    with Keyturn(server.url, token="forged") as stranger, pytest.raises(AuthenticationFailed) as unauthenticated:
        stranger.status("00000000-0000-0000-0000-000000000000")
    assert unauthenticated.value.status == 401 and "bad_signature" in unauthenticated.value.detail
    assert all(isinstance(e.value, KeyturnError) for e in (invalid, conflict, unauthenticated))


def test_a_token_provider_is_asked_for_every_request_and_again_after_a_401(server: IntakeServer) -> None:
    handed = iter(["stale-token", AGENT_TOKEN, AGENT_TOKEN])
    with Keyturn(server.url, token_provider=lambda: next(handed)) as kt:
        action_id = submit(kt)
        assert kt.status(action_id).action_id == action_id
    mine = [r[2] for r in server.requests if r[1].startswith("/v1/actions")][-3:]
    assert mine == ["Bearer stale-token", f"Bearer {AGENT_TOKEN}", f"Bearer {AGENT_TOKEN}"]


def test_a_token_no_header_may_carry_is_refused_before_sending_and_never_shows_in_the_exception(
    server: IntakeServer,
) -> None:
    sent = len(server.requests)
    for bad in (AGENT_TOKEN + "\n", AGENT_TOKEN + " x", AGENT_TOKEN + "\u00e9"):
        with Keyturn(server.url, token_provider=lambda bad=bad: bad, retries=3, backoff_s=5) as kt:
            started = time.monotonic()
            with pytest.raises(InvalidRequest) as raised:
                kt.submit("read.table", "postgres://staging/a", {}, reason="r")
        told = "".join(traceback.format_exception(raised.value))
        assert "the token holds characters no header may carry" in str(raised.value)
        assert AGENT_TOKEN not in told
        assert raised.value.__cause__ is None and raised.value.__context__ is None
        assert time.monotonic() - started < 1  # not retried
    assert len(server.requests) == sent


def test_a_request_httpx_cannot_build_is_not_retried_and_its_message_is_not_chained() -> None:
    calls = []

    def refuse(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.LocalProtocolError("Illegal header value b'Bearer the-secret-token\\n'")

    with (
        Keyturn("http://keyturn", token="t", transport=httpx.MockTransport(refuse), retries=3) as kt,
        pytest.raises(InvalidRequest) as raised,
    ):
        kt.status("00000000-0000-0000-0000-000000000000")
    assert "the-secret-token" not in "".join(traceback.format_exception(raised.value))
    assert "could not be built" in str(raised.value) and len(calls) == 1


def test_a_client_needs_exactly_one_way_to_authenticate() -> None:
    with pytest.raises(ValueError):
        Keyturn("http://127.0.0.1:1")
    with pytest.raises(ValueError):
        Keyturn("http://127.0.0.1:1", token="t", token_provider=lambda: "t")


async def test_the_async_client_submits_waits_and_raises_the_same(server: IntakeServer) -> None:
    async def token() -> str:
        return AGENT_TOKEN

    async with AsyncKeyturn(server.url, token_provider=token, backoff_s=0.01) as kt:
        submitted = await kt.submit("sql.query", "postgres://staging/app", STATEMENT, reason="count the orders")
        server.after(0.2, lambda: server.decide(submitted.action_id, "denied", ("no",)))
        with pytest.raises(Denied):
            (await kt.wait(submitted.action_id, timeout=5)).raise_for_outcome()

        def allow_later(action_id: str) -> None:
            server.decide(action_id, "allowed")
            server.execute(action_id, "succeeded", {"row_count": 0, "rows": []})

        server.on_submission(allow_later, delay=0.2)
        done = await kt.run("sql.query", "postgres://staging/app", STATEMENT, reason="count again", timeout=5)
        assert done.result == {"row_count": 0, "rows": []}


# -- status answers the current app does not produce: the same shapes from a transport -------


def test_an_action_approved_for_the_caller_carries_its_receipt() -> None:
    receipt = {"action_id": "8d0f4b5e-1c7a-4b57-9a8e-0d1f6f1c2b3a", "signature": "abc", "kid": "audit-1"}
    with Keyturn(
        "http://keyturn",
        token="t",
        transport=answering(shaped("approved_external", True, result=external_result(receipt))),
    ) as kt:
        done = kt.run("iam.role.grant", "iam://staging/roles/analyst", {"role": "analyst"}, reason="onboarding")
    assert done.state == "approved_external" and done.receipt == receipt and done.left_to_the_caller
    assert not done.performed_by_keyturn


@pytest.mark.parametrize(("state", "terminal"), [("quarantined", True), ("archived", False)])
def test_a_state_the_sdk_does_not_know_is_never_success(state: str, terminal: bool) -> None:
    with Keyturn("http://keyturn", token="t", transport=answering(shaped(state, terminal))) as kt:
        action = Action.from_json(shaped(state, terminal))
        with pytest.raises((UnexpectedState, WaitTimeout)):
            action.raise_for_outcome()
        if terminal:
            with pytest.raises(UnexpectedState):
                kt.run("iam.role.grant", "iam://staging/roles/analyst", reason="onboarding", timeout=1)


def test_importing_the_sdk_loads_none_of_the_services_dependencies() -> None:
    heavy = ["faust", "aiokafka", "presidio_analyzer", "spacy", "fastapi", "psycopg", "starlette", "pydantic"]
    probe = (
        "import sys, keyturn.sdk, keyturn.sdk.guard, keyturn.sdk.models; "
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=_env())
    assert out.stdout.strip() == "[]", out.stdout


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def test_a_wait_sits_out_an_outage_of_the_intake(kt: Keyturn, server: IntakeServer, monkeypatch) -> None:
    monkeypatch.setattr(intake_app, "RETRY_AFTER_S", 1)
    action_id = submit(kt)
    server.store.down = True  # every request of the wait is answered 503 for a while

    def back() -> None:
        server.store.down = False
        server.decide(action_id, "denied", ("no",))

    server.after(0.6, back)
    with Keyturn(server.url, token=AGENT_TOKEN, retries=0) as patient:
        assert patient.wait(action_id, timeout=10).state == "denied"
    server.store.down = True
    try:
        with (
            Keyturn(server.url, token=AGENT_TOKEN, retries=0, max_outage_s=0.5) as impatient,
            pytest.raises(Unavailable),
        ):
            impatient.wait(action_id, timeout=10)
    finally:
        server.store.down = False


def test_rfc_9457_problems_and_dated_retry_after_are_read_too() -> None:
    from email.utils import format_datetime

    answers = iter(
        [
            httpx.Response(
                503, headers={"Retry-After": format_datetime(datetime.now(UTC) + timedelta(seconds=90), usegmt=True)}
            ),
            httpx.Response(
                403,
                headers={"Content-Type": "application/problem+json"},
                json={"type": "https://keyturn.example/forbidden", "title": "Forbidden", "status": 403},
            ),
        ]
    )
    transport = httpx.MockTransport(lambda request: next(answers))
    with Keyturn("http://keyturn", token="t", transport=transport, max_retry_after_s=30) as kt:
        with pytest.raises(Unavailable) as later:
            kt.status("8d0f4b5e-1c7a-4b57-9a8e-0d1f6f1c2b3a")
        assert later.value.retry_after is not None and 80 < later.value.retry_after <= 90
        with pytest.raises(RequestError) as forbidden:
            kt.status("8d0f4b5e-1c7a-4b57-9a8e-0d1f6f1c2b3a")
    assert forbidden.value.status == 403 and forbidden.value.detail == "Forbidden"
    assert forbidden.value.error == "https://keyturn.example/forbidden"


@pytest.mark.parametrize("body", [[], {"state": "succeeded"}, {"action_id": "x", "state": None}])
def test_an_answer_that_is_not_an_action_is_an_error_not_a_result(body) -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200 if request.method == "GET" else 202, json=body))
    with Keyturn("http://keyturn", token="t", transport=transport) as kt:
        with pytest.raises(RequestError):
            kt.status("8d0f4b5e-1c7a-4b57-9a8e-0d1f6f1c2b3a")
        with pytest.raises(RequestError):
            kt.submit("read.table", "postgres://staging/a/b", reason="r")
