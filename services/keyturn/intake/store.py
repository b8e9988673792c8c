"""The intake's own tables: accepted requests (an outbox until published) and their status.

Idempotency is a unique constraint on (requester, idempotency_key), so two concurrent
submissions with one key cannot both create an action, even across intake replicas.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from keyturn.core.lifecycle import ActionState, IllegalTransition, advance, state_after

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
    published        boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (requester, idempotency_key)
);
CREATE INDEX IF NOT EXISTS intake_actions_unpublished ON {schema}.intake_actions (created_at) WHERE NOT published;
"""


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


_COLUMNS = "action_id, requester, principals, payload_digest, action, resource, state, reasons, result, history, requested_event, published"


def _row(row: dict[str, Any]) -> StoredAction:
    return StoredAction(**{**row, "state": ActionState(row["state"]), "requested_event": bytes(row["requested_event"])})


class ActionStore:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    async def insert_requested(
        self, *, action_id: str, requester: str, principals: list[str], idempotency_key: str | None,
        payload_digest: str, action: str, resource: str, requested_event: bytes, at: datetime,
    ) -> tuple[StoredAction, bool]:
        """(the stored action, True) when new; (the existing one, False) when the key was used."""
        history = [{"state": ActionState.REQUESTED.value, "at": at.isoformat(), "event": "ActionRequested"}]
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"""INSERT INTO intake_actions (action_id, requester, principals, idempotency_key, payload_digest,
                        action, resource, state, history, requested_event)
                    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                    ON CONFLICT DO NOTHING RETURNING {_COLUMNS}""",
                (action_id, requester, principals, idempotency_key, payload_digest, action, resource,
                 ActionState.REQUESTED.value, json.dumps(history), requested_event),
            )
            row = await cur.fetchone()
            if row is not None:
                return _row(row), True
        existing = await self.get(action_id)
        if existing is None:
            raise RuntimeError(f"action {action_id} conflicted on insert but cannot be read")
        return existing, False

    async def mark_published(self, action_id: str) -> None:
        async with self.pool.connection() as conn:
            await conn.execute("UPDATE intake_actions SET published = true WHERE action_id = %s", (action_id,))

    async def unpublished(self, older_than_s: float = 10.0, limit: int = 500) -> list[StoredAction]:
        """Accepted requests whose event may not have reached Kafka (crash between the two)."""
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"""SELECT {_COLUMNS} FROM intake_actions WHERE NOT published
                    AND created_at < now() - make_interval(secs => %s) ORDER BY created_at LIMIT %s""",
                (older_than_s, limit),
            )
            return [_row(r) for r in await cur.fetchall()]

    async def get(self, action_id: str) -> StoredAction | None:
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(f"SELECT {_COLUMNS} FROM intake_actions WHERE action_id = %s", (action_id,))
            row = await cur.fetchone()
            return _row(row) if row else None

    async def apply(self, action_id: str, event: Any, entry: dict[str, Any], *, reasons: list[str] | None = None, result: Any = None) -> ActionState | None:
        """Record a lifecycle event: history in time order, the state only ever moving forward.

        Events of one action arrive on different topics, so a later stage may come first; an
        earlier one arriving late joins the history without moving the state back. Duplicates
        (redelivery) and contradictions (an event after a different terminal state) are ignored.
        """
        async with self.pool.connection() as conn:
            async with conn.transaction():
                cur = await conn.execute("SELECT state, history FROM intake_actions WHERE action_id = %s FOR UPDATE", (action_id,))
                row = await cur.fetchone()
                if row is None:
                    return None  # submitted by another deployment or before this store existed
                current, history = ActionState(row[0]), row[1]
                try:
                    state = advance(current, event)
                except IllegalTransition:
                    return None
                entry = {**entry, "state": state_after(event).value}
                if any(e.get("event") == entry["event"] and e.get("state") == entry["state"] for e in history):
                    return state
                history = sorted([*history, entry], key=lambda e: e.get("at", ""))
                moved = state is not current
                await conn.execute(
                    """UPDATE intake_actions SET state = %s, history = %s::jsonb,
                           reasons = COALESCE(%s::jsonb, reasons), result = COALESCE(%s::jsonb, result), updated_at = %s
                       WHERE action_id = %s""",
                    (state.value, json.dumps(history),
                     json.dumps(reasons) if moved and reasons is not None else None,
                     json.dumps(result) if result is not None else None,
                     datetime.now(timezone.utc), action_id),
                )
                return state
