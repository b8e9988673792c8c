"""The history tables in PostgreSQL (``approval.history.HistoryStore``; DDL in ``approval.history``)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from psycopg_pool import AsyncConnectionPool

from keyturn.approval.history import ActionChange, ActionSummary, HistoryRow
from keyturn.core.text import storable

_UPSERT_ACTIONS = """INSERT INTO approval_history_actions AS a
        (action_id, requested_at, action, requester, acting_for, decision, approval, execution, other)
    SELECT u.action_id, u.requested_at, u.action, u.requester, ARRAY(SELECT jsonb_array_elements_text(u.acting_for)),
        u.decision, u.approval, u.execution, u.other
    FROM unnest(%b::text[], %b::bigint[], %b::text[], %b::text[], %b::jsonb[], %b::text[], %b::text[], %b::text[],
        %b::text[]) AS u(action_id, requested_at, action, requester, acting_for, decision, approval, execution, other)
    ON CONFLICT (action_id) DO UPDATE SET
        requested_at = {requested_at},
        action = COALESCE(a.action, EXCLUDED.action),
        requester = COALESCE(a.requester, EXCLUDED.requester),
        acting_for = CASE WHEN cardinality(a.acting_for) = 0 THEN EXCLUDED.acting_for ELSE a.acting_for END,
        decision = COALESCE(EXCLUDED.decision, a.decision),
        approval = COALESCE(EXCLUDED.approval, a.approval),
        execution = COALESCE(EXCLUDED.execution, a.execution),
        other = COALESCE(EXCLUDED.other, a.other)"""


def _action_columns(changes: Sequence[ActionChange]) -> tuple[list, ...]:
    """The changes as column arrays for ``unnest`` (acting-for principals as JSON arrays: unnest
    would flatten an array of arrays). Text comes from records other services wrote, so it is made
    ``storable`` first: one string PostgreSQL cannot hold would stop the history for everyone."""
    return (
        [storable(c.action_id) for c in changes],
        [c.at for c in changes],
        [storable(c.action) for c in changes],
        [storable(c.requester) for c in changes],
        [json.dumps([storable(p) for p in c.acting_for]) for c in changes],
        [storable(c.decision) for c in changes],
        [storable(c.approval) for c in changes],
        [storable(c.execution) for c in changes],
        [storable(c.other) for c in changes],
    )


_ROW_COLUMNS = "r.sequence, r.action_id, r.event_type, r.actor, r.occurred_at, r.payload_json, r.flags"
_ACTION_COLUMNS = "action_id, requested_at, action, requester, acting_for, decision, approval, execution, other"


class PgHistoryStore:
    """Rows keyed by the record's sequence: a batch stored twice (at-least-once) changes nothing."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    async def store(self, rows: Sequence[HistoryRow], changes: Sequence[ActionChange], keep_after: int | None) -> None:
        """Add a batch and drop what is older than ``keep_after`` (UTC ms; None: drop nothing), in
        one transaction."""
        async with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            # one statement per table for the batch; flags (``[a-z0-9_.-]+``) travel comma-joined,
            # since unnest would flatten an array of arrays
            if rows:
                await cur.execute(
                    """INSERT INTO approval_history_records
                               (sequence, action_id, event_type, actor, occurred_at, payload_json, flags)
                           SELECT u.sequence, u.action_id, u.event_type, u.actor, u.occurred_at, u.payload_json,
                               COALESCE(string_to_array(NULLIF(u.flags, ''), ','), '{}')
                           FROM unnest(%b::bigint[], %b::text[], %b::text[], %b::text[], %b::bigint[], %b::text[],
                               %b::text[])
                               AS u(sequence, action_id, event_type, actor, occurred_at, payload_json, flags)
                           ON CONFLICT (sequence) DO NOTHING""",
                    (
                        [r.sequence for r in rows],
                        [storable(r.action_id) for r in rows],
                        [storable(r.event_type) for r in rows],
                        [storable(r.actor) for r in rows],
                        [r.occurred_at for r in rows],
                        [storable(r.payload_json) for r in rows],
                        [",".join(r.flags) for r in rows],
                    ),
                )
            if changes:
                # one change per action (``history.coalesced``), so no row is updated twice by one
                # statement. The request's time when it is known, else the first record's: the
                # changes that carry the request set it, the others keep the earliest; stage
                # outcomes only move from unknown to known (a redelivered record sets the same value).
                for requested, rule in (
                    (True, "EXCLUDED.requested_at"),
                    (False, "LEAST(a.requested_at, EXCLUDED.requested_at)"),
                ):
                    part = [c for c in changes if c.requested == requested]
                    if part:
                        await cur.execute(_UPSERT_ACTIONS.format(requested_at=rule), _action_columns(part))
            if keep_after is None:
                return
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
