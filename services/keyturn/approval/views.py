"""What approvers see of an action: masked parameters, who asks for whom, progress, deadlines.

The API, the console and every chat adapter render these dictionaries, so all of them show
the same facts; none of them ever sees clear parameters (only the masked copy travels).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from keyturn.core import approval as rules
from keyturn.core.events import ActionDecided, ImpactPreview, Vote, VoteChoice, VoteRecorded
from keyturn.core.parameters import is_secret_reference


def approval_view(decided: ActionDecided, state: rules.PendingApproval) -> dict[str, Any]:
    """An approval as approvers see it: masked parameters only, progress, deadlines."""
    request = decided.request
    progress = rules.approval_progress(state)
    resolution = rules.resolution_of(state)
    return {
        "action_id": decided.action_id,
        "action": request.action,
        "resource": request.resource,
        "parameters": masked_parameters(request.parameters, decided.mask),
        "reason": request.reason,
        "requester": request.requester.id,
        "acting_for": list(request.requester.chain),
        "payload_digest": str(request.payload_digest),
        "status": state.status,
        "groups": [
            {"name": g.name, "have": g.have, "need": g.need, "approvers": list(g.approvers)} for g in progress.groups
        ],
        "summary": progress.summary,
        "policy_reasons": list(decided.reasons),
        "impact": impact_view(decided.impact),
        "requested_at": request.requested_at.isoformat(),
        "opened_at": state.opened_at.isoformat(),
        "expires_at": state.expires_at.isoformat(),
        "resolved_at": state.resolved_at.isoformat() if state.resolved_at else None,
        "resolution_reason": resolution.reason if resolution else None,
        "escalation_group": state.policy.escalation_group,
        "escalated": state.escalated,
        "votes": [
            {
                "approver": v.approver.id,
                "choice": v.choice,
                "reason": v.reason,
                "channel": rules.shown_channel(v.channel),
                "cast_at": v.cast_at.isoformat(),
            }
            for v in state.votes
        ],
        "policy_revision": decided.provenance.policy_revision,
        "break_glass": False,
    }


def break_glass_view(decided: ActionDecided, reviews: Sequence[Vote] = ()) -> dict[str, Any]:
    """A break-glass action: it ran without approval and is flagged for mandatory review;
    ``reviews``: the reviews accepted so far, oldest first."""
    request = decided.request
    shown = masked_parameters(request.parameters, decided.mask)  # the incident id too, as the policy masks
    return {
        "action_id": decided.action_id,
        "action": request.action,
        "resource": request.resource,
        "parameters": shown,
        "reason": request.reason,
        "requester": request.requester.id,
        "acting_for": list(request.requester.chain),
        "payload_digest": str(request.payload_digest),
        "status": "break_glass",
        "incident_id": str(shown.get("incident_id", "")),
        "policy_reasons": list(decided.reasons),
        "impact": impact_view(decided.impact),
        "requested_at": request.requested_at.isoformat(),
        "summary": f"Break-glass by {requester_line(request.requester.id, list(request.requester.chain))}: "
        "ran without approval, mandatory review",
        "break_glass": True,
        "reviews": [review_line(vote) for vote in reviews],
    }


def review_line(vote: Vote) -> str:
    """``human:carol: no objection`` / ``human:dave objected: wrong incident`` (the reason as masked
    when it was given)."""
    if vote.choice is VoteChoice.APPROVE:
        return f"{vote.approver.id}: no objection"
    return f"{vote.approver.id} objected: {vote.reason}" if vote.reason else f"{vote.approver.id} objected"


MASKED = "[masked]"


def impact_view(impact: ImpactPreview | None) -> dict[str, Any] | None:
    """The impact preview as every channel shows it (None for actions that are not SQL-backed)."""
    if impact is None:
        return None
    return {
        "status": impact.status,
        "operation": impact.operation,
        "rows": impact.rows,
        "method": impact.method,
        "tables": list(impact.tables),
        "max_rows": impact.max_rows,
        "detail": impact.detail,
        "payload_digest": str(impact.payload_digest),
        "computed_at": impact.computed_at.isoformat(),
        "summary": impact.summary(),
    }


def masked_parameters(parameters: Any, mask: tuple[str, ...] | list[str]) -> Any:
    """The parameters with every path the decision says to mask (``parameters.password``) hidden.

    Intake already masks what travels; this second pass makes sure that whatever the policy
    names is never shown to a person, even if the first pass missed it.
    """
    shown = json.loads(json.dumps(parameters))
    for path in mask:
        keys = path.split(".")
        if keys[:1] != ["parameters"] or len(keys) < 2:
            continue
        node = shown
        for key in keys[1:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and keys[-1] in node and not is_secret_reference(node[keys[-1]]):
            node[keys[-1]] = MASKED  # a secret reference stays: its name says which database or key
    return shown


NEXT_STEP = {
    "approved": "it will run now",
    "denied": "it will not run",
    "expired": "it will not run; submit it again if still needed",
}


# an action the catalog marks external is not run by Keyturn: approvers are told who performs it
EXTERNAL_NEXT_STEP = (
    "Keyturn does not perform it (execution: external): the requester gets a signed approval receipt "
    "for the system that does, and the action ends approved_external"
)


def outcome_sentence(view: dict[str, Any]) -> str:
    """How the approval ended and what happens next, the same words in every channel."""
    if view["status"] == "approved" and view.get("execution") == "external":
        return f"{view['summary']} — {EXTERNAL_NEXT_STEP}."
    return f"{view['summary']} — {NEXT_STEP.get(view['status'], view['status'])}."


def reason_missing(view: dict[str, Any] | None, choice: str, reason: str | None) -> str | None:
    """Why an answer needs a reason it does not have, the same words in every channel; None when
    it needs none. A denial tells the requester why; an objection to a break-glass use is the
    audit record's account of what was wrong with it."""
    if choice != "deny" or (reason and reason.strip()) or view is None:
        return None
    if view["status"] == "pending":
        return "A denial needs a reason; the requester will see it."
    if view["status"] == "break_glass":
        return "An objection needs a reason; it goes on the audit record."
    return None


def reminder_sentence(view: dict[str, Any], fraction: float) -> str:
    return f"Reminder ({fraction:.0%} of the time has passed): {view['summary']}."


def escalation_sentence(view: dict[str, Any]) -> str:
    return f"Escalated: a member of {view['escalation_group']} may now approve alone. {view['summary']}."


def requester_line(requester: str, acting_for: list[str]) -> str:
    """``agent:reporter for human:alice`` — who asks, for whom."""
    return f"{requester} for {' for '.join(acting_for)}" if acting_for else requester


# what an accepted answer says in a timeline: (a break-glass review?, approve?) → verb
_VERBS = {
    (False, True): "approved",
    (False, False): "denied",
    (True, True): "reviewed it: no objection",
    (True, False): "objected",
}


def timeline(
    view: dict[str, Any], recorded_votes: list[VoteRecorded], notifications: list[tuple]
) -> list[dict[str, str]]:
    """What happened to an approval, in order: request, opening, every answer (refused ones too),
    reminders and escalation messages, the outcome."""
    review = bool(view.get("break_glass"))  # it ran without approval: answers are its reviews
    entries = [
        {
            "at": view["requested_at"],
            "what": f"requested by {requester_line(view['requester'], view['acting_for'])}",
            "kind": "requested",
        },
        {
            "at": view["requested_at"],
            "what": f"allowed without approval under break-glass (incident {view.get('incident_id') or '?'}): "
            "a review after the fact is mandatory",
            "kind": "break_glass",
        }
        if review
        else {
            "at": view["opened_at"],
            "what": "waiting for " + ", ".join(f"{g['name']} ×{g['need']}" for g in view["groups"]),
            "kind": "opened",
        },
    ]
    for recorded in recorded_votes:
        vote = recorded.vote
        if recorded.accepted:
            verb = _VERBS[review, vote.choice.value == "approve"]
            what = f"{vote.approver.id} {verb} via {rules.shown_channel(vote.channel)}"
            what += f": {vote.reason}" if vote.reason else ""
        else:
            what = (
                f"refused answer from {vote.approver.id} via {rules.shown_channel(vote.channel)} ({recorded.refusal})"
            )
        entries.append(
            {"at": recorded.recorded_at.isoformat(), "what": what, "kind": "vote" if recorded.accepted else "refused"}
        )
    for channel, target, kind, occasion, _state, delivered_at in notifications:
        if kind in ("reminder", "escalated") and delivered_at is not None:
            label = (
                f"reminder at {float(occasion):.0%} of the time"
                if kind == "reminder"
                else f"escalated to {view.get('escalation_group')}"
            )
            entries.append({"at": delivered_at.isoformat(), "what": f"{label} ({channel} {target})", "kind": kind})
    if view.get("resolved_at"):
        entries.append({"at": view["resolved_at"], "what": view["summary"], "kind": view["status"]})
    return sorted(entries, key=lambda entry: entry["at"])
