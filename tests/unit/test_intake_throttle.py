"""A caller over its submission limit is answered 429 with when to come back, recorded once under
its identity, and nothing of what it sent is stored (no server: fake store and broker, the real
HTTP app)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from keyturn.config import Settings
from keyturn.intake.app import create_app
from keyturn.intake.throttle import Oversized, SubmissionThrottle, Throttled
from tests.unit.test_intake_hostile_input import AUTH, GOOD
from tests.unit.test_intake_service import intake_with, wiring_of


def test_each_caller_has_its_own_limit_and_a_batch_is_taken_whole_or_not_at_all() -> None:
    throttle = SubmissionThrottle("5/minute")
    assert [throttle.take("agent:a") for _ in range(3)] == [None, None, None]
    refused = throttle.take("agent:a", 3)  # three more would make six: none of them is counted
    assert isinstance(refused, Throttled) and refused.limit == "5 per 1 minute" and refused.first
    assert 1 <= refused.retry_after_s <= 60
    assert throttle.take("agent:a", 2) is None  # the refused batch took nothing
    spell = [throttle.take("agent:a") for _ in range(3)]  # a new spell of refusals: recorded once
    assert all(isinstance(r, Throttled) for r in spell) and [r.first for r in spell] == [True, False, False]
    assert throttle.take("agent:b", 5) is None  # another caller: a limit of its own
    assert throttle.take("agent:b", 6) == Oversized("5 per 1 minute")  # would never be taken


def test_every_limit_holds_and_a_refusal_by_one_counts_nothing_against_another() -> None:
    throttle = SubmissionThrottle("2/second;3/minute")
    assert throttle.take("agent:a", 2) is None
    assert isinstance(throttle.take("agent:a", 2), Throttled)  # over both
    refused = throttle.take("agent:a", 1)
    assert isinstance(refused, Throttled) and refused.limit == "2 per 1 second"


def test_no_limit_when_none_is_set_and_a_limit_that_cannot_be_read_stops_the_start() -> None:
    assert SubmissionThrottle("").take("agent:a", 10**6) is None
    with pytest.raises(ValueError):
        SubmissionThrottle("ten a minute")
    with pytest.raises(ValueError):
        create_app(Settings(submission_limit="ten a minute"))


def test_a_caller_over_its_limit_is_answered_429_with_retry_after_and_recorded_once() -> None:
    intake, store, send = intake_with()
    app = create_app(Settings(submission_limit="3/minute"), wire=wiring_of(intake, store))
    bodies = [json.dumps({**GOOD, "idempotency_key": f"k{n}"}) for n in range(6)]
    with TestClient(app) as client:
        answers = [client.post("/v1/actions", content=body, headers=AUTH) for body in bodies[:5]]
        batch = client.post("/v1/actions:batch", content=json.dumps({"items": [json.loads(bodies[5])]}), headers=AUTH)
        too_big = client.post("/v1/actions:batch", content=json.dumps({"items": [GOOD] * 4}), headers=AUTH)
    assert [a.status_code for a in answers] == [202, 202, 202, 429, 429]
    refused = answers[3]
    assert refused.json()["error"] == "rate_limited" and "agent:reporter" in refused.json()["detail"]
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert batch.status_code == 429 and batch.json()["error"] == "rate_limited"
    assert too_big.status_code == 422 and too_big.json()["error"] == "batch_over_limit"
    assert len(store.rows) == 3, "nothing refused is stored"
    letters = [letter for letter in send.events("unit.dlq") if letter.error_type == "rate_limited"]
    assert [(letter.principal, letter.payload_length) for letter in letters] == [("agent:reporter", 0)]
    assert letters[0].source_topic == "http:POST /v1/actions"


def test_refused_bodies_count_against_the_limit_and_past_it_are_not_recorded_one_by_one() -> None:
    intake, store, send = intake_with()
    app = create_app(Settings(submission_limit="2/minute"), wire=wiring_of(intake, store))
    bad = json.dumps({**GOOD, "reason": ""})  # refused for what it holds: recorded under the caller
    with TestClient(app) as client:
        answers = [client.post("/v1/actions", content=bad, headers=AUTH) for _ in range(6)]
        fine = client.post("/v1/actions", content=json.dumps(GOOD), headers=AUTH)
    assert [a.status_code for a in answers] == [422, 422, 429, 429, 429, 429] and fine.status_code == 429
    assert [letter.error_type for letter in send.events("unit.dlq")] == ["invalid_body", "invalid_body", "rate_limited"]
    assert store.rows == {}


def test_bodies_over_the_bounds_count_too_and_past_the_limit_are_answered_but_not_recorded() -> None:
    intake, store, send = intake_with()
    settings = Settings(submission_limit="2/minute", max_body_bytes=1024)
    too_big = json.dumps({**GOOD, "reason": "x" * 2000})
    with TestClient(create_app(settings, wire=wiring_of(intake, store))) as client:
        answers = [client.post("/v1/actions", content=too_big, headers=AUTH) for _ in range(4)]
    assert [a.status_code for a in answers] == [413] * 4
    # two within the limit, and the first of the spell over it
    assert [letter.error_type for letter in send.events("unit.dlq")] == ["body_too_large"] * 3


def test_a_submission_the_catalog_refuses_counts_once() -> None:
    intake, store, _send = intake_with()

    async def no_executor(action: str) -> str | None:
        return "no plugin performs it"

    intake.refusal_for = no_executor
    app = create_app(Settings(submission_limit="2/minute"), wire=wiring_of(intake, store))
    with TestClient(app) as client:
        answers = [client.post("/v1/actions", content=json.dumps(GOOD), headers=AUTH) for _ in range(3)]
    assert [a.status_code for a in answers] == [422, 422, 429]
    assert store.rows == {}
