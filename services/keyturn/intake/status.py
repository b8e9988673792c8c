"""Follows every lifecycle topic so requesters see their action's state (and can wait for it)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer

from keyturn.bus.codec import UndecodableMessage, registry
from keyturn.bus.topics import Topics
from keyturn.config import Settings
from keyturn.core.events import ActionDecided, ActionExecuted, ApprovalResolved
from keyturn.intake.store import ActionStore

log = logging.getLogger(__name__)


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


class StatusFollower:
    """Applies lifecycle events to the intake's status table and wakes waiting requesters."""

    def __init__(self, settings: Settings, store: ActionStore) -> None:
        self.settings = settings
        self.store = store
        self._changed = asyncio.Condition()

    async def run(self) -> None:
        topics = Topics.from_settings(self.settings)
        consumer = AIOKafkaConsumer(
            topics.decided, topics.resolved, topics.executed,
            bootstrap_servers=self.settings.kafka_bootstrap, group_id=f"{self.settings.namespace}-intake-status",
            enable_auto_commit=False, auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=1000, max_records=500)
                for messages in batch.values():
                    for message in messages:
                        await self._apply(message.value)
                if batch:
                    await consumer.commit()
                    async with self._changed:
                        self._changed.notify_all()
        finally:
            await consumer.stop()

    async def _apply(self, value: bytes) -> None:
        try:
            event = registry().decode_event(value)
        except UndecodableMessage:
            return  # the owning service dead-letters bad input on its own topic; status only reads
        entry, reasons, result = history_entry(event)
        await self.store.apply(event.action_id, event, entry, reasons=reasons, result=result)

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
