"""Block Kit for approvals: pure functions from an approval view to Slack message payloads.

What an agent or a person wrote (the resource, the reason, the parameters, the policy's reasons,
the impact's tables, an incident id, a denial's or a review's words, and the summaries that quote
them) goes into ``plain_text`` objects (``plain``), which Slack shows as written: no *bold*,
_italic_, ~strike~ or `code`, no links (bare URLs included), no mentions, no emoji from
``:shortcodes:``. Only Keyturn's own words (labels, the expiry date, its ids) are ``mrkdwn``
(``mrkdwn``). ``&``, ``<`` and ``>`` are escaped in both, as Slack asks of every text it reads, so
a request cannot ping a channel, forge a link or fake a button label. The fallback ``text`` (what
notifications show) is escaped the same way.
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
MAX_FIELD_CHARS = 2000  # a section's field holds at most 2000 characters, its text 3000
STATUS_TITLES = {
    "pending": ":key: Approval needed",
    "approved": ":white_check_mark: Approved",
    "denied": ":no_entry: Denied",
    "expired": ":hourglass: Expired",
}


def escape(text: Any) -> str:
    """Slack's control characters made literal (``<!channel>`` stays text)."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def plain(text: Any, limit: int = MAX_TEXT_CHARS, *, emoji: bool = False) -> dict[str, Any]:
    """A ``plain_text`` object for text someone else wrote: shown as written, never formatted or
    linked (``emoji`` off, so ``:shortcodes:`` stay text too). Nothing (None, empty) shows as a dash:
    Slack refuses an empty text."""
    shown = escape(text) if text is not None and str(text) != "" else "—"
    return {"type": "plain_text", "text": _cut(shown, limit), "emoji": emoji}


def mrkdwn(text: str, limit: int = MAX_TEXT_CHARS) -> dict[str, Any]:
    """A ``mrkdwn`` object for Keyturn's own words only (labels, dates, ids): callers escape any
    value they put in it."""
    return {"type": "mrkdwn", "text": _cut(text, limit)}


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
    expires = slack_date(view["expires_at"]) if view.get("expires_at") else "—"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": f"{title}: {view['action']}"[:150], "emoji": True}},
        _fields(
            ("Resource", plain(view["resource"], MAX_FIELD_CHARS)),
            ("Requested by", plain(requester_line(view["requester"], view["acting_for"]), MAX_FIELD_CHARS)),
            (
                "Approvers",
                plain(", ".join(f"{g['name']} ×{g['need']}" for g in view.get("groups", [])) or "—", MAX_FIELD_CHARS),
            ),
            ("Expires", mrkdwn(expires, MAX_FIELD_CHARS)),
        ),
        *_labelled("Reason", view["reason"]),
    ]
    if view.get("impact"):
        blocks.extend(_labelled("Impact preview", view["impact"]["summary"]))
    if view.get("policy_reasons"):
        blocks.extend(_labelled("Policy", "\n".join(f"• {r}" for r in view["policy_reasons"])))
    blocks.extend(_labelled("Parameters", _parameters(view["parameters"]), note="(masked)"))
    blocks.append(
        {
            "type": "context",
            "elements": [
                mrkdwn(f"action `{escape(view['action_id'])}` · digest `{escape(view['payload_digest'][:23])}…`")
            ],
        }
    )
    blocks.append({"type": "section", "text": plain(view["summary"])})
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
        "text": _cut(escape(f"{title}: {view['action']} on {view['resource']} — {view['summary']}"), MAX_TEXT_CHARS),
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
        {"type": "section", "text": plain(view["summary"])},
        {
            "type": "section",
            "text": plain(
                f"Incident {incident}. This action ran without approval and is flagged for mandatory review."
            ),
        },
        _fields(
            ("Resource", plain(view["resource"], MAX_FIELD_CHARS)),
            ("Requested by", plain(requester_line(view["requester"], view["acting_for"]), MAX_FIELD_CHARS)),
        ),
        *_labelled("Reason", view["reason"]),
        *_labelled("Parameters", _parameters(view["parameters"]), note="(masked)"),
        *(
            _labelled("Reviews on record", "\n".join(f"• {line}" for line in view["reviews"]))
            if view.get("reviews")
            else []
        ),
        {"type": "context", "elements": [mrkdwn(f"action `{escape(view['action_id'])}`")]},
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
        "text": _cut(
            escape(f"Break-glass: {view['action']} on {view['resource']} (incident {incident}), mandatory review"),
            MAX_TEXT_CHARS,
        ),
        "blocks": blocks,
    }


def outcome_reply(view: dict[str, Any], requester_mention: str | None) -> dict[str, Any]:
    """The thread reply that tells the requester how the approval ended (``requester_mention``, a
    ``<@U…>`` Keyturn made, pings them; the sentence is plain text)."""
    sentence = outcome_sentence(view)
    if requester_mention is None:
        return plain_message(f"{requester_line(view['requester'], view['acting_for'])}: {sentence}")
    return {
        "text": _cut(f"{requester_mention}: {escape(sentence)}", MAX_TEXT_CHARS),
        "blocks": [
            {"type": "section", "text": mrkdwn(f"{requester_mention}:")},
            {"type": "section", "text": plain(sentence)},
        ],
    }


def reminder_reply(view: dict[str, Any], fraction: float) -> dict[str, Any]:
    """A thread reply reminding approvers, with what is still missing and the deadline."""
    sentence = reminder_sentence(view, fraction)
    expires = f"Expires {slack_date(view['expires_at'])}."
    return {
        "text": _cut(f":alarm_clock: {escape(sentence)} {expires}", MAX_TEXT_CHARS),
        "blocks": [
            {"type": "section", "text": plain(f"⏰ {sentence}")},
            {"type": "context", "elements": [mrkdwn(expires)]},
        ],
    }


def escalation_reply(view: dict[str, Any]) -> dict[str, Any]:
    return plain_message(f"⏫ {escalation_sentence(view)}")


def plain_message(text: str, *, emoji: bool = False) -> dict[str, Any]:
    """A message of text someone else may have written in part: one plain-text section, and the
    same words (escaped) as the fallback ``text``."""
    return {
        "text": _cut(escape(text), MAX_TEXT_CHARS),
        "blocks": [{"type": "section", "text": plain(text, emoji=emoji)}],
    }


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
            {
                "type": "section",
                "text": plain(
                    f"{view['action']} on {view['resource']}\nRequested by "
                    f"{requester_line(view['requester'], view['acting_for'])}"
                ),
            },
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


def _labelled(label: str, text: Any, *, note: str = "") -> list[dict[str, Any]]:
    """Keyturn's label in bold, then the text under it as written: two sections, since one text
    object is either formatted or plain."""
    return [
        {"type": "section", "text": mrkdwn(f"*{label}*" + (f" {note}" if note else ""))},
        {"type": "section", "text": plain(text)},
    ]


def _fields(*pairs: tuple[str, dict[str, Any]]) -> dict[str, Any]:
    """A section of (label, value) fields, each label in bold beside its value (two columns)."""
    return {
        "type": "section",
        "fields": [field for label, value in pairs for field in (mrkdwn(f"*{label}*", MAX_FIELD_CHARS), value)],
    }


def _cut(text: str, limit: int) -> str:
    """``text`` within ``limit`` characters, never ending inside an entity ``escape`` made."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    amp = cut.rfind("&")
    if amp != -1 and ";" not in cut[amp:]:
        cut = cut[:amp]
    return cut
