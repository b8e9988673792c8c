"""The policy stage: each request → OPA → one decision, kept before it is published.

A batch of requests is one OPA query (``keyturn.batch``: the decision of every item, in order),
one read and one write of ``policy_decisions``, and its decisions are sent together. Each
decision keeps its own provenance: the batch query's decision id with the item's index
(``<decision id>#<index>``), the policy revision, and the digest of its own input.

Fail closed: no answer from OPA means no allow, ever (for a batch: every request of it is
denied, as one would be alone); a request this stage cannot decide at all (a bug, a refused
statement) ends ``denied`` with ``policy_error`` instead of staying open.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from keyturn.bus.headers import Headers, headers_of
from keyturn.bus.loop import tally
from keyturn.bus.publisher import Publisher
from keyturn.bus.refusals import masked_line
from keyturn.bus.warrants import Warrants, dead_letter_unwarranted
from keyturn.core.events import ActionDecided, ActionRequested, ImpactPreview
from keyturn.core.impact import bounded
from keyturn.masking.protect import masked_view
from keyturn.policy.decisions import decided_from_answer, denied, policy_input, provenance_for
from keyturn.policy.impact import Previewer
from keyturn.policy.opa import OpaAnswer, PolicyAnswerInvalid, PolicyUnavailable

log = logging.getLogger(__name__)


class Opa(Protocol):
    """What the decider asks of OPA (``policy.opa.OpaClient``)."""

    async def query(self, path: str, input_document: dict[str, Any]) -> OpaAnswer: ...

    async def revision_of(self, answer: OpaAnswer) -> str: ...


class Decisions(Protocol):
    """The one decision per action (``policy.record.DecisionRecord``): the first kept stands."""

    async def earlier(self, action_id: str) -> bytes | None: ...

    async def keep(self, action_id: str, decided_event: bytes) -> bytes: ...

    async def earlier_many(self, action_ids: list[str]) -> dict[str, bytes]: ...

    async def keep_many(self, decided: dict[str, bytes]) -> dict[str, bytes]: ...


BATCH_PATH = "keyturn/batch"


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
        return (await self.decide_many([request]))[0]

    async def _previews(self, requests: list[ActionRequested]) -> list[ImpactPreview | None]:
        """Each request's impact preview (None: no previewer, or not SQL-backed), in order; up to
        ``PREVIEWS_AT_ONCE`` dry runs at a time (one after another, a batch of SQL writes waited
        for the sum of their connections and counts)."""
        impacts: list[ImpactPreview | None] = [None] * len(requests)
        previewer = self.previewer
        if previewer is None:
            return impacts
        wanted = [i for i, r in enumerate(requests) if previewer.applies_to(r)]
        if not wanted:  # most batches: no task per request on the hot path
            return impacts
        turns = asyncio.Semaphore(PREVIEWS_AT_ONCE)

        async def one(request: ActionRequested) -> ImpactPreview | None:
            async with turns:
                return await previewer.preview(request)

        for i, impact in zip(wanted, await asyncio.gather(*(one(requests[i]) for i in wanted)), strict=True):
            impacts[i] = impact
        return impacts

    async def decide_many(self, requests: list[ActionRequested]) -> list[ActionDecided]:
        """One decision per request, in order, from one OPA query; every one denied when OPA
        fails (invalid answer at once, unavailable once ``unavailable_after_s`` passed).

        SQL-backed requests get their impact preview first (``input.impact``); a decision that
        carries one binds it to the payload and to the tolerance the policy grants."""
        impacts = await self._previews(requests)
        documents = [policy_input(request, impact) for request, impact in zip(requests, impacts, strict=True)]
        give_up_at = self.clock() + self.unavailable_after_s
        while True:
            try:
                answer = await self.opa.query(BATCH_PATH, {"batch": documents})
                items = _items(answer.result, len(documents))
                revision = await self.opa.revision_of(answer)
            except PolicyAnswerInvalid as exc:
                now = datetime.now(UTC)
                reason = masked_line(f"policy_invalid: {exc}")  # OPA's answer may quote the input
                return [
                    denied(request, [reason], provenance_for(document, "unknown", None, now), now)
                    for request, document in zip(requests, documents, strict=True)
                ]
            except PolicyUnavailable as exc:
                if self.clock() >= give_up_at:
                    now = datetime.now(UTC)
                    reason = masked_line(
                        f"policy_unavailable: no decision from OPA within {self.unavailable_after_s:.0f}s ({exc})"
                    )
                    return [
                        denied(request, [reason], provenance_for(document, "unknown", None, now), now)
                        for request, document in zip(requests, documents, strict=True)
                    ]
                log.warning("OPA unavailable, holding %d request(s): %s", len(requests), exc)
                await asyncio.sleep(self.retry_every_s)
                continue
            now = datetime.now(UTC)  # decided when OPA answered, not when it was asked
            decisions = []
            for index, (request, document, item, impact) in enumerate(
                zip(requests, documents, items, impacts, strict=True)
            ):
                decided = decided_from_answer(
                    request,
                    {"decision": item},
                    provenance_for(document, revision, _item_id(answer.decision_id, index), now),
                    now,
                )
                if impact is not None:
                    # bound to the payload it was computed for; max_rows is what the executor will enforce
                    tolerance = item.get("impact_tolerance") if isinstance(item, dict) else None
                    decided = dataclasses.replace(decided, impact=bounded(impact, tolerance))
                decisions.append(decided)
            return decisions


PREVIEWS_AT_ONCE = 8  # dry runs of one batch at a time, each on a connection of its own to the target


def _items(result: Any, expected: int) -> list[Any]:
    """The decisions of a batch answer; ``PolicyAnswerInvalid`` unless there is one per request."""
    items = result.get("decisions") if isinstance(result, dict) else None
    if not isinstance(items, list) or len(items) != expected:
        got = f"{len(items)} decisions" if isinstance(items, list) else "no decisions"
        raise PolicyAnswerInvalid(f"OPA answered a batch of {expected} with {got} (is keyturn.batch loaded?)")
    return items


def _item_id(decision_id: str | None, index: int) -> str | None:
    """The decision id of one item of a batch query: the query's id and the item's index."""
    return f"{decision_id}#{index}" if decision_id else None


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
    """``decide_batch`` per batch (the loop's batch handler), ``decide`` per request (the loop's
    handler when a batch failed) and ``on_failure`` (its terminal event)."""

    def __init__(self, decider: PolicyDecider, decisions: Decisions, publisher: Publisher, warrants: Warrants) -> None:
        self.decider = decider
        self.decisions = decisions
        self.publisher = publisher
        # requests are decided only as the intake sent them (``bus.warrants``): one written to the
        # topic by anyone else names whatever requester it likes and skipped every check at the door
        self.warrants = warrants

    async def _vouched(self, batch: list[tuple[ActionRequested, Any]]) -> list[tuple[ActionRequested, Any]]:
        kept, refused = self.warrants.sorted(batch)
        for request, message, why in refused:
            await dead_letter_unwarranted(
                self.publisher,
                message,
                "unwarranted_request",
                f"a request for {request.action_id} with {why}: not sent by Keyturn's intake, so it was not decided",
            )
        return kept

    async def decide(self, request: ActionRequested, message: Any = None) -> None:
        if not await self._vouched([(request, message)]):
            return
        encoded = await self.decisions.earlier(request.action_id)
        if encoded is None:
            decision = with_policy_masking(await self.decider.decide(request))
            log.info("decided %s %s: %s", request.action_id, request.action, decision.outcome.value)
            mine = self.publisher.encode(decision)
            encoded = await self.decisions.keep(request.action_id, mine)
            headers = headers_of(decision) if encoded == mine else None
        else:
            log.info("redelivered %s: republishing its decision", request.action_id)
            headers = None
        await self.publisher.publish_encoded(self.publisher.topics.decided, request.action_id, encoded, headers)

    async def decide_batch(self, batch: list[tuple[ActionRequested, Any]]) -> None:
        """Decide a batch: one read of the kept decisions, one OPA query for the rest, one write,
        then every decision sent and acknowledged (in the batch's order) before it returns.

        A request delivered twice in one batch is decided once and published once per delivery."""
        batch = await self._vouched(batch)
        if not batch:
            return
        requests = list({request.action_id: request for request, _ in batch}.values())
        kept = await self.decisions.earlier_many([request.action_id for request in requests])
        headers: dict[str, Headers] = {}
        made: dict[str, ActionDecided] = {}
        fresh = [request for request in requests if request.action_id not in kept]
        if fresh:
            made = {d.action_id: with_policy_masking(d) for d in await self.decider.decide_many(fresh)}
            encoded = {action_id: self.publisher.encode(d) for action_id, d in made.items()}
            # one line per batch (a line per action cost more than deciding it); each action's
            # decision is on the decided and audit topics
            log.info("decided %d: %s", len(made), tally(d.outcome.value for d in made.values()))
            for decision in made.values():
                log.debug("decided %s %s: %s", decision.action_id, decision.request.action, decision.outcome.value)
            kept.update(await self.decisions.keep_many(encoded))
            # the headers describe our decision; one another worker kept first is sent with its type only
            headers = {i: headers_of(d) for i, d in made.items() if kept[i] == encoded[i]}
        redelivered = [request.action_id for request in requests if request.action_id not in made]
        if redelivered:
            log.info("redelivered %d, republishing their decisions: %s", len(redelivered), ", ".join(redelivered[:10]))
        topic = self.publisher.topics.decided
        await self.publisher.publish_all(
            [(topic, r.action_id, kept[r.action_id], headers.get(r.action_id)) for r, _ in batch]
        )

    async def on_failure(self, request: ActionRequested, message: Any, exc: Exception) -> None:
        """Deny the request with ``policy_error`` (or republish a decision that was kept after all);
        one without the intake's warrant is not the policy's to decide, even so."""
        if self.warrants.problem(message) is not None:
            return
        encoded = await self.decisions.earlier(request.action_id)
        if encoded is None:
            decision = policy_error(request, exc, datetime.now(UTC))
            log.warning("denied %s: %s", request.action_id, decision.reasons[0])
            encoded = await self.decisions.keep(request.action_id, self.publisher.encode(decision))
        await self.publisher.publish_encoded(self.publisher.topics.decided, request.action_id, encoded)
