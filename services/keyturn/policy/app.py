"""Policy service: every request → OPA → one decision (allowed / denied / needs approval).

consumes  <ns>.actions.requested   (ActionRequested)
produces  <ns>.actions.decided     (ActionDecided, with provenance)
          <ns>.dlq                 (anything undecodable)
state     policy_decisions in PostgreSQL: the one decision per action (redelivery republishes it).
          OPA holds the policy. Fail closed: no answer from OPA means no allow, ever.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from datetime import datetime, timezone

from keyturn.bus.topics import Topics
from keyturn.bus.worker import consume, faust_publisher, handle_each, make_app
from keyturn.config import Settings
from keyturn.core.events import ActionDecided, ActionRequested
from keyturn.db import open_pool
from keyturn.faults import until_done
from keyturn.masking.protect import masked_view
from keyturn.metrics import serve_metrics
from keyturn.policy.decisions import decided_from_answer, denied, policy_input, provenance_for
from keyturn.policy.opa import OpaClient, PolicyAnswerInvalid, PolicyUnavailable
from keyturn.policy.record import DDL, DecisionRecord

log = logging.getLogger(__name__)


class PolicyDecider:
    """Asks OPA, retrying while it is away for at most ``unavailable_after_s``, then denies."""

    def __init__(self, opa: OpaClient, unavailable_after_s: float) -> None:
        self.opa = opa
        self.unavailable_after_s = unavailable_after_s

    async def decide(self, request: ActionRequested) -> ActionDecided:
        document = policy_input(request)
        give_up_at = time.monotonic() + self.unavailable_after_s
        while True:
            now = datetime.now(timezone.utc)
            try:
                answer = await self.opa.query("keyturn/decision", document)
                revision = await self.opa.policy_revision()
            except PolicyAnswerInvalid as exc:
                return denied(request, [f"policy_invalid: {exc}"], provenance_for(document, "unknown", None, now), now)
            except PolicyUnavailable as exc:
                if time.monotonic() >= give_up_at:
                    reason = f"policy_unavailable: no decision from OPA within {self.unavailable_after_s:.0f}s ({exc})"
                    return denied(request, [reason], provenance_for(document, "unknown", None, now), now)
                log.warning("OPA unavailable, holding %s: %s", request.action_id, exc)
                await asyncio.sleep(1.0)
                continue
            return decided_from_answer(request, answer.result, provenance_for(document, revision, answer.decision_id, now), now)


def with_policy_masking(decision: ActionDecided) -> ActionDecided:
    """The decision whose embedded request also masks the fields the policy names (``mask``)."""
    if not decision.mask:
        return decision
    masked = masked_view(decision.request.parameters_json, decision.mask)
    return dataclasses.replace(decision, request=dataclasses.replace(decision.request, parameters_json=masked))


def create_app(settings: Settings):
    app = make_app(settings, "policy")
    serve_metrics("policy", settings.policy_metrics_port)  # decision latency, OPA errors
    topics = Topics.from_settings(settings)
    publisher = faust_publisher(app, settings, "policy")
    decider = PolicyDecider(
        OpaClient.from_settings(settings),
        settings.policy_unavailable_after_s,
    )

    @app.agent(consume(app, topics.requested))
    async def decide_requests(stream):
        record = DecisionRecord(await until_done(lambda: open_pool(settings, DDL), "policy: opening the database"))

        async def decide(request: ActionRequested, _message) -> None:
            encoded = await record.earlier(request.action_id)
            if encoded is None:
                decision = with_policy_masking(await decider.decide(request))
                log.info("decided %s %s: %s", request.action_id, request.action, decision.outcome.value)
                encoded = await record.keep(request.action_id, publisher.encode(decision))
            else:
                log.info("redelivered %s: republishing its decision", request.action_id)
            await publisher.publish_encoded(topics.decided, request.action_id, encoded)

        await handle_each(stream, publisher, decide, accept=(ActionRequested,))

    return app
