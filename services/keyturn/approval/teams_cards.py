"""Adaptive Cards for approvals in Microsoft Teams: pure functions from an approval view to a card.

Adaptive Card text is never HTML, but a ``TextBlock``, or a ``Fact``'s value, is read as
Markdown: an agent's reason could show an approver a link (``[verify](https://…)``), a list or
bold text. So whatever an agent or a person wrote (the action, resource, requester, reason,
parameters, reviews, summaries) is shown in ``TextRun``s, which are never read as Markdown
(``_plain``): every line of these cards is one. It goes in as text elements, so it cannot add
buttons or inputs either. Approve / Deny are ``Action.Execute`` (the Universal Actions
model): Teams sends them to the bot, which answers with the refreshed card.
"""

from __future__ import annotations

import json
from typing import Any

from microsoft_teams.cards import (
    Action,
    AdaptiveCard,
    CardElement,
    ExecuteAction,
    RefreshDefinition,
    RichTextBlock,
    TextInput,
    TextRun,
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
    approvers = ", ".join(f"{g['name']} ×{g['need']}" for g in view.get("groups", [])) or "—"
    body: list[Any] = [
        _plain(
            f"{headline or TITLES.get(view['status'], view['status'])}: {view['action']}",
            weight="Bolder",
            size="Medium",
        ),
        _plain(f"Resource: {view['resource']}"),
        _plain(f"Requested by: {requester_line(view['requester'], view['acting_for'])}"),
        _plain(f"Approvers: {approvers}"),
        _plain(f"Expires: {view.get('expires_at') or '—'}"),
        _plain(f"Reason: {view['reason']}"),
    ]
    if view.get("impact"):
        body.append(_plain("Impact preview: " + view["impact"]["summary"], weight="Bolder"))
    if view.get("policy_reasons"):
        body.append(_plain("Policy: " + "; ".join(view["policy_reasons"]), is_subtle=True))
    body.append(_plain(_parameters(view["parameters"]), font_type="Monospace"))
    body.append(
        _plain(f"action {view['action_id']} · digest {view['payload_digest'][:23]}…", is_subtle=True, size="Small")
    )
    body.append(_plain(view["summary"], weight="Bolder"))
    if problem:
        body.append(_plain(problem, color="Attention"))
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
        _plain(f"Break-glass: {view['action']}", weight="Bolder", size="Medium", color="Attention"),
        _plain(f"{view['summary']}. Incident {view.get('incident_id') or 'not given'}."),
        _plain(f"Resource: {view['resource']}"),
        _plain(f"Requested by: {requester_line(view['requester'], view['acting_for'])}"),
        _plain(f"Reason: {view['reason']}"),
        _plain(_parameters(view["parameters"]), font_type="Monospace"),
    ]
    if view.get("reviews"):
        body.append(_plain("Reviews on record: " + "; ".join(view["reviews"]) + "."))
    if notice:
        body.append(_plain(notice, weight="Bolder"))
    if problem:
        body.append(_plain(problem, color="Attention"))
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


def _plain(text: str, **style: Any) -> RichTextBlock:
    """``text`` shown as written, in ``style`` (weight, size, color, …): a ``TextRun`` is never
    read as Markdown, where a ``TextBlock`` would turn ``[x](https://…)`` into a link."""
    run: list[CardElement] = [TextRun(text=text, **style)]
    return RichTextBlock(inlines=run)


def _parameters(parameters: Any) -> str:
    text = json.dumps(parameters, sort_keys=True, ensure_ascii=False)
    return (
        text if len(text) <= MAX_PARAMETERS_CHARS else text[:MAX_PARAMETERS_CHARS] + " … (truncated; see the console)"
    )
