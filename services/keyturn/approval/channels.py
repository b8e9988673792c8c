"""Where approvers are told: chat channels behind one small interface, and who sits where.

The desk decides *what* to tell (a notification kind per action, target and occasion, queued
in the same transaction as the state change); a channel adapter decides *how* (Block Kit for
Slack, an Adaptive Card for Teams). Adapters never change approval state: answers they receive
go through ``ApprovalDesk.vote`` like every other vote.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

# What a notification row asks a channel to do.
OPENED = "opened"  # the approval message, with Approve / Deny
PROGRESS = "progress"  # edit the message after an accepted vote that did not decide
RESOLVED = "resolved"  # edit the message to the outcome (no buttons) and tell the requester in its thread
REMINDER = "reminder"  # a thread reply: still waiting, this long left
ESCALATED = "escalated"  # the fallback group may now approve: a fresh message, or a thread reply where one exists
BREAK_GLASS = "break_glass"  # an action ran without approval; everyone is told, it will be reviewed
REVIEWED = "reviewed"  # edit the break-glass notice after an accepted review: the reviews so far

FRESH_MESSAGES = frozenset({OPENED, BREAK_GLASS})
ANSWERABLE_MESSAGES = (OPENED, ESCALATED)  # the messages that carry Approve / Deny
WILDCARD_GROUP = "*"
NOT_SHOWN = "MessageNotForAction"  # the refusal of an answer that did not come from its action's message


class UnknownChatUser(Exception):
    """A chat user who cannot be mapped to a Keyturn principal; their answers are refused.

    ``account`` is the chat account as the chat system's own records name it (``slack:T…/U…``,
    ``teams:<aad>``), when they were read: the refusal is recorded under it."""

    def __init__(self, message: str, account: str | None = None) -> None:
        super().__init__(message)
        self.account = account


class ChatTargetsInvalid(ValueError):
    """A channel map in the settings is not the JSON object it must be."""


@dataclass(frozen=True)
class ChatTargets:
    """Which channels (or people, for direct messages) hear about which approver group.

    ``by_group`` maps a group name to channel or user ids; the group ``*`` catches groups with
    no entry of their own.
    """

    by_group: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def from_json(cls, text: str, setting: str) -> ChatTargets:
        """Parse ``{"security": ["C0SEC"], "*": ["C0ALL"]}`` (a single id may stand for a list)."""
        if not text.strip():
            return cls({})
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ChatTargetsInvalid(f'{setting} is not JSON ({exc}); write e.g. {{"security": ["C0SEC"]}}') from exc
        if not isinstance(raw, dict):
            raise ChatTargetsInvalid(f"{setting} must be a JSON object of group name to channel ids")
        by_group: dict[str, tuple[str, ...]] = {}
        for group, targets in raw.items():
            targets = [targets] if isinstance(targets, str) else targets
            if not isinstance(targets, list) or not all(isinstance(t, str) and t for t in targets):
                raise ChatTargetsInvalid(f"{setting}: group {group!r} must map to a channel id or a list of them")
            by_group[str(group)] = tuple(dict.fromkeys(targets))
        return cls(by_group)

    def targets_for(self, groups: tuple[str, ...] | list[str]) -> tuple[str, ...]:
        """Every target hearing about any of ``groups``, each once, in the groups' order."""
        found: list[str] = []
        for group in groups:
            for target in self.by_group.get(group, self.by_group.get(WILDCARD_GROUP, ())):
                if target not in found:
                    found.append(target)
        return tuple(found)

    def every_target(self) -> tuple[str, ...]:
        """Every configured target (break-glass notices go to all of them)."""
        found: list[str] = []
        for targets in self.by_group.values():
            found.extend(t for t in targets if t not in found)
        return tuple(found)


def principal_map(text: str, setting: str) -> dict[str, str]:
    """A JSON map of chat user id to principal id (``{"U0CAROL": "human:carol"}``)."""
    if not text.strip():
        return {}
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ChatTargetsInvalid(f'{setting} is not JSON ({exc}); write e.g. {{"U0CAROL": "human:carol"}}') from exc
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and ":" in v for k, v in raw.items()
    ):
        raise ChatTargetsInvalid(f"{setting} must map chat user ids to principal ids such as human:carol")
    return dict(raw)


def message_ref(place: str, message_id: str) -> str:
    """The reference of a posted message: Slack ``channel|ts``, Teams ``conversation|activity id``."""
    return f"{place}|{message_id}"


async def not_shown(store: Any, channel: str, place: str, message_id: str, action_id: str) -> str | None:
    """Why an answer naming ``action_id`` does not count on ``channel``, or None when it does.

    An answer counts only when it came from a message Keyturn posted (and since edited) for that
    same action, with Approve / Deny, to that place: the button's value, a modal's metadata or a
    card's data alone cannot name another action. So an action whose message never reached a
    channel cannot be answered there."""
    if not place or not message_id:
        return (
            f"the answer does not say which {channel} message it came from, so it cannot be bound to action {action_id}"
        )
    shown = await store.actions_shown_in(channel, message_ref(place, message_id))
    if action_id in shown:
        return None
    if shown:
        return (
            f"the message you answered on was posted for action {', '.join(shown)}, not for action {action_id}; "
            "answer on the message that shows the action"
        )
    return f"the message you answered on is not one Keyturn posted in {channel} for action {action_id}"


class ApproverChannel(Protocol):
    """A chat system approvers answer in. ``view`` is ``views.approval_view`` (or the break-glass view).

    Methods that post a new message return its reference (Slack ``channel|ts``, Teams
    ``conversation|activity id``); the courier stores it so later edits find the message.
    ``notification_id`` rides along in the message so ``find_sent`` can tell, after a crash,
    whether a message went out.
    """

    name: str
    targets: ChatTargets

    async def notify_opened(self, target: str, view: dict[str, Any], *, notification_id: int) -> str: ...

    async def notify_progress(self, target: str, ref: str, view: dict[str, Any]) -> None: ...

    async def notify_resolved(self, target: str, ref: str, view: dict[str, Any], *, notification_id: int) -> None: ...

    async def remind(
        self, target: str, ref: str, view: dict[str, Any], fraction: float, *, notification_id: int
    ) -> None: ...

    async def escalate(
        self, target: str, ref: str | None, view: dict[str, Any], *, notification_id: int
    ) -> str | None: ...

    async def notify_break_glass(self, target: str, view: dict[str, Any], *, notification_id: int) -> str: ...

    async def notify_reviewed(self, target: str, ref: str, view: dict[str, Any]) -> None:
        """Edit the break-glass notice ``ref`` to show the reviews on record; its answers stay."""
        ...

    async def find_sent(self, target: str, parent_ref: str | None, notification_id: int, since: datetime) -> str | None:
        """The reference of a message this notification already posted, or None if none is found."""
        ...
