"""The intake as an agent meets it: tokens, validation, idempotency, the submissions topic."""

from __future__ import annotations

import json

import httpx
import pytest

from keyturn.bus.codec import registry
from keyturn.bus.topics import Topics
from keyturn.core.events import ActionSubmitted, DeadLetter
from tests.integration.conftest import Agent, eventually, produce, read_topic

pytestmark = pytest.mark.integration


def test_same_idempotency_key_returns_the_same_action(reporter: Agent) -> None:
    first = reporter.submit(
        "read.table", "postgres://staging/analytics/orders", {"table": "orders"}, idempotency_key="report-2026-11-30"
    )
    again = reporter.submit(
        "read.table", "postgres://staging/analytics/orders", {"table": "orders"}, idempotency_key="report-2026-11-30"
    )
    assert first.status_code == 202
    assert again.status_code == 200
    assert again.json()["action_id"] == first.json()["action_id"]


def test_idempotency_keys_are_per_principal(reporter: Agent, settings) -> None:
    other = Agent(settings, "agent:other", ("human:bob",))
    mine = reporter.submit_ok("read.table", "postgres://staging/a/b", idempotency_key="shared-key")
    theirs = other.submit_ok("read.table", "postgres://staging/a/b", idempotency_key="shared-key")
    assert mine != theirs


def test_reused_idempotency_key_with_other_parameters_is_a_conflict(reporter: Agent) -> None:
    reporter.submit_ok("read.table", "postgres://staging/a/b", {"limit": 1}, idempotency_key="conflicting")
    response = reporter.submit("read.table", "postgres://staging/a/b", {"limit": 2}, idempotency_key="conflicting")
    assert response.status_code == 409
    assert "different request" in response.json()["detail"]


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ({"resource": "x", "reason": "r"}, "action: Field required"),
        ({"action": "DROP everything", "resource": "x", "reason": "r"}, "lower-case dotted"),
        ({"action": "read.table", "resource": "x", "reason": ""}, "reason"),
        ({"action": "read.table", "resource": "x", "reason": "r", "parameters": [1, 2]}, "parameters"),
        ({"action": "read.table", "resource": "x", "reason": "r", "surprise": 1}, "surprise"),
    ],
)
def test_bad_bodies_get_422_saying_what_is_wrong(reporter: Agent, body: dict, complaint: str) -> None:
    response = reporter.http.post("/v1/actions", json=body)
    assert response.status_code == 422
    assert complaint in response.json()["detail"]


def test_invalid_json_gets_422(reporter: Agent) -> None:
    response = reporter.http.post("/v1/actions", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert "JSON" in response.json()["detail"]


@pytest.mark.parametrize("authorization", [None, "Bearer", "Bearer not-a-jwt", "Basic dXNlcjpwYXNz"])
def test_missing_or_bad_token_gets_401(settings, services, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = httpx.post(
        f"{settings.intake_url}/v1/actions",
        json={"action": "read.table", "resource": "x", "reason": "r"},
        headers=headers,
    )
    assert response.status_code == 401
    assert "invalid token" in response.json()["detail"]


def test_another_principal_cannot_read_my_action(reporter: Agent, settings) -> None:
    action_id = reporter.submit_ok("read.table", "postgres://staging/a/b")
    stranger = Agent(settings, "agent:stranger", ("human:mallory",))
    assert stranger.http.get(f"/v1/actions/{action_id}").status_code == 404
    # the human the agent acts for may follow it
    alice = Agent(settings, "human:alice")
    assert alice.http.get(f"/v1/actions/{action_id}").status_code == 200
    # each in their own name: acting for the agent, another agent acting for alice, or the same agent
    # acting for someone else, shows nothing
    for sub, chain in (
        ("human:bob", ("agent:reporter",)),
        ("agent:other", ("human:alice",)),
        ("agent:reporter", ("human:bob",)),
    ):
        assert Agent(settings, sub, chain).http.get(f"/v1/actions/{action_id}").status_code == 404, sub


def test_the_approval_service_shows_an_action_by_the_intakes_rule_and_to_approvers_as_written(
    reporter: Agent, settings
) -> None:
    action_id = reporter.submit_ok(
        "iam.role.grant", "iam://staging/roles/analyst", {"principal": "bob", "role": "analyst"}
    )

    def shown_to(sub: str, chain: tuple[str, ...] = ()) -> int:
        token = Agent(settings, sub, chain).token
        url = f"{settings.approval_url}/v1/approvals/{action_id}"
        return httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30).status_code

    assert eventually(lambda: shown_to("human:alice") == 200)  # the human the agent acts for
    assert shown_to("agent:reporter", ("human:alice",)) == 200
    assert shown_to("human:carol") == 200  # an approver of the action's group
    for sub, chain in (
        ("agent:evil", ("human:alice",)),  # another agent acting for alice
        ("agent:evil", ("human:mallory", "human:alice")),
        ("human:mallory", ("human:alice",)),
        ("agent:reporter", ("human:bob",)),  # the same agent acting for someone else
        ("human:bob", ("agent:reporter",)),
        ("human:CAROL", ()),  # not the approver the policy names: the policy compares ids exactly
    ):
        # answered as an action not on record (not open yet): an outsider learns nothing of it
        assert shown_to(sub, chain) == 425, (sub, chain)


def test_agents_can_submit_through_the_submissions_topic(reporter: Agent, settings) -> None:
    topics = Topics(settings.namespace, settings.partitions)
    submission = ActionSubmitted(
        "read.table", "postgres://staging/analytics/orders", json.dumps({"table": "orders"}), "via topic", "topic-key-1"
    )
    produce(
        settings,
        topics.submissions,
        registry().encode_event(submission),
        key=b"topic-key-1",
        headers=[("authorization", f"Bearer {reporter.token}".encode())],
    )
    # the same key over HTTP finds the action the topic created
    response = eventually(
        lambda: (
            (
                r := reporter.submit(
                    "read.table",
                    "postgres://staging/analytics/orders",
                    {"table": "orders"},
                    reason="via topic",
                    idempotency_key="topic-key-1",
                )
            ).status_code
            == 200
            and r
        )
    )
    assert response, "the topic submission never became an action"
    assert reporter.wait(response.json()["action_id"])["state"] == "approved_external"  # read.* is external


def test_a_topic_submission_without_a_valid_token_is_dead_lettered(settings, services) -> None:
    topics = Topics(settings.namespace, settings.partitions)
    submission = ActionSubmitted("read.table", "postgres://staging/a/b", "{}", "no token", "forged-1")
    produce(
        settings,
        topics.submissions,
        registry().encode_event(submission),
        key=b"forged-1",
        headers=[("authorization", b"Bearer forged.token.value")],
    )

    def letters():
        return [
            e
            for e, _ in read_topic(settings, topics.dlq)
            if isinstance(e, DeadLetter) and e.source_topic == topics.submissions and e.key == b"forged-1"
        ]

    found = eventually(letters)
    assert found and found[0].error_type.startswith("token_"), found
    assert found[0].service == "intake"
