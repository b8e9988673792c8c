"""Follows every lifecycle topic so requesters see their action's state (and can wait for it)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer

from keyturn.bus.codec import UndecodableMessage, registry
from keyturn.bus.topics import Topics
from keyturn.config import Settings
from keyturn.core.events import ActionDecided, ActionExecuted, ApprovalResolved
from keyturn.faults import supervised, until_done
from keyturn.intake.store import ActionStore, LifecycleChange

log = logging.getLogger(__name__)
LIFECYCLE_EVENTS = (ActionDecided, ApprovalResolved, ActionExecuted)


def history_entry(event: Any) -> tuple[dict[str, Any], list[str] | None, Any]:
    """(history entry, reasons, result) that a lifecycle event adds to an action's status."""
    entry: dict[str, Any] = {"event": type(event).__name__}
    reasons, result = None, None
    if isinstance(event, ActionDecided):
        entry |= {"at": event.decided_at.isoformat(), "policy_revision": event.provenance.policy_revision,
                  "decision_id": event.provenance.decision_id}
        reasons = list(event.reasons)
        if event.approvals:
            entry["approver_groups"] = [g.name for g in event.approvals.groups]
    elif isinstance(event, ApprovalResolved):
        entry |= {"at": event.resolved_at.isoformat(), "summary": event.summary,
                  "votes": [{"approver": v.approver.id, "choice": v.choice.value, "reason": v.reason} for v in event.votes]}
        reasons = [event.summary] if event.summary else None
    elif isinstance(event, ActionExecuted):
        entry |= {"at": event.finished_at.isoformat(), "plugin": event.plugin, "error": event.error}
        result = json.loads(event.result_json) if event.result_json else None
        reasons = [event.error] if event.error else None
    return entry, reasons, result


def changes(values: Iterable[bytes]) -> list[LifecycleChange]:
    """What a batch of lifecycle messages changes in the status table."""
    found = []
    for value in values:
        try:
            event = registry().decode_event(value)
        except UndecodableMessage:
            continue  # the owning service dead-letters bad input on its own topic; status only reads
        if not isinstance(event, LIFECYCLE_EVENTS):
            continue  # likewise; recording it would fail the whole batch on every retry
        entry, reasons, result = history_entry(event)
        found.append(LifecycleChange(event.action_id, event, entry, reasons, result))
    return found


class StatusFollower:
    """Applies lifecycle events to the intake's status table and wakes waiting requesters."""

    def __init__(self, settings: Settings, store: ActionStore) -> None:
        self.settings = settings
        self.store = store
        self._changed = asyncio.Condition()

    async def run(self) -> None:
        """Follow the lifecycle topics until cancelled, whatever fails on the way."""
        await supervised("status follower", self._follow)

    async def _follow(self) -> None:
        topics = Topics.from_settings(self.settings)
        consumer = AIOKafkaConsumer(
            topics.decided, topics.resolved, topics.executed,
            bootstrap_servers=self.settings.kafka_bootstrap, group_id=f"{self.settings.namespace}-intake-status",
            enable_auto_commit=False, auto_offset_reset="earliest",
        )
        try:
            await consumer.start()
            while True:
                batch = await consumer.getmany(timeout_ms=1000, max_records=500)
                if not batch:
                    continue
                await self._record(changes(message.value for messages in batch.values() for message in messages))
                # only now: offsets committed before the batch was recorded would skip it after a restart
                await consumer.commit()
                async with self._changed:
                    self._changed.notify_all()
        finally:
            await consumer.stop()

    async def _record(self, batch: list[LifecycleChange]) -> None:
        """Record the batch, waiting out a database outage however long it lasts."""
        await until_done(lambda: self.store.apply_many(batch, patience_s=5.0),
                         f"intake: recording the status of {len(batch)} lifecycle events")

    async def wait_terminal(self, action_id: str, timeout: float) -> None:
        """Return when the action is terminal or ``timeout`` seconds passed."""
        async def terminal() -> None:
            while True:
                stored = await self.store.get(action_id)
                if stored is None or stored.state.is_terminal:
                    return
                async with self._changed:
                    # a short wait too, so a change applied by another intake replica is seen
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), 0.5)

        try:
            await asyncio.wait_for(terminal(), timeout)
        except asyncio.TimeoutError:
            pass
