"""The one place the approval service is wired: database, policy client, desk, chat adapters, couriers.

The only module of the approval package that reads ``Settings`` (besides the entrypoint,
``app.py``): every adapter below is built here from explicit arguments. Built once, lazily,
inside the worker's event loop (the pool and the HTTP clients belong to it).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from slack_sdk.web.async_client import AsyncWebClient

from keyturn.approval.callbacks import CallbackCourier, callback_secret
from keyturn.approval.channels import ApproverChannel, ChatTargets, principal_map
from keyturn.approval.console import DevSignIn
from keyturn.approval.courier import NotificationCourier
from keyturn.approval.desk import ApprovalDesk
from keyturn.approval.history import GATHER_MS as HISTORY_GATHER_MS
from keyturn.approval.history import HISTORY_DDL, HistoryFollower, HistoryStore, start_position
from keyturn.approval.history_store import PgHistoryStore
from keyturn.approval.http import UNATTRIBUTED
from keyturn.approval.identities import email_domains
from keyturn.approval.ports import PolicyEngine
from keyturn.approval.slack import SlackChannel
from keyturn.approval.store import DDL, ApprovalStore
from keyturn.bus.http import header, route_of
from keyturn.bus.loop import Stage, held_fetches
from keyturn.bus.topics import Topics
from keyturn.config import Settings
from keyturn.core.catalog import ExecutionModes
from keyturn.core.principal import Principal
from keyturn.db import open_pool, schema_name
from keyturn.faults import DATABASE_UNAVAILABLE
from keyturn.identity import InvalidToken, TokenVerifier, bearer_token, verifier_from_settings
from keyturn.masking.agreement import DDL as KEYRING_DDL
from keyturn.masking.agreement import start_only_in_agreement
from keyturn.masking.protect import keyring_for
from keyturn.roots import follow_group, opa_client

log = logging.getLogger(__name__)

# How long a caller waits for a pooled connection. The pool's default (30 s) would hold an
# approver's request, and the clock, for half a minute while the database is down; this short
# wait turns an outage into a quick "try again" (503) and a skipped tick instead.
CONNECTION_WAIT_S = 5.0
ACTIONS_FETCH_WAIT_MS = 20  # the broker holds a fetch of decisions this long for more (bus.loop.held_fetches)
ACTIONS_GATHER_MS = 20  # and what arrives within this long after the first is one batch


def slack_channel(s: Settings) -> SlackChannel | None:
    """The Slack adapter when a bot token is configured, else None (Slack off)."""
    if not s.slack_bot_token:
        return None
    client = AsyncWebClient(token=s.slack_bot_token, base_url=s.slack_api_url, timeout=10)
    return SlackChannel(
        client,
        ChatTargets.from_json(s.slack_channels, "KEYTURN_SLACK_CHANNELS"),
        principal_map(s.slack_user_map, "KEYTURN_SLACK_USER_MAP"),
        email_domains(s.slack_email_domains),
    )


async def teams_channel(s: Settings) -> Any:
    """The Teams adapter when an app id is configured, else None (Teams off)."""
    if not s.teams_app_id:
        return None
    from keyturn.approval.teams import TeamsChannel  # the Teams SDK is only imported when used

    return await TeamsChannel.connect(
        app_id=s.teams_app_id,
        app_password=s.teams_app_password,
        tenant_id=s.teams_tenant_id,
        token_url=s.teams_token_url,
        openid_url=s.teams_openid_url,
        token_issuer=s.teams_token_issuer,
        service_url=s.teams_service_url,
        targets=ChatTargets.from_json(s.teams_conversations, "KEYTURN_TEAMS_CONVERSATIONS"),
        user_map=principal_map(s.teams_user_map, "KEYTURN_TEAMS_USER_MAP"),
        email_domains=email_domains(s.teams_email_domains),
    )


def callback_courier(s: Settings, store: ApprovalStore) -> CallbackCourier:
    """The requester-webhook sender: only allow-listed hosts, no redirects (one could leave the list)."""
    hosts = frozenset(h.strip().lower() for h in s.callback_allowed_hosts.split(",") if h.strip())
    client = httpx.AsyncClient(timeout=5.0, follow_redirects=False)
    return CallbackCourier(
        store, callback_secret(s.callback_secret, s.keys_dir), hosts, s.callback_max_attempts, client
    )


def console_sign_in(s: Settings) -> DevSignIn | None:
    """Sign-in by name with locally minted tokens, in development only."""
    if not (s.console_dev_signin == 1 or s.dev_identity):
        return None
    return DevSignIn(s.keys_dir, s.jwt_audience, s.jwt_issuer)


@dataclass(frozen=True)
class Wiring:
    """The desk and its couriers, all on one store: built together, so present together."""

    desk: ApprovalDesk
    notifications: NotificationCourier
    callbacks: CallbackCourier


class ApprovalRuntime:
    """Everything the approval service's agents, timers and routes share."""

    def __init__(self, settings: Settings, topics: Topics, send: Any, send_all: Any = None) -> None:
        self.settings = settings
        self.topics = topics
        self.send = send
        self.send_all = send_all
        self.slack: SlackChannel | None = slack_channel(settings)
        self.console_sign_in = console_sign_in(settings)
        # the console's form tokens are keyed by the deployment's shared secret, not one per process:
        # a form one replica rendered is accepted by every other (the load balancer may switch)
        self.console_form_key = hmac.new(
            callback_secret(settings.callback_secret, settings.keys_dir), b"keyturn console forms", hashlib.sha256
        ).digest()
        self.teams: Any = None  # set by build() when Teams is configured (it needs the event loop)
        self._lock = asyncio.Lock()
        self._wiring: Wiring | None = None  # set by wire(), once
        self._verifier: TokenVerifier | None = None
        self._history: HistoryStore | None = None  # set by _build(), on the desk's pool

    @property
    def ready(self) -> bool:
        return self._wiring is not None

    def _wired(self) -> Wiring:
        """The desk and couriers; the timers only run once ``ready``, so they are built by then."""
        if self._wiring is None:
            raise RuntimeError("the approval desk is not built yet (await runtime.desk() first)")
        return self._wiring

    @property
    def adapters(self) -> dict[str, ApproverChannel]:
        return {adapter.name: adapter for adapter in (self.slack, self.teams) if adapter is not None}

    def verifier(self) -> TokenVerifier:
        if self._verifier is None:
            s = self.settings
            self._verifier = verifier_from_settings(
                s.jwks_url or None, s.jwks_path or None, s.keys_dir, s.jwt_issuer, s.jwt_audience
            )
        return self._verifier

    async def desk(self) -> ApprovalDesk:
        """The desk, built on first use."""
        async with self._lock:
            if self._wiring is None:
                await self._build()
        return self._wired().desk

    async def _build(self) -> None:
        s = self.settings
        pool = await open_pool(s.database_url, DDL + HISTORY_DDL + KEYRING_DDL, schema=schema_name(s.namespace))
        await start_only_in_agreement(pool, "approval", keyring_for(s.seal_keys, s.keys_dir))
        pool.timeout = CONNECTION_WAIT_S
        self._history = PgHistoryStore(pool)
        self.verifier()
        self.teams = await teams_channel(s)
        self.wire(
            ApprovalStore(pool),
            opa_client(s),
        )

    def wire(self, store: Any, opa: PolicyEngine) -> ApprovalDesk:
        """The desk and its couriers on ``store`` and ``opa`` (tests pass in-memory fakes here)."""
        routes = {name: adapter.targets for name, adapter in self.adapters.items()}
        data = getattr(opa, "data", None)  # the real OPA client serves the catalog's execution modes

        async def load_modes() -> ExecutionModes:
            return ExecutionModes.from_data(await data("keyturn/execution") if data is not None else None)

        desk = ApprovalDesk(
            store, opa, self.topics, self.send, routes, load_execution_modes=load_modes, send_all=self.send_all
        )
        self._wiring = Wiring(
            desk, NotificationCourier(store, self.adapters, desk.view), callback_courier(self.settings, store)
        )
        log.info("approval desk ready; chat channels: %s", ", ".join(routes) or "none")
        return desk

    async def history(self) -> HistoryStore:
        """The console's history tables (built with the desk)."""
        await self.desk()
        if self._history is None:
            raise RuntimeError("the history store is built with the desk's database")
        return self._history

    async def follow_audit(self, publisher: Any) -> None:
        """Keep the console's history from the audit topic (see ``approval.history``) until cancelled."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        follower = HistoryFollower(await self.history(), publisher)
        partition = TopicPartition(self.topics.audit, 0)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            group_id=f"{self.settings.namespace}-approval-history",
            enable_auto_commit=False,
            isolation_level="read_committed",
            **held_fetches(HISTORY_GATHER_MS),
        )
        try:
            await consumer.start()
            consumer.assign([partition])
            await start_position(consumer, partition)
            await follower.follow(consumer)
        finally:
            await consumer.stop()

    async def follow_actions(self, stage: Stage) -> None:
        """Take decisions and executions with ``stage`` until cancelled (see ``approval.app``).

        A plain consumer in its own group (``roots.follow_group``; records the desk has no part
        in skipped by their headers), not the stream framework: the desk has a part in one
        decision in ten or twenty, and the framework's per-record work on the rest kept its
        consumer seconds behind in a flood (``bench/README.md``, sixth round). The group starts
        where the framework's ``<ns>-approval`` stopped: reading every decision again would send
        a webhook whose delivery record was pruned twice."""
        topics = (self.topics.decided, self.topics.executed)
        await follow_group(
            self.settings,
            "approval",
            "actions",
            topics,
            stage,
            max_records=1000,
            fetch_wait_ms=ACTIONS_FETCH_WAIT_MS,
            gather_ms=ACTIONS_GATHER_MS,
        )

    async def keep_time(self) -> None:
        """Expire, remind and escalate what is due (when this instance keeps the clock: one
        approval instance per namespace at a time), and publish the events that follow.

        A database outage skips this tick (each step is one transaction, so nothing is half
        done) and the next tick picks up what is still due: an error raised from a faust timer
        would stop the whole service, and every pending approval would stay pending."""
        desk = self._wired().desk
        try:
            await desk.keep_clock()
            await desk.flush()
        except DATABASE_UNAVAILABLE as exc:
            await self._skip_tick("expiry, reminders and escalations", exc)

    async def deliver(self) -> None:
        """Send due chat notifications and webhooks; settle claims a crash left behind.

        Like ``keep_time``, a database outage skips the tick: a claimed message whose result
        could not be written is settled by ``reconcile`` once the claim's lease runs out."""
        wiring = self._wired()
        try:
            await wiring.notifications.reconcile()
            await wiring.notifications.deliver_due()
            await wiring.callbacks.deliver_due()
        except DATABASE_UNAVAILABLE as exc:
            await self._skip_tick("chat notifications and webhooks", exc)

    async def refused_at_the_edge(
        self,
        scope: dict[str, Any],
        status: int,
        problems: list[str],
        received: bytes,
        *,
        console_session: Callable[[dict[str, Any]], Awaitable[Principal | None]] | None = None,
    ) -> None:
        """A request over the size bounds (``bus.http.BoundedRequests``): counted, and recorded
        (size and digest only) when it carries a valid approver token, or the console session of
        a signed-in approver. Chat requests are signed over their body, so one refused before its
        body was read cannot be held to anyone."""
        reason = "body_too_large" if status == 413 else "headers_too_large"
        principal: Principal | None
        try:
            principal = self.verifier().verify(bearer_token(header(scope, "authorization")))
        except InvalidToken:
            principal = await console_session(scope) if console_session is not None else None
        if principal is None:
            UNATTRIBUTED.labels("http", reason).inc()
            return
        desk = await self.desk()
        where = f"http:{route_of(scope)}"
        await desk.refuse_interaction(
            where, reason, "; ".join(problems), received, problems=tuple(problems), principal=principal.id
        )

    async def _skip_tick(self, what: str, exc: Exception) -> None:
        log.warning("database unavailable; %s wait for the next tick: %s: %s", what, type(exc).__name__, exc)
        await self._wired().desk.recover()
