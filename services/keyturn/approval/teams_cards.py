"""Adaptive Cards for approvals in Microsoft Teams: pure functions from an approval view to a card.

Adaptive Card text is plain (Markdown-lite), never HTML; the agent's words go in as text
elements, so they cannot add buttons or inputs. Approve / Deny are ``Action.Execute`` (the
Universal Actions model): Teams sends them to the bot, which answers with the refreshed card.
"""

from __future__ import annotations

import json
from typing import Any

from microsoft_teams.cards import (
    Action,
    AdaptiveCard,
    ExecuteAction,
    Fact,
    FactSet,
    RefreshDefinition,
    TextBlock,
    TextInput,
)

from keyturn.approval.views import escalation_sentence, outcome_sentence, reminder_sentence, requester_line

APPROVE = "approve"
DENY = "deny"
REFRESH = "refresh"
REASON_INPUT = "reason"
MAX_PARAMETERS_CHARS = 2500
TITLES = {"pending": "Approval needed", "approved": "Approved", "denied": "Denied", "expired": "Expired"}


def approval_card(view: dict[str, Any], *, headline: str | None = None, problem: str | None = None) -> AdaptiveCard:
    """The approval card; Approve / Deny and the reason box only while pending. ``problem`` is shown
    in red to the person whose answer was refused."""
    data = {"action_id": view["action_id"], "payload_digest": view["payload_digest"]}
    body: list[Any] = [
        TextBlock(
            text=f"{headline or TITLES.get(view['status'], view['status'])}: {view['action']}",
            weight="Bolder",
            size="Medium",
            wrap=True,
        ),
        FactSet(
            facts=[
                Fact(title="Resource", value=view["resource"]),
                Fact(title="Requested by", value=requester_line(view["requester"], view["acting_for"])),
                Fact(
                    title="Approvers",
                    value=", ".join(f"{g['name']} ×{g['need']}" for g in view.get("groups", [])) or "—",
                ),
                Fact(title="Expires", value=view.get("expires_at") or "—"),
            ]
        ),
        TextBlock(text=f"Reason: {view['reason']}", wrap=True),
    ]
    if view.get("impact"):
        body.append(TextBlock(text="Impact preview: " + view["impact"]["summary"], wrap=True, weight="Bolder"))
    if view.get("policy_reasons"):
        body.append(TextBlock(text="Policy: " + "; ".join(view["policy_reasons"]), wrap=True, is_subtle=True))
    body.append(TextBlock(text=_parameters(view["parameters"]), wrap=True, font_type="Monospace"))
    body.append(
        TextBlock(
            text=f"action {view['action_id']} · digest {view['payload_digest'][:23]}…",
            wrap=True,
            is_subtle=True,
            size="Small",
        )
    )
    body.append(TextBlock(text=view["summary"], wrap=True, weight="Bolder"))
    if problem:
        body.append(TextBlock(text=problem, wrap=True, color="Attention"))
    actions: list[Action] | None = None
    if view["status"] == "pending":
        body.append(
            TextInput(
                id=REASON_INPUT,
                label="Reason (required to deny; the requester sees it)",
                is_multiline=True,
                max_length=2000,
            )
        )
        actions = [
            ExecuteAction(title="Approve", verb=APPROVE, data=data, style="positive"),
            ExecuteAction(title="Deny", verb=DENY, data=data, style="destructive"),
        ]
    return AdaptiveCard(
        body=body,
        actions=actions,
        refresh=RefreshDefinition(action=ExecuteAction(verb=REFRESH, data=data)),
        fallback_text=f"{view['action']} on {view['resource']}: {view['summary']}",
    )


def break_glass_card(view: dict[str, Any], *, notice: str | None = None, problem: str | None = None) -> AdaptiveCard:
    """The notice every approver conversation gets when an action ran on break-glass, with the
    reviewer's answers: No objection / Object (an objection needs a reason), recorded as the review.
    ``notice`` tells the reviewer their review counted; ``problem``, in red, why it did not."""
    data = {"action_id": view["action_id"], "payload_digest": view["payload_digest"]}
    body: list[Any] = [
        TextBlock(text=f"Break-glass: {view['action']}", weight="Bolder", size="Medium", color="Attention", wrap=True),
        TextBlock(text=f"{view['summary']}. Incident {view.get('incident_id') or 'not given'}.", wrap=True),
        FactSet(
            facts=[
                Fact(title="Resource", value=view["resource"]),
                Fact(title="Requested by", value=requester_line(view["requester"], view["acting_for"])),
            ]
        ),
        TextBlock(text=f"Reason: {view['reason']}", wrap=True),
        TextBlock(text=_parameters(view["parameters"]), wrap=True, font_type="Monospace"),
    ]
    if view.get("reviews"):
        body.append(TextBlock(text="Reviews on record: " + "; ".join(view["reviews"]) + ".", wrap=True))
    if notice:
        body.append(TextBlock(text=notice, wrap=True, weight="Bolder"))
    if problem:
        body.append(TextBlock(text=problem, wrap=True, color="Attention"))
    body.append(
        TextInput(
            id=REASON_INPUT,
            label="Reason (required to object; it goes on the audit record)",
            is_multiline=True,
            max_length=2000,
        )
    )
    return AdaptiveCard(
        body=body,
        actions=[
            ExecuteAction(title="No objection", verb=APPROVE, data=data),
            ExecuteAction(title="Object", verb=DENY, data=data, style="destructive"),
        ],
        refresh=RefreshDefinition(action=ExecuteAction(verb=REFRESH, data=data)),
        fallback_text=f"Break-glass: {view['action']} on {view['resource']}, mandatory review",
    )


def outcome_text(view: dict[str, Any]) -> str:
    return f"{requester_line(view['requester'], view['acting_for'])}: {outcome_sentence(view)}"


def reminder_text(view: dict[str, Any], fraction: float) -> str:
    return f"{reminder_sentence(view, fraction)} Expires {view['expires_at']}."


def escalation_text(view: dict[str, Any]) -> str:
    return escalation_sentence(view)


def card_json(card: AdaptiveCard) -> dict[str, Any]:
    return card.model_dump(by_alias=True, exclude_none=True)


def _parameters(parameters: Any) -> str:
    text = json.dumps(parameters, sort_keys=True, ensure_ascii=False)
    return (
        text if len(text) <= MAX_PARAMETERS_CHARS else text[:MAX_PARAMETERS_CHARS] + " … (truncated; see the console)"
    )
