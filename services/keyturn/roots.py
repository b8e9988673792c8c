"""What every composition root builds the same way from ``Settings``.

Each service is wired in one place (``<service>/app.py``, with ``intake/wiring.py`` and
``approval/runtime.py``); below those, modules take explicit arguments. The parts every root
builds alike live here, so a setting is read in one place.
"""

from __future__ import annotations

from typing import Any

from keyturn.bus.publisher import Publisher
from keyturn.bus.topics import Topics
from keyturn.bus.worker import faust_publisher, make_app
from keyturn.config import Settings
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
        session_timeout_s=settings.worker_session_timeout_s,
        service=service,
        linger_ms=settings.producer_linger_ms,
        batch_bytes=settings.producer_batch_bytes,
    )
    return app, topics, faust_publisher(app, topics, service)


def opa_client(settings: Settings) -> OpaClient:
    """The policy engine's client, as every service that asks it is configured."""
    return OpaClient(
        settings.opa_url,
        timeout_s=settings.opa_timeout_s,
        retries=settings.opa_retries,
        revision_max_age_s=settings.opa_revision_max_age_s,
    )
