"""The intake with a fake store and broker: idempotency, conflicts, masking and sealing before
anything is stored, the outbox publishing once the broker is back, topic submissions on the
consumption loop, and /healthz naming what is down."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiokafka.errors import KafkaError, MessageSizeTooLargeError
from fastapi.testclient import TestClient

from keyturn.bus import loop
from keyturn.bus.codec import registry
from keyturn.bus.loop import run
from keyturn.bus.publisher import Publisher
from keyturn.bus.topics import Topics
from keyturn.bus.warrants import Warrants
from keyturn.core.canonical import canonical_json
from keyturn.core.events import (
    ActionExecuted,
    ActionRequested,
    DeadLetter,
    DecisionOutcome,
    ExecutionOutcome,
    SubmissionChannel,
)
from keyturn.core.principal import Principal
from keyturn.faults import until_done
from keyturn.identity import InvalidToken
from keyturn.intake import status as status_module
from keyturn.intake.app import create_app
from keyturn.intake.consumers import submissions_stage, sweep_outbox
from keyturn.intake.status import StatusFollower
from keyturn.intake.store import StoredAction
from keyturn.intake.submissions import ActionSubmission, IdempotencyConflict, Intake
from keyturn.intake.wiring import IntakeWiring, MaskUnknown, parameter_masks
from keyturn.masking.protect import parameter_protector
from keyturn.masking.sealing import open_sealed
from tests.fakes.service_ports import FakeActionStore, FakeSend, ListSource, Record, fake_publisher
from tests.unit.service_events import KEYRING, REPORTER, allowed

SECRET = "hunter2-Pa55w0rd!"


def submission(**changes) -> ActionSubmission:
    return ActionSubmission(
        **{
            "action": "db.export",
            "resource": "postgres://staging/analytics/orders",
            "parameters": {"table": "orders", "password": SECRET},
            "reason": "quarterly report",
            "idempotency_key": "k1",
            **changes,
        }
    )


def intake_with(store: FakeActionStore | None = None):
    store = store or FakeActionStore()
    publisher, send = fake_publisher("intake")
    return Intake(store, publisher, parameter_protector(KEYRING), publish_patience_s=0.05), store, send


def published(send) -> list[ActionRequested]:
    return send.events("unit.actions.requested")


async def test_the_same_idempotency_key_gives_the_same_action_once() -> None:
    intake, store, send = intake_with()
    first, created = await intake.submit(REPORTER, submission(), SubmissionChannel.HTTP)
    again, created_again = await intake.submit(REPORTER, submission(), SubmissionChannel.HTTP)
    assert (created, created_again) == (True, False)
    assert again.action_id == first.action_id
    assert [e.action_id for e in published(send)] == [first.action_id]
    assert list(store.rows) == [first.action_id]


class DelayedMarks(FakeActionStore):
    """A store whose published marks wait, as ``ActionStore``'s do, for the action's status."""

    def __init__(self) -> None:
        super().__init__()
        self.queued: dict[str, bool] = {}  # action id → marked at once

    async def mark_published(self, action_id: str, *, at_once: bool = False) -> None:
        self.queued[action_id] = at_once

    def acknowledged(self, action_id: str) -> bool:
        return action_id in self.queued


async def test_a_retry_is_not_published_again_while_its_acknowledged_mark_waits() -> None:
    intake, store, send = intake_with(DelayedMarks())
    first, _ = await intake.submit(REPORTER, submission(), SubmissionChannel.HTTP)
    assert store.queued == {first.action_id: False}  # a first publish: its mark waits for the status
    await intake.submit(REPORTER, submission(), SubmissionChannel.HTTP)  # the client retries
    assert [e.action_id for e in published(send)] == [first.action_id]


async def test_a_retry_of_an_event_never_acknowledged_here_is_sent_again_and_marked_at_once() -> None:
    intake, store, send = intake_with(DelayedMarks())
    send.down = True
    first, _ = await intake.submit(REPORTER, submission(), SubmissionChannel.HTTP)
    send.down = False
    await intake.submit(REPORTER, submission(), SubmissionChannel.HTTP)
    await intake.sends_settled()  # right after an unanswered publish, the retry is answered without waiting
    assert [e.action_id for e in published(send)] == [first.action_id]
    assert store.queued == {first.action_id: True}


async def test_the_same_key_for_a_different_request_is_a_conflict() -> None:
    intake, store, _ = intake_with()
    await intake.submit(REPORTER, submission(), SubmissionChannel.HTTP)
    with pytest.raises(IdempotencyConflict):
        await intake.submit(REPORTER, submission(resource="postgres://prod/analytics/orders"), SubmissionChannel.HTTP)
    assert len(store.rows) == 1


async def test_parameters_are_masked_for_every_topic_and_sealed_for_the_executor() -> None:
    intake, _store, send = intake_with()
    stored, _ = await intake.submit(REPORTER, submission(), SubmissionChannel.HTTP)
    [event] = published(send)
    assert SECRET not in event.parameters_json and "orders" in event.parameters_json
    assert SECRET.encode() not in stored.requested_event
    opened = open_sealed(
        event.sealed_parameters, action_id=event.action_id, payload_digest=str(event.payload_digest), keyring=KEYRING
    )
    assert opened == {"table": "orders", "password": SECRET}


async def test_a_reason_repeating_a_value_masking_hid_in_the_parameters_does_not_carry_it() -> None:
    """Recognisers find a password by its field's name, not by its shape: the reason approvers read
    loses what the parameters' masked copy hides."""
    from keyturn.masking.protect import mask_text

    password = "Tr0ub4dor&3-SEED-F1"
    assert password in mask_text(f"rotate {password} for bob"), "free-text masking alone misses it"
    intake, _store, send = intake_with()
    stored, _ = await intake.submit(
        REPORTER,
        submission(parameters={"table": "orders", "password": password}, reason=f"rotate {password} for bob"),
        SubmissionChannel.HTTP,
    )
    [event] = published(send)
    assert event.reason == "rotate <SECRET> for bob"
    assert password.encode() not in stored.requested_event


class MaskingPolicy:
    """OPA's ``keyturn/combination/parameter_mask`` for the intake: fields per action name; away
    when ``down``."""

    def __init__(self, fields: dict[str, list[str]]) -> None:
        self.fields, self.down, self.asked = fields, False, 0

    async def query(self, path: str, input_document: dict[str, Any]) -> Any:
        assert path == "keyturn/combination/parameter_mask"
        self.asked += 1
        if self.down:
            raise ConnectionError("OPA is away")
        return dataclasses.make_dataclass("Answer", ["result"])(self.fields.get(input_document["action"], []))


REGISTERED = {"mcp.notes.store_token": ["parameters.password", "parameters.token", "parameters.note_body"]}


async def test_a_field_the_policy_masks_for_the_action_never_travels_in_clear() -> None:
    policy = MaskingPolicy(REGISTERED)
    intake, _store, send = intake_with()
    intake.mask_for = parameter_masks(policy)
    note = submission(action="mcp.notes.store_token", parameters={"note_body": "kept-between-us-7731"})
    stored, _ = await intake.submit(REPORTER, note, SubmissionChannel.HTTP)
    [event] = published(send)
    assert "kept-between-us-7731" not in event.parameters_json and b"kept-between-us-7731" not in stored.requested_event
    opened = open_sealed(
        event.sealed_parameters, action_id=event.action_id, payload_digest=str(event.payload_digest), keyring=KEYRING
    )
    assert opened == {"note_body": "kept-between-us-7731"}  # the executor still gets it
    await intake.submit(REPORTER, submission(idempotency_key="k2", **{"action": note.action}), SubmissionChannel.HTTP)
    assert policy.asked == 1  # one question per action name, remembered


async def test_a_mask_that_cannot_be_read_stores_nothing_and_answers_503_naming_the_policy_engine() -> None:
    policy = MaskingPolicy(REGISTERED)
    policy.down = True
    intake, store, send = intake_with()
    intake.mask_for = parameter_masks(policy)
    with TestClient(create_app(wire=wiring_of(intake, store))) as client:
        body = {"action": "mcp.notes.store_token", "resource": "mcp://notes", "reason": "r"}
        answer = client.post(
            "/v1/actions", json={**body, "parameters": {"note_body": "x"}}, headers={"Authorization": "Bearer good"}
        )
    assert answer.status_code == 503 and "policy engine" in answer.text, answer.text
    assert store.rows == {} and published(send) == []


async def test_a_mask_read_once_stands_while_the_policy_engine_is_away_and_is_never_waited_for(caplog) -> None:
    policy = MaskingPolicy(REGISTERED)
    mask_for = parameter_masks(policy, refresh_s=0)
    assert "parameters.note_body" in await mask_for("mcp.notes.store_token")
    policy.down = True
    slow = policy.query

    async def hanging(path: str, input_document: dict[str, Any]) -> Any:
        await asyncio.sleep(0.05)  # an OPA that is away takes its retries' time to say so
        return await slow(path, input_document)

    policy.query = hanging
    started = asyncio.get_running_loop().time()
    for _ in range(3):  # answered at once from the last answer; asked again once, in the background
        assert "parameters.note_body" in await mask_for("mcp.notes.store_token")
    assert asyncio.get_running_loop().time() - started < 0.05
    await asyncio.sleep(0.1)
    assert policy.asked == 2 and "were not read again" in caplog.text
    with pytest.raises(MaskUnknown):
        await mask_for("mcp.notes.other_tool")


async def test_while_the_policy_engine_is_away_a_new_action_is_not_asked_again_by_every_submission() -> None:
    policy = MaskingPolicy(REGISTERED)
    policy.down = True
    mask_for = parameter_masks(policy)
    for _ in range(3):
        with pytest.raises(MaskUnknown):
            await mask_for("mcp.notes.store_token")
    assert policy.asked == 1  # the failure stands a few seconds: no submission waits out OPA's retries again


async def test_submissions_waiting_for_the_same_new_action_ask_the_policy_engine_once() -> None:
    policy = MaskingPolicy(REGISTERED)
    mask_for = parameter_masks(policy)
    answers = await asyncio.gather(*(mask_for("mcp.notes.store_token") for _ in range(5)))
    assert len(set(answers)) == 1 and policy.asked == 1


async def test_with_the_broker_down_the_request_is_accepted_and_the_outbox_publishes_it_later() -> None:
    intake, store, send = intake_with()
    send.down = True
    stored, created = await intake.submit(REPORTER, submission(), SubmissionChannel.HTTP)
    assert created and published(send) == []
    assert await sweep_outbox(intake, store) == 0  # still down: it waits for the next sweep
    send.down = False
    assert await sweep_outbox(intake, store) == 1
    assert [e.action_id for e in published(send)] == [stored.action_id]
    assert store.rows[stored.action_id].published
    assert await sweep_outbox(intake, store) == 0


def intake_behind_a_silent_broker(patience_s: float):
    """An intake whose broker neither answers nor fails until ``answering`` is set; what it then
    acknowledges is in ``sent``, and ``broker["sends"]`` counts the sends made."""
    sent, answering = FakeSend(), asyncio.Event()
    broker = {"sends": 0}

    async def send(topic: str, key: bytes, value: bytes) -> None:
        broker["sends"] += 1
        await answering.wait()
        await sent(topic, key, value)

    store = FakeActionStore()
    intake = Intake(store, Publisher(send, Topics("unit", 4), "intake"), parameter_protector(KEYRING))
    intake.publish_patience_s = patience_s
    return intake, store, sent, answering, broker


async def test_an_outbox_sweep_facing_a_broker_that_never_answers_ends_and_the_next_one_publishes() -> None:
    """A producer lost across a broker restart neither sends nor fails: the sweep gives up at
    the patience instead of waiting for good (the accepted actions behind it never left)."""
    intake, store, sent, answering, _ = intake_behind_a_silent_broker(patience_s=0.1)
    stored, _ = await intake.submit(REPORTER, submission(idempotency_key="stuck-1"), SubmissionChannel.HTTP)
    assert not store.rows[stored.action_id].published

    assert await asyncio.wait_for(sweep_outbox(intake, store), 2) == 0
    answering.set()
    assert await sweep_outbox(intake, store) == 1
    assert [e.action_id for e in published(sent)] == [stored.action_id]


async def test_a_stored_action_whose_publish_fails_is_accepted_and_the_sweep_publishes_it() -> None:
    """The row is stored: an error answered now would have a caller without an idempotency key
    submit the same action a second time."""
    sent, failing = FakeSend(), {"on": True}

    async def send(topic: str, key: bytes, value: bytes) -> None:
        if failing["on"]:
            raise KafkaError("Unexpected error during batch delivery")  # a producer that lost its sender
        await sent(topic, key, value)

    store = FakeActionStore()
    intake = Intake(store, Publisher(send, Topics("unit", 4), "intake"), parameter_protector(KEYRING))
    keyless = submission(idempotency_key=None)
    stored, created = await intake.submit(REPORTER, keyless, SubmissionChannel.HTTP)
    assert created and not store.rows[stored.action_id].published and list(store.rows) == [stored.action_id]

    failing["on"] = False
    assert await sweep_outbox(intake, store) == 1
    assert [e.action_id for e in published(sent)] == [stored.action_id]


async def test_an_event_the_broker_refuses_for_good_holds_back_no_other_action_of_the_sweep() -> None:
    sent, refused_keys = FakeSend(down=True), set()

    async def send(topic: str, key: bytes, value: bytes) -> None:
        if key in refused_keys:
            raise MessageSizeTooLargeError()  # no retry makes it pass: the sweep must not stop at it
        await sent(topic, key, value)

    store = FakeActionStore()
    intake = Intake(store, Publisher(send, Topics("unit", 4), "intake"), parameter_protector(KEYRING))
    intake.publish_patience_s = 0.05
    refused, _ = await intake.submit(REPORTER, submission(idempotency_key="refused-1"), SubmissionChannel.HTTP)
    behind, _ = await intake.submit(REPORTER, submission(idempotency_key="behind-1"), SubmissionChannel.HTTP)
    await intake.sends_settled()  # the sends made without waiting failed too: both are the sweep's
    sent.down, refused_keys = False, {refused.action_id.encode()}

    assert await sweep_outbox(intake, store) == 1
    assert [e.action_id for e in published(sent)] == [behind.action_id]
    assert not store.rows[refused.action_id].published


async def test_through_an_outage_one_request_per_patience_waits_for_the_broker_not_each() -> None:
    """An unreachable broker neither answers nor fails: the first request waits the patience for
    its ack; those right after it are answered at once, their events still sent, and published
    as soon as the broker answers, without waiting for the sweep."""
    intake, store, sent, answering, broker = intake_behind_a_silent_broker(patience_s=0.2)
    first, _ = await intake.submit(REPORTER, submission(idempotency_key="outage-1"), SubmissionChannel.HTTP)
    assert broker["sends"] == 1 and not store.rows[first.action_id].published

    intake.publish_patience_s = 60.0  # were these to wait for the broker, they would wait a minute
    later = [
        (await asyncio.wait_for(intake.submit(REPORTER, submission(idempotency_key=f"outage-{n}"), channel), 5))[0]
        for n, channel in ((2, SubmissionChannel.HTTP), (3, SubmissionChannel.HTTP))
    ]
    assert broker["sends"] == 3, "their events are sent all the same"
    assert not any(store.rows[s.action_id].published for s in later)

    answering.set()
    for _ in range(100):
        if all(store.rows[s.action_id].published for s in later):
            break
        await asyncio.sleep(0.01)
    assert [e.action_id for e in published(sent)] == [s.action_id for s in later], "out as the broker answers"
    assert all(store.rows[s.action_id].published for s in later)
    assert not store.rows[first.action_id].published, "the one that gave up is the sweep's"

    # the broker answered: the next request waits for its ack again
    intake.publish_patience_s = 5.0
    answered, _ = await intake.submit(REPORTER, submission(idempotency_key="outage-4"), SubmissionChannel.HTTP)
    assert store.rows[answered.action_id].published and published(sent)[-1].action_id == answered.action_id


class Verifier:
    def verify(self, token: str) -> Principal:
        if token != "good":
            raise InvalidToken("bad_signature")
        return REPORTER


def wiring_of(intake: Intake, store: FakeActionStore, **parts: Any) -> Callable[[], Awaitable[IntakeWiring]]:
    """The intake app's parts around ``intake`` and its fake store (``create_app(wire=...)``)."""

    async def wire() -> IntakeWiring:
        return IntakeWiring(
            store=store,
            intake=intake,
            publisher=intake.publisher,
            follower=StatusFollower(store, intake.publisher, WARRANTS_ALL),
            verifier=Verifier(),
            jwks={"keys": []},
            **parts,
        )

    return wire


def on_topic(offset: int, sub: ActionSubmission, token: str = "good") -> Record:
    record = {k: v for k, v in sub.model_dump().items() if k != "parameters"} | {
        "parameters_json": canonical_json(sub.parameters)
    }
    return Record(
        "unit.submissions",
        0,
        offset,
        b"k",
        registry().encode("ActionSubmitted", record),
        headers=[("authorization", f"Bearer {token}".encode())],
    )


WARRANTS_ALL = Warrants(KEYRING, ("unit.actions.decided", "unit.actions.resolved", "unit.actions.executed"))


def vouched(record: Record) -> Record:
    """``record`` with the warrant of the service that sends such records (``bus.warrants``)."""
    headers = WARRANTS_ALL.signed(record.topic, record.key or b"", record.value or b"", list(record.headers))
    return dataclasses.replace(record, headers=headers)


def repeated_key(record: Record) -> Record:
    """``record`` with its parameters naming ``table`` twice (``{"table": "orders", "table": "salaries"}``)."""
    _, fields = registry().decode(record.value)
    fields["parameters_json"] = fields["parameters_json"][:-1] + ',"table":"salaries"}'
    return dataclasses.replace(record, value=registry().encode("ActionSubmitted", fields))


async def test_topic_submissions_are_accepted_or_dead_lettered_with_the_reason(monkeypatch) -> None:
    monkeypatch.setattr(loop, "until_done", functools.partial(until_done, first_wait_s=0.001))
    intake, _store, send = intake_with()
    batch = [
        on_topic(0, submission()),
        on_topic(1, submission(), token="forged"),
        on_topic(2, submission(resource="postgres://prod/x")),
        Record("unit.submissions", 0, 3, b"k", b"not avro here", headers=[("authorization", b"Bearer good")]),
        Record(
            "unit.submissions", 0, 4, b"k", on_topic(4, submission()).value, headers=[("authorization", b"\xff\xfe")]
        ),
        repeated_key(on_topic(5, submission(idempotency_key="twice"))),
    ]
    source = ListSource([batch])
    await run(source, submissions_stage(intake, intake.publisher, Verifier()))
    assert len(published(send)) == 1
    letters = {letter.offset: letter for letter in send.events("unit.dlq") if isinstance(letter, DeadLetter)}
    assert {o: letters[o].error_type for o in letters} == {
        1: "token_bad_signature",
        2: "idempotency_conflict",
        3: "not_avro",
        4: "token_malformed",
        5: "invalid_submission",
    }
    assert letters[2].principal == REPORTER.id and letters[1].principal is None
    # read as the HTTP body is: the first and the last of a repeated key are two requests
    assert (
        letters[5].principal == REPORTER.id
        and "parameters_json: an object holds the same key twice" in letters[5].problems
    )
    assert source.committed == [batch]


async def test_a_database_outage_holds_a_topic_submission_until_it_is_back(monkeypatch) -> None:
    store = FakeActionStore()
    store.down = True
    tries = []

    async def comes_back(*args, **kwargs):
        tries.append(1)
        if len(tries) == 3:
            store.down = False

    monkeypatch.setattr(loop, "until_done", functools.partial(until_done, first_wait_s=0.001))
    intake, _, send = intake_with(store)
    original = store.insert_requested

    async def insert(**kwargs):
        await comes_back()
        return await original(**kwargs)

    store.insert_requested = insert
    source = ListSource([[on_topic(0, submission())]])
    await run(source, submissions_stage(intake, intake.publisher, Verifier()))
    assert len(tries) == 3 and len(published(send)) == 1
    assert [e for e in send.events("unit.dlq")] == []


def test_healthz_reports_the_database_and_the_producer() -> None:
    intake, store, _send = intake_with()
    broker = {"up": True}

    async def producer() -> None:
        if not broker["up"]:
            raise ConnectionError("no broker answers")

    wire = wiring_of(intake, store, health={"database": store.ping, "producer": producer})

    with TestClient(create_app(wire=wire)) as client:
        assert client.get("/healthz").json() == {"status": "ok", "database": "ok", "producer": "ok"}
        store.down = True
        answer = client.get("/healthz")
        assert answer.status_code == 503 and answer.json()["database"].startswith("down: StoreUnavailable")
        store.down, broker["up"] = False, False
        answer = client.get("/healthz")
        assert answer.status_code == 503 and answer.json()["producer"] == "down: ConnectionError: no broker answers"
        assert answer.json()["database"] == "ok"


async def test_the_status_follower_records_a_batch_and_wakes_a_waiting_requester() -> None:
    intake, store, send = intake_with()
    stored, _ = await intake.submit(REPORTER, submission(), SubmissionChannel.HTTP)
    follower = StatusFollower(store, intake.publisher, WARRANTS_ALL)
    requested_at = datetime.datetime.fromisoformat(stored.history[0]["at"])  # the story happens after the request
    decided = dataclasses.replace(
        allowed(stored.action_id), action_id=stored.action_id, decided_at=requested_at + datetime.timedelta(seconds=1)
    )
    executed = ActionExecuted(
        event_id=f"executed:{stored.action_id}",
        action_id=stored.action_id,
        outcome=ExecutionOutcome.SUCCEEDED,
        plugin="noop",
        payload_digest=decided.request.payload_digest,
        finished_at=decided.decided_at + datetime.timedelta(seconds=1),
    )
    waiting = asyncio.create_task(follower.wait_terminal(stored.action_id, 5))
    denied = dataclasses.replace(decided, outcome=DecisionOutcome.DENIED, decided_at=executed.finished_at)
    batch = [
        vouched(Record("unit.actions.executed", 0, 0, stored.action_id.encode(), registry().encode_event(executed))),
        Record("unit.actions.decided", 0, 0, stored.action_id.encode(), b"garbage: not the intake's to dead-letter"),
        vouched(Record("unit.actions.decided", 1, 0, stored.action_id.encode(), registry().encode_event(decided))),
        # written by someone else than the policy: the status does not tell it
        Record("unit.actions.decided", 1, 1, stored.action_id.encode(), registry().encode_event(denied)),
    ]
    source = ListSource([batch])
    await run(source, follower.stage)
    await asyncio.wait_for(waiting, 1)
    row = store.rows[stored.action_id]
    assert row.state.value == "succeeded"
    assert [h["event"] for h in row.history] == ["ActionRequested", "ActionDecided", "ActionExecuted"]
    assert source.committed == [batch]
    assert send.events("unit.dlq") == []


class CountedReads(FakeActionStore):
    """The fake store, counting how often an action is read."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def get(self, action_id: str) -> StoredAction | None:
        self.reads += 1
        return await super().get(action_id)


def decided_record(action_id: str, offset: int) -> Record:
    decision = dataclasses.replace(allowed(action_id), action_id=action_id)
    return vouched(Record("unit.actions.decided", 0, offset, action_id.encode(), registry().encode_event(decision)))


def executed_record(action_id: str, offset: int) -> Record:
    executed = ActionExecuted(
        event_id=f"executed:{action_id}",
        action_id=action_id,
        outcome=ExecutionOutcome.SUCCEEDED,
        plugin="noop",
        payload_digest=allowed(action_id).request.payload_digest,
        finished_at=datetime.datetime.now(datetime.UTC),
    )
    return vouched(Record("unit.actions.executed", 0, offset, action_id.encode(), registry().encode_event(executed)))


async def test_a_waiting_requester_is_woken_by_its_own_actions_end_not_by_every_batch(monkeypatch) -> None:
    # each waiter used to read its action again after every batch the follower recorded,
    # whatever the batches held
    monkeypatch.setattr(status_module, "RECHECK_S", 60.0)  # only the follower's wake-up ends this wait
    store = CountedReads()
    intake, _, _ = intake_with(store)
    mine, _ = await intake.submit(REPORTER, submission(idempotency_key="mine"), SubmissionChannel.HTTP)
    others = [
        (await intake.submit(REPORTER, submission(idempotency_key=f"other-{n}"), SubmissionChannel.HTTP))[0]
        for n in range(10)
    ]
    follower = StatusFollower(store, intake.publisher, WARRANTS_ALL)
    waiting = asyncio.create_task(follower.wait_terminal(mine.action_id, 30))
    await asyncio.sleep(0)
    batches = [[decided_record(other.action_id, n)] for n, other in enumerate(others)]
    batches += [[decided_record(mine.action_id, 10)], [executed_record(mine.action_id, 0)]]
    for batch in batches:  # as a stream brings them: the waiter gets its turn between batches
        await run(ListSource([batch]), follower.stage)
        await asyncio.sleep(0.005)
    await asyncio.wait_for(waiting, 5)
    assert store.rows[mine.action_id].state.value == "succeeded"
    assert store.reads == 1  # its first look; eleven batches later, the one that ended it woke it
    assert follower._waiting == {}


async def test_a_wait_sees_an_end_another_replica_recorded_and_gives_up_at_its_timeout(monkeypatch) -> None:
    monkeypatch.setattr(status_module, "RECHECK_S", 0.01)
    store = CountedReads()
    intake, _, _ = intake_with(store)
    stored, _ = await intake.submit(REPORTER, submission(), SubmissionChannel.HTTP)
    follower = StatusFollower(store, intake.publisher, WARRANTS_ALL)
    # nothing ends it: the wait returns at its timeout, holding nothing
    await asyncio.wait_for(follower.wait_terminal(stored.action_id, 0.05), 5)
    assert store.rows[stored.action_id].state.value == "requested" and follower._waiting == {}
    # another intake's follower records the end in the shared table: this one never sees the event
    waiting = asyncio.create_task(follower.wait_terminal(stored.action_id, 30))
    await asyncio.sleep(0.03)
    assert not waiting.done()
    elsewhere = StatusFollower(store, intake.publisher, WARRANTS_ALL)
    ended = [[decided_record(stored.action_id, 0)], [executed_record(stored.action_id, 0)]]
    await run(ListSource(ended), elsewhere.stage)
    await asyncio.wait_for(waiting, 5)
    assert store.rows[stored.action_id].state.value == "succeeded" and follower._waiting == {}


async def test_token_keys_that_cannot_be_fetched_hold_a_topic_submission_not_refuse_it(monkeypatch) -> None:
    # a refused submission is deleted from its topic: an outage must never be taken for a refusal
    monkeypatch.setattr(loop, "until_done", functools.partial(until_done, first_wait_s=0.001))
    intake, _store, send = intake_with()
    outage = [1, 1]

    class FlakyKeys(Verifier):
        def verify(self, token: str) -> Principal:
            if outage:
                outage.pop()
                raise InvalidToken("jwks_unavailable")
            return super().verify(token)

    batch = [on_topic(0, submission())]
    source = ListSource([batch])
    await run(source, submissions_stage(intake, intake.publisher, FlakyKeys()))
    assert len(published(send)) == 1 and not outage
    assert send.events("unit.dlq") == []
    assert source.committed == [batch]


async def test_a_batch_of_topic_submissions_is_stored_with_one_statement(monkeypatch) -> None:
    intake, store, send = intake_with()
    statements = []
    insert_many = store.insert_many

    async def counted(rows):
        statements.append(len(rows))
        return await insert_many(rows)

    monkeypatch.setattr(store, "insert_many", counted)
    batch = [on_topic(n, submission(idempotency_key=f"key-{n}")) for n in range(5)]
    batch.append(on_topic(5, submission(idempotency_key="key-0")))  # a redelivered one: the same action
    await run(ListSource([batch]), submissions_stage(intake, intake.publisher, Verifier()))
    assert statements == [6]
    assert len(store.rows) == 5 and len(published(send)) == 5
    assert all(store.rows[a].published for a in store.rows)
    assert send.events("unit.dlq") == []


def counting_inserts(store: FakeActionStore, monkeypatch, *, fail_for: str | None = None) -> list[list[str]]:
    """The idempotency keys of each insert statement; ``fail_for``: a key whose statement fails."""
    statements: list[list[str]] = []
    insert_many = store.insert_many

    async def counted(rows):
        statements.append([row.idempotency_key for row in rows])
        if fail_for is not None and any(row.idempotency_key == fail_for for row in rows):
            raise RuntimeError("the row of that key breaks the statement")
        return await insert_many(rows)

    monkeypatch.setattr(store, "insert_many", counted)
    return statements


async def test_concurrent_single_submissions_are_stored_as_one_batch(monkeypatch) -> None:
    intake, store, send = intake_with()
    statements = counting_inserts(store, monkeypatch)
    alone, _ = await intake.submit(REPORTER, submission(idempotency_key="alone"), SubmissionChannel.HTTP)
    assert statements == [["alone"]]  # an idle intake stores a submission at once, alone
    answers = await asyncio.gather(
        *(intake.submit(REPORTER, submission(idempotency_key=f"k{n}"), SubmissionChannel.HTTP) for n in range(8)),
        intake.submit(REPORTER, submission(idempotency_key="k3"), SubmissionChannel.HTTP),  # the same request again
    )
    assert statements[1:] == [[f"k{n}" for n in range(8)] + ["k3"]]  # one statement for all that arrived together
    assert [created for _, created in answers] == [True] * 8 + [False]
    assert answers[8][0].action_id == answers[3][0].action_id
    assert len(store.rows) == 9 and len(published(send)) == 9 and alone.action_id in store.rows


async def test_a_submission_that_cannot_be_prepared_fails_alone(monkeypatch) -> None:
    intake, store, _ = intake_with()
    statements = counting_inserts(store, monkeypatch)
    protect = intake.protect

    def breaks_on_boom(parameters, **kwargs):
        if "boom" in parameters:
            raise ValueError("this one cannot be sealed")
        return protect(parameters, **kwargs)

    intake.protect = breaks_on_boom
    answers = await asyncio.gather(
        *(
            intake.submit(REPORTER, submission(idempotency_key=key, parameters=parameters), SubmissionChannel.HTTP)
            for key, parameters in (("a", {"table": "t"}), ("bad", {"boom": 1}), ("b", {"table": "t"}))
        ),
        intake.submit(REPORTER, submission(idempotency_key="a", resource="postgres://prod/x"), SubmissionChannel.HTTP),
        return_exceptions=True,
    )
    assert statements == [["a", "b", "a"]]  # nothing was stored before the failure; then one statement without it
    assert isinstance(answers[1], ValueError)
    assert isinstance(answers[3], IdempotencyConflict)  # its own answer, not the batch's
    assert [answers[0][1], answers[2][1]] == [True, True]
    assert len(store.rows) == 2


async def test_a_batch_that_fails_after_its_insert_is_never_stored_twice(monkeypatch) -> None:
    intake, store, send = intake_with()
    insert_many = store.insert_many

    async def stored_then_broken(rows):
        await insert_many(rows)
        raise RuntimeError("the statement's answer was lost")

    monkeypatch.setattr(store, "insert_many", stored_then_broken)
    keyless = [submission(idempotency_key=None, parameters={"table": f"t{n}"}) for n in range(3)]
    answers = await asyncio.gather(
        *(intake.submit(REPORTER, sub, SubmissionChannel.HTTP) for sub in keyless), return_exceptions=True
    )
    assert [type(a).__name__ for a in answers] == ["RuntimeError"] * 3  # every caller is told it failed
    assert len(store.rows) == 3 and published(send) == []  # each stored once; the outbox publishes them


async def test_a_gathering_that_ends_abnormally_answers_every_caller(monkeypatch) -> None:
    intake, store, _ = intake_with()
    started = asyncio.Event()

    async def never_answers(rows):
        started.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(store, "insert_many", never_answers)
    callers = [
        asyncio.create_task(intake.submit(REPORTER, submission(idempotency_key=f"k{n}"), SubmissionChannel.HTTP))
        for n in range(3)
    ]
    await started.wait()
    late = asyncio.create_task(intake.submit(REPORTER, submission(idempotency_key="late"), SubmissionChannel.HTTP))
    await asyncio.sleep(0)
    assert intake._storing is not None
    intake._storing.cancel()  # the intake shutting down mid-statement
    answers = await asyncio.gather(*callers, late, return_exceptions=True)
    assert [type(a).__name__ for a in answers] == ["StoreUnavailable"] * 4  # 503: try again; none hangs
    monkeypatch.undo()
    stored, created = await intake.submit(REPORTER, submission(idempotency_key="k0"), SubmissionChannel.HTTP)
    assert created and list(store.rows) == [stored.action_id]  # a new gathering starts after it


async def test_a_database_outage_answers_every_gathered_submission_at_once(monkeypatch) -> None:
    intake, store, _ = intake_with()
    statements = counting_inserts(store, monkeypatch)
    store.down = True
    answers = await asyncio.gather(
        *(intake.submit(REPORTER, submission(idempotency_key=f"k{n}"), SubmissionChannel.HTTP) for n in range(4)),
        return_exceptions=True,
    )
    assert [type(a).__name__ for a in answers] == ["StoreUnavailable"] * 4
    assert statements == [["k0", "k1", "k2", "k3"]]  # not retried one by one: each would wait out the outage
    store.down = False
    stored, created = await intake.submit(REPORTER, submission(idempotency_key="k0"), SubmissionChannel.HTTP)
    assert created and list(store.rows) == [stored.action_id]


async def test_a_submission_with_much_text_is_masked_off_the_event_loop_and_a_small_one_on_it() -> None:
    import threading

    store = FakeActionStore()
    publisher, _ = fake_publisher("intake")
    protect = parameter_protector(KEYRING)
    masked_in: list[str] = []

    def recording(*args: Any, **kwargs: Any) -> Any:
        masked_in.append(threading.current_thread().name)
        return protect(*args, **kwargs)

    intake = Intake(store, publisher, recording, publish_patience_s=0.05)
    loop_thread = threading.current_thread().name
    await intake.submit(REPORTER, submission(idempotency_key="small"), SubmissionChannel.HTTP)
    # thousands of phone-number-like values cost seconds to mask: never while requests and heartbeats wait
    many = " ".join(f"+1 415 555 {1000 + i}" for i in range(600))
    await intake.submit(REPORTER, submission(idempotency_key="big", parameters={"notes": many}), SubmissionChannel.HTTP)
    assert masked_in[0] == loop_thread and masked_in[1] != loop_thread
    assert "+1 415 555 1000" not in store.rows[next(reversed(store.rows))].requested_event.decode("latin-1")


async def test_a_submission_with_much_text_holds_up_neither_small_ones_nor_another_one_with_much_text() -> None:
    """Six agents each sending 64 KiB of phone numbers held a one-line request 50 s: single
    submissions are stored in batches one after another, and the small one waited in the batch
    behind the masking. Much text is now masked alone, and one such masking at a time, so the
    event loop shares the interpreter with one worker thread, not with all of them."""
    import threading

    store = FakeActionStore()
    publisher, _ = fake_publisher("intake")
    protect = parameter_protector(KEYRING)
    release = threading.Event()
    loop_ = asyncio.get_running_loop()
    started = asyncio.Event()
    masking: list[str] = []
    most_at_once = 0
    http = SubmissionChannel.HTTP

    def slow_for_much_text(parameters: dict[str, Any], **kwargs: Any) -> Any:
        nonlocal most_at_once
        if "notes" in parameters:
            masking.append(kwargs["action_id"])
            most_at_once = max(most_at_once, len(masking))
            loop_.call_soon_threadsafe(started.set)
            release.wait(10)
            masking.remove(kwargs["action_id"])
        return protect(parameters, **kwargs)

    intake = Intake(store, publisher, slow_for_much_text, publish_patience_s=0.05)
    many = " ".join(f"+1 415 555 {1000 + i}" for i in range(600))
    big = [
        asyncio.create_task(
            intake.submit(REPORTER, submission(idempotency_key=f"big{n}", parameters={"notes": many}), http)
        )
        for n in range(3)
    ]
    await asyncio.wait_for(started.wait(), 5)

    small, created = await asyncio.wait_for(intake.submit(REPORTER, submission(idempotency_key="small"), http), 5)

    assert created and small.action_id in store.rows, "the small submission was stored while much text was masked"
    assert not any(task.done() for task in big)
    release.set()
    await asyncio.gather(*big)
    assert most_at_once == 1, "masked one at a time"
    assert len(store.rows) == 4


async def test_a_callers_submissions_stored_together_share_one_budget_of_phone_number_checks(monkeypatch) -> None:
    """A batch of submissions, each under the limit of one call, cost what the whole batch
    held: one caller's submissions stored together share the limit; another caller's, gathered
    with them, keep their own."""
    from keyturn.masking import masker

    monkeypatch.setattr(masker, "PHONE_CORES_CHECKED_PER_CALL", 4)
    intake, store, _ = intake_with()
    numbers = {"to": [f"+1 415 555 {1000 + n}" for n in range(4)], "note": "build 7305518"}
    build = {"to": [], "note": "build 7305518"}  # seven digits that are no phone number, when checked

    def masked(action_id: str) -> dict[str, Any]:
        return json.loads(registry().decode_event(store.rows[action_id].requested_event).parameters_json)

    other = Principal(id="agent:other", kind=REPORTER.kind)
    results = await intake.submit_many(
        [
            (REPORTER, submission(idempotency_key="a", parameters=numbers)),
            (REPORTER, submission(idempotency_key="b", parameters=build)),
            (other, submission(idempotency_key="c", parameters=build)),
        ],
        SubmissionChannel.HTTP,
    )
    first, second, third = (result[0].action_id for result in results)
    assert masked(first) == {"to": ["<PHONE_NUMBER>"] * 4, "note": "build <PHONE_NUMBER>"}  # over, never under
    assert masked(second)["note"] == "build <PHONE_NUMBER>"  # the caller's batch had spent the checks
    assert masked(third)["note"] == "build 7305518"  # another caller's submission was checked


def test_the_keys_of_the_parameters_are_judged_each_on_its_own_and_their_digits_are_bounded() -> None:
    from pydantic import ValidationError

    # four keys that together would read as a card number are four names
    assert submission(parameters={"4111": 1, "1111 ": 2, "1111": 3, "1112": 4}).parameters
    with pytest.raises(ValidationError, match="PHONE_NUMBER"):
        submission(parameters={"ok": 1, "call +1 415 555 0142": 2})
    with pytest.raises(ValidationError, match="more than 1024 digits"):
        submission(parameters={f"id{n:06d}": n for n in range(200)})


async def test_a_topic_record_without_a_key_delivered_twice_is_one_action_and_two_tokens_are_refused(
    monkeypatch,
) -> None:
    monkeypatch.setattr(loop, "until_done", functools.partial(until_done, first_wait_s=0.001))
    intake, store, send = intake_with()
    keyless = on_topic(0, submission(idempotency_key=None))
    keyless.timestamp = 1_700_000_000_000
    twice = Record("unit.submissions", 0, 1, b"k", keyless.value, headers=[*keyless.headers, *keyless.headers])
    # the same record delivered again (a restart before the commit), and a second record alike
    again = dataclasses.replace(keyless)
    later = dataclasses.replace(keyless, offset=2)
    for batch in ([keyless, twice], [again], [later]):
        await run(ListSource([batch]), submissions_stage(intake, intake.publisher, Verifier()))
    assert len(store.rows) == 2, "the redelivered record is the action it made, the next record a new one"
    letters = [letter for letter in send.events("unit.dlq") if isinstance(letter, DeadLetter)]
    assert [(letter.offset, letter.error_type) for letter in letters] == [(1, "token_malformed")]
    assert "more than one authorization header" in letters[0].reason
