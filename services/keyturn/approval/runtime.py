"""The one place the approval service is wired: database, policy client, desk, chat adapters, couriers.

Built once, lazily, inside the worker's event loop (the pool and the HTTP clients belong to it).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from keyturn.approval.callbacks import CallbackCourier
from keyturn.approval.channels import ApproverChannel
from keyturn.approval.courier import NotificationCourier
from keyturn.approval.http import UNATTRIBUTED
from keyturn.approval.service import ApprovalDesk
from keyturn.faults import DATABASE_UNAVAILABLE
from keyturn.approval.slack import SlackChannel
from keyturn.approval.store import DDL, ApprovalStore
from keyturn.bus.http import header
from keyturn.bus.topics import Topics
from keyturn.config import Settings
from keyturn.db import open_pool
from keyturn.identity import InvalidToken, TokenVerifier, bearer_token, verifier_from_settings
from keyturn.policy.opa import OpaClient

log = logging.getLogger(__name__)

# How long a caller waits for a pooled connection. The pool's default (30 s) would hold an
# approver's request, and the clock, for half a minute while the database is down; this short
# wait turns an outage into a quick "try again" (503) and a skipped tick instead.
CONNECTION_WAIT_S = 5.0


class ApprovalRuntime:
    """Everything the approval service's agents, timers and routes share."""

    def __init__(self, settings: Settings, topics: Topics, send: Any) -> None:
        self.settings = settings
        self.topics = topics
        self.send = send
        self.slack: SlackChannel | None = SlackChannel.from_settings(settings)
        self.teams: Any = None  # set by build() when Teams is configured (it needs the event loop)
        self._lock = asyncio.Lock()
        self._desk: ApprovalDesk | None = None
        self._verifier: TokenVerifier | None = None
        self.notifications: NotificationCourier | None = None
        self.callbacks: CallbackCourier | None = None

    @property
    def ready(self) -> bool:
        return self._desk is not None

    @property
    def adapters(self) -> dict[str, ApproverChannel]:
        return {adapter.name: adapter for adapter in (self.slack, self.teams) if adapter is not None}

    def verifier(self) -> TokenVerifier:
        if self._verifier is None:
            s = self.settings
            self._verifier = verifier_from_settings(s.jwks_url or None, s.jwks_path or None, s.keys_dir, s.jwt_issuer, s.jwt_audience)
        return self._verifier

    async def desk(self) -> ApprovalDesk:
        """The desk, built on first use."""
        async with self._lock:
            if self._desk is None:
                await self._build()
        return self._desk

    async def _build(self) -> None:
        s = self.settings
        pool = await open_pool(s, DDL)
        pool.timeout = CONNECTION_WAIT_S
        store = ApprovalStore(pool)
        opa = OpaClient.from_settings(s)
        self.verifier()
        if s.teams_app_id:
            from keyturn.approval.teams import TeamsChannel  # the Teams SDK is only imported when used

            self.teams = await TeamsChannel.from_settings(s)
        routes = {name: adapter.targets for name, adapter in self.adapters.items()}
        desk = ApprovalDesk(store, opa, self.topics, self.send, routes)
        self.notifications = NotificationCourier(store, self.adapters, desk.view)
        self.callbacks = CallbackCourier.from_settings(s, store)
        self._desk = desk
        log.info("approval desk ready; chat channels: %s", ", ".join(routes) or "none")

    async def keep_time(self) -> None:
        """Expire, remind and escalate what is due, and publish the events that follow.

        A database outage skips this tick (each step is one transaction, so nothing is half
        done) and the next tick picks up what is still due: an error raised from a faust timer
        would stop the whole service, and every pending approval would stay pending."""
        try:
            await self._desk.expire_due()
            await self._desk.remind_and_escalate()
            await self._desk.flush()
        except DATABASE_UNAVAILABLE as exc:
            await self._skip_tick("expiry, reminders and escalations", exc)

    async def deliver(self) -> None:
        """Send due chat notifications and webhooks; settle claims a crash left behind.

        Like ``keep_time``, a database outage skips the tick: a claimed message whose result
        could not be written is settled by ``reconcile`` once the claim's lease runs out."""
        try:
            await self.notifications.reconcile()
            await self.notifications.deliver_due()
            await self.callbacks.deliver_due()
        except DATABASE_UNAVAILABLE as exc:
            await self._skip_tick("chat notifications and webhooks", exc)

    async def refused_at_the_edge(self, scope: dict[str, Any], status: int, problems: list[str], received: bytes) -> None:
        """A request over the size bounds (``bus.http.BoundedRequests``): counted, and recorded
        (size and digest only) when it carries a valid approver token. Chat requests are signed
        over their body, so one refused before its body was read cannot be held to anyone."""
        reason = "body_too_large" if status == 413 else "headers_too_large"
        try:
            principal = self.verifier().verify(bearer_token(header(scope, "authorization")))
        except InvalidToken:
            UNATTRIBUTED.labels("http", reason).inc()
            return
        desk = await self.desk()
        where = f"http:{scope.get('method')} {scope.get('path')}"
        await desk.refuse_interaction(where, reason, "; ".join(problems), received,
                                      problems=tuple(problems), principal=principal.id)
        await desk.flush_after_commit()

    async def _skip_tick(self, what: str, exc: Exception) -> None:
        log.warning("database unavailable; %s wait for the next tick: %s: %s", what, type(exc).__name__, exc)
        await self._desk.recover()
