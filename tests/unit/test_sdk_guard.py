"""The guard decorator against the intake's own app on in-memory ports: what is submitted from a
call's arguments, when the body runs, and what comes back."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from keyturn.sdk import (
    ApprovalSpent,
    AsyncKeyturn,
    Denied,
    Expired,
    Keyturn,
    ReceiptExpired,
    UnexpectedState,
    current_action,
)
from tests.fakes.intake_server import AGENT_TOKEN, IntakeServer, answering, external_result, shaped


@pytest.fixture(scope="module")
def server() -> Iterator[IntakeServer]:
    with IntakeServer() as running:
        yield running


@pytest.fixture
def kt(server: IntakeServer) -> Iterator[Keyturn]:
    with Keyturn(server.url, token=AGENT_TOKEN, backoff_s=0.01) as client:
        yield client


def end_with(server: IntakeServer, *steps: Any) -> None:
    """Once the guarded call has submitted, move its action to its end."""
    server.on_submission(*steps)


def allowed(server: IntakeServer, plugin: str, result: Any) -> tuple[Any, Any]:
    return (
        lambda a: server.decide(a, "allowed"),
        lambda a: server.execute(a, "succeeded", result, plugin=plugin),
    )


def test_the_call_becomes_an_action_and_the_executors_result_is_returned(kt: Keyturn, server: IntakeServer) -> None:
    ran = []

    @kt.guard("sql.query", resource="postgres://staging/{database}", reason=lambda database, statement, **_: "count")
    def query(database: str, statement: str, max_rows: int = 100) -> Any:
        ran.append(statement)
        return "the body's own answer"

    end_with(server, *allowed(server, "sql", {"row_count": 1, "rows": [{"n": 3}]}))
    assert query("app", "SELECT count(*) FROM orders") == {"row_count": 1, "rows": [{"n": 3}]}
    assert ran == []  # Keyturn's executor performed it; the body never ran
    request = server.submitted()
    assert (request.action, request.resource, request.reason) == ("sql.query", "postgres://staging/app", "count")
    assert json.loads(request.parameters_json) == {
        "database": "app",
        "statement": "SELECT count(*) FROM orders",
        "max_rows": 100,
    }
    assert query.__name__ == "query"  # still looks like itself to frameworks that read it


def test_an_action_left_to_the_caller_runs_the_body_once_with_the_action_at_hand(
    kt: Keyturn, server: IntakeServer
) -> None:
    seen = []

    @kt.guard("iam.role.grant", resource="iam://staging/roles/{role}", reason="onboarding {user}")
    def grant(user: str, role: str) -> str:
        action = current_action()
        assert action is not None
        seen.append(action.action_id)
        return f"granted {role} to {user}"

    end_with(server, *allowed(server, "noop", {"performed": False}))
    assert grant("human:bob", "analyst") == "granted analyst to human:bob"
    assert seen == [server.latest()] and current_action() is None
    assert server.submitted().reason == "onboarding human:bob"


def receipt_until(expires_at: datetime) -> dict[str, Any]:
    return {"claims": {"expires_at": expires_at.isoformat()}, "signature": {"alg": "EdDSA", "value": "abc"}}


def test_approved_external_runs_the_body_and_hands_it_the_receipt() -> None:
    receipt = receipt_until(datetime.now(UTC) + timedelta(minutes=10))
    with Keyturn(
        "http://keyturn",
        token="t",
        transport=answering(shaped("approved_external", True, result=external_result(receipt))),
    ) as kt:

        @kt.guard("iam.role.grant", resource="iam://staging/roles/analyst", reason="onboarding")
        def grant() -> Any:
            action = current_action()
            return action.receipt if action else None

        assert grant() == receipt


@pytest.mark.parametrize(
    "receipt",
    [receipt_until(datetime.now(UTC) - timedelta(seconds=1)), {"signature": "abc"}],
    ids=["expired", "no-expiry"],
)
def test_approved_external_with_a_spent_receipt_never_runs_the_body(receipt: dict[str, Any]) -> None:
    ran = []
    with Keyturn(
        "http://keyturn",
        token="t",
        transport=answering(shaped("approved_external", True, result=external_result(receipt))),
    ) as kt:

        @kt.guard("iam.role.grant", resource="iam://staging/roles/analyst", reason="onboarding", idempotency_key="k")
        def grant() -> None:
            ran.append(1)

        with pytest.raises(ReceiptExpired) as raised:
            grant()
    assert ran == [] and "was approved, but" in str(raised.value) and isinstance(raised.value, Expired)


def test_a_denied_call_raises_and_never_runs_the_body(kt: Keyturn, server: IntakeServer) -> None:
    ran = []

    @kt.guard("secrets.delete", resource="vault://prod/{name}", reason="cleanup", parameters=["name"])
    def delete(name: str, token: str) -> None:
        ran.append(name)

    end_with(server, lambda a: server.decide(a, "denied", ("deleting a secret is never allowed",)))
    with pytest.raises(Denied) as raised:
        delete("db-password", token="not sent")
    assert ran == [] and raised.value.reasons == ["deleting a secret is never allowed"]
    assert json.loads(server.submitted().parameters_json) == {"name": "db-password"}


def test_modes_refuse_an_end_they_cannot_honour(kt: Keyturn, server: IntakeServer) -> None:
    ran = []

    @kt.guard("sql.query", resource="postgres://staging/app", reason="r", mode="local")
    def run_locally(statement: str) -> None:
        ran.append(statement)

    end_with(server, *allowed(server, "sql", {"row_count": 0, "rows": []}))
    with pytest.raises(UnexpectedState, match="already performed"):
        run_locally("UPDATE orders SET x = 1 WHERE id = 1")  # never a second run of what the executor did
    assert ran == []

    @kt.guard("iam.role.grant", resource="iam://staging/roles/analyst", reason="r", mode="executor")
    def executor_only() -> None:
        ran.append("body")

    end_with(server, *allowed(server, "noop", {"performed": False}))
    with pytest.raises(UnexpectedState, match="nothing performed it"):
        executor_only()
    assert ran == []


def test_arguments_the_templates_name_must_exist(kt: Keyturn) -> None:
    @kt.guard("sql.query", resource="postgres://staging/{db}", reason="r")
    def query(statement: str) -> None: ...

    with pytest.raises(TypeError, match="db"):
        query("SELECT 1")
    with pytest.raises(ValueError, match="mode"):
        kt.guard("sql.query", resource="r", reason="r", mode="later")  # type: ignore[arg-type]


async def test_async_functions_are_guarded_by_either_client(server: IntakeServer) -> None:
    async with AsyncKeyturn(server.url, token=AGENT_TOKEN, backoff_s=0.01) as akt:

        @akt.guard("iam.role.grant", resource="iam://staging/roles/{role}", reason="r")
        async def grant(role: str) -> str:
            return f"granted {role}"

        end_with(server, *allowed(server, "noop", {"performed": False}))
        assert await grant("analyst") == "granted analyst"

        with pytest.raises(TypeError, match="not a coroutine function"):

            @akt.guard("iam.role.grant", resource="r", reason="r")
            def blocking() -> None: ...

    with Keyturn(server.url, token=AGENT_TOKEN) as kt:

        @kt.guard("sql.query", resource="postgres://staging/app", reason="r")
        async def query(statement: str) -> str:
            return "body"

        end_with(server, *allowed(server, "sql", {"row_count": 0, "rows": []}))
        assert await query("SELECT 1") == {"row_count": 0, "rows": []}


def test_the_module_level_guard_uses_the_default_client_from_the_environment(server: IntakeServer, monkeypatch) -> None:
    import keyturn.sdk as keyturn
    from keyturn.sdk import client as sdk_client

    monkeypatch.setattr(sdk_client, "_default", None)
    monkeypatch.delenv("KEYTURN_TOKEN", raising=False)
    monkeypatch.setenv("KEYTURN_INTAKE_URL", server.url)

    @keyturn.guard("iam.role.grant", resource="iam://staging/roles/{role}", reason="onboarding")
    def grant(role: str) -> str:  # decorated before any token exists: the client is looked up per call
        return f"granted {role}"

    with pytest.raises(keyturn.AuthenticationFailed, match="KEYTURN_TOKEN"):
        grant("analyst")
    monkeypatch.setenv("KEYTURN_TOKEN", AGENT_TOKEN)
    end_with(server, *allowed(server, "noop", {"performed": False}))
    assert grant("analyst") == "granted analyst"
    assert server.requests[-1][2] == f"Bearer {AGENT_TOKEN}"
    keyturn.configure(token="forged", retries=0)
    with pytest.raises(keyturn.AuthenticationFailed, match="bad_signature"):
        grant("analyst")
    sdk_client.default_client().close()


def test_the_body_runs_on_the_values_approvers_saw_not_on_objects_changed_while_it_waited(
    kt: Keyturn, server: IntakeServer
) -> None:
    spec = {"columns": ["id"], "where": "region = 'eu'"}
    seen = []

    @kt.guard("read.table", resource="postgres://prod/analytics/customers", reason="report")
    def export(spec: dict[str, Any]) -> None:
        seen.append(json.loads(json.dumps(spec)))

    def tamper(_: str) -> None:  # code still holding the caller's dict, while approvers look
        spec["columns"].append("ssn")
        spec["where"] = "true"

    end_with(server, tamper, *allowed(server, "noop", {"performed": False}))
    export(spec)
    approved = json.loads(server.submitted().parameters_json)["spec"]
    assert approved == {"columns": ["id"], "where": "region = 'eu'"}
    assert seen == [approved], "the body ran with what was approved"


def test_a_parameters_callable_reading_objects_changed_while_waiting_never_runs_the_body(
    kt: Keyturn, server: IntakeServer
) -> None:
    class Job:
        def __init__(self) -> None:
            self.where = "id = 1"

    job = Job()
    ran = []

    @kt.guard(
        "read.table", resource="postgres://prod/app/orders", reason="r", parameters=lambda job: {"where": job.where}
    )
    def run(job: Job) -> None:
        ran.append(job.where)

    def tamper(_: str) -> None:
        job.where = "true"

    end_with(server, tamper, *allowed(server, "noop", {"performed": False}))
    with pytest.raises(UnexpectedState, match="arguments changed while it waited"):
        run(job)
    assert ran == []


def test_a_repeated_call_that_finds_its_action_already_approved_never_runs_the_body_again(
    kt: Keyturn, server: IntakeServer
) -> None:
    ran = []

    @kt.guard("iam.role.grant", resource="iam://staging/roles/analyst", reason="onboarding", idempotency_key="once")
    def grant() -> None:
        ran.append(1)

    end_with(server, *allowed(server, "noop", {"performed": False}))
    grant()
    with pytest.raises(ApprovalSpent, match="already approved"):
        grant()  # the same key: the approval was spent by the first call
    assert ran == [1]


def test_a_repeated_call_that_finds_its_action_still_waiting_runs_the_body_once_approved(
    kt: Keyturn, server: IntakeServer
) -> None:
    ran = []
    first = kt.submit("iam.role.grant", "iam://staging/roles/analyst", {}, reason="onboarding", idempotency_key="back")
    # the agent restarted before the approval came; its repeated call finds the action still open
    later = threading.Timer(0.3, lambda: [step(first.action_id) for step in allowed(server, "noop", {})])

    @kt.guard("iam.role.grant", resource="iam://staging/roles/analyst", reason="onboarding", idempotency_key="back")
    def grant() -> None:
        ran.append(current_action().action_id if current_action() else None)

    later.start()
    grant()
    later.join()
    assert ran == [first.action_id]


def test_a_retry_after_a_lost_answer_is_not_taken_for_a_repeated_call() -> None:
    receipt = receipt_until(datetime.now(UTC) + timedelta(minutes=10))
    status = shaped("approved_external", True, result=external_result(receipt))
    posts = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            posts.append(1)
            if len(posts) == 1:  # taken, but the answer was lost: the retry finds the action over
                raise httpx.ReadError("connection reset")
            return httpx.Response(200, json={"action_id": status["action_id"], "state": "approved_external"})
        return httpx.Response(200, json=status)

    ran = []
    with Keyturn("http://keyturn", token="t", transport=httpx.MockTransport(handler), backoff_s=0.01) as kt:

        @kt.guard("iam.role.grant", resource="iam://staging/roles/analyst", reason="onboarding", idempotency_key="k")
        def grant() -> None:
            ran.append(1)

        grant()
    assert posts == [1, 1] and ran == [1]
