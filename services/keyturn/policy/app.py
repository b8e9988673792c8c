"""Policy service: every request → OPA → one decision (allowed / denied / needs approval).

consumes  <ns>.actions.requested   (ActionRequested)
produces  <ns>.actions.decided     (ActionDecided, with provenance and, for SQL-backed actions, the impact preview)
          <ns>.dlq                 (anything undecodable)
state     policy_decisions in PostgreSQL: the one decision per action (redelivery republishes it).
          OPA holds the policy. Fail closed: no answer from OPA means no allow, ever.
"""

from __future__ import annotations

import logging
from pathlib import Path

from keyturn.bus.loop import Stage
from keyturn.bus.warrants import Warrants
from keyturn.config import Settings
from keyturn.core.events import ActionRequested
from keyturn.core.parameters import ParameterCatalog
from keyturn.db import open_pool, schema_name
from keyturn.faults import supervised, until_done
from keyturn.masking.agreement import DDL as KEYRING_DDL
from keyturn.masking.agreement import start_only_in_agreement
from keyturn.masking.protect import keyring_for, parameter_opener
from keyturn.metrics import serve_metrics
from keyturn.policy.decider import PolicyDecider, PolicyStage
from keyturn.policy.impact import SqlPreviewer
from keyturn.policy.record import DDL, DecisionRecord
from keyturn.roots import follow_group, opa_client, stream_worker

log = logging.getLogger(__name__)


def create_app(settings: Settings):
    """The policy service's composition root: everything it uses is built here from ``settings``."""
    app, topics, publisher = stream_worker(settings, "policy")
    serve_metrics("policy", settings.policy_metrics_port)  # decision latency, OPA errors
    keyring = keyring_for(settings.seal_keys, settings.keys_dir)
    publisher.warrants = Warrants(keyring, (topics.decided,))  # the executor runs only what the policy allowed
    previewer = SqlPreviewer(
        settings.sql_target_url or settings.database_url,
        ParameterCatalog.load(Path(settings.parameter_catalog_path)),
        # the dry run needs the statement as sent (masking may alter its literals): the seal opens
        # here for that alone, and nothing of the clear parameters leaves this process
        parameter_opener(keyring),
        timeout_s=settings.impact_preview_timeout_s,
    )
    decider = PolicyDecider(opa_client(settings), settings.policy_unavailable_after_s, previewer=previewer)

    @app.task
    async def decide_requests():
        pool = await until_done(
            lambda: open_pool(settings.database_url, DDL + KEYRING_DDL, schema=schema_name(settings.namespace)),
            "policy: opening the database",
        )
        await until_done(lambda: start_only_in_agreement(pool, "policy", keyring), "policy: checking the seal keys")
        record = DecisionRecord(pool)
        policy = PolicyStage(decider, record, publisher, Warrants(keyring, (topics.requested,)))
        stage = Stage(
            publisher,
            (ActionRequested,),
            handle=policy.decide,
            on_failure=policy.on_failure,
            handle_many=policy.decide_batch,
        )
        await supervised(
            "policy: deciding requests",
            lambda: follow_group(settings, "policy", "requests", (topics.requested,), stage),
        )

    return app
