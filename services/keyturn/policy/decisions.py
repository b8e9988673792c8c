"""From a request to OPA's input, and from OPA's answer to a decision event. Pure functions."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from keyturn.core.canonical import canonical_json
from keyturn.core.environments import environment_of
from keyturn.core.events import (
    ActionDecided,
    ActionRequested,
    ApprovalRequirement,
    DecisionOutcome,
    Denial,
    Digest,
    GroupRequirement,
    ImpactPreview,
    Provenance,
)
from keyturn.core.impact import opa_view


def policy_input(request: ActionRequested, impact: ImpactPreview | None = None) -> dict[str, Any]:
    """The decision input document (contract: policies.rego/schemas/decision_input.json)."""
    at = request.requested_at
    document = {
        "action_id": request.action_id,
        "action": request.action,
        "resource": request.resource,
        "parameters": request.parameters,
        "reason": request.reason,
        "requester": {
            "id": request.requester.id,
            "kind": request.requester.kind.value,
            "chain": list(request.requester.chain),
        },
        "environment": environment_of(request.resource),
        "submitted_at": at.isoformat().replace("+00:00", "Z"),
        "context": {"hour_utc": at.hour, "weekday": at.isoweekday()},
    }
    if impact is not None:
        document["impact"] = opa_view(impact)
    return document


def provenance_for(input_document: dict[str, Any], revision: str, decision_id: str | None, now: datetime) -> Provenance:
    input_json = canonical_json(input_document)  # kept, and digested: written once
    return Provenance(
        policy_revision=revision,
        decision_id=decision_id or f"local-{uuid.uuid4()}",
        input_digest=Digest.of_canonical_text(input_json),
        input_json=input_json,
        evaluated_at=now,
    )


def decided_from_answer(request: ActionRequested, answer: Any, provenance: Provenance, now: datetime) -> ActionDecided:
    """The decision event for OPA's document; anything malformed becomes a denial saying why."""
    try:
        return _decided(request, answer, provenance, now)
    except (KeyError, TypeError, ValueError) as exc:
        return denied(request, [f"policy answer is malformed ({type(exc).__name__}: {exc}); denied"], provenance, now)


def denied(request: ActionRequested, reasons: list[str], provenance: Provenance, now: datetime) -> ActionDecided:
    """A denial that names its reasons (policy unavailable, malformed answer, ...)."""
    return ActionDecided(
        event_id=f"decided:{request.action_id}",
        action_id=request.action_id,
        outcome=DecisionOutcome.DENIED,
        reasons=tuple(reasons),
        provenance=provenance,
        decided_at=now,
        request=request,
    )


def _decided(request: ActionRequested, answer: Any, provenance: Provenance, now: datetime) -> ActionDecided:
    if not isinstance(answer, dict) or "decision" not in answer:
        raise ValueError("no 'decision' document")
    doc = answer["decision"]
    outcome = DecisionOutcome(doc["outcome"])
    approvals = None
    if outcome is DecisionOutcome.NEEDS_APPROVAL:
        spec = doc["approvals"]
        groups = tuple(GroupRequirement(g["name"], int(g.get("min", 1))) for g in spec["groups"])
        if not groups:
            raise ValueError("needs_approval without any approver group")
        approvals = ApprovalRequirement(
            groups=groups,
            require_all=bool(spec.get("require_all", True)),
            pending_ttl_s=int(spec.get("pending_ttl_s", 3600)),
            execution_window_s=int(spec.get("execution_window_s", 900)),
            escalation_group=spec.get("escalation_group"),
            reminder_fractions=tuple(float(f) for f in spec.get("reminder_fractions", ())),
        )
    return ActionDecided(
        event_id=f"decided:{request.action_id}",
        action_id=request.action_id,
        outcome=outcome,
        reasons=tuple(str(r) for r in doc.get("reasons", ())),
        rules=tuple(str(r) for r in doc.get("rules", ())),
        approvals=approvals,
        credential_ttl_s=int(doc.get("credential_ttl_s", 60)),
        mask=tuple(str(m) for m in doc.get("mask", ())),
        break_glass=bool(doc.get("break_glass", False)),
        provenance=provenance,
        decided_at=now,
        request=request,
        # a policy written before the decision named its denials has none: the report then says so
        denials=tuple(Denial(str(d["rule"]), str(d["reason"])) for d in doc.get("denials", ())),
    )
