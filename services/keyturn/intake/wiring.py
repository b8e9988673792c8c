"""The intake's composition root: every adapter built from ``Settings``, once, in one place.

Nothing below this module reads ``Settings``; tests build an ``IntakeWiring`` from fakes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from keyturn.bus.loop import held_fetches
from keyturn.bus.publisher import Publisher, kafka_publisher
from keyturn.bus.topics import Topics
from keyturn.bus.warrants import Warrants
from keyturn.config import Settings
from keyturn.core.catalog import Execution, ExecutionModes
from keyturn.core.parameters import ParameterCatalog
from keyturn.db import open_pool, schema_name
from keyturn.exports import ExportStore
from keyturn.faults import supervised
from keyturn.identity import load_or_create_signing_key, verifier_from_settings
from keyturn.intake.consumers import Verifier, consume_submissions, republish_outbox, submissions_stage
from keyturn.intake.status import FETCH_WAIT_MS as STATUS_FETCH_WAIT_MS
from keyturn.intake.status import StatusFollower
from keyturn.intake.store import DDL, ActionStore, StoredAction, StoreUnavailable
from keyturn.intake.submissions import Intake, IntakeStore
from keyturn.masking.agreement import DDL as KEYRING_DDL
from keyturn.masking.agreement import start_only_in_agreement
from keyturn.masking.protect import keyring_for, parameter_protector
from keyturn.receipts import jwks, keys_from
from keyturn.roots import export_store, opa_client, receipt_public_key_path

log = logging.getLogger(__name__)
K = TypeVar("K")
V = TypeVar("V")

Check = Callable[[], Awaitable[None]]
"""Returns when a dependency answers; raises (with the reason) when it does not."""


class IntakeStorePort(IntakeStore, Protocol):
    """All the routes and background work need of the intake's store."""

    async def get(self, action_id: str) -> StoredAction | None: ...


@dataclass
class IntakeWiring:
    """The intake's parts, as the routes and the background work use them."""

    store: IntakeStorePort
    intake: Intake
    publisher: Publisher
    follower: StatusFollower
    verifier: Verifier
    jwks: dict[str, Any]
    receipt_keys: Callable[[], dict[str, Any]] = lambda: {"keys": []}  # the JWKS receipts are verified with
    exports: ExportStore | None = None  # db.export files, each served once to its requester
    export_ttl_s: float = 3600.0
    health: dict[str, Check] = field(default_factory=dict)
    background: dict[str, Callable[[], Awaitable[None]]] = field(default_factory=dict)
    close: Callable[[], Awaitable[None]] | None = None


async def bootstrap(settings: Settings) -> IntakeWiring:
    """Open the database and the producer and wire the intake's parts from ``settings``."""
    topics = Topics(settings.namespace, settings.partitions)
    pool = await open_pool(settings.database_url, DDL + KEYRING_DDL, schema=schema_name(settings.namespace))
    keyring = keyring_for(settings.seal_keys, settings.keys_dir)
    await start_only_in_agreement(pool, "intake", keyring)
    # Concurrent requests' events share produce requests: each send joins the batch of its
    # partition, which leaves after linger_ms (or full), and the request awaits only its own ack.
    # The durability an accepted answer promises is the stored row (the outbox), not the ack.
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=2,
        max_batch_size=settings.producer_batch_bytes,
    )
    await producer.start()

    publisher = kafka_publisher(producer, topics, "intake")
    publisher.warrants = Warrants(keyring, (topics.requested,))  # the policy decides only what the intake sent
    store = ActionStore(pool)
    opa = opa_client(settings)
    intake = Intake(
        store,
        publisher,
        parameter_protector(keyring),
        refusal_for=catalog_refusals(opa),
        mask_for=parameter_masks(opa),
        catalog=ParameterCatalog.load(Path(settings.parameter_catalog_path)),
    )
    follower = StatusFollower(store, publisher, Warrants(keyring, (topics.decided, topics.resolved, topics.executed)))
    verifier = verifier_from_settings(
        settings.jwks_url or None,
        settings.jwks_path or None,
        settings.keys_dir,
        settings.jwt_issuer,
        settings.jwt_audience,
    )

    async def follow_status() -> None:
        consumer = AIOKafkaConsumer(
            topics.decided,
            topics.resolved,
            topics.executed,
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=f"{settings.namespace}-intake-status",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **held_fetches(STATUS_FETCH_WAIT_MS),
        )
        try:
            await consumer.start()
            await follower.follow(consumer)
        finally:
            await consumer.stop()

    async def take_submissions() -> None:
        consumer = AIOKafkaConsumer(
            topics.submissions,
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=f"{settings.namespace}-intake-submissions",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        try:
            await admin.start()
            await consumer.start()
            await consume_submissions(consumer, admin, submissions_stage(intake, publisher, verifier))
        finally:
            await consumer.stop()
            await admin.close()

    async def producer_answers() -> None:
        await asyncio.wait_for(producer.client.fetch_all_metadata(), 2.0)

    async def close() -> None:
        try:
            await store.flush_marks(patience_s=2.0)
        except Exception as exc:  # harmless: the next intake's sweep republishes them under the same event ids
            log.warning("published marks not recorded at shutdown: %s", exc)
        await producer.stop()
        await pool.close()
        await opa.close()

    return IntakeWiring(
        store=store,
        intake=intake,
        publisher=publisher,
        follower=follower,
        verifier=verifier,
        jwks=load_or_create_signing_key(settings.keys_dir).jwks(),
        receipt_keys=lambda: published_receipt_keys(receipt_public_key_path(settings)),
        exports=export_store(settings),
        export_ttl_s=settings.export_ttl_s,
        health={"database": store.ping, "producer": producer_answers},
        background={
            "status follower": follow_status,
            "submissions consumer": take_submissions,
            "outbox sweep": lambda: republish_outbox(intake, store),
            "published marks": store.keep_marking,
        },
        close=close,
    )


def start_background(wiring: IntakeWiring) -> list[asyncio.Task[None]]:
    """Each background loop, restarted whenever it fails (``faults.supervised``)."""
    return [asyncio.create_task(supervised(name, work), name=name) for name, work in wiring.background.items()]


def published_receipt_keys(path: Path) -> dict[str, Any]:
    """The receipt key the executor wrote beside its private key, as JWKS; none until it has started."""
    try:
        return jwks(keys_from(path.read_bytes()).values())
    except FileNotFoundError:
        return {"keys": []}


class MaskUnknown(StoreUnavailable):
    """Which fields the policy masks for an action could not be read, and never was: nothing of
    the request is stored or published until it can be (a retry with the same key is safe)."""

    dependency = "policy engine"


class PolicyAnswers(Generic[K, V]):
    """Answers read from OPA by key, kept: a key never answered waits for OPA (one question per
    key however many callers wait for it) and raises what OPA's client raised; a key answered is
    answered at once, and past ``refresh_s`` asked again in the background, the last answer
    standing meanwhile and while OPA is away. An outage of the policy engine then never holds up
    the door for what it already knows (asked in line, each refresh waited out the client's
    retries). A key OPA could not answer is not asked again for ``retry_s``: callers meanwhile
    get that failure at once instead of each waiting out the client's retries. The ``kept`` most
    recently used keys are remembered."""

    def __init__(
        self,
        ask: Callable[[K], Awaitable[V]],
        *,
        what: str,
        refresh_s: float = 30.0,
        retry_s: float = 5.0,
        kept: int = 4096,
    ) -> None:
        self._ask, self._what, self._refresh_s, self._retry_s, self._kept = ask, what, refresh_s, retry_s, kept
        self._answers: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._asking: dict[K, asyncio.Task[V]] = {}
        self._failed: dict[K, tuple[float, Exception]] = {}  # keys never answered: when, and why

    async def get(self, key: K) -> V:
        known = self._answers.get(key)
        if known is None:
            failed = self._failed.get(key)
            if failed is not None and time.monotonic() - failed[0] < self._retry_s:
                raise failed[1]
            try:
                return await asyncio.shield(self._asked(key))
            except Exception as exc:
                self._failed[key] = (time.monotonic(), exc)
                while len(self._failed) > self._kept:
                    self._failed.pop(next(iter(self._failed)))
                raise
        if time.monotonic() - known[0] > self._refresh_s and key not in self._asking:
            self._asked(key).add_done_callback(partial(self._refreshed, key))
        self._answers.move_to_end(key)
        return known[1]

    async def _read(self, key: K) -> V:
        try:
            answer = await self._ask(key)
        finally:
            self._asking.pop(key, None)
        self._answers[key] = (time.monotonic(), answer)
        self._failed.pop(key, None)
        while len(self._answers) > self._kept:
            self._answers.popitem(last=False)
        return answer

    def _asked(self, key: K) -> asyncio.Task[V]:
        if key not in self._asking:
            self._asking[key] = asyncio.create_task(self._read(key))
        return self._asking[key]

    def _refreshed(self, key: K, task: asyncio.Task[V]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("intake: %s of %s were not read again (%s: %s)", self._what, key, type(exc).__name__, exc)


def parameter_masks(
    opa: Any, *, refresh_s: float = 30.0, kept: int = 4096
) -> Callable[[str], Awaitable[tuple[str, ...]]]:
    """The parameter fields the policy masks for an action name, besides those named like a
    credential (``data.keyturn.combination.parameter_mask``: ``masking.always``, a registered
    MCP tool's ``mask``), kept as ``PolicyAnswers``. A name OPA never answered for raises
    ``MaskUnknown``: nothing is carried in clear by default."""

    async def ask(action: str) -> tuple[str, ...]:
        answer = await opa.query("keyturn/combination/parameter_mask", {"action": action})
        return tuple(sorted(field for field in answer.result if isinstance(field, str)))

    answers: PolicyAnswers[str, tuple[str, ...]] = PolicyAnswers(ask, what="the masks", refresh_s=refresh_s, kept=kept)

    async def mask_for(action: str) -> tuple[str, ...]:
        try:
            return await answers.get(action)
        except Exception as exc:
            raise MaskUnknown(
                f"which fields of {action} to mask cannot be read from the policy engine ({type(exc).__name__})"
            ) from exc

    return mask_for


def catalog_refusals(opa: Any, *, refresh_s: float = 30.0) -> Callable[[str], Awaitable[str | None]]:
    """Why the catalog refuses an action at the door (``{"refused": why}`` in ``data.keyturn.execution``),
    kept as ``PolicyAnswers``. While OPA cannot be read and never was, nothing is refused here:
    the executor ends such an action ``failed`` with the same reason, so it never runs either way."""

    async def ask(_: str) -> ExecutionModes:
        return ExecutionModes.from_data(await opa.data("keyturn/execution"))

    answers: PolicyAnswers[str, ExecutionModes] = PolicyAnswers(
        ask, what="the execution modes", refresh_s=refresh_s, kept=1
    )

    async def refusal_for(action: str) -> str | None:
        try:
            modes = await answers.get("keyturn/execution")
        except Exception as exc:
            log.warning("intake: the catalog's execution modes were not read (%s: %s)", type(exc).__name__, exc)
            modes = ExecutionModes()
        mode = modes.mode_for(action)
        return mode.why if mode.execution is Execution.REFUSED else None

    return refusal_for
