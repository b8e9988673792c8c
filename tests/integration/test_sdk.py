"""The SDK against the real five services: an agent's call that blocks while a person approves it
with ``keyturn approve``, a policy denial and an approver's refusal as typed exceptions, the
guard decorator, and a retry under the same idempotency key landing on the same action."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from keyturn.sdk import ApprovalRefused, AsyncKeyturn, Denied, Keyturn, current_action
from tests.integration.conftest import keyturn_cli, mint, vote_over_api

pytestmark = pytest.mark.integration

ROLE = "iam://staging/roles/analyst"


@pytest.fixture(scope="module")
def kt(settings, services) -> Iterator[Keyturn]:
    with Keyturn(settings.intake_url, token=mint(settings, "agent:onboarder", ("human:alice",))) as client:
        yield client


def approve_with_the_cli(settings, kt: Keyturn, action_id: str, found: dict[str, Any]) -> threading.Thread:
    """human:carol, who answers the action with ``keyturn approve`` once it waits for approval."""

    def person() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if kt.status(action_id).state == "needs_approval":
                found["cli"] = keyturn_cli(settings, "approve", action_id, token=mint(settings, "human:carol"))
                return
            time.sleep(0.2)

    thread = threading.Thread(target=person, daemon=True)
    thread.start()
    return thread


def test_run_blocks_while_a_person_approves_with_the_cli_and_returns_the_outcome(settings, kt: Keyturn) -> None:
    found: dict[str, Any] = {}
    submitted = kt.submit("iam.role.grant", ROLE, {"principal": "bob", "role": "analyst"}, reason="onboarding bob")
    person = approve_with_the_cli(settings, kt, submitted.action_id, found)
    done = kt.wait(submitted.action_id, timeout=90).raise_for_outcome()
    person.join(5)
    assert found["cli"].returncode == 0, found["cli"].stderr
    assert done.state in ("succeeded", "approved_external")  # the stack decides who performs a grant
    assert done.approver_groups == ["security"] and done.expires_at
    resolved = next(h for h in done.history if h["event"] == "ApprovalResolved")
    assert [(v["approver"], v["choice"]) for v in resolved["votes"]] == [("human:carol", "approve")]


def test_a_policy_denial_is_denied_with_the_policys_reasons(kt: Keyturn) -> None:
    with pytest.raises(Denied) as raised:
        kt.run("secrets.delete", "vault://staging/payments/api-key", reason="tidy up", timeout=60)
    assert not isinstance(raised.value, ApprovalRefused)
    assert raised.value.action.state == "denied"
    assert any("secret" in reason for reason in raised.value.reasons), raised.value.reasons


def test_an_approvers_refusal_is_approval_refused(settings, kt: Keyturn) -> None:
    submitted = kt.submit("iam.role.grant", ROLE, {"principal": "human:eve", "role": "analyst"}, reason="eve")
    # the console's path this time (the CLI's is above): the same approval API
    person = threading.Thread(
        target=vote_over_api, args=(settings, submitted.action_id, "human:carol", "deny", "not today"), daemon=True
    )
    person.start()
    with pytest.raises(ApprovalRefused) as raised:
        kt.wait(submitted.action_id, timeout=90).raise_for_outcome()
    person.join(5)
    assert any("not today" in reason for reason in raised.value.reasons), raised.value.reasons


def test_a_repeated_submission_with_one_key_is_one_action(kt: Keyturn) -> None:
    first = kt.submit("read.table", "postgres://staging/analytics/orders", reason="report", idempotency_key="sdk-it-1")
    again = kt.submit("read.table", "postgres://staging/analytics/orders", reason="report", idempotency_key="sdk-it-1")
    assert first.created and not again.created and again.action_id == first.action_id


async def test_a_guarded_coroutine_runs_its_body_only_once_allowed(settings, services) -> None:
    token = mint(settings, "agent:reporter", ("human:alice",))
    ran: list[str] = []
    async with AsyncKeyturn(settings.intake_url, token=token) as akt:

        @akt.guard("read.table", resource="postgres://staging/analytics/{table}", reason="weekly report")
        async def read_table(table: str) -> str:
            action = current_action()
            assert action is not None and action.left_to_the_caller
            ran.append(action.action_id)
            return f"read {table}"

        @akt.guard("secrets.delete", resource="vault://staging/{name}", reason="tidy up")
        async def delete_secret(name: str) -> None:
            ran.append("deleted")

        assert await read_table("orders") == "read orders"
        with pytest.raises(Denied):
            await delete_secret("payments")
    assert len(ran) == 1 and ran[0] != "deleted"


async def test_a_topic_submission_is_followed_over_http_by_the_id_it_was_given(settings, services) -> None:
    from keyturn.sdk.topic import TopicSubmitter

    token = mint(settings, "agent:bulk", ("human:alice",))
    async with TopicSubmitter(settings.kafka_bootstrap, token=token, namespace=settings.namespace) as topic:
        sent = await topic.submit("secrets.delete", "vault://staging/payments/api-key", reason="bulk tidy-up")
    async with AsyncKeyturn(settings.intake_url, token=token) as akt:
        done = await akt.wait(sent.action_id, timeout=60)
    assert done.state == "denied" and done.requester == "agent:bulk"
    assert done.history[0]["event"] == "ActionRequested"


def test_run_returns_what_the_executor_found(settings, services) -> None:
    with Keyturn(settings.intake_url, token=mint(settings, "agent:reporter", ("human:alice",))) as kt:

        @kt.guard("sql.query", resource="postgres://staging/keyturn", reason="health check", mode="executor")
        def count(statement: str = "SELECT 41 + 1 AS answer", max_rows: int = 1) -> None:
            raise AssertionError("the executor performs sql.query; the body never runs")

        found = count()
    assert found["rows"] == [{"answer": 42}], found
