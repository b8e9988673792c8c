"""POST /v1/actions:batch as an agent meets it: one result per item, idempotency per item, an
invalid item refused alone and recorded under the caller's identity with nothing of it in clear."""

from __future__ import annotations

import uuid

import pytest

from keyturn.bus.topics import Topics
from keyturn.core.events import DeadLetter
from tests.integration.conftest import Agent, eventually, read_topic

pytestmark = pytest.mark.integration

SECRET = "sk_live_51HbatchSECRETvalue9999"


def item(key: str, **changes) -> dict:
    return {
        "action": "read.table",
        "resource": "postgres://staging/analytics/orders",
        "parameters": {"limit": 5},
        "reason": "batch test",
        "idempotency_key": key,
        **changes,
    }


def test_a_batch_answers_each_item_and_a_retry_creates_nothing_new(reporter: Agent, settings) -> None:
    run = f"batch-{uuid.uuid4().hex[:8]}x"  # a letter after the hex: "97720371-0" alone reads as a phone number
    earlier = reporter.submit_ok(
        "read.table", "postgres://staging/analytics/orders", {"limit": 5}, "batch test", idempotency_key=f"{run}-0"
    )
    items = [
        item(f"{run}-0"),  # already submitted by a single POST
        item(f"{run}-1"),
        item(f"{run}-2"),
        item(f"{run}-2"),  # the same key twice in one batch, same request: one action
        item(f"{run}-0", parameters={"limit": 6}),  # key reused for another request
        item(f"{run}-5", action="DROP everything", parameters={"password": SECRET}),  # invalid
    ]
    answer = reporter.http.post("/v1/actions:batch", json={"items": items})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    results = body["results"]
    assert [r["index"] for r in results] == list(range(6))
    assert [r["status"] for r in results] == [200, 202, 202, 200, 409, 422]
    assert (body["accepted"], body["duplicates"], body["refused"]) == (2, 2, 2)
    assert results[0]["action_id"] == earlier
    assert results[2]["action_id"] == results[3]["action_id"] != results[1]["action_id"]
    assert "lower-case dotted" in results[5]["problem"]["detail"] and SECRET not in answer.text

    again = reporter.http.post("/v1/actions:batch", json={"items": items[:4]}).json()
    assert [r["status"] for r in again["results"]] == [200, 200, 200, 200]
    assert [r["action_id"] for r in again["results"]] == [r["action_id"] for r in results[:4]]
    assert reporter.wait(results[1]["action_id"])["state"] == "approved_external"  # read.* is external

    topics = Topics(settings.namespace, settings.partitions)

    def refused():
        return [
            (e, m)
            for e, m in read_topic(settings, topics.dlq)
            if isinstance(e, DeadLetter) and e.source_topic == "http:POST /v1/actions:batch" and run in str(e.excerpt)
        ]

    letters = eventually(refused)
    assert len(letters) == 1, letters
    letter, message = letters[0]
    assert letter.principal == "agent:reporter" and letter.error_type == "invalid_body"
    assert SECRET.encode() not in message.value


def test_a_batch_over_the_limit_or_unauthenticated_is_refused_whole(reporter: Agent, settings) -> None:
    too_many = [item(f"over-{i}") for i in range(settings.intake_batch_max_items + 1)]
    answer = reporter.http.post("/v1/actions:batch", json={"items": too_many})
    assert answer.status_code == 422 and "items" in answer.json()["detail"]
    assert reporter.http.post("/v1/actions:batch", json={"items": []}).status_code == 422
    anonymous = reporter.http.post("/v1/actions:batch", json={"items": [item("x")]}, headers={"Authorization": ""})
    assert anonymous.status_code == 401
