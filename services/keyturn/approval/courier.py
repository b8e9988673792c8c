"""Delivering queued chat notifications: at least once to try, exactly once to show.

A row is claimed (state ``sending``) in its own transaction before the remote call and marked
``delivered`` with the remote message reference after it, so a restart never forgets a
message. The one window left — the process dies after the chat system accepted a message but
before the row says so — is closed by ``reconcile``: every message carries its notification
id, and an orphaned claim is first looked up in the chat (``find_sent``) and only re-sent
when it is not there. Edits (progress, outcome) are idempotent: they always render the
approval as it is now.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from keyturn.approval import channels as kinds
from keyturn.approval.channels import ApproverChannel
from keyturn.approval.store import ApprovalStore, Notification

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
WAIT_FOR_PARENT = timedelta(seconds=1)


class ParentMissing(Exception):
    """The approval message this notification edits or replies to has not been posted yet."""


def backoff(attempts: int) -> timedelta:
    """1 s, 2 s, 4 s … capped at 5 minutes."""
    return timedelta(seconds=min(2 ** max(attempts - 1, 0), 300))


class NotificationCourier:
    """Sends what ``approval_notifications`` holds through the channel adapters."""

    def __init__(
        self,
        store: ApprovalStore,
        adapters: Mapping[str, ApproverChannel],
        view_of: Callable[[str], Awaitable[dict[str, Any] | None]],
    ) -> None:
        self.store = store
        self.adapters = dict(adapters)
        self.view_of = view_of

    async def deliver_due(self, now: datetime | None = None) -> int:
        """Send every due notification once; returns how many were delivered."""
        now = now or datetime.now(UTC)
        delivered = 0
        for notification in await self.store.claim_notifications(now):
            delivered += await self._deliver(notification, now)
        return delivered

    async def reconcile(self, now: datetime | None = None) -> int:
        """Settle claims a crashed sender left behind: adopt a message that did go out, or send again."""
        now = now or datetime.now(UTC)
        settled = 0
        for notification in await self.store.orphaned_notifications(now):
            adapter = self.adapters.get(notification.channel)
            if adapter is None:
                continue
            parent = None
            if notification.kind not in kinds.FRESH_MESSAGES:
                found = await self.store.message_of(notification.action_id, notification.channel, notification.target)
                parent = found[2] if found and found[0] == kinds.OPENED else None
            try:
                ref = await adapter.find_sent(notification.target, parent, notification.id, notification.created_at)
            except Exception as exc:  # the chat system is down: try again on the next sweep
                log.warning("could not look up notification %s in %s: %s", notification.id, notification.channel, exc)
                continue
            if ref is not None:
                await self.store.delivered(notification.id, ref, now)
                log.info("notification %s had been delivered before the restart (%s)", notification.id, ref)
            else:
                await self.store.retry_later(
                    notification.id, "sender stopped before confirming; sending again", now, give_up=False
                )
            settled += 1
        return settled

    async def _deliver(self, notification: Notification, now: datetime) -> int:
        adapter = self.adapters.get(notification.channel)
        if adapter is None:
            await self.store.retry_later(
                notification.id, f"no {notification.channel} adapter is configured", now, give_up=True
            )
            return 0
        try:
            view = await self.view_of(notification.action_id)
            if view is None:
                raise LookupError(f"action {notification.action_id} is not known to the approval service")
            ref = await self._send(adapter, notification, view)
        except ParentMissing as waiting:
            give_up = str(waiting) == "failed"
            await self.store.retry_later(
                notification.id,
                "the approval message was never posted" if give_up else "waiting for the approval message",
                now + WAIT_FOR_PARENT,
                give_up=give_up,
            )
            return 0
        except Exception as exc:  # any adapter failure is retried, boundedly, and kept for operators
            give_up = notification.attempts >= MAX_ATTEMPTS
            log.warning(
                "%s notification %s (%s for %s) failed, attempt %s%s: %s",
                notification.channel,
                notification.id,
                notification.kind,
                notification.action_id,
                notification.attempts,
                ", giving up" if give_up else "",
                exc,
            )
            await self.store.retry_later(
                notification.id, f"{type(exc).__name__}: {exc}", now + backoff(notification.attempts), give_up=give_up
            )
            return 0
        await self.store.delivered(notification.id, ref, datetime.now(UTC))
        return 1

    async def _send(self, adapter: ApproverChannel, n: Notification, view: dict[str, Any]) -> str | None:
        if n.kind == kinds.OPENED:
            return await adapter.notify_opened(n.target, view, notification_id=n.id)
        if n.kind == kinds.BREAK_GLASS:
            return await adapter.notify_break_glass(n.target, view, notification_id=n.id)
        notice = (kinds.BREAK_GLASS,) if n.kind == kinds.REVIEWED else kinds.ANSWERABLE_MESSAGES
        parent = await self.store.message_of(n.action_id, n.channel, n.target, notice)
        if n.kind == kinds.ESCALATED and (parent is None or parent[0] == kinds.ESCALATED):
            return await adapter.escalate(
                n.target, None, view, notification_id=n.id
            )  # a fresh message for the fallback group
        if parent is None or parent[1] == "failed":
            raise ParentMissing("failed")
        if parent[1] != "delivered" or not parent[2]:
            raise ParentMissing("pending")
        ref = parent[2]
        if n.kind == kinds.ESCALATED:
            await adapter.escalate(n.target, ref, view, notification_id=n.id)  # the group already has the message
        elif n.kind == kinds.PROGRESS:
            await adapter.notify_progress(n.target, ref, view)
        elif n.kind == kinds.RESOLVED:
            await adapter.notify_resolved(n.target, ref, view, notification_id=n.id)
        elif n.kind == kinds.REVIEWED:
            await adapter.notify_reviewed(n.target, ref, view)
        elif n.kind == kinds.REMINDER:
            await adapter.remind(n.target, ref, view, float(n.occasion), notification_id=n.id)
        else:
            raise ValueError(f"unknown notification kind {n.kind!r}")
        return None
