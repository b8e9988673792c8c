"""Sealed parameters only open for the action and digest they were sealed for; anything else is refused and audited."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import UTC, datetime

import pytest

from keyturn.audit.stream import read_audit_log
from keyturn.bus.codec import registry
from keyturn.bus.topics import Topics
from keyturn.core.events import ActionDecided, ActionExecuted, ActionRequested, ExecutionOutcome
from tests.integration.conftest import Agent, eventually, produce, read_topic, warrant

pytestmark = pytest.mark.integration


def _requested(settings, action_id: str) -> ActionRequested:
    return next(
        e
        for e, _ in read_topic(settings, Topics(settings.namespace, settings.partitions).requested)
        if isinstance(e, ActionRequested) and e.action_id == action_id
    )


def _forge_allowed(settings, original: ActionRequested, new_id: str, sealed) -> None:
    """An 'allowed' decision nobody made, carrying ``sealed`` for action ``new_id``, warranted as
    if the policy itself had gone wrong: past the warrant, the seal still refuses it."""
    decided = next(
        e
        for e, _ in read_topic(settings, Topics(settings.namespace, settings.partitions).decided)
        if isinstance(e, ActionDecided) and e.action_id == original.action_id
    )
    request = dataclasses.replace(original, action_id=new_id, event_id=f"requested:{new_id}", sealed_parameters=sealed)
    forged = dataclasses.replace(
        decided, action_id=new_id, event_id=f"decided:{new_id}", request=request, decided_at=datetime.now(UTC)
    )
    topic, value = Topics(settings.namespace, settings.partitions).decided, registry().encode_event(forged)
    produce(settings, topic, value, key=new_id.encode(), headers=warrant(settings, topic, new_id.encode(), value))


def _executed(settings, action_id: str) -> ActionExecuted | None:
    return next(
        (
            e
            for e, _ in read_topic(settings, Topics(settings.namespace, settings.partitions).executed)
            if isinstance(e, ActionExecuted) and e.action_id == action_id
        ),
        None,
    )


@pytest.mark.parametrize("tamper", ["replayed onto another action", "ciphertext edited"])
def test_a_replayed_or_tampered_seal_is_refused_and_audited(reporter: Agent, settings, tamper: str) -> None:
    original_id = reporter.submit_ok(
        "read.table", "postgres://staging/analytics/orders", {"table": "orders", "limit": 5}
    )
    assert reporter.wait(original_id)["state"] == "approved_external"  # read.* is external: a receipt
    original = _requested(settings, original_id)
    assert original.sealed_parameters is not None, "clear parameters travel only sealed"

    sealed = original.sealed_parameters
    if tamper == "ciphertext edited":
        flipped = bytearray(sealed.ciphertext)
        flipped[0] ^= 0x01
        sealed = dataclasses.replace(sealed, ciphertext=bytes(flipped))
    forged_id = str(uuid.uuid4())
    _forge_allowed(settings, original, forged_id, sealed)

    executed = eventually(lambda: _executed(settings, forged_id))
    assert executed is not None, "the forged order was neither run nor refused"
    assert executed.outcome is ExecutionOutcome.FAILED
    assert "seal" in (executed.error or "").lower(), executed.error
    audited = eventually(
        lambda: [
            r
            for r in asyncio.run(
                read_audit_log(settings.kafka_bootstrap, Topics(settings.namespace, settings.partitions).audit)
            )
            if r.action_id == forged_id and r.event_type == "ActionExecuted"
        ]
    )
    assert audited and "failed" in audited[0].payload_json
