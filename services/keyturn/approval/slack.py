"""Slack as an approver channel: messages through the Web API (slack_sdk), people mapped to principals.

One message per approver group target (a channel, or a person's id for a direct message),
edited after every vote and at the end; the requester is told the outcome in its thread.
Every post carries its notification id as message metadata, so after a crash the courier can
find a message that went out before the database heard about it.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from keyturn.approval import slack_messages as blocks
from keyturn.approval.channels import ChatTargets, UnknownChatUser, message_ref
from keyturn.approval.identities import principal_for, slack_account
from keyturn.core.principal import Principal

log = logging.getLogger(__name__)

METADATA_EVENT = "keyturn_notification"
LOOKBACK = timedelta(minutes=1)  # clock skew between us and the chat system when searching history


class SlackChannel:
    """The Slack adapter (see ``channels.ApproverChannel``)."""

    name = "slack"

    def __init__(
        self,
        client: AsyncWebClient,
        targets: ChatTargets,
        user_map: dict[str, str],
        email_domains: tuple[str, ...] = (),
    ) -> None:
        self.client = client
        self.targets = targets
        self.user_map = user_map
        self.email_domains = tuple(d.lower() for d in email_domains)
        self.slack_user_of = {principal: user for user, principal in user_map.items()}
        self._workspace: str | None = None  # our team id, from auth.test on first use

    # --- telling approvers ----------------------------------------------------------------------

    async def notify_opened(self, target: str, view: dict[str, Any], *, notification_id: int) -> str:
        return await self._post(target, blocks.approval_message(view), notification_id, view["action_id"])

    async def notify_progress(self, target: str, ref: str, view: dict[str, Any]) -> None:
        channel, ts = _split(ref)
        await self.client.chat_update(channel=channel, ts=ts, **blocks.approval_message(view))

    async def notify_resolved(self, target: str, ref: str, view: dict[str, Any], *, notification_id: int) -> None:
        channel, ts = _split(ref)
        await self.client.chat_update(channel=channel, ts=ts, **blocks.approval_message(view))
        mention = self._mention(view)
        await self._post(channel, blocks.outcome_reply(view, mention), notification_id, view["action_id"], thread_ts=ts)

    async def remind(
        self, target: str, ref: str, view: dict[str, Any], fraction: float, *, notification_id: int
    ) -> None:
        channel, ts = _split(ref)
        await self._post(
            channel, blocks.reminder_reply(view, fraction), notification_id, view["action_id"], thread_ts=ts
        )

    async def escalate(self, target: str, ref: str | None, view: dict[str, Any], *, notification_id: int) -> str | None:
        if ref is None:
            headline = f":arrow_double_up: Escalated to {view['escalation_group']}"
            return await self._post(
                target, blocks.approval_message(view, headline=headline), notification_id, view["action_id"]
            )
        channel, ts = _split(ref)
        await self._post(channel, blocks.escalation_reply(view), notification_id, view["action_id"], thread_ts=ts)
        return None

    async def notify_break_glass(self, target: str, view: dict[str, Any], *, notification_id: int) -> str:
        return await self._post(target, blocks.break_glass_message(view), notification_id, view["action_id"])

    async def notify_reviewed(self, target: str, ref: str, view: dict[str, Any]) -> None:
        channel, ts = _split(ref)
        await self.client.chat_update(channel=channel, ts=ts, **blocks.break_glass_message(view))

    async def find_sent(self, target: str, parent_ref: str | None, notification_id: int, since: datetime) -> str | None:
        oldest = f"{(since - LOOKBACK).timestamp():.6f}"
        if parent_ref is not None:
            channel, thread_ts = _split(parent_ref)
            answer = await self.client.conversations_replies(
                channel=channel, ts=thread_ts, oldest=oldest, include_all_metadata=True, limit=200
            )
        else:
            channel = await self._channel_id(target)
            answer = await self.client.conversations_history(
                channel=channel, oldest=oldest, include_all_metadata=True, limit=200
            )
        messages: list[dict[str, Any]] = answer.get("messages", [])
        for message in messages:
            payload = (message.get("metadata") or {}).get("event_payload") or {}
            if (message.get("metadata") or {}).get("event_type") == METADATA_EVENT and payload.get(
                "notification_id"
            ) == str(notification_id):
                return message_ref(channel, message["ts"])
        return None

    async def tell_user(self, channel: str, user: str, text: str) -> None:
        """An ephemeral message only ``user`` sees (why an answer was refused, or its summary). It can
        quote what someone wrote (a refusal, a denial's reason), so it is plain text; only the emoji
        of Keyturn's leading ``:shortcode:`` are drawn."""
        message = blocks.plain_message(text, emoji=True)
        try:
            await self.client.chat_postEphemeral(channel=channel, user=user, **message)
        except SlackApiError as exc:  # the refusal is recorded either way; telling is best effort
            log.warning("could not tell %s in %s: %s", user, channel, exc.response.get("error"))

    async def open_deny_modal(self, trigger_id: str, view: dict[str, Any], *, channel: str, message_ts: str) -> None:
        await self.client.views_open(
            trigger_id=trigger_id, view=blocks.deny_modal(view, channel=channel, message_ts=message_ts)
        )

    # --- who is answering -------------------------------------------------------------------------

    async def principal_of(self, user_id: str, *teams: str | None) -> Principal:
        """The principal a Slack user answers as (the rule is ``identities.principal_for``);
        ``teams``: those the interaction names (the user's ``team_id``, the payload's ``team.id``)."""
        try:
            workspace = await self.workspace()
            answer = await self.client.users_info(user=user_id)
        except SlackApiError as exc:
            raise UnknownChatUser(
                f"Slack user {user_id} could not be looked up ({exc.response.get('error')}), "
                "so Keyturn cannot tell whether the account may approve"
            ) from exc
        account = slack_account(answer.get("user") or {"id": user_id}, workspace, clicked_as_teams=teams)
        return principal_for(
            account,
            self.user_map,
            self.email_domains,
            map_setting="KEYTURN_SLACK_USER_MAP",
            domains_setting="KEYTURN_SLACK_EMAIL_DOMAINS",
        )

    async def workspace(self) -> str:
        """The team id of the workspace the bot is installed in (``auth.test``, asked once)."""
        if self._workspace is None:
            self._workspace = str((await self.client.auth_test())["team_id"])
        return self._workspace

    # --- private ----------------------------------------------------------------------------------

    async def _post(
        self, target: str, message: dict[str, Any], notification_id: int, action_id: str, thread_ts: str | None = None
    ) -> str:
        answer = await self.client.chat_postMessage(
            channel=target,
            thread_ts=thread_ts,
            unfurl_links=False,
            unfurl_media=False,
            metadata={
                "event_type": METADATA_EVENT,
                "event_payload": {"notification_id": str(notification_id), "action_id": action_id},
            },
            **message,
        )
        return message_ref(answer["channel"], answer["ts"])

    async def _channel_id(self, target: str) -> str:
        if target[:1] in ("U", "W"):  # a person: their direct-message channel
            answer = await self.client.conversations_open(users=target)
            return answer["channel"]["id"]
        return target

    def _mention(self, view: dict[str, Any]) -> str | None:
        for principal in (*view["acting_for"], view["requester"]):
            if principal in self.slack_user_of:
                return f"<@{self.slack_user_of[principal]}>"
        return None


def _split(ref: str) -> tuple[str, str]:
    channel, _, ts = ref.partition("|")
    return channel, ts
