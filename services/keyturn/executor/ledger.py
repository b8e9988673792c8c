"""The execution ledger: an action is started at most once, ever (PostgreSQL primary key).

started → finished. A redelivered order for a finished action republishes the recorded
outcome; for an action started but never finished (the executor died mid-way) it yields
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
"""


@dataclass(frozen=True)
class LedgerEntry:
    action_id: str
    executor: str
    started_at: datetime
    finished_at: datetime | None
    outcome: str | None
    executed_event: bytes | None


class ExecutionLedger:
    def __init__(self, pool: AsyncConnectionPool, executor: str) -> None:
        self.pool = pool
        self.executor = executor

    async def start(self, action_id: str, at: datetime) -> LedgerEntry | None:
        """None when this call started the action; the earlier entry when it was started before."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "INSERT INTO executions (action_id, executor, started_at) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING RETURNING action_id",
                (action_id, self.executor, at),
            )
            if await cur.fetchone():
                return None
            cur = await conn.execute(
                "SELECT action_id, executor, started_at, finished_at, outcome, executed_event FROM executions WHERE action_id = %s",
                (action_id,),
            )
            row = await cur.fetchone()
        entry = LedgerEntry(*row)
        return LedgerEntry(**{**entry.__dict__, "executed_event": bytes(entry.executed_event) if entry.executed_event else None})

    async def finish(self, action_id: str, outcome: str, executed_event: bytes, at: datetime) -> None:
        """Record the outcome (and its event, to republish on redelivery) of a started action."""
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE executions SET finished_at = %s, outcome = %s, executed_event = %s WHERE action_id = %s",
                (at, outcome, executed_event, action_id),
            )
