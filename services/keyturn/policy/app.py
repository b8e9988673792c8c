"""Policy service: every request → OPA → one decision (allowed / denied / needs approval).

consumes  <ns>.actions.requested   (ActionRequested)
produces  <ns>.actions.decided     (ActionDecided, with provenance)
          <ns>.dlq                 (anything undecodable)
state     policy_decisions in PostgreSQL: the one decision per action (redelivery republishes it).
          OPA holds the policy. Fail closed: no answer from OPA means no allow, ever.
"""

from __future__ import annotations

import logging

from keyturn.bus.topics import Topics
from keyturn.bus.worker import consume, faust_publisher, handle_each, make_app
from keyturn.config import Settings
from keyturn.core.events import ActionRequested
from keyturn.db import open_pool, schema_name
from keyturn.faults import until_done
from keyturn.metrics import serve_metrics
from keyturn.policy.decider import PolicyDecider, PolicyStage
from keyturn.policy.opa import OpaClient
from keyturn.policy.record import DDL, DecisionRecord

log = logging.getLogger(__name__)


def create_app(settings: Settings):
    """The policy service's composition root: everything it uses is built here from ``settings``."""
    topics = Topics(settings.namespace, settings.partitions)
    app = make_app(
        namespace=settings.namespace,
        bootstrap=settings.kafka_bootstrap,
        partitions=settings.partitions,
        run_dir=settings.run_dir,
        session_timeout_s=settings.worker_session_timeout_s,
        service="policy",
    )
    serve_metrics("policy", settings.policy_metrics_port)  # decision latency, OPA errors
    publisher = faust_publisher(app, topics, "policy")
    decider = PolicyDecider(
        OpaClient(
            settings.opa_url,
            timeout_s=settings.opa_timeout_s,
            retries=settings.opa_retries,
            revision_max_age_s=settings.opa_revision_max_age_s,
        ),
        settings.policy_unavailable_after_s,
    )

    @app.agent(consume(app, topics.requested))
    async def decide_requests(stream):
        record = DecisionRecord(
            await until_done(
                lambda: open_pool(settings.database_url, DDL, schema=schema_name(settings.namespace)),
                "policy: opening the database",
            )
        )
        stage = PolicyStage(decider, record, publisher)
        await handle_each(stream, publisher, stage.decide, accept=(ActionRequested,), on_failure=stage.on_failure)

    return app
