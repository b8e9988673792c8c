"""The approval service's own tables: pending approvals, votes, and three outboxes.

A pending approval's state is rebuilt from its decision, its accepted votes and the moment it
escalated (replayed through the pure state machine), so there is one source of truth and
nothing to migrate.

Everything that leaves the service is written in the same transaction as the state change
that causes it, and sent after commit, so a crash delays a message but never loses one:

- ``approval_outbox``: events for Kafka (resolutions, votes, dead letters);
- ``approval_notifications``: chat messages, one row per (action, channel, target, kind,
  occasion); the unique key makes a redelivered decision or a repeated sweep a no-op, and the
  row keeps the remote message id that later updates edit;
- ``approval_callbacks``: the requester's webhook, one row per (action, state).

``approval_signed_out_sessions`` holds the SHA-256 digest of what the signature of every console
session token signed out signs (never the token; ``http.session_digest``), until the token's own
expiry: every approval instance refuses it, and every other writing of its signature.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from keyturn.approval.channels import ANSWERABLE_MESSAGES

# How long a drain of the outbox waits for another one to finish (``ApprovalStore.drain_outbox``)
OUTBOX_LOCK_WAIT_MS = 1000

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
ALTER TABLE {schema}.approvals ADD COLUMN IF NOT EXISTS escalated_at timestamptz;
ALTER TABLE {schema}.approvals ADD COLUMN IF NOT EXISTS reminders_sent double precision[] NOT NULL DEFAULT '{{}}';
ALTER TABLE {schema}.approvals ADD COLUMN IF NOT EXISTS next_sweep_at timestamptz;
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
CREATE TABLE IF NOT EXISTS {schema}.approval_break_glass (
    action_id       text PRIMARY KEY,
    decided_event   bytea NOT NULL,
    noticed_at      timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {schema}.approval_notifications (
    id              bigserial PRIMARY KEY,
    action_id       text NOT NULL,
    channel         text NOT NULL,
    target          text NOT NULL,
    kind            text NOT NULL,
    occasion        text NOT NULL DEFAULT '',
    state           text NOT NULL DEFAULT 'pending',
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    claimed_at      timestamptz,
    last_error      text,
    remote_ref      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    UNIQUE (action_id, channel, target, kind, occasion)
);
CREATE INDEX IF NOT EXISTS approval_notifications_due
    ON {schema}.approval_notifications (next_attempt_at, id) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS approval_notifications_message
    ON {schema}.approval_notifications (channel, remote_ref) WHERE remote_ref IS NOT NULL;
CREATE TABLE IF NOT EXISTS {schema}.approval_interactions_seen (
    source          text NOT NULL,
    interaction     text NOT NULL,
    seen_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, interaction)
);
CREATE TABLE IF NOT EXISTS {schema}.approval_callback_targets (
    action_id       text PRIMARY KEY,
    url             text NOT NULL
);
CREATE TABLE IF NOT EXISTS {schema}.approval_callbacks (
    id              bigserial PRIMARY KEY,
    action_id       text NOT NULL,
    state           text NOT NULL,
    body            text NOT NULL,
    delivery        text NOT NULL DEFAULT 'pending',
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    UNIQUE (action_id, state)
);
CREATE INDEX IF NOT EXISTS approval_callbacks_due
    ON {schema}.approval_callbacks (next_attempt_at, id) WHERE delivery = 'pending';
CREATE TABLE IF NOT EXISTS {schema}.approval_signed_out_sessions (
    digest          bytea PRIMARY KEY,
    expires_at      timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS approval_signed_out_sessions_expiry
    ON {schema}.approval_signed_out_sessions (expires_at);
"""

# A claim older than this is an orphan of a crashed sender (every remote call times out sooner).
CLAIM_LEASE = timedelta(seconds=30)


@dataclass(frozen=True)
class ApprovalRow:
    action_id: str
    decided_event: bytes
    status: str
    resolved_at: datetime | None
    accepted_votes: tuple[bytes, ...]
    escalated_at: datetime | None = None
    reminders_sent: tuple[float, ...] = ()


@dataclass(frozen=True)
class Notification:
    """One chat message to send (or edit), as claimed from ``approval_notifications``."""

    id: int
    action_id: str
    channel: str
    target: str
    kind: str
    occasion: str
    attempts: int
    created_at: datetime
    state: str = "pending"


@dataclass(frozen=True)
class Callback:
    """One webhook delivery to the requester, with the URL it named."""

    id: int
    action_id: str
    state: str
    body: str
    url: str
    attempts: int


def _claimed(row: tuple[Any, ...]) -> Notification:
    """A claimed notification from (id, action_id, channel, target, kind, occasion, attempts, created_at)."""
    notification_id, action_id, channel, target, kind, occasion, attempts, created_at = row
    return Notification(
        notification_id, action_id, channel, target, kind, occasion, attempts, created_at, state="sending"
    )


def runs_by_topic(rows: list[Any]) -> list[list[Any]]:
    """Outbox rows ``(id, topic, key, value)`` in order, cut where the topic changes."""
    runs: list[list[Any]] = []
    for row in rows:
        if runs and runs[-1][-1][1] == row[1]:
            runs[-1].append(row)
        else:
            runs.append([row])
    return runs


@dataclass(frozen=True)
class OpeningApproval:
    """A pending approval to open (``open_many``)."""

    action_id: str
    decided_event: bytes
    principals: list[str]
    groups: list[str]
    opened_at: datetime
    expires_at: datetime
    next_sweep_at: datetime | None


_APPROVAL_COLUMNS = "action_id, decided_event, status, resolved_at, escalated_at, reminders_sent"


def _approval_row(row: Any, accepted_votes: Iterable[Any]) -> ApprovalRow:
    """An ``ApprovalRow`` from the ``_APPROVAL_COLUMNS`` of a row and its accepted votes, oldest first."""
    action_id, decided_event, status, resolved_at, escalated_at, reminders_sent = row[:6]
    return ApprovalRow(
        action_id,
        bytes(decided_event),
        status,
        resolved_at,
        tuple(bytes(v) for v in accepted_votes),
        escalated_at,
        tuple(reminders_sent or ()),
    )


class ApprovalStore:
    """The PostgreSQL tables behind the desk (it satisfies ``ports.DeskStore``) and its couriers."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A pooled connection in one transaction: committed on a normal exit, rolled back on an error."""
        async with self.pool.connection() as conn, conn.transaction():
            yield conn

    async def check(self) -> None:
        """Test the idle pooled connections and replace the dead ones (after a database restart)."""
        await self.pool.check()

    @asynccontextmanager
    async def clock_lease(self) -> AsyncIterator[bool]:
        """Whether this instance keeps the approval clock (expiry, reminders, escalation) of the
        namespace while the block runs: a session advisory lock on the schema, so of several
        approval instances on one namespace one at a time fires timers; the others skip the tick.
        A process that dies mid-tick loses its session, and the lock with it."""
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute("SELECT pg_try_advisory_lock(hashtext(current_schema() || '.approval_clock'))")
            ).fetchone()
            held = bool(row and row[0])
            try:
                yield held
            finally:
                if held:
                    try:
                        await conn.execute("SELECT pg_advisory_unlock(hashtext(current_schema() || '.approval_clock'))")
                    except Exception:
                        await conn.close()  # a session that may still hold the lock must not go back to the pool
                        raise

    # --- approvals ----------------------------------------------------------------------------

    @staticmethod
    async def open_many(conn: AsyncConnection, approvals: list[OpeningApproval]) -> set[str]:
        """Record new pending approvals, with when their first reminder or escalation falls due,
        in one statement; returns the action ids opened (the others were open already)."""
        if not approvals:
            return set()
        cur = await conn.execute(
            """INSERT INTO approvals (action_id, decided_event, principals, groups, opened_at, expires_at,
                                      next_sweep_at)
               SELECT a, e, ARRAY(SELECT jsonb_array_elements_text(p::jsonb)),
                      ARRAY(SELECT jsonb_array_elements_text(g::jsonb)), o, x, COALESCE(s, 'infinity'::timestamptz)
               FROM unnest(%b::text[], %b::bytea[], %b::text[], %b::text[], %b::timestamptz[], %b::timestamptz[],
                           %b::timestamptz[]) AS t(a, e, p, g, o, x, s)
               ON CONFLICT DO NOTHING RETURNING action_id""",
            (
                [a.action_id for a in approvals],
                [a.decided_event for a in approvals],
                [json.dumps(a.principals) for a in approvals],
                [json.dumps(a.groups) for a in approvals],
                [a.opened_at for a in approvals],
                [a.expires_at for a in approvals],
                [a.next_sweep_at for a in approvals],
            ),
        )
        return {row[0] for row in await cur.fetchall()}

    @staticmethod
    async def lock(conn: AsyncConnection, action_id: str) -> ApprovalRow | None:
        """The approval and its accepted votes, locked for this transaction."""
        cur = await conn.execute(
            f"SELECT {_APPROVAL_COLUMNS} FROM approvals WHERE action_id = %s FOR UPDATE", (action_id,)
        )
        row = await cur.fetchone()
        if row is None:
            return None
        votes = await conn.execute(
            "SELECT vote_event FROM approval_votes WHERE action_id = %s AND accepted ORDER BY id", (action_id,)
        )
        return _approval_row(row, [v[0] for v in await votes.fetchall()])

    async def read(self, action_id: str) -> ApprovalRow | None:
        """The approval and its accepted votes as they stand, in one statement and without a lock
        (pages, the approval API's GET and the desk's checks read; only votes lock, ``lock``)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"""SELECT {_APPROVAL_COLUMNS}, ARRAY(SELECT v.vote_event FROM approval_votes v
                       WHERE v.action_id = a.action_id AND v.accepted ORDER BY v.id)
                    FROM approvals a WHERE a.action_id = %s""",
                (action_id,),
            )
            row = await cur.fetchone()
        return None if row is None else _approval_row(row, row[6] or ())

    async def vote_history(self, action_id: str) -> list[bytes]:
        """Every vote recorded for the action, accepted or refused, oldest first."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT vote_event FROM approval_votes WHERE action_id = %s ORDER BY id", (action_id,)
            )
            return [bytes(r[0]) for r in await cur.fetchall()]

    async def break_glass_unreviewed(self, limit: int = 100) -> list[tuple[str, bytes]]:
        """Break-glass uses no review was accepted for yet, oldest first: (action id, decision)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                """SELECT b.action_id, b.decided_event FROM approval_break_glass b
                   WHERE NOT EXISTS (SELECT 1 FROM approval_votes v WHERE v.action_id = b.action_id AND v.accepted)
                   ORDER BY b.noticed_at LIMIT %s""",
                (limit,),
            )
            return [(r[0], bytes(r[1])) for r in await cur.fetchall()]

    @staticmethod
    async def record_vote(conn: AsyncConnection, action_id: str, accepted: bool, vote_event: bytes) -> None:
        await conn.execute(
            "INSERT INTO approval_votes (action_id, accepted, vote_event) VALUES (%s, %s, %s)",
            (action_id, accepted, vote_event),
        )

    @staticmethod
    async def resolve(conn: AsyncConnection, action_id: str, status: str, at: datetime) -> None:
        await conn.execute(
            "UPDATE approvals SET status = %s, resolved_at = %s WHERE action_id = %s", (status, at, action_id)
        )

    @staticmethod
    async def mark_escalated(conn: AsyncConnection, action_id: str, at: datetime) -> None:
        await conn.execute(
            "UPDATE approvals SET escalated_at = %s WHERE action_id = %s AND escalated_at IS NULL", (at, action_id)
        )

    @staticmethod
    async def mark_reminded(conn: AsyncConnection, action_id: str, fractions: tuple[float, ...]) -> None:
        await conn.execute(
            "UPDATE approvals SET reminders_sent = %s WHERE action_id = %s", (list(fractions), action_id)
        )

    async def due_for_expiry(self, now: datetime, limit: int = 100) -> list[str]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT action_id FROM approvals WHERE status = 'pending' AND expires_at <= %s ORDER BY "
                "expires_at LIMIT %s",
                (now, limit),
            )
            return [r[0] for r in await cur.fetchall()]

    async def due_for_sweep(self, now: datetime, limit: int = 200) -> list[str]:
        """Pending approvals with a reminder or an escalation due (never computed counts as due)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                """SELECT action_id FROM approvals WHERE status = 'pending' AND COALESCE(next_sweep_at,
                '-infinity') <= %s
                   ORDER BY next_sweep_at NULLS FIRST LIMIT %s""",
                (now, limit),
            )
            return [r[0] for r in await cur.fetchall()]

    @staticmethod
    async def set_next_sweep(conn: AsyncConnection, action_id: str, at: datetime | None) -> None:
        """When the next reminder or escalation falls due ('infinity' when none is left)."""
        await conn.execute(
            "UPDATE approvals SET next_sweep_at = COALESCE(%s, 'infinity'::timestamptz) WHERE action_id = %s",
            (at, action_id),
        )

    async def pending_for(self, principal_ids: list[str], limit: int = 200) -> list[ApprovalRow]:
        """Pending approvals not requested by (or for) any of ``principal_ids``, oldest first."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"""SELECT {_APPROVAL_COLUMNS} FROM approvals
                   WHERE status = 'pending' AND NOT (principals && %s) ORDER BY opened_at LIMIT %s""",
                (principal_ids, limit),
            )
            return [
                ApprovalRow(r[0], bytes(r[1]), r[2], r[3], (), r[4], tuple(r[5] or ())) for r in await cur.fetchall()
            ]

    @staticmethod
    async def note_break_glass(conn: AsyncConnection, action_id: str, decided_event: bytes) -> bool:
        """Remember a break-glass decision once; False on redelivery."""
        cur = await conn.execute(
            "INSERT INTO approval_break_glass (action_id, decided_event) VALUES (%s, %s) ON CONFLICT DO NOTHING "
            "RETURNING action_id",
            (action_id, decided_event),
        )
        return await cur.fetchone() is not None

    async def break_glass_decision(self, action_id: str) -> bytes | None:
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute("SELECT decided_event FROM approval_break_glass WHERE action_id = %s", (action_id,))
            ).fetchone()
            return bytes(row[0]) if row else None

    @staticmethod
    async def lock_break_glass(conn: AsyncConnection, action_id: str) -> bytes | None:
        """The break-glass decision, locked until the transaction ends: two reviews of one action
        are taken one after the other, so a reviewer's second review sees the first."""
        row = await (
            await conn.execute(
                "SELECT decided_event FROM approval_break_glass WHERE action_id = %s FOR UPDATE", (action_id,)
            )
        ).fetchone()
        return bytes(row[0]) if row else None

    # --- the Kafka outbox ---------------------------------------------------------------------

    @staticmethod
    async def enqueue(conn: AsyncConnection, topic: str, key: str, value: bytes) -> None:
        await conn.execute("INSERT INTO approval_outbox (topic, key, value) VALUES (%s, %s, %s)", (topic, key, value))

    async def drain_outbox(self, publish, batch: int = 200, *, publish_all=None) -> int:
        """Publish queued events in order and delete them; returns how many were sent.

        With ``publish_all`` (records sent in order, then every acknowledgement awaited) each run
        of rows for one topic goes out together, acknowledged before the next run is sent (so a
        vote still lands before the resolution it caused), and the rows are deleted in one
        statement once all were acknowledged."""
        async with self.pool.connection() as conn:
            try:
                async with conn.transaction():
                    # one drainer at a time keeps each action's events in the order they were written.
                    # The next one waits for the lock (briefly: a drain is a few ms): one that gave up
                    # at once lost a race with a drain that had already looked and found nothing, and
                    # what it had just committed waited for the clock's next tick. A drainer held up
                    # longer (the broker away) leaves the rows to that tick, and the caller goes on.
                    await conn.execute(f"SET LOCAL lock_timeout = '{OUTBOX_LOCK_WAIT_MS}ms'")
                    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('approval_outbox'))")
                    return await self._drain_locked(conn, publish, batch, publish_all)
            except psycopg.errors.LockNotAvailable:
                return 0

    @staticmethod
    async def _drain_locked(conn: AsyncConnection, publish, batch: int, publish_all) -> int:
        """``drain_outbox``'s work, in its transaction, holding the drainers' lock."""
        cur = await conn.execute(
            "SELECT id, topic, key, value FROM approval_outbox ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED",
            (batch,),
        )
        rows = await cur.fetchall()
        if publish_all is not None:
            for run in runs_by_topic(rows):
                await publish_all([(topic, key.encode(), bytes(value)) for _, topic, key, value in run])
            if rows:
                await conn.execute("DELETE FROM approval_outbox WHERE id = ANY(%b)", ([r[0] for r in rows],))
            return len(rows)
        sent = 0
        for row_id, topic, key, value in rows:
            await publish(topic, key.encode(), bytes(value))
            await conn.execute("DELETE FROM approval_outbox WHERE id = %s", (row_id,))
            sent += 1
        return sent

    # --- chat notifications -------------------------------------------------------------------

    @staticmethod
    async def enqueue_notification(
        conn: AsyncConnection, action_id: str, channel: str, target: str, kind: str, occasion: str = ""
    ) -> None:
        """Queue one chat message; a second identical request (redelivery, repeated sweep) is a no-op."""
        await conn.execute(
            """INSERT INTO approval_notifications (action_id, channel, target, kind, occasion)
               VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING""",
            (action_id, channel, target, kind, occasion),
        )

    @staticmethod
    async def message_targets(
        conn: AsyncConnection, action_id: str, kinds: tuple[str, ...] = ANSWERABLE_MESSAGES
    ) -> list[tuple[str, str]]:
        """(channel, target) of every message of ``kinds`` posted or queued for the action (by
        default the approval messages; a break-glass notice is ``("break_glass",)``)."""
        cur = await conn.execute(
            """SELECT DISTINCT channel, target FROM approval_notifications
               WHERE action_id = %s AND kind = ANY(%s) ORDER BY channel, target""",
            (action_id, list(kinds)),
        )
        return [(r[0], r[1]) for r in await cur.fetchall()]

    async def claim_notifications(self, now: datetime, limit: int = 50) -> list[Notification]:
        """Claim due messages (oldest first) so that no other sender takes them."""
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                """UPDATE approval_notifications SET state = 'sending', claimed_at = %s, attempts = attempts + 1
                   WHERE id IN (SELECT id FROM approval_notifications WHERE state = 'pending' AND next_attempt_at <= %s
                                ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED)
                   RETURNING id, action_id, channel, target, kind, occasion, attempts, created_at""",
                (now, now, limit),
            )
            rows = sorted(await cur.fetchall())
        return [_claimed(row) for row in rows]

    async def orphaned_notifications(self, now: datetime) -> list[Notification]:
        """Messages claimed by a sender that stopped before saying whether they went out."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                """SELECT id, action_id, channel, target, kind, occasion, attempts, created_at FROM
                approval_notifications
                   WHERE state = 'sending' AND claimed_at < %s ORDER BY id""",
                (now - CLAIM_LEASE,),
            )
            return [_claimed(row) for row in await cur.fetchall()]

    async def delivered(self, notification_id: int, remote_ref: str | None, now: datetime) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE approval_notifications SET state = 'delivered', remote_ref = %s, delivered_at = %s, "
                "last_error = NULL WHERE id = %s",
                (remote_ref, now, notification_id),
            )

    async def retry_later(self, notification_id: int, error: str, at: datetime, *, give_up: bool) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE approval_notifications SET state = %s, next_attempt_at = %s, last_error = %s WHERE id = %s",
                ("failed" if give_up else "pending", at, error[:2000], notification_id),
            )

    async def message_of(
        self, action_id: str, channel: str, target: str, kinds: tuple[str, ...] = ANSWERABLE_MESSAGES
    ) -> tuple[str, str, str | None] | None:
        """(kind, state, remote ref) of the message on ``target``: the approval message (the
        original, else the escalation) by default, or the first of ``kinds``."""
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute(
                    """SELECT kind, state, remote_ref FROM approval_notifications
                   WHERE action_id = %s AND channel = %s AND target = %s AND kind = ANY(%s)
                   ORDER BY (kind = 'opened') DESC, id LIMIT 1""",
                    (action_id, channel, target, list(kinds)),
                )
            ).fetchone()
            return (row[0], row[1], row[2]) if row else None

    async def actions_shown_in(self, channel: str, remote_ref: str) -> list[str]:
        """The actions whose message with answer buttons (an approval's Approve / Deny, a break-glass
        notice's No objection / Object) went out on ``channel`` as ``remote_ref``."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                """SELECT DISTINCT action_id FROM approval_notifications
                   WHERE channel = %s AND remote_ref = %s AND state = 'delivered'
                     AND kind IN ('opened', 'escalated', 'break_glass')
                   ORDER BY action_id""",
                (channel, remote_ref),
            )
            return [r[0] for r in await cur.fetchall()]

    async def notifications_of(self, action_id: str) -> list[tuple[str, str, str, str, str, datetime | None]]:
        """(channel, target, kind, occasion, state, delivered_at) of every message for the action."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                """SELECT channel, target, kind, occasion, state, delivered_at FROM approval_notifications
                   WHERE action_id = %s ORDER BY id""",
                (action_id,),
            )
            return [tuple(r) for r in await cur.fetchall()]

    # --- replayed interactions ----------------------------------------------------------------

    async def first_sighting(self, source: str, interaction: str) -> bool:
        """True the first time an interaction id is seen from ``source``; False for a replay.

        The id is kept as its SHA-256: it only has to be recognised again, and it is made of
        whatever the chat request carried."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "INSERT INTO approval_interactions_seen (source, interaction) VALUES (%s, %s) ON CONFLICT DO "
                "NOTHING RETURNING source",
                (source, "sha256:" + hashlib.sha256(interaction.encode(errors="surrogatepass")).hexdigest()),
            )
            return await cur.fetchone() is not None

    # --- requester webhooks -------------------------------------------------------------------

    @staticmethod
    async def set_callback_target(conn: AsyncConnection, action_id: str, url: str) -> None:
        await conn.execute(
            "INSERT INTO approval_callback_targets (action_id, url) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            (action_id, url),
        )

    @staticmethod
    async def enqueue_callback(conn: AsyncConnection, action_id: str, state: str, body: str) -> None:
        await conn.execute(
            "INSERT INTO approval_callbacks (action_id, state, body) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
            (action_id, state, body),
        )

    async def claim_callbacks(self, now: datetime, limit: int = 20) -> list[Callback]:
        """Due webhook deliveries whose action named a callback URL, oldest first."""
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                """UPDATE approval_callbacks c SET attempts = c.attempts + 1, next_attempt_at = %s
                   FROM approval_callback_targets t
                   WHERE c.action_id = t.action_id AND c.id IN (
                       SELECT id FROM approval_callbacks WHERE delivery = 'pending' AND next_attempt_at <= %s
                       ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED)
                   RETURNING c.id, c.action_id, c.state, c.body, t.url, c.attempts""",
                (now + CLAIM_LEASE, now, limit),
            )
            return [Callback(*row) for row in sorted(await cur.fetchall())]

    async def forget_untargeted_callbacks(self, older_than: datetime) -> None:
        """Drop execution outcomes of actions that never named a callback URL."""
        async with self.pool.connection() as conn:
            await conn.execute(
                """DELETE FROM approval_callbacks c WHERE c.created_at < %s AND c.delivery = 'pending'
                   AND NOT EXISTS (SELECT 1 FROM approval_callback_targets t WHERE t.action_id = c.action_id)""",
                (older_than,),
            )

    async def callback_done(
        self, callback_id: int, delivery: str, error: str | None, now: datetime, next_attempt_at: datetime | None = None
    ) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                """UPDATE approval_callbacks SET delivery = %s, last_error = %s,
                   delivered_at = CASE WHEN %s::text = 'delivered' THEN %s ELSE delivered_at END,
                   next_attempt_at = COALESCE(%s, next_attempt_at) WHERE id = %s""",
                (delivery, error, delivery, now, next_attempt_at, callback_id),
            )

    # --- console sessions signed out ----------------------------------------------------------

    async def end_session(self, digest: bytes, expires_at: datetime, now: datetime) -> None:
        """Record a signed-out session token by its ``digest`` (``http.session_digest``) until ``expires_at`` (the
        token's own expiry: after it the verifier refuses the token anyway), and forget the ones
        whose expiry has passed at ``now``. Committed on its own, at once."""
        async with self.pool.connection() as conn:
            await conn.execute(
                """INSERT INTO approval_signed_out_sessions (digest, expires_at) VALUES (%s, %s)
                   ON CONFLICT (digest) DO UPDATE SET expires_at = GREATEST(
                       approval_signed_out_sessions.expires_at, EXCLUDED.expires_at)""",
                (digest, expires_at),
            )
            await conn.execute("DELETE FROM approval_signed_out_sessions WHERE expires_at <= %s", (now,))

    async def session_ended(self, digest: bytes) -> bool:
        """Whether the session token with this ``digest`` was signed out (one primary-key
        lookup: what every console page costs)."""
        async with self.pool.connection() as conn:
            row = await (
                await conn.execute("SELECT 1 FROM approval_signed_out_sessions WHERE digest = %s", (digest,))
            ).fetchone()
            return row is not None
