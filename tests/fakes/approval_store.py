"""An in-memory ``DeskStore`` (``keyturn.approval.ports``) with the guarantees of the PostgreSQL one:

- a transaction commits everything it wrote or nothing: an error inside it restores the tables;
- transactions are serialised (one at a time), so the row lock serialises as ``FOR UPDATE`` does;
- keyed writes (approval, break-glass note, notification, callback) are no-ops the second time;
- the outbox publishes in the order rows were written and deletes a row only once the publisher
  took it, so a publisher that fails leaves it (and everything after it) for the next drain;
- ``first_sighting`` is kept outside the tables a rollback restores, as PostgreSQL commits it on
  its own connection: a replay stays a replay even when the answer after it rolled back;
- signed-out sessions (``end_session``, ``session_ended``) are kept the same way, by digest with
  their expiry, and those past their expiry are forgotten at the next sign-out; two desks (two
  approval instances) sharing one store share them, as instances sharing PostgreSQL do.
  ``session_lookups`` counts the lookups, as a test of their cost reads it.

Nothing is ever delivered here: ``notifications_of`` reports every message as still pending.

``fail_next_drain`` makes the next drain raise a database error, as a restart after commit would.
An action id holding a NUL character is refused where it is looked up or written, as psycopg
refuses to send one to PostgreSQL (``DataError``).
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg

from keyturn.approval.channels import ANSWERABLE_MESSAGES
from keyturn.approval.ports import Publish
from keyturn.approval.store import ApprovalRow, runs_by_topic


@dataclass
class _Approval:
    action_id: str
    decided_event: bytes
    principals: list[str]
    groups: list[str]
    opened_at: datetime
    expires_at: datetime
    status: str = "pending"
    resolved_at: datetime | None = None
    escalated_at: datetime | None = None
    reminders_sent: tuple[float, ...] = ()
    next_sweep_at: datetime | None = None  # None: never computed (due); see ``sweep_done``
    sweep_done: bool = False  # no reminder or escalation left ('infinity' in PostgreSQL)


@dataclass
class _Tables:
    approvals: dict[str, _Approval] = field(default_factory=dict)
    votes: list[tuple[str, bool, bytes]] = field(default_factory=list)
    outbox: list[tuple[int, str, str, bytes]] = field(default_factory=list)
    break_glass: dict[str, bytes] = field(default_factory=dict)
    notifications: dict[tuple[str, str, str, str, str], int] = field(default_factory=dict)
    callback_targets: dict[str, str] = field(default_factory=dict)
    callbacks: dict[tuple[str, str], str] = field(default_factory=dict)
    next_id: int = 1


class InMemoryApprovalStore:
    """The desk's store, in memory (see the module docstring for what it guarantees)."""

    def __init__(self) -> None:
        self.tables = _Tables()
        self._serial = asyncio.Lock()
        self._in_transaction = False
        self.fail_next_drain = False
        self.checked = 0
        self.clock_held = False
        self.seen: set[tuple[str, str]] = set()  # (source, interaction): committed at once, never rolled back
        self.signed_out: dict[bytes, datetime] = {}  # token digest → its expiry: committed at once, likewise
        self.session_lookups = 0

    # --- transactions -------------------------------------------------------------------------

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        async with self._serial:
            before = copy.deepcopy(self.tables)
            self._in_transaction = True
            try:
                yield self
            except BaseException:
                self.tables = before  # rolled back: nothing it wrote survives
                raise
            finally:
                self._in_transaction = False

    def _need_transaction(self, conn: Any) -> _Tables:
        assert conn is self and self._in_transaction, "a write outside the desk's transaction"
        return self.tables

    async def check(self) -> None:
        self.checked += 1

    @asynccontextmanager
    async def clock_lease(self) -> AsyncIterator[bool]:
        """One holder at a time among the desks sharing this store; the others get False."""
        held = not self.clock_held
        self.clock_held = True
        try:
            yield held
        finally:
            if held:
                self.clock_held = False

    # --- approvals ----------------------------------------------------------------------------

    async def _open(
        self,
        conn: Any,
        action_id: str,
        decided_event: bytes,
        principals: list[str],
        groups: list[str],
        opened_at: datetime,
        expires_at: datetime,
    ) -> bool:
        tables = self._need_transaction(conn)
        if action_id in tables.approvals:
            return False
        tables.approvals[action_id] = _Approval(
            action_id, decided_event, list(principals), list(groups), opened_at, expires_at
        )
        return True

    async def open_many(self, conn: Any, approvals: list[Any]) -> set[str]:
        opened = set()
        for a in approvals:
            if await self._open(conn, a.action_id, a.decided_event, a.principals, a.groups, a.opened_at, a.expires_at):
                await self.set_next_sweep(conn, a.action_id, a.next_sweep_at)
                opened.add(a.action_id)
        return opened

    async def lock(self, conn: Any, action_id: str) -> ApprovalRow | None:
        tables = self._need_transaction(conn)
        return self._row(tables, _text(action_id))

    async def read(self, action_id: str) -> ApprovalRow | None:
        async with self.transaction() as conn:
            return await self.lock(conn, action_id)

    @staticmethod
    def _row(tables: _Tables, action_id: str) -> ApprovalRow | None:
        found = tables.approvals.get(action_id)
        if found is None:
            return None
        accepted = tuple(vote for owner, ok, vote in tables.votes if owner == action_id and ok)
        return ApprovalRow(
            found.action_id,
            found.decided_event,
            found.status,
            found.resolved_at,
            accepted,
            found.escalated_at,
            found.reminders_sent,
        )

    async def record_vote(self, conn: Any, action_id: str, accepted: bool, vote_event: bytes) -> None:
        self._need_transaction(conn).votes.append((action_id, accepted, vote_event))

    async def resolve(self, conn: Any, action_id: str, status: str, at: datetime) -> None:
        approval = self._need_transaction(conn).approvals[action_id]
        approval.status, approval.resolved_at = status, at

    async def mark_escalated(self, conn: Any, action_id: str, at: datetime) -> None:
        approval = self._need_transaction(conn).approvals[action_id]
        approval.escalated_at = approval.escalated_at or at

    async def mark_reminded(self, conn: Any, action_id: str, fractions: tuple[float, ...]) -> None:
        self._need_transaction(conn).approvals[action_id].reminders_sent = tuple(fractions)

    async def set_next_sweep(self, conn: Any, action_id: str, at: datetime | None) -> None:
        approval = self._need_transaction(conn).approvals[action_id]
        approval.next_sweep_at, approval.sweep_done = at, at is None

    async def due_for_expiry(self, now: datetime, limit: int = 100) -> list[str]:
        due = sorted(
            (a.expires_at, a.action_id)
            for a in self.tables.approvals.values()
            if a.status == "pending" and a.expires_at <= now
        )
        return [action_id for _, action_id in due[:limit]]

    async def due_for_sweep(self, now: datetime, limit: int = 200) -> list[str]:
        due = [
            a.action_id
            for a in self.tables.approvals.values()
            if a.status == "pending" and not a.sweep_done and (a.next_sweep_at is None or a.next_sweep_at <= now)
        ]
        return due[:limit]

    async def note_break_glass(self, conn: Any, action_id: str, decided_event: bytes) -> bool:
        tables = self._need_transaction(conn)
        if action_id in tables.break_glass:
            return False
        tables.break_glass[action_id] = decided_event
        return True

    async def break_glass_decision(self, action_id: str) -> bytes | None:
        return self.tables.break_glass.get(_text(action_id))

    async def lock_break_glass(self, conn: Any, action_id: str) -> bytes | None:
        return self._need_transaction(conn).break_glass.get(action_id)

    # --- the Kafka outbox ---------------------------------------------------------------------

    async def enqueue(self, conn: Any, topic: str, key: str, value: bytes) -> None:
        tables = self._need_transaction(conn)
        _text(key)
        tables.outbox.append((tables.next_id, topic, key, value))
        tables.next_id += 1

    async def drain_outbox(self, publish: Publish, batch: int = 200, *, publish_all: Any = None) -> int:
        if self.fail_next_drain:
            self.fail_next_drain = False
            raise psycopg.OperationalError("the database went away after the commit")
        sent = 0
        async with self._serial:  # one drainer at a time, as the advisory lock makes it
            rows = list(self.tables.outbox[:batch])
            if publish_all is not None:
                for run in runs_by_topic(rows):
                    await publish_all([(topic, key.encode(), value) for _, topic, key, value in run])
                for row in rows:
                    self.tables.outbox.remove(row)
                return len(rows)
            for row in rows:
                _, topic, key, value = row
                await publish(topic, key.encode(), value)
                self.tables.outbox.remove(row)
                sent += 1
        return sent

    # --- notifications and webhooks -----------------------------------------------------------

    async def enqueue_notification(
        self, conn: Any, action_id: str, channel: str, target: str, kind: str, occasion: str = ""
    ) -> None:
        tables = self._need_transaction(conn)
        tables.notifications.setdefault((action_id, channel, target, kind, occasion), len(tables.notifications) + 1)

    async def message_targets(
        self, conn: Any, action_id: str, kinds: tuple[str, ...] = ANSWERABLE_MESSAGES
    ) -> list[tuple[str, str]]:
        tables = self._need_transaction(conn)
        return sorted(
            {
                (channel, target)
                for (owner, channel, target, kind, _) in tables.notifications
                if owner == action_id and kind in kinds
            }
        )

    async def set_callback_target(self, conn: Any, action_id: str, url: str) -> None:
        self._need_transaction(conn).callback_targets.setdefault(action_id, url)

    async def enqueue_callback(self, conn: Any, action_id: str, state: str, body: str) -> None:
        self._need_transaction(conn).callbacks.setdefault((action_id, state), body)

    # --- what the routes read -----------------------------------------------------------------

    async def pending_for(self, principal_ids: list[str], limit: int = 200) -> list[ApprovalRow]:
        """Pending approvals not requested by (or for) any of ``principal_ids``, oldest first; as the
        PostgreSQL store, without their votes (``read`` has them)."""
        mine = set(principal_ids)
        pending = sorted(
            (a.opened_at, a.action_id)
            for a in self.tables.approvals.values()
            if a.status == "pending" and not mine & set(a.principals)
        )
        rows = [self.tables.approvals[action_id] for _, action_id in pending[:limit]]
        return [
            ApprovalRow(a.action_id, a.decided_event, a.status, a.resolved_at, (), a.escalated_at, a.reminders_sent)
            for a in rows
        ]

    async def vote_history(self, action_id: str) -> list[bytes]:
        return [vote for owner, _, vote in self.tables.votes if owner == _text(action_id)]

    async def break_glass_unreviewed(self, limit: int = 100) -> list[tuple[str, bytes]]:
        """As the PostgreSQL store: noted order stands for ``noticed_at``."""
        reviewed = {owner for owner, accepted, _ in self.tables.votes if accepted}
        return [(a, event) for a, event in self.tables.break_glass.items() if a not in reviewed][:limit]

    async def notifications_of(self, action_id: str) -> list[tuple[str, str, str, str, str, datetime | None]]:
        return [
            (channel, target, kind, occasion, "pending", None)
            for channel, target, kind, occasion in self.queued(action_id)
        ]

    async def first_sighting(self, source: str, interaction: str) -> bool:
        if (source, interaction) in self.seen:
            return False
        self.seen.add((source, interaction))
        return True

    # --- console sessions signed out ----------------------------------------------------------

    async def end_session(self, digest: bytes, expires_at: datetime, now: datetime) -> None:
        assert isinstance(digest, bytes) and len(digest) == 32, "a SHA-256 digest, never the token"
        self.signed_out[digest] = max(expires_at, self.signed_out.get(digest, expires_at))
        self.signed_out = {d: until for d, until in self.signed_out.items() if until > now}

    async def session_ended(self, digest: bytes) -> bool:
        self.session_lookups += 1
        return digest in self.signed_out

    # --- what a test reads --------------------------------------------------------------------

    def queued(self, action_id: str) -> list[tuple[str, str, str, str]]:
        """(channel, target, kind, occasion) of every message queued for the action, in order."""
        rows = sorted((number, key) for key, number in self.tables.notifications.items() if key[0] == action_id)
        return [key[1:] for _, key in rows]


def _text(value: str) -> str:
    """``value``, unless PostgreSQL could not hold it as text: then the error psycopg raises."""
    if "\x00" in value:
        raise psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
    return value


class FakePolicyEngine:
    """The ``keyturn/approval`` answer from a table of who counts for which groups, and that table
    as the policy's ``keyturn/groups`` data (group → members); ``down`` makes every question fail
    as an unreachable engine does."""

    def __init__(self, members: dict[str, tuple[str, ...]]) -> None:
        self.members = members
        self.down = False
        self.asked = 0

    async def query(self, path: str, input_document: dict[str, Any]) -> Any:
        from keyturn.policy.opa import OpaAnswer, PolicyUnavailable

        self.asked += 1
        if self.down:
            raise PolicyUnavailable("the policy engine is not answering (fake)")
        if path == "keyturn/groups":
            groups: dict[str, list[str]] = {}
            for member, named in self.members.items():
                for group in named:
                    groups.setdefault(group, []).append(member)
            return OpaAnswer(groups, None)
        approver = input_document["approver"]["id"]
        decision = input_document["decision"]
        required = {group["name"] for group in (decision["approvals"] or {}).get("groups", [])}
        if decision["outcome"] == "allowed" and decision.get("break_glass"):
            required = {"security"}  # the policy's default break-glass reviewers
        groups = tuple(sorted(set(self.members.get(approver, ())) & required))
        return OpaAnswer({"may_approve": bool(groups), "counts_for": list(groups), "groups": sorted(required)}, None)


class Broker:
    """A publisher that records what it was sent, and can refuse (as an unreachable broker)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.refuse = False

    async def __call__(self, topic: str, key: bytes, value: bytes) -> None:
        if self.refuse:
            raise ConnectionError("the broker is not answering (fake)")
        self.sent.append((topic, key, value))
