"""Follows every lifecycle topic so requesters see their action's state (and can wait for it)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterable
from datetime import timedelta
from typing import Any, Protocol

from keyturn.bus.codec import UndecodableMessage, registry
from keyturn.bus.loop import KafkaSource, Stage, run
from keyturn.bus.publisher import Publisher
from keyturn.bus.warrants import Warrants, log_skipped
from keyturn.core.events import ActionDecided, ActionExecuted, ApprovalResolved
from keyturn.core.lifecycle import ActionState
from keyturn.intake.store import LifecycleChange, StoredAction

log = logging.getLogger(__name__)
LIFECYCLE_EVENTS = (ActionDecided, ApprovalResolved, ActionExecuted)
GATHER_MS = 50  # a status read may be this far behind: changes are written in batches gathered this long
FETCH_WAIT_MS = 20  # and the broker holds a fetch this long for more (bus.loop.held_fetches)
# A waiting requester is woken by this follower when a batch it recorded ends the action; it
# also reads the action this often, since the end may be recorded by another intake replica's
# follower (the lifecycle topics' partitions are shared among the replicas).
RECHECK_S = 0.5


class StatusStore(Protocol):
    """What the follower needs of the intake's store."""

    async def apply_many(
        self, changes: Iterable[LifecycleChange], patience_s: float | None = None
    ) -> dict[str, ActionState]: ...

    async def get(self, action_id: str) -> StoredAction | None: ...


def history_entry(event: Any) -> tuple[dict[str, Any], list[str] | None, Any]:
    """(history entry, reasons, result) that a lifecycle event adds to an action's status."""
    entry: dict[str, Any] = {"event": type(event).__name__}
    reasons, result = None, None
    if isinstance(event, ActionDecided):
        entry |= {
            "at": event.decided_at.isoformat(),
            "policy_revision": event.provenance.policy_revision,
            "decision_id": event.provenance.decision_id,
        }
        reasons = list(event.reasons)
        if event.approvals:
            entry["approver_groups"] = [g.name for g in event.approvals.groups]
            entry["require_all"] = event.approvals.require_all
            # the approval opens at the decision and takes answers for its pending TTL (approval/replay.py)
            entry["expires_at"] = (event.decided_at + timedelta(seconds=event.approvals.pending_ttl_s)).isoformat()
            # how many of each group must approve, for whoever tells the requester who is being asked
            entry["approvers"] = [{"name": g.name, "min": g.min_approvals} for g in event.approvals.groups]
        if event.impact is not None:  # what approvers were shown: the requester sees it too
            entry["impact"] = {
                "summary": event.impact.summary(),
                "rows": event.impact.rows,
                "method": event.impact.method,
                "max_rows": event.impact.max_rows,
            }
    elif isinstance(event, ApprovalResolved):
        entry |= {
            "at": event.resolved_at.isoformat(),
            "summary": event.summary,
            "votes": [{"approver": v.approver.id, "choice": v.choice.value, "reason": v.reason} for v in event.votes],
        }
        reasons = [event.summary] if event.summary else None
    elif isinstance(event, ActionExecuted):
        entry |= {"at": event.finished_at.isoformat(), "plugin": event.plugin, "error": event.error}
        result = json.loads(event.result_json) if event.result_json else None
        reasons = [event.error] if event.error else None
    return entry, reasons, result


def change_of(event: Any) -> LifecycleChange:
    """What one lifecycle event changes in the status table (stored as ``store.jsonb`` spells it)."""
    entry, reasons, result = history_entry(event)
    return LifecycleChange(event.action_id, event, entry, reasons, result)


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
        found.append(change_of(event))
    return found


class StatusFollower:
    """Applies lifecycle events to the intake's status table and wakes waiting requesters."""

    def __init__(self, store: StatusStore, publisher: Publisher, warrants: Warrants) -> None:
        self.store = store
        # the status tells what Keyturn's services did: a lifecycle record without the warrant
        # of the service that makes it (``bus.warrants``) was written by someone else
        self.warrants = warrants
        # action id → the requesters waiting for it to end (``wait_terminal``), one event each
        self._waiting: dict[str, set[asyncio.Event]] = {}
        # the intake owns none of the lifecycle topics: the loop skips what it cannot read
        # (``Topics.dead_letter_owner``) and their owners dead-letter it
        self.stage = Stage(publisher, LIFECYCLE_EVENTS, handle_batch=self._record)

    async def follow(self, consumer: Any) -> None:
        """Follow the lifecycle topics through a started consumer (auto-commit off) until cancelled.

        The consumption loop commits a batch only once it is recorded: offsets committed before
        would skip it after a restart.
        """
        # what arrives within 50 ms is one statement: an action's decision and execution often
        # land together, so its row is written once (a waiting requester hears it ≤ 50 ms later)
        await run(KafkaSource(consumer, max_records=500, wait_ms=1000, gather_ms=GATHER_MS), self.stage)

    async def _record(self, batch: list[tuple[Any, Any]]) -> None:
        """Record the batch in one statement (a database outage is waited out by the loop)."""
        kept, refused = self.warrants.sorted(batch)
        log_skipped(refused, "status")
        states = await self.store.apply_many([change_of(event) for event, _ in kept], patience_s=5.0)
        # only the requesters of the actions this batch ended are woken: each used to read its
        # action again after every batch the follower recorded, whatever the batch held
        for action_id in self._waiting.keys() & states.keys():
            if states[action_id].is_terminal:
                for ended in self._waiting[action_id]:
                    ended.set()

    async def wait_terminal(self, action_id: str, timeout: float) -> None:
        """Return when the action is terminal or ``timeout`` seconds passed."""
        ended = asyncio.Event()  # registered before the first read, so no end recorded after it is missed
        waiting = self._waiting.setdefault(action_id, set())
        waiting.add(ended)
        try:
            async with asyncio.timeout(timeout):
                while not ended.is_set():
                    stored = await self.store.get(action_id)
                    if stored is None or stored.state.is_terminal:
                        return
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(ended.wait(), RECHECK_S)
        except TimeoutError:
            pass
        finally:
            waiting.discard(ended)
            if not waiting and self._waiting.get(action_id) is waiting:
                del self._waiting[action_id]
