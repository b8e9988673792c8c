"""The approval service's own tables: pending approvals, every vote received, and an outbox.

A pending approval's state is rebuilt from its decision and its accepted votes (replayed
through the pure state machine), so there is one source of truth and nothing to migrate.
Events leave through the outbox: written in the same transaction as the state change,
published after commit, so a crash can delay an event but never lose or invent one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

DDL = """
CREATE TABLE IF NOT EXISTS {schema}.approvals (
    action_id       text PRIMARY KEY,
    decided_event   bytea NOT NULL,
    status          text NOT NULL DEFAULT 'pending',
    principals      text[] NOT NULL,
    groups          text[] NOT NULL,
    opened_at       timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    resolved_at     timestamptz
);
CREATE INDEX IF NOT EXISTS approvals_pending_expiry ON {schema}.approvals (expires_at) WHERE status = 'pending';
CREATE TABLE IF NOT EXISTS {schema}.approval_votes (
    id              bigserial PRIMARY KEY,
    action_id       text NOT NULL,
    accepted        boolean NOT NULL,
    vote_event      bytea NOT NULL
);
CREATE INDEX IF NOT EXISTS approval_votes_action ON {schema}.approval_votes (action_id, id);
CREATE TABLE IF NOT EXISTS {schema}.approval_outbox (
    id              bigserial PRIMARY KEY,
    topic           text NOT NULL,
    key             text NOT NULL,
    value           bytea NOT NULL
);
"""


@dataclass(frozen=True)
class ApprovalRow:
    action_id: str
    decided_event: bytes
    status: str
    resolved_at: datetime | None
    accepted_votes: tuple[bytes, ...]


class ApprovalStore:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    async def open(self, action_id: str, decided_event: bytes, principals: list[str], groups: list[str], opened_at: datetime, expires_at: datetime) -> bool:
        """Record a new pending approval; False when it was already open (redelivery)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                """INSERT INTO approvals (action_id, decided_event, principals, groups, opened_at, expires_at)
                   VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING action_id""",
                (action_id, decided_event, principals, groups, opened_at, expires_at),
            )
            return await cur.fetchone() is not None

    @staticmethod
    async def lock(conn: AsyncConnection, action_id: str) -> ApprovalRow | None:
        """The approval and its accepted votes, locked for this transaction."""
        cur = await conn.execute(
            "SELECT action_id, decided_event, status, resolved_at FROM approvals WHERE action_id = %s FOR UPDATE", (action_id,)
        )
        row = await cur.fetchone()
        if row is None:
            return None
        votes = await conn.execute("SELECT vote_event FROM approval_votes WHERE action_id = %s AND accepted ORDER BY id", (action_id,))
        return ApprovalRow(row[0], bytes(row[1]), row[2], row[3], tuple(bytes(v[0]) for v in await votes.fetchall()))

    async def read(self, action_id: str) -> ApprovalRow | None:
        async with self.pool.connection() as conn, conn.transaction():
            return await self.lock(conn, action_id)

    @staticmethod
    async def record_vote(conn: AsyncConnection, action_id: str, accepted: bool, vote_event: bytes) -> None:
        await conn.execute("INSERT INTO approval_votes (action_id, accepted, vote_event) VALUES (%s, %s, %s)", (action_id, accepted, vote_event))

    @staticmethod
    async def resolve(conn: AsyncConnection, action_id: str, status: str, at: datetime) -> None:
        await conn.execute("UPDATE approvals SET status = %s, resolved_at = %s WHERE action_id = %s", (status, at, action_id))

    @staticmethod
    async def enqueue(conn: AsyncConnection, topic: str, key: str, value: bytes) -> None:
        await conn.execute("INSERT INTO approval_outbox (topic, key, value) VALUES (%s, %s, %s)", (topic, key, value))

    async def due_for_expiry(self, now: datetime, limit: int = 100) -> list[str]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT action_id FROM approvals WHERE status = 'pending' AND expires_at <= %s ORDER BY expires_at LIMIT %s", (now, limit)
            )
            return [r[0] for r in await cur.fetchall()]

    async def pending_for(self, principal_ids: list[str], limit: int = 200) -> list[ApprovalRow]:
        """Pending approvals not requested by (or for) any of ``principal_ids``, oldest first."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                """SELECT action_id, decided_event, status, resolved_at FROM approvals
                   WHERE status = 'pending' AND NOT (principals && %s) ORDER BY opened_at LIMIT %s""",
                (principal_ids, limit),
            )
            return [ApprovalRow(r[0], bytes(r[1]), r[2], r[3], ()) for r in await cur.fetchall()]

    async def drain_outbox(self, publish, batch: int = 200) -> int:
        """Publish queued events in order and delete them; returns how many were sent."""
        sent = 0
        async with self.pool.connection() as conn, conn.transaction():
            # one drainer at a time keeps each action's events in the order they were written
            locked = await (await conn.execute("SELECT pg_try_advisory_xact_lock(hashtext('approval_outbox'))")).fetchone()
            if not locked[0]:
                return 0
            cur = await conn.execute(
                "SELECT id, topic, key, value FROM approval_outbox ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED", (batch,)
            )
            rows = await cur.fetchall()
            for row_id, topic, key, value in rows:
                await publish(topic, key.encode(), bytes(value))
                await conn.execute("DELETE FROM approval_outbox WHERE id = %s", (row_id,))
                sent += 1
        return sent
