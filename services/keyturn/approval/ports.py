"""What the approval desk needs from the world, as small protocols.

``ApprovalStore`` (PostgreSQL) is the real ``DeskStore``; ``tests/fakes/approval_store.py`` is an
in-memory one with the same guarantees, so the desk is unit-tested without a server:

- ``transaction()`` is one unit: everything written in it commits together or not at all;
- ``lock`` holds the approval row until the transaction ends, so two answers on one action are
  applied one after the other, each on the state the other left;
- ``open`` (``open_many`` for a batch, in one statement), ``note_break_glass``,
  ``enqueue_notification`` and ``enqueue_callback`` are keyed: a second identical write (a redelivered decision, a
  repeated sweep) changes nothing;
- ``enqueue`` queues an event for Kafka in the transaction; ``drain_outbox`` publishes queued
  events in the order they were written and deletes each once the broker took it, so a crash
  leaves them queued for the next drain (at least once, never lost);
- ``clock_lease`` says whether this instance keeps the namespace's approval clock while the
  block runs (one instance at a time; the others skip the tick);
- ``first_sighting`` records an interaction id on its own, outside any transaction: True the
  first time, False for every replay, even when the answer that follows is rolled back.

The last group of methods is what the approval routes and pages read through ``desk.store``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from keyturn.approval.store import ApprovalRow, OpeningApproval

Publish = Callable[[str, bytes, bytes], Awaitable[Any]]
"""(topic, key, value) -> awaits the broker's acknowledgement."""

PublishAll = Callable[[list[tuple[str, bytes, bytes]]], Awaitable[Any]]
"""[(topic, key, value), ...] -> sends them in order, then awaits every acknowledgement."""


@runtime_checkable
class DeskStore(Protocol):
    """The approval rows and the outboxes, as the desk uses them (``conn`` is the transaction's)."""

    def transaction(self) -> AbstractAsyncContextManager[Any]: ...
    async def check(self) -> None: ...
    def clock_lease(self) -> AbstractAsyncContextManager[bool]: ...

    async def open(
        self,
        conn: Any,
        action_id: str,
        decided_event: bytes,
        principals: list[str],
        groups: list[str],
        opened_at: datetime,
        expires_at: datetime,
    ) -> bool: ...
    async def open_many(self, conn: Any, approvals: list[OpeningApproval]) -> set[str]: ...
    async def lock(self, conn: Any, action_id: str) -> ApprovalRow | None: ...
    async def read(self, action_id: str) -> ApprovalRow | None: ...
    async def record_vote(self, conn: Any, action_id: str, accepted: bool, vote_event: bytes) -> None: ...
    async def resolve(self, conn: Any, action_id: str, status: str, at: datetime) -> None: ...
    async def mark_escalated(self, conn: Any, action_id: str, at: datetime) -> None: ...
    async def mark_reminded(self, conn: Any, action_id: str, fractions: tuple[float, ...]) -> None: ...
    async def set_next_sweep(self, conn: Any, action_id: str, at: datetime | None) -> None: ...
    async def due_for_expiry(self, now: datetime, limit: int = 100) -> list[str]: ...
    async def due_for_sweep(self, now: datetime, limit: int = 200) -> list[str]: ...
    async def note_break_glass(self, conn: Any, action_id: str, decided_event: bytes) -> bool: ...
    async def break_glass_decision(self, action_id: str) -> bytes | None: ...
    async def lock_break_glass(self, conn: Any, action_id: str) -> bytes | None: ...

    async def enqueue(self, conn: Any, topic: str, key: str, value: bytes) -> None: ...
    async def drain_outbox(
        self, publish: Publish, batch: int = 200, *, publish_all: PublishAll | None = None
    ) -> int: ...

    async def enqueue_notification(
        self, conn: Any, action_id: str, channel: str, target: str, kind: str, occasion: str = ""
    ) -> None: ...
    async def message_targets(self, conn: Any, action_id: str) -> list[tuple[str, str]]: ...
    async def set_callback_target(self, conn: Any, action_id: str, url: str) -> None: ...
    async def enqueue_callback(self, conn: Any, action_id: str, state: str, body: str) -> None: ...

    # read by the routes (/v1/approvals, /console, the chat interactions), not by the desk itself
    async def pending_for(self, principal_ids: list[str], limit: int = 200) -> list[ApprovalRow]: ...
    async def vote_history(self, action_id: str) -> list[bytes]: ...
    async def notifications_of(self, action_id: str) -> list[tuple[str, str, str, str, str, datetime | None]]: ...
    async def first_sighting(self, source: str, interaction: str) -> bool: ...


class PolicyAnswer(Protocol):
    @property
    def result(self) -> Any: ...


@runtime_checkable
class PolicyEngine(Protocol):
    """Asks the policy engine (OPA) a question: ``keyturn/approval`` says whether an approver may
    answer and which groups they count for. Raises ``PolicyUnavailable``/``PolicyAnswerInvalid``."""

    async def query(self, path: str, input_document: dict[str, Any]) -> PolicyAnswer: ...
