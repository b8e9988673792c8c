"""What every composition root builds the same way from ``Settings``.

Each service is wired in one place (``<service>/app.py``, with ``intake/wiring.py`` and
``approval/runtime.py``); below those, modules take explicit arguments. The parts every root
builds alike live here, so a setting is read in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from keyturn.bus.loop import Stage, follow_in_group
from keyturn.bus.publisher import Publisher
from keyturn.bus.topics import Topics
from keyturn.bus.worker import faust_publisher, make_app
from keyturn.config import Settings
from keyturn.exports import DirectoryExportStore
from keyturn.policy.opa import OpaClient


def topics_of(settings: Settings) -> Topics:
    """The namespace's topics."""
    return Topics(settings.namespace, settings.partitions)


def stream_worker(settings: Settings, service: str) -> tuple[Any, Topics, Publisher]:
    """(the stream worker app of ``service``, its topics, a publisher through its producer)."""
    topics = topics_of(settings)
    app = make_app(
        namespace=settings.namespace,
        bootstrap=settings.kafka_bootstrap,
        partitions=settings.partitions,
        run_dir=settings.run_dir,
        service=service,
        linger_ms=settings.producer_linger_ms,
        batch_bytes=settings.producer_batch_bytes,
    )
    return app, topics, faust_publisher(app, topics, service)


STAGE_BATCH = 64  # records a stream worker's stage takes at most per batch


async def follow_group(
    settings: Settings,
    service: str,
    part: str,
    topics: Sequence[str],
    stage: Stage,
    *,
    max_records: int = STAGE_BATCH,
    fetch_wait_ms: int | None = None,
    gather_ms: int | None = None,
    in_flight: int = 1,
) -> None:
    """``stage`` over ``topics`` in the consumer group ``<ns>-<service>-<part>``, until cancelled.

    A plain consumer through the one loop (``bus.loop.follow_in_group``), not the stream
    framework's: under a flood its consumer thread and streams were about a quarter of the
    policy's and the executor's CPU (bench/README.md, fourteenth round). The group starts, once,
    where the framework's group ``<ns>-<service>`` stopped, so an upgrade reads nothing twice.
    What arrives within ``worker_gather_ms`` of a batch's first record joins it.
    """
    await follow_in_group(
        settings.kafka_bootstrap,
        f"{settings.namespace}-{service}-{part}",
        topics,
        stage,
        session_timeout_s=settings.worker_session_timeout_s,
        rebalance_timeout_s=settings.worker_rebalance_timeout_s,
        carried_from=f"{settings.namespace}-{service}",
        max_records=max_records,
        gather_ms=int(settings.worker_gather_ms) if gather_ms is None else gather_ms,
        fetch_wait_ms=fetch_wait_ms,
        in_flight=in_flight,
    )


def opa_client(settings: Settings) -> OpaClient:
    """The policy engine's client, as every service that asks it is configured."""
    return OpaClient(
        settings.opa_url,
        timeout_s=settings.opa_timeout_s,
        retries=settings.opa_retries,
        revision_max_age_s=settings.opa_revision_max_age_s,
    )


def receipt_key_path(settings: Settings) -> Path:
    """The Ed25519 key approval receipts are signed with (beside the audit's checkpoint key)."""
    return Path(settings.receipt_key_path) if settings.receipt_key_path else settings.keys_dir / "receipt-signing.pem"


def receipt_public_key_path(settings: Settings) -> Path:
    """Its public half, which the intake publishes and performing systems verify with."""
    return receipt_key_path(settings).with_suffix(".pub.pem")


def export_store(settings: Settings) -> DirectoryExportStore:
    """The export files' store, shared by the executor (writes) and the intake (serves each once)."""
    return DirectoryExportStore(settings.export_dir or Path(settings.run_dir) / "exports")
