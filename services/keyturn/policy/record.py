"""Each request is decided once, even when a rebalance or a restart delivers it again.

Consumption is at-least-once: a request whose offset was not committed before its partition
moved to another worker arrives twice. The first decision is stored (keyed by action id)
before it is published; a redelivered request republishes that stored event — same event id,
same OPA decision id — instead of asking OPA again, which could answer differently.
"""

from __future__ import annotations

from psycopg_pool import AsyncConnectionPool

DDL = """
CREATE TABLE IF NOT EXISTS {schema}.policy_decisions (
    action_id      text PRIMARY KEY,
    decided_event  bytea NOT NULL,
    decided_at     timestamptz NOT NULL DEFAULT now()
);
"""


class DecisionRecord:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    async def earlier(self, action_id: str) -> bytes | None:
        """The decision already made for ``action_id``, encoded, if any."""
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute("SELECT decided_event FROM policy_decisions WHERE action_id = %s", (action_id,))
            ).fetchone()
        return bytes(row[0]) if row else None

    async def keep(self, action_id: str, decided_event: bytes) -> bytes:
        """Store this decision unless another worker stored one first; returns the one that stands."""
        async with self.pool.connection() as conn:
            await conn.execute(
                "INSERT INTO policy_decisions (action_id, decided_event) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (action_id, decided_event),
            )
            row = await (
                await conn.execute("SELECT decided_event FROM policy_decisions WHERE action_id = %s", (action_id,))
            ).fetchone()
        if row is None:  # inserted or already there: only a concurrent delete could remove it, and nothing deletes
            raise RuntimeError(f"the decision of {action_id} vanished from policy_decisions")
        return bytes(row[0])
