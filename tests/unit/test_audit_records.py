"""The audit chains an event from its decoded Avro record (``audit.records.AuditedEvent``), never
building the event's dataclass: what it records must be what the dataclass would have given, for
every event type, whatever the record holds."""

from __future__ import annotations

import json
import random

import pytest
from fastavro.utils import generate_many

from keyturn.audit.records import AuditedEvent, _shape, actor_of, audit_payload, flags_of, occurred_at
from keyturn.bus.codec import registry
from keyturn.core.canonical import canonical_json
from keyturn.core.events import EVENT_TYPES
from keyturn.core.records import from_record
from tests.unit.test_canonical_json import standard_spelling

RECORDS_PER_TYPE = 150


AUDITED = sorted(name for name in EVENT_TYPES if name != "ActionSubmitted")  # submissions are never audited


@pytest.mark.parametrize("name", AUDITED)
def test_a_record_chains_as_its_event_would(name: str) -> None:
    random.seed(name)  # random records, the same ones on every run
    codec = registry()
    seen_flags = set()
    for generated in generate_many(codec._parsed_readers[name], RECORDS_PER_TYPE):
        decoded_name, record = codec.decode(codec.encode(name, generated))  # as the audit reads it
        event = from_record(EVENT_TYPES[name], record)
        audited = AuditedEvent(decoded_name, record)
        assert audited.name == type(event).__name__
        assert audited.event_id == event.event_id
        assert audited.action_id == getattr(event, "action_id", None)
        assert audited.occurred_at == occurred_at(event)
        assert audited.actor == actor_of(event)
        assert audited.flags == flags_of(event)
        assert audited.payload == audit_payload(event)
        assert audited.payload_json == canonical_json(audited.payload)  # the text the chain hashes
        assert audited.payload_json == standard_spelling(audited.payload)  # floats included
        assert AuditedEvent.of(event) == audited  # what the writer makes of a dataclass it is given
        if _shape(name).written_straight(record):  # only a record with no float anywhere skips the walk
            assert not _floats_in(record)
        seen_flags.add(audited.flags)
    if name in ("ActionDecided", "VoteRecorded"):
        assert len(seen_flags) == 2, "random records should reach both flag cases"


def _floats_in(value: object) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_floats_in(v) for v in value.values())
    return isinstance(value, list) and any(_floats_in(v) for v in value)


def test_an_event_with_no_time_is_refused_as_its_dataclass_would_be() -> None:
    with pytest.raises(TypeError, match="carries no time"):
        _ = AuditedEvent("ActionSubmitted", {"event_id": "e"}).occurred_at


@pytest.mark.parametrize("fractions", [[], [0.5, 0.8], [1e-05, 1.5e300]])
def test_a_decision_is_spelt_the_same_whether_or_not_it_holds_floats(fractions: list[float]) -> None:
    """Decisions are written straight from the record unless their reminder fractions hold a
    float (orjson spells ``1e-05`` as ``0.00001``): either way the text is the reference's."""
    random.seed(7)
    codec = registry()
    (generated,) = generate_many(codec._parsed_readers["ActionDecided"], 1)
    for approvals in (None, "requirement"):
        if approvals is None:
            generated["approvals"] = None
        else:
            (requirement,) = generate_many(codec._parsed_readers["ApprovalRequirement"], 1)
            generated["approvals"] = {**requirement, "reminder_fractions": fractions}
        name, record = codec.decode(codec.encode("ActionDecided", generated))
        audited = AuditedEvent(name, record)
        assert audited.payload_json == standard_spelling(audited.payload)


def test_a_float_json_cannot_spell_is_refused_on_the_fast_path_too() -> None:
    """NaN in a record (a forged or broken one) is refused as the reference refuses it, never
    written as ``null``."""
    random.seed(8)
    codec = registry()
    (generated,) = generate_many(codec._parsed_readers["ActionDecided"], 1)
    (requirement,) = generate_many(codec._parsed_readers["ApprovalRequirement"], 1)
    generated["approvals"] = {**requirement, "reminder_fractions": [float("nan")]}
    name, record = codec.decode(codec.encode("ActionDecided", generated))
    with pytest.raises(ValueError):
        _ = AuditedEvent(name, record).payload_json


@pytest.mark.parametrize("name", sorted(registry().readers))
def test_every_place_a_schema_holds_a_float_is_found(name: str) -> None:
    """A record is written straight only where no float can be: the schema walk must find a
    float wherever the schema's JSON names one, through named types mentioned again by name."""
    text = json.dumps(registry().readers[name])
    holds_float = '"double"' in text or '"float"' in text
    assert bool(_shape(name).float_paths) == holds_float
