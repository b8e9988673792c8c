"""The console's history: a projection of the audit topic that the approval service keeps.

Why the audit topic: it is the one stream that holds every step of every action (request,
decision, votes accepted and refused, resolution, execution), masked, in chain order; the
approval service already reads Kafka and owns a database, and services share nothing else. So
it follows ``<ns>.audit`` (the one consumption loop, ``bus.loop.run``, a batch stage; its own
consumer group; committed after each batch is stored) and keeps, for the last
``HISTORY_DAYS`` days:

- ``approval_history_records``: one row per audit record of an action (sequence, action, type,
  actor, time, flags, the masked payload without the copies a timeline never shows: the exact
  OPA input of a decision, the request repeated inside a resolution);
- ``approval_history_actions``: one row per action (type, requester and the people it acts for,
  when it was asked, the outcome of each stage) for the searchable list.

The page's figures come from these records through the compliance report's model
(``keyturn.audit.report.model.ReportBuilder``), so the console and ``keyturn report`` count
alike; an action's timeline is ``keyturn.audit.replay.timeline_step`` of its records. The
console does not verify the chain (``keyturn report`` and ``keyturn audit verify`` do): the
page says so. Redelivered records are ignored by sequence, so a batch stored twice counts once.
A first start reads only the last ``HISTORY_DAYS`` days of the topic (found by time), not the
whole history.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import orjson

from keyturn.audit.report.model import DAY_MS, Report, ReportBuilder, outcome_category
from keyturn.audit.stream import decode_audit_message
from keyturn.bus.codec import UndecodableMessage
from keyturn.bus.loop import KafkaSource, Stage, run
from keyturn.bus.publisher import Publisher
from keyturn.core.audit.record import AuditRecord
from keyturn.core.canonical import now_millis, to_millis

log = logging.getLogger(__name__)

HISTORY_DAYS = 30  # what the page shows
KEPT_DAYS = HISTORY_DAYS + 5  # what the tables keep (a little more, so the window never starts empty)
PRUNE_EVERY_MS = 60_000  # how often what is older than KEPT_DAYS is dropped
GATHER_MS = 1000  # its rows are written in batches gathered this long (a page may be about two seconds
# behind: a fetch is held up to as long again)
# (an action's request, decision and execution arrive within a second, so its line is mostly
# written once or twice: in floods 250 ms wrote it 2.65 times per action, a second 2.2-2.5 times)
BATCH_MAX = 5000  # records in one batch: a second's worth at five times the bench's top rate

HISTORY_DDL = """
CREATE TABLE IF NOT EXISTS {schema}.approval_history_records (
    sequence        bigint PRIMARY KEY,
    action_id       text NOT NULL,
    event_type      text NOT NULL,
    actor           text,
    occurred_at     bigint NOT NULL,
    payload_json    text NOT NULL,
    flags           text[] NOT NULL DEFAULT '{{}}'
);
CREATE INDEX IF NOT EXISTS approval_history_records_action ON {schema}.approval_history_records (action_id, sequence);
CREATE TABLE IF NOT EXISTS {schema}.approval_history_actions (
    action_id       text PRIMARY KEY,
    requested_at    bigint NOT NULL,
    action          text,
    requester       text,
    acting_for      text[] NOT NULL DEFAULT '{{}}',
    decision        text,
    approval        text,
    execution       text,
    other           text
) WITH ({room_for_updates});
ALTER TABLE {schema}.approval_history_actions SET ({room_for_updates});
CREATE INDEX IF NOT EXISTS approval_history_actions_requested ON {schema}.approval_history_actions (requested_at);
"""


@dataclass(frozen=True)
class HistoryRow:
    """One audit record as the history keeps it."""

    sequence: int
    action_id: str
    event_type: str
    actor: str | None
    occurred_at: int
    payload_json: str
    flags: tuple[str, ...]

    def record(self) -> AuditRecord:
        """The record for the report's model and the timeline (no hashes: the console does not verify)."""
        return AuditRecord(
            record_id="",
            sequence=self.sequence,
            recorded_at=self.occurred_at,
            event_id="",
            event_type=self.event_type,
            action_id=self.action_id,
            actor=self.actor,
            source_topic="",
            occurred_at=self.occurred_at,
            payload_json=self.payload_json,
            prev_hash="",
            hash="",
            flags=self.flags,
        )


@dataclass(frozen=True)
class ActionChange:
    """What one record tells about its action: facts for the list, and the stage outcome it sets."""

    action_id: str
    at: int
    action: str | None = None
    requester: str | None = None
    acting_for: tuple[str, ...] = ()
    requested: bool = False
    decision: str | None = None
    approval: str | None = None
    execution: str | None = None
    other: str | None = None


@dataclass(frozen=True)
class ActionSummary:
    """One line of the history list."""

    action_id: str
    requested_at: int
    action: str | None
    requester: str | None
    acting_for: tuple[str, ...]
    decision: str | None
    approval: str | None
    execution: str | None
    other: str | None

    @property
    def outcome(self) -> str:
        return outcome_category(self.decision, self.approval, self.execution, self.other)


class HistoryStore(Protocol):
    """What the history needs of its tables (PostgreSQL in the service, a fake in unit tests)."""

    async def store(
        self, rows: Sequence[HistoryRow], changes: Sequence[ActionChange], keep_after: int | None
    ) -> None: ...
    async def rows_since(self, since: int) -> list[HistoryRow]: ...
    async def rows_of(self, action_id: str) -> list[HistoryRow]: ...
    async def actions(self, since: int, until: int, search: str, limit: int) -> list[ActionSummary]: ...


def compact(event_type: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The payload without the copies the history never shows (they are in the audit itself)."""
    if event_type == "ActionDecided":
        provenance = dict(payload.get("provenance") or {})
        provenance.pop("input_json", None)
        payload = payload | {"provenance": provenance}
    elif event_type == "ApprovalResolved" and isinstance(payload.get("decision"), dict):
        decision = {k: v for k, v in payload["decision"].items() if k != "request"}
        decision["provenance"] = {k: v for k, v in (decision.get("provenance") or {}).items() if k != "input_json"}
        payload = payload | {"decision": decision}
    return payload


def change_of(record: AuditRecord, payload: dict[str, Any]) -> ActionChange:
    """What a record changes in its action's line."""
    kind, action_id = record.event_type, record.action_id or ""
    request = payload if kind == "ActionRequested" else payload.get("request") if kind == "ActionDecided" else None
    facts: dict[str, Any] = {}
    if isinstance(request, dict):
        requester = request.get("requester") or {}
        facts = {
            "action": request.get("action"),
            "requester": requester.get("id"),
            "acting_for": tuple(requester.get("chain") or ()),
        }
    outcome = payload.get("outcome") if isinstance(payload.get("outcome"), str) else None
    stage = {
        "ActionDecided": "decision",
        "ApprovalResolved": "approval",
        "ActionExecuted": "execution",
    }.get(kind, "other" if outcome and kind not in ("ActionRequested", "VoteRecorded") else None)
    if stage and outcome:
        facts[stage] = outcome
    return ActionChange(action_id, record.occurred_at, requested=kind == "ActionRequested", **facts)


def rows_and_changes(records: Iterable[AuditRecord]) -> tuple[list[HistoryRow], list[ActionChange]]:
    """What a batch of audit records adds to the history (checkpoints and dead letters: nothing)."""
    rows, changes = [], []
    for record in records:
        if record.action_id is None or record.is_checkpoint:
            continue
        payload = _parsed(record.payload_json)
        if not isinstance(payload, dict):
            continue
        kept = compact(record.event_type, payload)
        # written again only when something was left out: most records are kept as the audit has them
        text = record.payload_json if kept is payload else orjson.dumps(kept).decode()
        rows.append(
            HistoryRow(
                record.sequence,
                record.action_id,
                record.event_type,
                record.actor,
                record.occurred_at,
                text,
                record.flags,
            )
        )
        changes.append(change_of(record, payload))
    return rows, changes


def _parsed(text: str) -> Any:
    """A record's payload, or None when it is not JSON. orjson reads the audit's canonical text
    about three times faster than the standard library (a decision's: 3.3 against 9.0 µs); what
    it refuses (an integer past 64 bits, text that is a subclass of ``str``) is read by the
    standard library, which the history has always used."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        try:
            return json.loads(text)
        except ValueError:
            return None


def coalesced(changes: Sequence[ActionChange]) -> list[ActionChange]:
    """One change per action, as the store would leave the line after applying them in order:
    the earliest time (the request's when it is among them), the first facts known, and the
    last outcome known for each stage."""
    merged: dict[str, ActionChange] = {}
    for change in changes:
        before = merged.get(change.action_id)
        if before is None:
            merged[change.action_id] = change
            continue
        # the store sets the request's time when a change says it is the request, else keeps the earliest
        at = change.at if change.requested else min(before.at, change.at)
        merged[change.action_id] = ActionChange(
            change.action_id,
            at,
            action=before.action or change.action,
            requester=before.requester or change.requester,
            acting_for=before.acting_for or change.acting_for,
            requested=before.requested or change.requested,
            decision=change.decision or before.decision,
            approval=change.approval or before.approval,
            execution=change.execution or before.execution,
            other=change.other or before.other,
        )
    return list(merged.values())


def decode_record(message: Any) -> AuditRecord:
    """The audit record in a message of the audit topic (the audit service dead-letters the rest)."""
    decoded = decode_audit_message(message.offset, message.value)
    if decoded.record is None:
        reason = decoded.unreadable.reason if decoded.unreadable else "not an audit record"
        raise UndecodableMessage("not_an_audit_record", reason)
    return decoded.record


class HistoryFollower:
    """Keeps the history tables from the audit topic."""

    def __init__(self, store: HistoryStore, publisher: Publisher) -> None:
        self.store = store
        self.stage = Stage(publisher, (AuditRecord,), handle_batch=self._store, decode=decode_record)
        self._pruned_at = 0

    async def follow(self, consumer: Any) -> None:
        """Follow the audit topic through a started consumer (auto-commit off) until cancelled."""
        # a console page may lag a moment: what arrives within a second is one transaction, in
        # which an action's records make one change to its line (``coalesced``)
        await run(KafkaSource(consumer, max_records=BATCH_MAX, wait_ms=1000, gather_ms=GATHER_MS), self.stage)

    async def _store(self, batch: list[tuple[Any, Any]]) -> None:
        rows, changes = rows_and_changes(record for record, _ in batch)
        now = now_millis()
        # dropping what is past the window once a minute is as good as every batch, and free
        prune = now - self._pruned_at >= PRUNE_EVERY_MS
        await self.store.store(rows, coalesced(changes), keep_after=now - KEPT_DAYS * DAY_MS if prune else None)
        if prune:
            self._pruned_at = now


async def start_position(consumer: Any, partition: Any) -> None:
    """Resume from the group's committed offset; the first time, from ``KEPT_DAYS`` days ago."""
    if await consumer.committed(partition) is not None:
        return
    since = datetime.now(UTC) - timedelta(days=KEPT_DAYS)
    found = await consumer.offsets_for_times({partition: to_millis(since)})
    offset = found.get(partition)
    if offset is None:  # nothing that recent: start at the end
        consumer.seek(partition, (await consumer.end_offsets([partition]))[partition])
    else:
        consumer.seek(partition, offset.offset)


@dataclass(frozen=True)
class HistoryPage:
    """What the history page shows: the figures of the window and the matching actions."""

    report: Report
    actions: list[ActionSummary]
    since: int
    until: int


async def history_page(
    store: HistoryStore,
    *,
    search: str = "",
    outcome: str = "",
    now: int | None = None,
    limit: int = 100,
    figures: Report | None = None,
) -> HistoryPage:
    """The last ``HISTORY_DAYS`` days: the report's figures (not verified) and up to ``limit`` actions.

    ``figures`` computed a moment ago may be passed in (the console keeps them a minute): a month
    of records is read and folded only when they are not."""
    until = (now if now is not None else now_millis()) + 1
    since = until - HISTORY_DAYS * DAY_MS
    report = figures
    if report is None:
        rows = await store.rows_since(since)

        def fold() -> Report:
            builder = ReportBuilder(since, until)
            for row in rows:
                builder.add(row.record())
            return builder.finish(None, generated_at=until - 1)

        report = await asyncio.to_thread(fold)  # a month of records: not on the event loop votes need
    found = await store.actions(since, until, search.strip(), limit if not outcome else 10 * limit)
    if outcome:
        found = [line for line in found if line.outcome == outcome][:limit]
    return HistoryPage(report, found, since, until)
