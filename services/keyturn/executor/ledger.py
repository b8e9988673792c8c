"""The execution ledger: an action is started at most once, ever (PostgreSQL primary key).

started → finished. ``start`` is one INSERT … ON CONFLICT DO NOTHING, committed before the
plugin runs, so two executors (or one executor and its own redelivery) can never both run an
action. A redelivered order for a finished action republishes the recorded outcome; for an
action started but never finished (the executor died mid-way) the executor ends it
``outcome_unknown`` with the evidence — never a silent second run.

A batch of orders is started with one statement (``start_many``: ``INSERT … SELECT FROM
unnest … ON CONFLICT DO NOTHING RETURNING``, committed before any plugin runs) and finished
with one (``finish_many``: ``UPDATE … FROM unnest``).

A start holds a lease (``lease_until``, on the database's clock) that the running executor
renews while its plugins run (``renew``). An executor handed an order that another started
and has not finished (the partition moved to it in a rebalance, the other still running)
waits while that lease is held: the action's outcome is the other's to record. Only a lapsed
lease (its holder died or hung past its plugin's time limit) counts as an interrupted run.

A running plugin may note what its ``settle`` will need should the executor die before the
outcome is recorded (``note``: a SQL write's transaction id, noted just before its COMMIT). A
start begins with an empty note (``{}``): a start with none (NULL) was made by an earlier build,
whose run cannot be told from what it noted.
The note is written only by the executor that holds the start, so a run whose lease another
executor took over learns it there, before committing anything.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from keyturn.db import answering_within

DDL = """
CREATE TABLE IF NOT EXISTS {schema}.executions (
    action_id       text PRIMARY KEY,
    executor        text NOT NULL,
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz,
    outcome         text,
    executed_event  bytea
) WITH ({room_for_updates});
ALTER TABLE {schema}.executions SET ({room_for_updates});
ALTER TABLE {schema}.executions ADD COLUMN IF NOT EXISTS payload_digest text;
ALTER TABLE {schema}.executions ADD COLUMN IF NOT EXISTS plugin text;
ALTER TABLE {schema}.executions ADD COLUMN IF NOT EXISTS lease_until timestamptz;
ALTER TABLE {schema}.executions ADD COLUMN IF NOT EXISTS progress jsonb;
"""

_COLUMNS = (
    "action_id, executor, started_at, finished_at, outcome, executed_event, payload_digest, plugin,"
    " coalesce(lease_until > clock_timestamp(), false), progress"
)
_LEASE = "clock_timestamp() + make_interval(secs => %s)"


@dataclass(frozen=True)
class LedgerEntry:
    action_id: str
    executor: str
    started_at: datetime
    finished_at: datetime | None
    outcome: str | None
    executed_event: bytes | None
    payload_digest: str | None = None
    plugin: str | None = None
    held: bool = False  # its starter's lease is alive: it may still be running
    progress: dict[str, Any] | None = None  # what its run noted for a settle after a crash (``note``)

    @property
    def finished(self) -> bool:
        return self.executed_event is not None


PATIENCE_S = 15.0
"""How long one ledger call may take, its wait for a connection included, before it is given up
as ``Unavailable`` and tried again (``db.answering_within``): each is one statement that takes
milliseconds, and a repeat of each is recognised (a start of this executor's own, an outcome
already recorded). Without it, a statement that got no answer after a database restart held
its batch, and every action in it, without a word."""


class ExecutionLedger:
    def __init__(
        self, pool: AsyncConnectionPool, executor: str, *, lease_s: float = 10.0, patience_s: float = PATIENCE_S
    ) -> None:
        """``lease_s``: how long a start (or its last renewal) vouches that ``executor`` is running it;
        ``patience_s``: how long one call may wait for its answer (``PATIENCE_S``)."""
        self.pool = pool
        self.executor = executor
        self.lease_s = lease_s
        self.patience_s = patience_s

    def _connection(self) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
        return answering_within(self.pool, self.patience_s, "the execution ledger")

    async def start(
        self, action_id: str, at: datetime, *, payload_digest: str = "", plugin: str = ""
    ) -> LedgerEntry | None:
        """None when this call started the action; the earlier entry when it was started before."""
        async with self._connection() as conn:
            cur = await conn.execute(
                "INSERT INTO executions (action_id, executor, started_at, payload_digest, plugin, lease_until,"
                f" progress) VALUES (%s, %s, %s, %s, %s, {_LEASE}, '{{}}') ON CONFLICT DO NOTHING RETURNING action_id",
                (action_id, self.executor, at, payload_digest, plugin, self.lease_s),
            )
            if await cur.fetchone():
                return None
            return await self._entry(conn, action_id)

    async def finish(self, action_id: str, outcome: str, executed_event: bytes, at: datetime) -> bool:
        """Record the outcome (and its event, to republish on redelivery) of a started action.

        The first outcome recorded stays; False when one was recorded already.
        """
        async with self._connection() as conn:
            cur = await conn.execute(
                "UPDATE executions SET finished_at = %s, outcome = %s, executed_event = %s, lease_until = NULL"
                " WHERE action_id = %s AND finished_at IS NULL",
                (at, outcome, executed_event, action_id),
            )
            return cur.rowcount == 1

    async def note(self, action_id: str, progress: dict[str, Any]) -> bool:
        """Keep ``progress`` (JSON) with a started, unfinished action this executor holds; False
        when it does not hold it (finished, or started by another executor): the caller must
        then change nothing."""
        async with self._connection() as conn:
            cur = await conn.execute(
                "UPDATE executions SET progress = %s WHERE action_id = %s AND executor = %s AND finished_at IS NULL",
                (Jsonb(progress), action_id, self.executor),
            )
            return cur.rowcount == 1

    async def start_many(self, starts: list[tuple[str, str, str]], at: datetime) -> dict[str, LedgerEntry]:
        """Start every (action id, payload digest, plugin) not started before, in one committed
        statement; returns the earlier entries of those that were (the others this call started)."""
        if not starts:
            return {}
        ids = [action_id for action_id, _, _ in starts]
        async with self._connection() as conn:
            inserted = await (
                await conn.execute(
                    "INSERT INTO executions (action_id, executor, started_at, payload_digest, plugin, lease_until,"
                    f" progress) SELECT action_id, %s, %s, payload_digest, plugin, {_LEASE}, '{{}}'"
                    " FROM unnest(%b::text[], %b::text[], %b::text[]) AS s(action_id, payload_digest, plugin)"
                    " ON CONFLICT DO NOTHING RETURNING action_id",
                    (self.executor, at, self.lease_s, ids, [d for _, d, _ in starts], [p for _, _, p in starts]),
                )
            ).fetchall()
            started = {row[0] for row in inserted}
            before = [action_id for action_id in ids if action_id not in started]
            entries = await self._entries(conn, before) if before else {}
        missing = set(before) - set(entries)
        if missing:  # a conflict is a row that exists; nothing deletes ledger rows
            raise RuntimeError(f"the ledger refused {len(missing)} start(s) but holds no entry for them")
        return entries

    async def finish_many(self, finishes: list[tuple[str, str, bytes, datetime]]) -> set[str]:
        """Record (action id, outcome, executed event, at) of started actions in one statement;
        returns the action ids whose recorded outcome is the one given: recorded now, or by an
        earlier attempt of this same call (a statement given up on can still have committed;
        its event, unique to this run, is what tells). The others had an outcome already, which
        stays."""
        if not finishes:
            return set()
        async with self._connection() as conn:
            rows = await (
                await conn.execute(
                    "WITH f AS (SELECT * FROM unnest(%b::text[], %b::text[], %b::bytea[], %b::timestamptz[])"
                    " AS f(action_id, outcome, event, at)),"
                    " now_recorded AS (UPDATE executions AS e SET finished_at = f.at, outcome = f.outcome,"
                    " executed_event = f.event, lease_until = NULL FROM f"
                    " WHERE e.action_id = f.action_id AND e.finished_at IS NULL RETURNING e.action_id)"
                    " SELECT action_id FROM now_recorded"
                    " UNION SELECT e.action_id FROM executions AS e JOIN f ON e.action_id = f.action_id"
                    " WHERE e.finished_at IS NOT NULL AND e.executed_event = f.event",
                    (
                        [f[0] for f in finishes],
                        [f[1] for f in finishes],
                        [f[2] for f in finishes],
                        [f[3] for f in finishes],
                    ),
                )
            ).fetchall()
        return {row[0] for row in rows}

    @staticmethod
    async def _entries(conn, action_ids: list[str]) -> dict[str, LedgerEntry]:
        cur = await conn.execute(f"SELECT {_COLUMNS} FROM executions WHERE action_id = ANY(%b)", (action_ids,))
        entries = {}
        for row in await cur.fetchall():
            entry = LedgerEntry(*row)
            if entry.executed_event is not None:
                entry = LedgerEntry(**{**entry.__dict__, "executed_event": bytes(entry.executed_event)})
            entries[entry.action_id] = entry
        return entries

    async def renew(self, action_ids: list[str]) -> None:
        """Extend the lease of those of ``action_ids`` this executor started and has not finished."""
        if not action_ids:
            return
        async with self._connection() as conn:
            await conn.execute(
                f"UPDATE executions SET lease_until = {_LEASE}"
                " WHERE action_id = ANY(%b) AND executor = %s AND finished_at IS NULL",
                (self.lease_s, action_ids, self.executor),
            )

    async def get(self, action_id: str) -> LedgerEntry | None:
        """The entry of one action, if it was ever started."""
        async with self._connection() as conn:
            return await self._entry(conn, action_id)

    @staticmethod
    async def _entry(conn, action_id: str) -> LedgerEntry | None:
        return (await ExecutionLedger._entries(conn, [action_id])).get(action_id)
