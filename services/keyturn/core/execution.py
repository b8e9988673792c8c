"""The executor's rules: may this approved or allowed action run now? Pure functions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from keyturn.core.events import ActionDecided, ApprovalResolved, DecisionOutcome, Digest, ResolutionOutcome, VoteChoice


@dataclass(frozen=True)
class ExecutionOrder:
    """An action cleared to run: the decision, and the resolution when people approved it."""

    decision: ActionDecided
    resolution: ApprovalResolved | None = None

    @property
    def action_id(self) -> str:
        return self.decision.action_id

    @property
    def payload_digest(self) -> Digest:
        return self.decision.request.payload_digest

    def execute_before(self) -> datetime | None:
        """The end of the approval-to-execution window (None when allowed outright)."""
        if self.resolution is None:
            return None
        if self.resolution.execute_before is not None:
            return self.resolution.execute_before
        window = self.decision.approvals.execution_window_s if self.decision.approvals else 0
        return self.resolution.resolved_at + timedelta(seconds=window)


def order_from(event: ActionDecided | ApprovalResolved) -> ExecutionOrder | None:
    """An order for an allowed decision or an approved resolution; None for anything else."""
    if isinstance(event, ActionDecided):
        return ExecutionOrder(event) if event.outcome is DecisionOutcome.ALLOWED else None
    if event.outcome is ResolutionOutcome.APPROVED:
        return ExecutionOrder(event.decision, event)
    return None


def refusal_reason(order: ExecutionOrder, now: datetime) -> str | None:
    """Why the order must not run now, or None when it may.

    Checks that it was allowed or approved, that the approval-to-execution window is open,
    and that every approving vote was cast on the exact parameters being executed.
    """
    if order.resolution is None:
        if order.decision.outcome is not DecisionOutcome.ALLOWED:
            return f"not allowed: the decision was {order.decision.outcome.value}"
        return None
    if order.resolution.outcome is not ResolutionOutcome.APPROVED:
        return f"not approved: the approval ended {order.resolution.outcome.value}"
    if order.resolution.decision.request.payload_digest != order.payload_digest:
        return "parameters drifted: the approval is for other parameters than the request"
    drifted = [v.approver.id for v in order.resolution.votes if v.choice is VoteChoice.APPROVE and v.payload_digest != order.payload_digest]
    if drifted:
        return f"parameters drifted: {', '.join(drifted)} approved a different payload digest"
    deadline = order.execute_before()
    if deadline is not None and now > deadline:
        return f"execution window closed at {deadline.isoformat()}: approve again to run it"
    return None
