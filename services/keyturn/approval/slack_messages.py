"""Block Kit for approvals: pure functions from an approval view to Slack message payloads.

Everything an agent wrote (reason, resource, parameters) is escaped before it goes into
mrkdwn, so a request cannot ping a channel, forge a link or fake a button label.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from keyturn.approval.views import escalation_sentence, outcome_sentence, reminder_sentence, requester_line

APPROVE = "keyturn_approve"
DENY = "keyturn_deny"
DENY_MODAL = "keyturn_deny_reason"
REASON_BLOCK = "reason"
MAX_PARAMETERS_CHARS = 2500
MAX_TEXT_CHARS = 2900
STATUS_TITLES = {
    "pending": ":key: Approval needed",
    "approved": ":white_check_mark: Approved",
    "denied": ":no_entry: Denied",
    "expired": ":hourglass: Expired",
}


def escape(text: Any) -> str:
    """Slack mrkdwn control characters made literal (``<!channel>`` stays text)."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_date(iso: str) -> str:
    """A date Slack shows in each reader's own time zone, with the UTC time as fallback."""
    moment = datetime.fromisoformat(iso)
    return (
        f"<!date^{int(moment.timestamp())}^{{date_short_pretty}} "
        f"{{time}}|{escape(moment.isoformat(timespec='seconds'))}>"
    )


def button_value(view: dict[str, Any]) -> str:
    """What a button carries back: the action and the digest of the parameters shown."""
    return json.dumps({"action_id": view["action_id"], "payload_digest": view["payload_digest"]}, separators=(",", ":"))


def approval_message(view: dict[str, Any], *, headline: str | None = None) -> dict[str, Any]:
    """``text`` + ``blocks`` for the approval message; Approve / Deny only while it is pending."""
    title = headline or STATUS_TITLES.get(view["status"], view["status"])
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": f"{title}: {view['action']}"[:150], "emoji": True}},
        {
            "type": "section",
            "fields": [
                _field("Resource", f"`{escape(view['resource'])}`"),
                _field("Requested by", escape(requester_line(view["requester"], view["acting_for"]))),
                _field(
                    "Approvers", escape(", ".join(f"{g['name']} ×{g['need']}" for g in view.get("groups", [])) or "—")
                ),
                _field("Expires", slack_date(view["expires_at"])) if view.get("expires_at") else _field("Expires", "—"),
            ],
        },
        _section(f"*Reason*\n{escape(view['reason'])}"),
    ]
    if view.get("impact"):
        blocks.append(_section(f"*Impact preview*\n{escape(view['impact']['summary'])}"))
    if view.get("policy_reasons"):
        blocks.append(_section("*Policy*\n" + "\n".join(f"• {escape(r)}" for r in view["policy_reasons"])))
    blocks.append(_section(f"*Parameters* (masked)\n```{escape(_parameters(view['parameters']))}```"))
    blocks.append(
        {
            "type": "context",
            "elements": [
                {
                    "type": "mrkdwn",
                    "text": f"action `{escape(view['action_id'])}` · digest `{escape(view['payload_digest'][:23])}…`",
                }
            ],
        }
    )
    blocks.append(_section(f"*{escape(view['summary'])}*"))
    if view["status"] == "pending":
        value = button_value(view)
        blocks.append(
            {
                "type": "actions",
                "block_id": "keyturn_vote",
                "elements": [
                    {
                        "type": "button",
                        "action_id": APPROVE,
                        "style": "primary",
                        "value": value,
                        "text": {"type": "plain_text", "text": "Approve"},
                    },
                    {
                        "type": "button",
                        "action_id": DENY,
                        "style": "danger",
                        "value": value,
                        "text": {"type": "plain_text", "text": "Deny…"},
                    },
                ],
            }
        )
    return {
        "text": f"{title}: {view['action']} on {view['resource']} — {view['summary']}"[:MAX_TEXT_CHARS],
        "blocks": blocks,
    }


def break_glass_message(view: dict[str, Any]) -> dict[str, Any]:
    """The notice every approver channel gets when an action ran on break-glass."""
    incident = view.get("incident_id") or "no incident id"
    blocks = [
        {
            "type": "header",
            "text": {
                "type": "plain_text",
                "text": f":rotating_light: Break-glass: {view['action']}"[:150],
                "emoji": True,
            },
        },
        _section(
            f"*{escape(view['summary'])}*\nIncident `{escape(incident)}`. This action ran without approval and "
            f"is flagged for mandatory review."
        ),
        {
            "type": "section",
            "fields": [
                _field("Resource", f"`{escape(view['resource'])}`"),
                _field("Requested by", escape(requester_line(view["requester"], view["acting_for"]))),
            ],
        },
        _section(f"*Reason*\n{escape(view['reason'])}"),
        _section(f"*Parameters* (masked)\n```{escape(_parameters(view['parameters']))}```"),
        *(
            [_section("*Reviews on record*\n" + "\n".join(f"• {escape(line)}" for line in view["reviews"]))]
            if view.get("reviews")
            else []
        ),
        {"type": "context", "elements": [{"type": "mrkdwn", "text": f"action `{escape(view['action_id'])}`"}]},
        {
            # a reviewer's answer: recorded as the review (an objection asks why first), nothing is undone
            "type": "actions",
            "block_id": "keyturn_review",
            "elements": [
                {
                    "type": "button",
                    "action_id": APPROVE,
                    "value": button_value(view),
                    "text": {"type": "plain_text", "text": "No objection"},
                },
                {
                    "type": "button",
                    "action_id": DENY,
                    "style": "danger",
                    "value": button_value(view),
                    "text": {"type": "plain_text", "text": "Object…"},
                },
            ],
        },
    ]
    return {
        "text": f"Break-glass: {view['action']} on {view['resource']} (incident {incident}), mandatory review"[
            :MAX_TEXT_CHARS
        ],
        "blocks": blocks,
    }


def outcome_reply(view: dict[str, Any], requester_mention: str | None) -> str:
    """The thread reply that tells the requester how the approval ended."""
    who = requester_mention or escape(requester_line(view["requester"], view["acting_for"]))
    return f"{who}: {escape(outcome_sentence(view))}"


def reminder_reply(view: dict[str, Any], fraction: float) -> str:
    """A thread reply reminding approvers, with what is still missing and the deadline."""
    return f":alarm_clock: {escape(reminder_sentence(view, fraction))} Expires {slack_date(view['expires_at'])}."


def escalation_reply(view: dict[str, Any]) -> str:
    return f":arrow_double_up: {escape(escalation_sentence(view))}"


def deny_modal(view: dict[str, Any], *, channel: str, message_ts: str) -> dict[str, Any]:
    """The modal that asks a denier (or a break-glass reviewer who objects) why; the digest shown rides
    in private_metadata."""
    review = bool(view.get("break_glass"))
    metadata = {
        "action_id": view["action_id"],
        "payload_digest": view["payload_digest"],
        "channel": channel,
        "ts": message_ts,
    }
    return {
        "type": "modal",
        "callback_id": DENY_MODAL,
        "private_metadata": json.dumps(metadata, separators=(",", ":")),
        "title": {"type": "plain_text", "text": "Object to break-glass" if review else "Deny action"},
        "submit": {"type": "plain_text", "text": "Object" if review else "Deny"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            _section(
                f"*{escape(view['action'])}* on `{escape(view['resource'])}`\nRequested by "
                f"{escape(requester_line(view['requester'], view['acting_for']))}"
            ),
            {
                "type": "input",
                "block_id": REASON_BLOCK,
                "label": {
                    "type": "plain_text",
                    "text": "Why? It goes on the audit record." if review else "Why? The requester will see this.",
                },
                "element": {
                    "type": "plain_text_input",
                    "action_id": REASON_BLOCK,
                    "multiline": True,
                    "max_length": 2000,
                },
            },
        ],
    }


def _parameters(parameters: Any) -> str:
    text = json.dumps(parameters, indent=2, sort_keys=True, ensure_ascii=False)
    return (
        text if len(text) <= MAX_PARAMETERS_CHARS else text[:MAX_PARAMETERS_CHARS] + "\n… (truncated; see the console)"
    )


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text[:MAX_TEXT_CHARS]}}


def _field(label: str, value: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": f"*{label}*\n{value}"[:2000]}
