"""The policy stage: each request → OPA → one decision, kept before it is published.

Fail closed: no answer from OPA means no allow, ever; a request this stage cannot decide at
all (a bug, a refused statement) ends ``denied`` with ``policy_error`` instead of staying open.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from keyturn.bus.publisher import Publisher
from keyturn.bus.refusals import masked_line
from keyturn.core.events import ActionDecided, ActionRequested
from keyturn.core.impact import bounded
from keyturn.masking.protect import masked_view
from keyturn.policy.decisions import decided_from_answer, denied, policy_input, provenance_for
from keyturn.policy.impact import Previewer
from keyturn.policy.opa import OpaAnswer, PolicyAnswerInvalid, PolicyUnavailable

log = logging.getLogger(__name__)


class Opa(Protocol):
    """What the decider asks of OPA (``policy.opa.OpaClient``)."""

    async def query(self, path: str, input_document: dict[str, Any]) -> OpaAnswer: ...

    async def policy_revision(self) -> str: ...


class Decisions(Protocol):
    """The one decision per action (``policy.record.DecisionRecord``): the first kept stands."""

    async def earlier(self, action_id: str) -> bytes | None: ...

    async def keep(self, action_id: str, decided_event: bytes) -> bytes: ...


class PolicyDecider:
    """Asks OPA, retrying while it is away for at most ``unavailable_after_s``, then denies."""

    def __init__(
        self,
        opa: Opa,
        unavailable_after_s: float,
        *,
        previewer: Previewer | None = None,
        retry_every_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.opa = opa
        self.previewer = previewer  # the impact preview, asked before OPA (None: no previews)
        self.unavailable_after_s = unavailable_after_s
        self.retry_every_s = retry_every_s
        self.clock = clock

    async def decide(self, request: ActionRequested) -> ActionDecided:
        impact = await self.previewer.preview(request) if self.previewer is not None else None
        decision, tolerance = await self._ask_opa(request, policy_input(request, impact))
        if impact is None:
            return decision
        # bound to the payload it was computed for; max_rows is what the executor will enforce
        return dataclasses.replace(decision, impact=bounded(impact, tolerance))

    async def _ask_opa(self, request: ActionRequested, document: dict[str, Any]) -> tuple[ActionDecided, Any]:
        """OPA's decision and the impact tolerance it grants (None when it gave none)."""
        give_up_at = self.clock() + self.unavailable_after_s
        while True:
            now = datetime.now(UTC)
            try:
                answer = await self.opa.query("keyturn/decision", document)
                revision = await self.opa.policy_revision()
            except PolicyAnswerInvalid as exc:
                reason = masked_line(f"policy_invalid: {exc}")  # OPA's answer may quote the input
                return denied(request, [reason], provenance_for(document, "unknown", None, now), now), None
            except PolicyUnavailable as exc:
                if self.clock() >= give_up_at:
                    reason = masked_line(
                        f"policy_unavailable: no decision from OPA within {self.unavailable_after_s:.0f}s ({exc})"
                    )
                    return denied(request, [reason], provenance_for(document, "unknown", None, now), now), None
                log.warning("OPA unavailable, holding %s: %s", request.action_id, exc)
                await asyncio.sleep(self.retry_every_s)
                continue
            found = answer.result.get("decision") if isinstance(answer.result, dict) else None
            tolerance = found.get("impact_tolerance") if isinstance(found, dict) else None
            decided = decided_from_answer(
                request, answer.result, provenance_for(document, revision, answer.decision_id, now), now
            )
            return decided, tolerance


def with_policy_masking(decision: ActionDecided) -> ActionDecided:
    """The decision whose embedded request also masks the fields the policy names (``mask``)."""
    if not decision.mask:
        return decision
    masked = masked_view(decision.request.parameters_json, decision.mask)
    return dataclasses.replace(decision, request=dataclasses.replace(decision.request, parameters_json=masked))


def policy_error(request: ActionRequested, exc: Exception, now: datetime) -> ActionDecided:
    """The denial for a request the policy stage failed on (not OPA's answer: the stage's own fault)."""
    try:
        document = policy_input(request)
    except Exception:  # the request itself may be what failed; the provenance then records an empty input
        document = {}
    return denied(
        request,
        # an exception's text can quote the request it failed on: masked before a topic carries it
        [masked_line(f"policy_error: the policy service failed on this request ({type(exc).__name__}: {exc})")],
        provenance_for(document, "unknown", None, now),
        now,
    )


class PolicyStage:
    """``decide`` per request (the loop's handler) and ``on_failure`` (its terminal event)."""

    def __init__(self, decider: PolicyDecider, decisions: Decisions, publisher: Publisher) -> None:
        self.decider = decider
        self.decisions = decisions
        self.publisher = publisher

    async def decide(self, request: ActionRequested, _message: Any = None) -> None:
        encoded = await self.decisions.earlier(request.action_id)
        if encoded is None:
            decision = with_policy_masking(await self.decider.decide(request))
            log.info("decided %s %s: %s", request.action_id, request.action, decision.outcome.value)
            encoded = await self.decisions.keep(request.action_id, self.publisher.encode(decision))
        else:
            log.info("redelivered %s: republishing its decision", request.action_id)
        await self.publisher.publish_encoded(self.publisher.topics.decided, request.action_id, encoded)

    async def on_failure(self, request: ActionRequested, _message: Any, exc: Exception) -> None:
        """Deny the request with ``policy_error`` (or republish a decision that was kept after all)."""
        encoded = await self.decisions.earlier(request.action_id)
        if encoded is None:
            decision = policy_error(request, exc, datetime.now(UTC))
            log.warning("denied %s: %s", request.action_id, decision.reasons[0])
            encoded = await self.decisions.keep(request.action_id, self.publisher.encode(decision))
        await self.publisher.publish_encoded(self.publisher.topics.decided, request.action_id, encoded)
