"""The execution ledger: an action is started at most once, ever (PostgreSQL primary key).

started → finished. ``start`` is one INSERT … ON CONFLICT DO NOTHING, committed before the
plugin runs, so two executors (or one executor and its own redelivery) can never both run an
action. A redelivered order for a finished action republishes the recorded outcome; for an
action started but never finished (the executor died mid-way) the executor ends it
``outcome_unknown`` with the evidence — never a silent second run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg_pool import AsyncConnectionPool

DDL = """
CREATE TABLE IF NOT EXISTS {schema}.executions (
    action_id       text PRIMARY KEY,
    executor        text NOT NULL,
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz,
    outcome         text,
    executed_event  bytea
);
ALTER TABLE {schema}.executions ADD COLUMN IF NOT EXISTS payload_digest text;
ALTER TABLE {schema}.executions ADD COLUMN IF NOT EXISTS plugin text;
"""

_COLUMNS = "action_id, executor, started_at, finished_at, outcome, executed_event, payload_digest, plugin"


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

    @property
    def finished(self) -> bool:
        return self.executed_event is not None


class ExecutionLedger:
    def __init__(self, pool: AsyncConnectionPool, executor: str) -> None:
        self.pool = pool
        self.executor = executor

    async def start(
        self, action_id: str, at: datetime, *, payload_digest: str = "", plugin: str = ""
    ) -> LedgerEntry | None:
        """None when this call started the action; the earlier entry when it was started before."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "INSERT INTO executions (action_id, executor, started_at, payload_digest, plugin) VALUES (%s, "
                "%s, %s, %s, %s) "
                "ON CONFLICT DO NOTHING RETURNING action_id",
                (action_id, self.executor, at, payload_digest, plugin),
            )
            if await cur.fetchone():
                return None
            return await self._entry(conn, action_id)

    async def finish(self, action_id: str, outcome: str, executed_event: bytes, at: datetime) -> bool:
        """Record the outcome (and its event, to republish on redelivery) of a started action.

        The first outcome recorded stays; False when one was recorded already.
        """
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE executions SET finished_at = %s, outcome = %s, executed_event = %s WHERE action_id = %s "
                "AND finished_at IS NULL",
                (at, outcome, executed_event, action_id),
            )
            return cur.rowcount == 1

    async def get(self, action_id: str) -> LedgerEntry | None:
        """The entry of one action, if it was ever started."""
        async with self.pool.connection() as conn:
            return await self._entry(conn, action_id)

    @staticmethod
    async def _entry(conn, action_id: str) -> LedgerEntry | None:
        cur = await conn.execute(f"SELECT {_COLUMNS} FROM executions WHERE action_id = %s", (action_id,))
        row = await cur.fetchone()
        if row is None:
            return None
        entry = LedgerEntry(*row)
        if entry.executed_event is not None:
            entry = LedgerEntry(**{**entry.__dict__, "executed_event": bytes(entry.executed_event)})
        return entry
