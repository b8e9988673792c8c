"""Event type and outcome travel in Kafka headers, so a consumer skips what it has no part in
before decoding; a record without headers (an older producer) is still decoded and handled."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from keyturn.approval.app import DESK_EVENTS
from keyturn.bus import headers
from keyturn.bus.codec import registry
from keyturn.bus.loop import Stage, decode_event, run
from keyturn.bus.publisher import Publisher
from keyturn.bus.topics import Topics
from keyturn.core.events import ActionDecided, ActionExecuted, DecisionOutcome, ExecutionOutcome
from keyturn.executor.app import CLEARED_ORDERS
from tests.fakes.service_ports import ListSource, Record, fake_publisher
from tests.unit.service_events import allowed


def denied(action_id: str) -> ActionDecided:
    return dataclasses.replace(allowed(action_id), outcome=DecisionOutcome.DENIED)


def needs_approval(action_id: str) -> ActionDecided:
    return dataclasses.replace(allowed(action_id), outcome=DecisionOutcome.NEEDS_APPROVAL)


def with_callback(decision: ActionDecided) -> ActionDecided:
    request = dataclasses.replace(decision.request, callback_url="https://hooks.example.internal/k")
    return dataclasses.replace(decision, request=request)


def record(event, *, with_headers: bool = True, offset: int = 0) -> Record:
    value = registry().encode_event(event)
    return Record(
        "unit.actions.decided",
        0,
        offset,
        event.action_id.encode(),
        value,
        headers.headers_of(event) if with_headers else (),
    )


def test_the_headers_name_type_outcome_and_what_the_approval_service_needs() -> None:
    assert dict(headers.headers_of(denied("a1"))) == {
        "keyturn-type": b"ActionDecided",
        "keyturn-outcome": b"denied",
        "keyturn-break-glass": b"0",
        "keyturn-callback": b"0",
    }
    assert dict(headers.headers_of(with_callback(allowed("a1"))))["keyturn-callback"] == b"1"


def test_an_outcomes_headers_made_from_its_outcome_are_the_ones_its_event_gives() -> None:
    """The executor sends an outcome with headers made from the outcome it recorded beside the
    event, without decoding the event again: they must say what the event says."""
    for outcome in ExecutionOutcome:
        event = ActionExecuted(
            event_id="executed:a1",
            action_id="a1",
            outcome=outcome,
            plugin="sql",
            payload_digest=allowed("a1").request.payload_digest,
            started_at=datetime(2026, 12, 5, tzinfo=UTC),
            finished_at=datetime(2026, 12, 5, tzinfo=UTC),
            executor="executor-1",
        )
        for callback in (True, False):
            made = headers.executed_headers(outcome, callback=callback)
            assert sorted(made) == sorted(headers.headers_of(event, callback=callback))
            record = Record("unit.actions.executed", 0, 0, b"a1", registry().encode_event(event), made)
            assert headers.read(record) is not None  # a consumer trusts them: they name the body's type


def test_each_consumer_skips_only_what_it_has_no_part_in() -> None:
    cases = {
        "allowed": (record(allowed("a1")), True, False),
        "denied": (record(denied("a1")), False, False),
        "needs approval": (record(needs_approval("a1")), False, True),
        "denied with a webhook": (record(with_callback(denied("a1"))), False, True),
        "break-glass": (record(dataclasses.replace(allowed("a1"), break_glass=True)), True, True),
        "no headers (older producer)": (record(denied("a1"), with_headers=False), True, True),
    }
    for name, (message, executor_wants, desk_wants) in cases.items():
        assert (CLEARED_ORDERS(message), DESK_EVENTS(message)) == (executor_wants, desk_wants), name


def test_headers_that_do_not_match_the_body_are_not_trusted() -> None:
    message = record(denied("a1"))
    lying = dataclasses.replace(message, headers=[("keyturn-type", b"ApprovalResolved"), ("keyturn-outcome", b"x")])
    assert CLEARED_ORDERS(lying)  # decoded, so the body decides
    garbage = dataclasses.replace(message, value=b"not avro at all")
    assert CLEARED_ORDERS(garbage)  # decoded, so its owner dead-letters it


async def test_a_skipped_record_is_never_decoded_and_a_headerless_one_is_handled() -> None:
    publisher, _ = fake_publisher("executor")
    decoded: list[int] = []
    handled: list[str] = []

    def decode(message):
        decoded.append(message.offset)
        return decode_event(message, (ActionDecided,))

    async def handle(event, _message):
        handled.append(event.action_id)

    batch = [
        record(denied("a1"), offset=0),
        record(allowed("a2"), offset=1),
        record(allowed("a3"), with_headers=False, offset=2),
        record(denied("a4"), with_headers=False, offset=3),
    ]
    source = ListSource([batch])
    await run(source, Stage(publisher, handle=handle, decode=decode, wants=CLEARED_ORDERS))
    assert decoded == [1, 2, 3]
    assert handled == ["a2", "a3", "a4"]  # the stage's own rules still see what headers did not filter
    assert source.committed == [batch]


async def test_a_batch_is_sent_before_any_acknowledgement_is_awaited_and_carries_headers() -> None:
    log: list[str] = []

    class Ack:
        def __init__(self, key: bytes) -> None:
            self.key = key

        def __await__(self):
            log.append(f"ack {self.key.decode()}")
            yield from ()

    sent: list[tuple[str, bytes, list]] = []

    async def enqueue(topic, key, value, hs):
        log.append(f"send {key.decode()}")
        sent.append((topic, key, hs))
        return Ack(key)

    async def no_plain_send(topic, key, value):
        raise AssertionError("a transport with enqueue is not sent to one by one")

    publisher = Publisher(no_plain_send, Topics("unit", 4), "policy", enqueue=enqueue)
    values = [registry().encode_event(allowed(a)) for a in ("a1", "a2")]
    await publisher.publish_all(
        [
            ("unit.actions.decided", "a1", values[0], headers.headers_of(allowed("a1"))),
            ("unit.actions.decided", "a2", values[1], None),
        ]
    )
    assert log == ["send a1", "send a2", "ack a1", "ack a2"]
    assert dict(sent[0][2])["keyturn-outcome"] == b"allowed"
    assert sent[1][2] == [("keyturn-type", b"ActionDecided")]  # bytes from a store: the type, from the schema
