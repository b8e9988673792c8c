"""The history tables in PostgreSQL (``approval.history.HistoryStore``; DDL in ``approval.history``)."""

from __future__ import annotations

from collections.abc import Sequence

from psycopg_pool import AsyncConnectionPool

from keyturn.approval.history import ActionChange, ActionSummary, HistoryRow

_ROW_COLUMNS = "r.sequence, r.action_id, r.event_type, r.actor, r.occurred_at, r.payload_json, r.flags"
_ACTION_COLUMNS = "action_id, requested_at, action, requester, acting_for, decision, approval, execution, other"


class PgHistoryStore:
    """Rows keyed by the record's sequence: a batch stored twice (at-least-once) changes nothing."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    async def store(self, rows: Sequence[HistoryRow], changes: Sequence[ActionChange], keep_after: int) -> None:
        """Add a batch and drop what is older than ``keep_after`` (UTC ms), in one transaction."""
        async with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            if rows:
                await cur.executemany(
                    """INSERT INTO approval_history_records
                               (sequence, action_id, event_type, actor, occurred_at, payload_json, flags)
                           VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (sequence) DO NOTHING""",
                    [
                        (r.sequence, r.action_id, r.event_type, r.actor, r.occurred_at, r.payload_json, list(r.flags))
                        for r in rows
                    ],
                )
            if changes:
                # the request's time when it is known, else the first record's; stage outcomes
                # only move from unknown to known (a redelivered record sets the same value)
                await cur.executemany(
                    """INSERT INTO approval_history_actions AS a
                               (action_id, requested_at, action, requester, acting_for, decision, approval, execution,
                                other)
                           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
                           ON CONFLICT (action_id) DO UPDATE SET
                               requested_at = CASE WHEN %s THEN EXCLUDED.requested_at
                                                   ELSE LEAST(a.requested_at, EXCLUDED.requested_at) END,
                               action = COALESCE(a.action, EXCLUDED.action),
                               requester = COALESCE(a.requester, EXCLUDED.requester),
                               acting_for = CASE WHEN cardinality(a.acting_for) = 0 THEN EXCLUDED.acting_for
                                                 ELSE a.acting_for END,
                               decision = COALESCE(EXCLUDED.decision, a.decision),
                               approval = COALESCE(EXCLUDED.approval, a.approval),
                               execution = COALESCE(EXCLUDED.execution, a.execution),
                               other = COALESCE(EXCLUDED.other, a.other)""",
                    [
                        (
                            c.action_id,
                            c.at,
                            c.action,
                            c.requester,
                            list(c.acting_for),
                            c.decision,
                            c.approval,
                            c.execution,
                            c.other,
                            c.requested,
                        )
                        for c in changes
                    ],
                )
            await cur.execute(
                "DELETE FROM approval_history_records WHERE action_id IN "
                "(SELECT action_id FROM approval_history_actions WHERE requested_at < %s)",
                (keep_after,),
            )
            await cur.execute("DELETE FROM approval_history_actions WHERE requested_at < %s", (keep_after,))

    async def rows_since(self, since: int) -> list[HistoryRow]:
        """Every record of the actions requested at or after ``since``, in chain order."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"""SELECT {_ROW_COLUMNS} FROM approval_history_records r
                    JOIN approval_history_actions a USING (action_id)
                    WHERE a.requested_at >= %s ORDER BY r.sequence""",
                (since,),
            )
            return [_row(values) for values in await cur.fetchall()]

    async def rows_of(self, action_id: str) -> list[HistoryRow]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT {_ROW_COLUMNS} FROM approval_history_records r WHERE r.action_id = %s ORDER BY r.sequence",
                (action_id,),
            )
            return [_row(values) for values in await cur.fetchall()]

    async def actions(self, since: int, until: int, search: str, limit: int) -> list[ActionSummary]:
        """The newest actions requested in ``[since, until)`` whose id, type, requester or acting-for
        principal contains ``search`` (case-blind)."""
        pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"""SELECT {_ACTION_COLUMNS} FROM approval_history_actions
                    WHERE requested_at >= %s AND requested_at < %s AND (%s = '' OR action_id ILIKE %s OR action ILIKE %s
                          OR requester ILIKE %s OR array_to_string(acting_for, ' ') ILIKE %s)
                    ORDER BY requested_at DESC, action_id LIMIT %s""",
                (since, until, search, pattern, pattern, pattern, pattern, limit),
            )
            return [
                ActionSummary(a, at, action, requester, tuple(chain or ()), decision, approval, execution, other)
                for a, at, action, requester, chain, decision, approval, execution, other in await cur.fetchall()
            ]


def _row(values: tuple) -> HistoryRow:
    sequence, action_id, event_type, actor, occurred_at, payload_json, flags = values
    return HistoryRow(sequence, action_id, event_type, actor, occurred_at, payload_json, tuple(flags or ()))
