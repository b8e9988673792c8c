"""Each request is decided once, even when a rebalance or a restart delivers it again.

Consumption is at-least-once: a request whose offset was not committed before its partition
moved to another worker arrives twice. The first decision is stored (keyed by action id)
before it is published; a redelivered request republishes that stored event — same event id,
same OPA decision id — instead of asking OPA again, which could answer differently.

A batch reads what was kept with one statement (``earlier_many``) and keeps its new decisions
with one statement (``keep_many``).
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

    async def earlier_many(self, action_ids: list[str]) -> dict[str, bytes]:
        """The decisions already made for any of ``action_ids``, encoded, by action id (one statement)."""
        if not action_ids:
            return {}
        async with self.pool.connection() as conn:
            rows = await (
                await conn.execute(
                    "SELECT action_id, decided_event FROM policy_decisions WHERE action_id = ANY(%b)", (action_ids,)
                )
            ).fetchall()
        return {action_id: bytes(event) for action_id, event in rows}

    async def keep_many(self, decided: dict[str, bytes]) -> dict[str, bytes]:
        """Store these decisions, each unless another worker stored one first, in one statement;
        returns the ones that stand, by action id."""
        if not decided:
            return {}
        ids, events = list(decided), list(decided.values())
        async with self.pool.connection() as conn:
            # The statement's snapshot does not see the rows it inserts, so what it inserted comes
            # from RETURNING and what was there before from the table: together, what stands.
            rows = await (
                await conn.execute(
                    "WITH inserted AS ("
                    " INSERT INTO policy_decisions (action_id, decided_event)"
                    " SELECT * FROM unnest(%b::text[], %b::bytea[]) ON CONFLICT DO NOTHING"
                    " RETURNING action_id, decided_event)"
                    " SELECT action_id, decided_event FROM inserted"
                    " UNION ALL"
                    " SELECT action_id, decided_event FROM policy_decisions"
                    " WHERE action_id = ANY(%b) AND action_id NOT IN (SELECT action_id FROM inserted)",
                    (ids, events, ids),
                )
            ).fetchall()
            standing = {action_id: bytes(event) for action_id, event in rows}
            missing = [action_id for action_id in ids if action_id not in standing]
            if missing:  # stored by a transaction that committed after this statement's snapshot
                rows = await (
                    await conn.execute(
                        "SELECT action_id, decided_event FROM policy_decisions WHERE action_id = ANY(%b)", (missing,)
                    )
                ).fetchall()
                standing.update({action_id: bytes(event) for action_id, event in rows})
        if len(standing) != len(ids):  # nothing deletes decisions
            raise RuntimeError("decisions vanished from policy_decisions while they were kept")
        return standing
