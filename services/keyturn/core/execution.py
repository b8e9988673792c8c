"""The executor's rules: may this approved or allowed action run now? Pure functions.

Before anything runs, every one of these must hold (``refusal_reason``):

1. the action was allowed by the policy, or approved by people;
2. every approving vote, and the resolution, are for the exact request being executed;
3. the approval-to-execution window is still open;
4. the clear parameters about to be used hash to the approved payload digest.

The fifth check, "never started before", needs the ledger and lives in the executor.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from keyturn.core.events import (
    ActionDecided,
    ApprovalResolved,
    DecisionOutcome,
    Digest,
    ResolutionOutcome,
    VoteChoice,
    payload_digest,
)


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


def refusal_reason(order: ExecutionOrder, now: datetime, parameters: dict[str, Any] | None = None) -> str | None:
    """Why the order must not run now, or None when it may.

    ``parameters`` are the clear parameters the plugin would get; when given, they must hash
    to the approved payload digest, so nothing but what was approved can run.
    """
    request = order.decision.request
    if order.resolution is None:
        if order.decision.outcome is not DecisionOutcome.ALLOWED:
            return f"not allowed: the decision was {order.decision.outcome.value}"
    else:
        if order.resolution.outcome is not ResolutionOutcome.APPROVED:
            return f"not approved: the approval ended {order.resolution.outcome.value}"
        if order.decision.outcome is not DecisionOutcome.NEEDS_APPROVAL:
            return f"not approvable: the decision was {order.decision.outcome.value}, not needs_approval"
        approving = [v for v in order.resolution.votes if v.choice is VoteChoice.APPROVE]
        if not approving:
            return "not approved: the resolution carries no approving vote"
        drifted = [v.approver.id for v in approving if v.payload_digest != order.payload_digest]
        if drifted:
            return f"parameters drifted: {', '.join(drifted)} approved a different payload digest"
        deadline = order.execute_before()
        if deadline is not None and now > deadline:
            return f"execution window closed at {deadline.isoformat()}: submit the action again for a new approval"
    if parameters is not None:
        actual = payload_digest(request.action, request.resource, parameters)
        if actual != order.payload_digest:
            return (
                f"parameters drifted: the parameters to execute hash to {actual}, "
                f"but {order.payload_digest} was decided on; nothing was run"
            )
    return None


def capped_result(result: Any, max_rows: int) -> Any:
    """``result`` with at most ``max_rows`` rows: a large result becomes its row count plus the first rows.

    Rows are a ``rows`` list (with the plugin's ``row_count`` of all rows, when it knows it),
    a top-level list, or a list ``body`` (an HTTP answer). ``truncated`` says whether rows were left out.
    """
    if isinstance(result, list):
        return _capped_rows({"row_count": len(result), "rows": result}, max_rows)
    if not isinstance(result, dict):
        return result
    if isinstance(result.get("rows"), list):
        return _capped_rows(result, max_rows)
    if isinstance(result.get("body"), list):
        return {**result, "body": _capped_rows({"row_count": len(result["body"]), "rows": result["body"]}, max_rows)}
    return result


def _capped_rows(result: dict[str, Any], max_rows: int) -> dict[str, Any]:
    rows = result["rows"]
    count = result.get("row_count")
    if isinstance(count, bool) or not isinstance(count, int) or count < len(rows):
        count = len(rows)
    kept = rows[: max(max_rows, 0)]
    truncated = bool(result.get("truncated")) or count > len(kept)
    return {**result, "row_count": count, "rows": kept, "truncated": truncated}


def result_mask_fields(mask: tuple[str, ...] | list[str]) -> list[str]:
    """The decision's mask paths (``parameters.password``…) as paths into a result.

    A parameter name masks that field at the top of the result, in every row, and in an
    HTTP body (and its rows). ``columns.<name>`` paths are ``masked_columns``.
    """
    fields: list[str] = []
    for path in mask:
        if path.startswith("columns."):  # masked by name in any case (``masked_columns``), not as a path
            continue
        name = path.removeprefix("parameters.")
        if name:
            fields += [name, f"rows.{name}", f"body.{name}", f"body.rows.{name}"]
    return fields


def masked_columns(mask: tuple[str, ...] | list[str]) -> frozenset[str]:
    """The columns the decision masks (``columns.email`` → ``email``), compared case-blind: in an
    export's file and in the rows a ``sql.query`` returns."""
    return frozenset(path.removeprefix("columns.").lower() for path in mask if path.startswith("columns."))
