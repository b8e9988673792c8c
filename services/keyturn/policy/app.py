"""Policy service: every request → OPA → one decision (allowed / denied / needs approval).

consumes  <ns>.actions.requested   (ActionRequested)
produces  <ns>.actions.decided     (ActionDecided, with provenance)
          <ns>.dlq                 (anything undecodable)
state     policy_decisions in PostgreSQL: the one decision per action (redelivery republishes it).
          OPA holds the policy. Fail closed: no answer from OPA means no allow, ever.
"""

from __future__ import annotations

import logging

from keyturn.bus.worker import consume, handle_each
from keyturn.config import Settings
from keyturn.core.events import ActionRequested
from keyturn.db import open_pool, schema_name
from keyturn.faults import until_done
from keyturn.metrics import serve_metrics
from keyturn.policy.decider import PolicyDecider, PolicyStage
from keyturn.policy.record import DDL, DecisionRecord
from keyturn.roots import opa_client, stream_worker

log = logging.getLogger(__name__)


def create_app(settings: Settings):
    """The policy service's composition root: everything it uses is built here from ``settings``."""
    app, topics, publisher = stream_worker(settings, "policy")
    serve_metrics("policy", settings.policy_metrics_port)  # decision latency, OPA errors
    decider = PolicyDecider(
        opa_client(settings),
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
        await handle_each(
            stream,
            publisher,
            stage.decide,
            accept=(ActionRequested,),
            on_failure=stage.on_failure,
            handle_many=stage.decide_batch,
        )

    return app
