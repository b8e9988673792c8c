"""Realistic audit histories for unit tests: real event dataclasses through the real chain."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from keyturn.audit.records import actor_of, audit_payload, flags_of, occurred_at
from keyturn.core.audit.chain import AuditChain
from keyturn.core.audit.checkpoint import CheckpointSigner
from keyturn.core.audit.record import AuditRecord
from keyturn.core.canonical import canonical_json
from keyturn.core.events import (
    ActionDecided,
    ActionExecuted,
    ActionRequested,
    ApprovalRequirement,
    ApprovalResolved,
    DeadLetter,
    DecisionOutcome,
    Denial,
    Digest,
    ExecutionOutcome,
    GroupRequirement,
    Provenance,
    ResolutionOutcome,
    Vote,
    VoteChoice,
    VoteRecorded,
)
from keyturn.core.principal import Principal, PrincipalKind

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
SIGNER = CheckpointSigner(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
DIGEST = Digest("ab" * 32)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


class History:
    """Builds one audit chain action by action, the way the audit worker would record it."""

    def __init__(self) -> None:
        self.chain = AuditChain(SIGNER, checkpoint_every=1000, audit_topic="kt.audit")
        self.records: list[AuditRecord] = []

    def _add(self, event, topic: str) -> None:
        record = self.chain.append(
            event_id=event.event_id,
            event_type=type(event).__name__,
            source_topic=f"kt.{topic}",
            occurred_at=occurred_at(event),
            payload=audit_payload(event),
            now=occurred_at(event),
            action_id=getattr(event, "action_id", None),
            actor=actor_of(event),
            flags=flags_of(event),
        )
        assert record is not None
        self.records.append(record)

    def request(
        self,
        action_id: str,
        action: str,
        start: float,
        *,
        requester: str = "agent:reporter",
        acting_for: tuple[str, ...] = ("human:alice",),
        parameters: str = "{}",
        reason: str = "quarterly report",
    ) -> ActionRequested:
        request = ActionRequested(
            event_id=f"requested:{action_id}",
            action_id=action_id,
            action=action,
            resource=f"test://{action}",
            parameters_json=parameters,
            reason=reason,
            requester=Principal(requester, Principal.kind_of(requester), acting_for),
            payload_digest=DIGEST,
            requested_at=at(start),
        )
        self._add(request, "actions.requested")
        return request

    def decide(
        self,
        request: ActionRequested,
        outcome: str,
        start: float,
        *,
        groups: tuple[tuple[str, int], ...] = (),
        revision: str = "sha256:rev1",
        break_glass: bool = False,
        rules: tuple[str, ...] = (),
        reasons: tuple[str, ...] | None = None,
        denials: tuple[Denial, ...] = (),
    ) -> ActionDecided:
        policy_input = {
            "action": request.action,
            "action_id": request.action_id,
            "requester": {"id": request.requester.id},
        }
        decision = ActionDecided(
            event_id=f"decided:{request.action_id}",
            action_id=request.action_id,
            outcome=DecisionOutcome(outcome),
            provenance=Provenance(
                revision, f"decision-{request.action_id}", DIGEST, at(start), canonical_json(policy_input)
            ),
            decided_at=at(start),
            request=request,
            reasons=(f"{request.action} is {outcome}",) if reasons is None else reasons,
            rules=rules,
            approvals=ApprovalRequirement(tuple(GroupRequirement(n, m) for n, m in groups), 3600, 900)
            if groups
            else None,
            break_glass=break_glass,
            denials=denials,
        )
        self._add(decision, "actions.decided")
        return decision

    def vote(
        self,
        decision: ActionDecided,
        approver: str,
        choice: str,
        start: float,
        *,
        accepted: bool = True,
        reason: str | None = None,
        refusal: str = "SelfApprovalRefused",
        message: str | None = None,
    ) -> Vote:
        vote = Vote(
            Principal(approver, PrincipalKind.HUMAN),
            VoteChoice(choice),
            DIGEST,
            at(start),
            reason,
            "cli",
            ("security",) if accepted else (),
        )
        self._add(
            VoteRecorded(
                event_id=f"vote:{decision.action_id}:{approver}:{start}",
                action_id=decision.action_id,
                vote=vote,
                accepted=accepted,
                recorded_at=at(start),
                refusal=None if accepted else refusal,
                message="" if accepted else (message or f"{approver} is in the requester chain"),
            ),
            "approvals.votes",
        )
        return vote

    def resolve(self, decision: ActionDecided, outcome: str, start: float, votes: tuple[Vote, ...] = ()) -> None:
        self._add(
            ApprovalResolved(
                event_id=f"resolved:{decision.action_id}",
                action_id=decision.action_id,
                outcome=ResolutionOutcome(outcome),
                resolved_at=at(start),
                decision=decision,
                votes=votes,
                summary=f"{outcome} after {len(votes)} vote(s)",
            ),
            "actions.resolved",
        )

    def execute(self, request: ActionRequested, outcome: str, start: float) -> None:
        self._add(
            ActionExecuted(
                event_id=f"executed:{request.action_id}",
                action_id=request.action_id,
                outcome=ExecutionOutcome(outcome),
                plugin="noop",
                payload_digest=DIGEST,
                finished_at=at(start),
                error=None if outcome == "succeeded" else "boom",
            ),
            "actions.executed",
        )

    def dead_letter(self, start: float) -> None:
        self._add(
            DeadLetter(
                event_id=f"dlq:kt.actions.requested:0:{int(start)}",
                source_topic="kt.actions.requested",
                partition=0,
                offset=int(start),
                payload_length=8,
                payload_digest=DIGEST,
                error_type="not_avro",
                reason="not Avro",
                service="policy",
                failed_at=at(start),
            ),
            "dlq",
        )

    def checkpoint(self, start: float) -> None:
        self.records.append(self.chain.checkpoint(at(start)))


def story() -> History:
    """Five actions: an allowed read, a denied delete, an approved grant (quick approval, a
    refused self-approval first), a denied grant (slow), an expired grant; and a dead letter."""
    history = History()
    read = history.request("a-read", "read.table", 0)
    history.decide(read, "allowed", 0.1)
    history.execute(read, "succeeded", 0.3)

    delete = history.request("a-delete", "secrets.delete", 10, requester="agent:cleaner", acting_for=())
    history.decide(delete, "denied", 10.2)

    grant = history.request("a-grant", "iam.role.grant", 20)
    grant_decision = history.decide(grant, "needs_approval", 20.5, groups=(("security", 1),))
    history.vote(grant_decision, "human:alice", "approve", 21, accepted=False)
    carol = history.vote(grant_decision, "human:carol", "approve", 24.5, reason="ticket 42")
    history.resolve(grant_decision, "approved", 24.5, (carol,))
    history.execute(grant, "succeeded", 25)

    history.dead_letter(30)

    slow = history.request("a-slow", "iam.role.grant", 40, requester="agent:builder", acting_for=("human:bob",))
    slow_decision = history.decide(slow, "needs_approval", 40.5, groups=(("security", 1), ("platform", 1)))
    dave = history.vote(slow_decision, "human:dave", "deny", 160.5, reason="not this sprint")
    history.resolve(slow_decision, "denied", 160.5, (dave,))

    lapsed = history.request("a-lapsed", "iam.role.grant", 200)
    lapsed_decision = history.decide(lapsed, "needs_approval", 200.5, groups=(("security", 1),))
    history.resolve(lapsed_decision, "expired", 3800.5)
    history.checkpoint(3801)
    return history
