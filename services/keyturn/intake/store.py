"""The intake's own tables: accepted requests (an outbox until published) and their status.

Idempotency is a unique constraint on (requester, idempotency_key), so two concurrent
submissions with one key cannot both create an action, even across intake replicas.

Every call rides out a short database outage (a restart, a failover, a pool whose connections
the restart killed) by retrying for a bounded time; past that it raises ``StoreUnavailable``,
which callers turn into a 503 or a later retry, never into a lost event.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from keyturn.core.lifecycle import ActionState, IllegalTransition, advance, state_after
from keyturn.core.text import storable
from keyturn.faults import DATABASE_UNAVAILABLE, Unavailable

DDL = """
CREATE TABLE IF NOT EXISTS {schema}.intake_actions (
    action_id        text PRIMARY KEY,
    requester        text NOT NULL,
    principals       text[] NOT NULL,
    idempotency_key  text,
    payload_digest   text NOT NULL,
    action           text NOT NULL,
    resource         text NOT NULL,
    state            text NOT NULL,
    reasons          jsonb NOT NULL DEFAULT '[]',
    result           jsonb,
    history          jsonb NOT NULL DEFAULT '[]',
    requested_event  bytea NOT NULL,
    request_digest   text,
    published        boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (requester, idempotency_key)
) WITH ({room_for_updates});
ALTER TABLE {schema}.intake_actions SET ({room_for_updates});
ALTER TABLE {schema}.intake_actions ADD COLUMN IF NOT EXISTS request_digest text;
CREATE INDEX IF NOT EXISTS intake_actions_unpublished ON {schema}.intake_actions (created_at) WHERE NOT published;
"""


@dataclass(frozen=True)
class NewAction:
    """An accepted request as the intake inserts it."""

    action_id: str
    requester: str
    principals: list[str]
    idempotency_key: str | None
    payload_digest: str
    action: str
    resource: str
    requested_event: bytes
    at: datetime
    request_digest: str | None = None  # what a retry under the same key must repeat (``same_request``)


@dataclass(frozen=True)
class StoredAction:
    action_id: str
    requester: str
    principals: list[str]
    payload_digest: str
    action: str
    resource: str
    state: ActionState
    reasons: list[str]
    result: Any
    history: list[dict[str, Any]]
    requested_event: bytes
    published: bool
    request_digest: str | None = None  # None: stored by a build that kept only the payload's digest

    def view(self) -> dict[str, Any]:
        """What ``GET /v1/actions/{id}`` shows."""
        return {
            "action_id": self.action_id,
            "action": self.action,
            "resource": self.resource,
            "requester": self.requester,
            "state": self.state.value,
            "terminal": self.state.is_terminal,
            "reasons": self.reasons,
            "result": self.result,
            "payload_digest": self.payload_digest,
            "history": self.history,
        }


_COLUMNS = (
    "action_id, requester, principals, payload_digest, action, resource, state, reasons, result, history, "
    "requested_event, published, request_digest"
)


def jsonb(value: Any) -> str:
    """``value`` as JSON text PostgreSQL's ``jsonb`` takes. It refuses the escapes of a NUL and of a
    lone surrogate, which an event's text may hold (an approver's reason, a command's result): one
    such value failed the status batch's statement on every retry and stopped every requester's
    status. Only text that shows such an escape is cleaned (``core.text.storable``); checking the
    text already made costs nothing, where walking every result (a query's rows) did."""
    text = json.dumps(value)
    if "\\u0000" in text or "\\ud" in text:  # a surrogate escape: a lone one, or (harmless) a pair
        text = json.dumps(storable(value))
    return text


def _row(row: dict[str, Any]) -> StoredAction:
    return StoredAction(**{**row, "state": ActionState(row["state"]), "requested_event": bytes(row["requested_event"])})


log = logging.getLogger(__name__)
T = TypeVar("T")

# a restart or an unreachable server, as the database driver or the socket reports it
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (*DATABASE_UNAVAILABLE, OSError)


class StoreUnavailable(Unavailable):
    """The database did not answer within the caller's patience; trying again later is safe."""

    dependency = "database"  # what did not answer, as the 503 names it


@dataclass(frozen=True)
class LifecycleChange:
    """One lifecycle event as the status table records it."""

    action_id: str
    event: Any
    entry: dict[str, Any]
    reasons: list[str] | None = None
    result: Any = None


@dataclass
class StatusRow:
    """An action's status while a batch of events is folded into it."""

    state: ActionState
    history: list[dict[str, Any]]
    reasons: list[str] | None = None  # None: leave the stored reasons as they are
    result: Any = None  # None: leave the stored result as it is
    changed: bool = field(default=False)

    def fold(self, change: LifecycleChange) -> None:
        """Record one event: history in time order, the state only ever moving forward.

        Events of one action arrive on different topics, so a later stage may come first; an
        earlier one arriving late joins the history without moving the state back. Duplicates
        (redelivery) and contradictions (an event after a different terminal state) are ignored.
        """
        try:
            state = advance(self.state, change.event)
        except IllegalTransition:
            return
        entry = {**change.entry, "state": state_after(change.event).value}
        if any(e.get("event") == entry["event"] and e.get("state") == entry["state"] for e in self.history):
            return
        self.history = sorted([*self.history, entry], key=lambda e: e.get("at", ""))
        if state is not self.state and change.reasons is not None:
            self.reasons = change.reasons
        if change.result is not None:
            self.result = change.result
        self.state = state
        self.changed = True


# A request's own published mark waits this long for its first status change to set it (see
# ``ActionStore.mark_published``); a third of the outbox sweep's age (``Outbox.unpublished``, 10 s),
# so the publish patience (up to 5 s) plus this stays clear of a needless republish.
MARK_AFTER_S = 3.0
MARK_BEAT_S = 0.5  # marks are written at most this often


class ActionStore:
    def __init__(
        self, pool: AsyncConnectionPool, *, patience_s: float = 2.0, mark_after_s: float = MARK_AFTER_S
    ) -> None:
        self.pool = pool
        # a request waits this long for the database before it is answered 503
        self.patience_s = patience_s
        self.mark_after_s = mark_after_s
        # action id → when its event was acknowledged (monotonic), in the order they fall due
        self._to_mark: OrderedDict[str, float] = OrderedDict()
        self._marks_waiting = asyncio.Event()

    async def _retrying(self, operation: Callable[[float], Awaitable[T]], patience_s: float | None = None) -> T:
        """Run ``operation(connect_timeout)`` until it succeeds or the patience is spent.

        A restart leaves every pooled connection dead and each fails on first use, so the first
        retries come quickly; a server that is really down shows up as the pool's timeout.
        Retrying is safe because each operation is one transaction and idempotent.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.patience_s if patience_s is None else patience_s)
        delay = 0.01
        while True:
            try:
                return await operation(max(deadline - loop.time(), 0.1))
            except TRANSIENT_ERRORS as exc:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise StoreUnavailable(f"database unavailable: {type(exc).__name__}: {exc}".strip()) from exc
                log.debug("database error, retrying in %.2fs: %s", delay, exc)
                await asyncio.sleep(min(delay, remaining))
                delay = min(delay * 2, 0.5)

    async def ping(self, patience_s: float = 1.0) -> None:
        """Return once the database answers; ``StoreUnavailable`` after ``patience_s``."""

        async def select(timeout: float) -> None:
            async with self.pool.connection(timeout) as conn:
                await conn.execute("SELECT 1")

        await self._retrying(select, patience_s)

    async def insert_requested(self, **row: Any) -> tuple[StoredAction, bool]:
        """(the stored action, True) when new; (the existing one, False) when the key was used."""
        [result] = await self.insert_many([NewAction(**row)])
        return result

    async def insert_many(self, rows: Sequence[NewAction]) -> list[tuple[StoredAction, bool]]:
        """Insert a batch of accepted requests in one statement; for each row, in order, (the
        stored action, True) when new or (the one already stored under its id, False).

        ``INSERT … SELECT FROM unnest(…) ON CONFLICT DO NOTHING RETURNING``: the first row of an
        action id wins, whether it was inserted earlier, by another replica at the same moment, or
        earlier in this very batch. Ids that conflicted are read back with a second statement
        (a fresh snapshot: a row another transaction committed while this one waited for its
        lock is visible to it, not to the INSERT's own snapshot).
        """
        if not rows:
            return []
        columns: list[list[Any]] = [[] for _ in range(10)]
        for row in rows:
            history = [{"state": ActionState.REQUESTED.value, "at": row.at.isoformat(), "event": "ActionRequested"}]
            values = (
                row.action_id,
                row.requester,
                json.dumps(row.principals),
                row.idempotency_key,
                row.payload_digest,
                row.action,
                row.resource,
                json.dumps(history),
                row.requested_event,
                row.request_digest,
            )
            for column, value in zip(columns, values, strict=True):
                column.append(value)

        async def insert(timeout: float) -> dict[str, StoredAction]:
            async with self.pool.connection(timeout) as conn, conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(
                    f"""INSERT INTO intake_actions (action_id, requester, principals, idempotency_key, payload_digest,
                            action, resource, state, history, requested_event, request_digest)
                        SELECT u.action_id, u.requester, ARRAY(SELECT jsonb_array_elements_text(u.principals)),
                            u.idempotency_key, u.payload_digest, u.action, u.resource, %s, u.history, u.requested_event,
                            u.request_digest
                        FROM unnest(%b::text[], %b::text[], %b::jsonb[], %b::text[], %b::text[], %b::text[],
                            %b::text[], %b::jsonb[], %b::bytea[], %b::text[])
                            AS u(action_id, requester, principals, idempotency_key, payload_digest, action, resource,
                                 history, requested_event, request_digest)
                        ON CONFLICT DO NOTHING RETURNING {_COLUMNS}""",
                    (ActionState.REQUESTED.value, *columns),
                )
                return {r["action_id"]: _row(r) for r in await cur.fetchall()}

        inserted = await self._retrying(insert)
        existing = await self.get_many([r.action_id for r in rows if r.action_id not in inserted])
        results: list[tuple[StoredAction, bool]] = []
        first_seen: set[str] = set()
        for row in rows:
            if row.action_id in inserted:
                results.append((inserted[row.action_id], row.action_id not in first_seen))
            elif row.action_id in existing:
                results.append((existing[row.action_id], False))
            else:
                raise RuntimeError(f"action {row.action_id} conflicted on insert but cannot be read")
            first_seen.add(row.action_id)
        return results

    async def get_many(self, action_ids: Sequence[str]) -> dict[str, StoredAction]:
        """The stored actions among ``action_ids`` (one statement)."""
        if not action_ids:
            return {}

        async def select(timeout: float) -> dict[str, StoredAction]:
            async with self.pool.connection(timeout) as conn, conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(
                    f"SELECT {_COLUMNS} FROM intake_actions WHERE action_id = ANY(%b)", (sorted(set(action_ids)),)
                )
                return {r["action_id"]: _row(r) for r in await cur.fetchall()}

        return await self._retrying(select)

    async def mark_published(self, action_id: str, *, at_once: bool = False) -> None:
        """Note that the action's event reached Kafka; written ``mark_after_s`` later (``at_once``:
        at the next beat), with the others due in one statement, and only if nothing marked it first.

        The mark only spares the outbox sweep a republish, so it need not be written before the
        request is answered. If the process dies before the write, the sweep publishes the event
        again under the same event id, which every consumer already treats as a redelivery.
        The status follower marks an action published with its first lifecycle change (a
        decision proves the request was read), so in the usual case the delayed mark finds the
        row marked and writes nothing (one row write per action saved, where decisions come within
        ``mark_after_s``). A
        republished event (the sweep, a retried request) is marked at once: it is already late.
        """
        if at_once:
            self._to_mark[action_id] = 0.0
            self._to_mark.move_to_end(action_id, last=False)  # due now: first in line
        else:
            self._to_mark.setdefault(action_id, time.monotonic())
        self._marks_waiting.set()

    def acknowledged(self, action_id: str) -> bool:
        """Whether this process saw the action's event acknowledged and its mark is not written yet."""
        return action_id in self._to_mark

    async def keep_marking(self) -> None:
        """Write the published marks in batches, for as long as the intake runs: when the oldest
        is due, and never more often than once per ``MARK_BEAT_S``, so the marks due within a
        beat share one statement."""
        delay = 0.5
        while True:
            await self._marks_waiting.wait()
            oldest = next(iter(self._to_mark.values()), None)
            if oldest is None:
                self._marks_waiting.clear()
                continue
            await asyncio.sleep(max(MARK_BEAT_S, oldest + self.mark_after_s - time.monotonic()))
            try:
                await self.flush_marks(older_than_s=self.mark_after_s)
                delay = 0.5
            except Exception as exc:  # the marks stay queued; only the sweep could notice the delay
                log.warning(
                    "could not record %d published marks (%s); retrying in %.1fs", len(self._to_mark), exc, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def flush_marks(self, patience_s: float | None = None, *, older_than_s: float = 0.0) -> None:
        """Write the queued published marks (those queued at least ``older_than_s`` ago) now."""
        cutoff = time.monotonic() - older_than_s
        due: dict[str, float] = {}
        while self._to_mark:  # queued in time order: the due ones are at the front
            action_id, at = next(iter(self._to_mark.items()))
            if at > cutoff:
                break
            due[action_id] = self._to_mark.pop(action_id)
        if not self._to_mark:
            self._marks_waiting.clear()
        if not due:
            return

        async def update(timeout: float) -> None:
            async with self.pool.connection(timeout) as conn:
                await conn.execute(
                    "UPDATE intake_actions SET published = true WHERE action_id = ANY(%b) AND NOT published",
                    (sorted(due),),
                )

        try:
            await self._retrying(update, patience_s)
        except BaseException:
            for action_id in reversed(due):  # back at the front, as they were
                self._to_mark[action_id] = due[action_id]
                self._to_mark.move_to_end(action_id, last=False)
            self._marks_waiting.set()
            raise

    async def unpublished(self, older_than_s: float = 10.0, limit: int = 500) -> list[StoredAction]:
        """Accepted requests whose event may not have reached Kafka (crash between the two)."""

        async def select(timeout: float) -> list[StoredAction]:
            async with self.pool.connection(timeout) as conn, conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(
                    f"""SELECT {_COLUMNS} FROM intake_actions WHERE NOT published
                        AND created_at < now() - make_interval(secs => %s) ORDER BY created_at LIMIT %s""",
                    (older_than_s, limit),
                )
                return [_row(r) for r in await cur.fetchall()]

        return await self._retrying(select)

    async def get(self, action_id: str) -> StoredAction | None:
        async def select(timeout: float) -> StoredAction | None:
            async with self.pool.connection(timeout) as conn, conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(f"SELECT {_COLUMNS} FROM intake_actions WHERE action_id = %s", (action_id,))
                row = await cur.fetchone()
                return _row(row) if row else None

        return await self._retrying(select)

    async def apply_many(
        self, changes: Iterable[LifecycleChange], patience_s: float | None = None
    ) -> dict[str, ActionState]:
        """Record a batch of lifecycle events in one transaction; the state of each action touched.

        Actions this store does not hold (submitted by another deployment, or before this store
        existed) are skipped. Either the whole batch is recorded or none of it, so a caller that
        retries after an error never skips an event.
        """
        changes = list(changes)
        if not changes:
            return {}
        # locking in one order keeps two replicas applying overlapping batches from deadlocking
        action_ids = sorted({c.action_id for c in changes})

        async def apply(timeout: float) -> dict[str, ActionState]:
            async with self.pool.connection(timeout) as conn, conn.transaction():
                cur = await conn.execute(
                    "SELECT action_id, state, history FROM intake_actions WHERE action_id = ANY(%b) ORDER BY "
                    "action_id FOR UPDATE",
                    (action_ids,),
                )
                rows = {
                    action_id: StatusRow(ActionState(state), history)
                    for action_id, state, history in await cur.fetchall()
                }
                for change in changes:
                    if (row := rows.get(change.action_id)) is not None:
                        row.fold(change)
                changed = [(action_id, row) for action_id, row in rows.items() if row.changed]
                if changed:  # one statement for the batch
                    await conn.execute(
                        """UPDATE intake_actions AS a SET state = u.state, history = u.history,
                               reasons = COALESCE(u.reasons, a.reasons), result = COALESCE(u.result, a.result),
                               updated_at = %s, published = true
                           FROM unnest(%b::text[], %b::text[], %b::jsonb[], %b::jsonb[], %b::jsonb[])
                               AS u(action_id, state, history, reasons, result)
                           WHERE a.action_id = u.action_id""",
                        (
                            datetime.now(UTC),
                            [action_id for action_id, _ in changed],
                            [row.state.value for _, row in changed],
                            [jsonb(row.history) for _, row in changed],
                            [jsonb(row.reasons) if row.reasons is not None else None for _, row in changed],
                            [jsonb(row.result) if row.result is not None else None for _, row in changed],
                        ),
                    )
                return {action_id: row.state for action_id, row in rows.items()}

        return await self._retrying(apply, patience_s)
