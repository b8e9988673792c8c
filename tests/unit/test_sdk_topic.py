"""Topic submission: what the SDK publishes is what the intake's submissions stage accepts, under the
token's principal and with the action id the SDK predicted."""

from __future__ import annotations

import functools
import json
from typing import Any

import pytest

from keyturn.bus import loop
from keyturn.bus.codec import SCHEMA_DIR, registry
from keyturn.bus.loop import run
from keyturn.faults import until_done
from keyturn.identity import SigningKey, TokenVerifier, issue_token
from keyturn.intake.consumers import submissions_stage
from keyturn.intake.submissions import Intake
from keyturn.masking.protect import parameter_protector
from keyturn.masking.sealing import Keyring
from keyturn.sdk import topic
from tests.fakes.service_ports import FakeActionStore, ListSource, Record, fake_publisher

KEY = SigningKey.generate()


class Acknowledging:
    """A broker's producer as far as ``send_and_wait`` goes: records each message and acknowledges it."""

    def __init__(self) -> None:
        self.sent: list[Record] = []

    async def send_and_wait(self, topic_name: str, value: bytes, *, key: bytes, headers: list) -> Any:
        record = Record(topic_name, 0, len(self.sent), key, value, headers=headers)
        self.sent.append(record)
        return record


def test_the_sdks_copy_of_the_schema_is_the_intakes() -> None:
    shipped = json.loads((SCHEMA_DIR / "keyturn.ActionSubmitted.avsc").read_text())
    assert shipped == topic.ACTION_SUBMITTED_SCHEMA
    name, record = registry().decode(topic.encode_submission("read.table", "postgres://x/y", {"n": 1}, "r", "k"))
    assert name == "ActionSubmitted" and record["idempotency_key"] == "k"


def test_parameters_that_are_not_json_are_refused_before_anything_is_sent() -> None:
    with pytest.raises(ValueError):
        topic.encode_submission("read.table", "postgres://x/y", {"n": float("nan")}, "r", "k")


async def test_submissions_are_accepted_by_the_intake_under_the_tokens_principal(monkeypatch) -> None:
    monkeypatch.setattr(loop, "until_done", functools.partial(until_done, first_wait_s=0.001))
    token = issue_token(KEY, subject="agent:bulk", acts_for=["human:alice"])
    producer = Acknowledging()
    submitter = topic.TopicSubmitter(token=token, namespace="unit", producer=producer)
    first = await submitter.submit("read.table", "postgres://staging/a/orders", {"row_count": 10}, reason="nightly")
    again = await submitter.submit(
        "read.table",
        "postgres://staging/a/orders",
        {"row_count": 10},
        reason="nightly",
        idempotency_key=first.idempotency_key,
    )
    assert again.action_id == first.action_id and [r.topic for r in producer.sent] == ["unit.submissions"] * 2

    store = FakeActionStore()
    publisher, send = fake_publisher("intake")
    intake = Intake(store, publisher, parameter_protector(Keyring.generate("sdk-topic")), publish_patience_s=0.05)
    verifier = TokenVerifier(KEY.jwks(), issuer="keyturn-dev", audience="keyturn")
    await run(ListSource([producer.sent]), submissions_stage(intake, publisher, verifier))

    assert list(store.rows) == [first.action_id]  # the id the SDK predicted, once for both messages
    assert store.rows[first.action_id].requester == "agent:bulk"
    assert send.events("unit.dlq") == []
    [requested] = send.events("unit.actions.requested")
    assert requested.requester.chain == ("human:alice",) and requested.channel.value == "topic"


async def test_a_token_provider_is_asked_for_each_message() -> None:
    tokens = iter([issue_token(KEY, subject="agent:a"), issue_token(KEY, subject="agent:b")])

    async def provide() -> str:
        return next(tokens)

    producer = Acknowledging()
    submitter = topic.TopicSubmitter(token_provider=provide, producer=producer)
    a = await submitter.submit("read.table", "postgres://staging/a/b", reason="r", idempotency_key="same")
    b = await submitter.submit("read.table", "postgres://staging/a/b", reason="r", idempotency_key="same")
    assert a.action_id != b.action_id  # ids are per principal
    assert [dict(r.headers)["authorization"][:7] for r in producer.sent] == [b"Bearer "] * 2
    assert producer.sent[0].topic == "keyturn.submissions"
