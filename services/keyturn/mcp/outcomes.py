"""An action's status, as the intake shows it, turned into what a model reads back (pure).

The wording is written for a model: a result says plainly whether the action happened; a
refusal is a tool error with the reasons (never an empty success); a *pending* result names
the action, who must approve and until when, and says not to call the tool again (that would
ask for a second action) but to call ``wait_for_action``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from keyturn.bus.http import shown_id

WAIT_TOOL = "wait_for_action"
RUNNING = frozenset({"requested", "allowed", "needs_approval", "approved"})


@dataclass(frozen=True)
class ToolOutcome:
    """A tool result: its text, its structured content, and whether it is an error."""

    text: str
    structured: dict[str, Any]
    is_error: bool
    content: list[dict[str, Any]] | None = field(default=None)  # an upstream tool's own content, when proxied


@dataclass(frozen=True)
class Approval:
    """Who must approve an action and until when, from its decision in the status history."""

    groups: tuple[tuple[str, int], ...]
    require_all: bool
    expires_at: str | None

    def who(self) -> str:
        if not self.groups:
            return "the approvers the policy named"
        parts = [f"{n} of {g}" if n != 1 else f"one of {g}" for g, n in self.groups]
        return (" and " if self.require_all else " or ").join(parts)

    def as_json(self) -> dict[str, Any]:
        return {
            "approvers": [{"group": g, "min": n} for g, n in self.groups],
            "require_all": self.require_all,
            "expires_at": self.expires_at,
        }


def approval_of(view: dict[str, Any]) -> Approval | None:
    """The approval an action waits for (or waited for), when its decision asked for one."""
    for entry in view.get("history") or ():
        if entry.get("event") != "ActionDecided" or not entry.get("approver_groups"):
            continue
        minimums = {str(a.get("name")): int(a.get("min", 1)) for a in entry.get("approvers") or ()}
        groups = tuple((str(g), minimums.get(str(g), 1)) for g in entry["approver_groups"])
        return Approval(groups, bool(entry.get("require_all", True)), entry.get("expires_at"))
    return None


def progress_message(view: dict[str, Any]) -> str:
    """One line for a progress notification while the call waits."""
    action_id, state = view.get("action_id"), view.get("state")
    if state == "needs_approval":
        approval = approval_of(view)
        who = approval.who() if approval else "the approvers the policy named"
        until = f" by {approval.expires_at}" if approval and approval.expires_at else ""
        return f"action {action_id} is waiting for approval from {who}{until}"
    if state == "approved":
        return f"action {action_id} was approved and is being performed"
    if state == "allowed":
        return f"action {action_id} was allowed and is being performed"
    return f"action {action_id} is {state}"


def pending(view: dict[str, Any], tool: str) -> ToolOutcome:
    """The call's wait is over but the action is not: how to pick it up without asking twice."""
    action_id, state = view.get("action_id"), view.get("state")
    approval = approval_of(view) if state == "needs_approval" else None
    if approval:
        until = f" until {approval.expires_at}" if approval.expires_at else ""
        where = f"It is waiting for approval from {approval.who()}{until}."
    else:
        where = f"It is {state}."
    text = (
        f"NOT DONE YET. Keyturn action {action_id} ({view.get('action')}) is pending. {where} "
        f"Do NOT call {tool} again: that would submit a second, separate action. "
        f'To get the outcome, call {WAIT_TOOL} with action_id "{action_id}" (safe to repeat).'
    )
    structured: dict[str, Any] = {
        "status": "pending",
        "action_id": action_id,
        "action": view.get("action"),
        "state": state,
        "next": {"tool": WAIT_TOOL, "arguments": {"action_id": action_id}},
    }
    if approval:
        structured |= approval.as_json()
    return ToolOutcome(text, structured, is_error=False)


def finished(view: dict[str, Any]) -> ToolOutcome:
    """A terminal action: its result, or a tool error saying why there is none."""
    action_id, state, action = view.get("action_id"), view.get("state"), view.get("action")
    reasons = [str(r) for r in view.get("reasons") or ()]
    because = "; ".join(reasons) or "no reason given"
    structured: dict[str, Any] = {"status": state, "action_id": action_id, "action": action, "reasons": reasons}
    if state == "succeeded":
        result = view.get("result")
        structured["result"] = result
        text = f"Done: Keyturn action {action_id} ({action}) succeeded.\nResult: {json.dumps(result, sort_keys=True)}"
        return ToolOutcome(text, structured, is_error=False)
    refused_by_people = any(e.get("event") == "ApprovalResolved" for e in view.get("history") or ())
    if state == "denied" and refused_by_people:
        text = f"REFUSED: an approver refused Keyturn action {action_id} ({action}): {because}. It was not performed."
    elif state == "denied":
        text = f"DENIED by Keyturn's policy: action {action_id} ({action}): {because}. It was not performed."
    elif state == "expired":
        text = f"EXPIRED: nobody approved Keyturn action {action_id} ({action}) in time: {because}. Not performed."
    elif state == "failed":
        text = f"FAILED: Keyturn action {action_id} ({action}) was attempted and did not take effect: {because}."
    elif state == "outcome_unknown":
        text = (
            f"OUTCOME UNKNOWN: Keyturn action {action_id} ({action}) may or may not have taken effect: {because}. "
            "Keyturn will not run it again; check the target before asking for it again."
        )
    else:
        text = f"Keyturn action {action_id} ({action}) ended {state}: {because}."
    return ToolOutcome(text, structured, is_error=True)


def refused(message: str, problems: list[str] | None = None) -> ToolOutcome:
    """The intake refused the call (invalid input, bad token) before it submitted anything.

    Only for a refusal of the submission itself: once an action exists, a refusal to show it
    is ``unreadable`` (saying "nothing was submitted" would invite a second action)."""
    text = f"REFUSED by Keyturn before anything was submitted: {message}"
    if problems:
        text += " (" + "; ".join(problems) + ")"
    return ToolOutcome(text, {"status": "refused", "detail": message, "problems": problems or []}, is_error=True)


def unreadable(action_id: str, tool: str, message: str, problems: list[str] | None = None) -> ToolOutcome:
    """The intake refused to show an action this call already submitted (an expired token, a 404).

    The action exists and goes on (people may still approve it, the executor may run it), so the
    answer names it and says not to call the tool again: that would submit a second action.
    """
    text = (
        f"SUBMITTED, STATE UNKNOWN: Keyturn action {action_id} exists, but its state could not be read: {message}"
        + (" (" + "; ".join(problems) + ")" if problems else "")
        + f". It may still be approved and performed. Do NOT call {tool} again: that would submit a second, "
        f'separate action. Call {WAIT_TOOL} with action_id "{action_id}" once the cause is fixed '
        "(for instance with a fresh token)."
    )
    structured: dict[str, Any] = {
        "status": "unreadable",
        "action_id": action_id,
        "detail": message,
        "problems": problems or [],
        "next": {"tool": WAIT_TOOL, "arguments": {"action_id": action_id}},
    }
    return ToolOutcome(text, structured, is_error=True)


def unanswered(action_id: str, key: str, tool: str, message: str) -> ToolOutcome:
    """The intake did not answer a submission (a dropped connection, a 503 from a proxy in front
    of it), even when asked again under the same idempotency key: it may have taken it.

    A new call would carry a new key, so a second action if the first was taken. The answer
    names the id the action has if it was (the intake derives it from the caller and the key)
    and points at ``wait_for_action``, which tells the two cases apart without submitting."""
    text = (
        f"SUBMISSION UNANSWERED: Keyturn did not answer ({message}), so it may or may not have taken the "
        f"submission (idempotency key {key}). If it did, it is Keyturn action {action_id}. Do NOT call {tool} "
        f'again: that could submit a second, separate action. Call {WAIT_TOOL} with action_id "{action_id}" '
        f"(safe to repeat) once Keyturn answers again: it gives the action's outcome, or says it could not read "
        f"the action (HTTP 404); only then was nothing submitted, and {tool} may be called again."
    )
    structured: dict[str, Any] = {
        "status": "unavailable",
        "action_id": action_id,
        "idempotency_key": key,
        "detail": message,
        "next": {"tool": WAIT_TOOL, "arguments": {"action_id": action_id}},
    }
    return ToolOutcome(text, structured, is_error=True)


def unseen(action_id: str, message: str, problems: list[str] | None = None) -> ToolOutcome:
    """``wait_for_action`` could not read the action it was given (an expired token, an id not visible).

    Nothing was submitted by this call; whether the action exists is not known (a 404 does not
    tell a mistyped id from someone else's action)."""
    # the id is repeated only when it is one of Keyturn's own (a UUID): any other text the model
    # passed may be anything (a token pasted by mistake), and the intake's answer masked it already
    shown = shown_id(action_id)
    text = f"Keyturn could not read action {shown or '(not an action id of Keyturn)'}: {message}"
    if problems:
        text += " (" + "; ".join(problems) + ")"
    text += ". This call submitted nothing."
    return ToolOutcome(
        text,
        {"status": "unreadable", "action_id": shown, "detail": message, "problems": problems or []},
        is_error=True,
    )
