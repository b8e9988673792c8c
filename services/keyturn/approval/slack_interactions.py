"""Slack's interaction endpoint: verify the request, map the person, vote like any other channel.

Checks, in order, each refused with a clear error and a dead letter the audit records:
the timestamp (missing, or more than 5 minutes from now), the signature (Slack's v0 HMAC over
``v0:<timestamp>:<body>`` with the signing secret), the payload shape, and replay (a
(team, trigger id) pair seen before). A verified answer then goes through
``ApprovalDesk.vote`` exactly like a CLI vote, so it meets the same refusals; an answer from a
Slack user Keyturn cannot map is recorded as a refused vote.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from slack_sdk.signature import SignatureVerifier

from keyturn.approval import slack_messages as blocks
from keyturn.approval.service import ApprovalDesk
from keyturn.approval.channels import UnknownChatUser
from keyturn.approval.slack import SlackChannel
from keyturn.core.principal import Principal, PrincipalKind

SOURCE = "slack:interactions"
MAX_AGE_S = 5 * 60


class InteractionRefused(Exception):
    """A Slack request refused before any vote: ``status`` for the HTTP answer, ``error`` for the record."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error


def verify_request(verifier: SignatureVerifier, body: bytes, timestamp: str | None, signature: str | None, now: float) -> None:
    """Raise ``InteractionRefused`` unless Slack signed ``body`` within the last 5 minutes."""
    if not timestamp or not timestamp.strip().isdigit():
        raise InteractionRefused(400, "missing_timestamp", "X-Slack-Request-Timestamp is missing or not a number; only Slack may call this endpoint")
    age = now - int(timestamp)
    if abs(age) > MAX_AGE_S:
        raise InteractionRefused(401, "stale_timestamp", f"the Slack request was signed {int(age)} s ago; requests more than "
                                 f"{MAX_AGE_S} s away from now are refused so a captured request cannot be replayed")
    if not signature or not verifier.is_valid(body, timestamp, signature):
        raise InteractionRefused(401, "forged_signature", "X-Slack-Signature does not match the body signed with this app's signing secret")


def parse_payload(body: bytes) -> dict[str, Any]:
    """The JSON ``payload`` form field Slack posts."""
    try:
        payload = json.loads(parse_qs(body.decode(), strict_parsing=True)["payload"][0])
    except (UnicodeDecodeError, ValueError, KeyError, IndexError) as exc:
        raise InteractionRefused(400, "malformed_payload", f"the body is not a Slack interaction (payload=<json>): {exc}") from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("user"), dict) or "id" not in payload["user"]:
        raise InteractionRefused(400, "malformed_payload", "the interaction names no user")
    return payload


def interaction_id(payload: dict[str, Any]) -> str:
    """What makes one interaction unique: Slack's trigger id (or action timestamp) within a team."""
    team = (payload.get("team") or {}).get("id") or payload["user"].get("team_id") or "?"
    unique = payload.get("trigger_id") or next((a.get("action_ts") for a in payload.get("actions", []) if a.get("action_ts")), None)
    if not unique:
        raise InteractionRefused(400, "malformed_payload", "the interaction has neither trigger_id nor action_ts")
    return f"{team}:{unique}"


def mount_slack(app: FastAPI, desk_of: Callable[[], Awaitable[ApprovalDesk]], slack: SlackChannel, signing_secret: str,
                clock: Callable[[], float] = time.time) -> None:
    """Add ``POST /slack/interactions`` (the app's Interactivity Request URL)."""
    verifier = SignatureVerifier(signing_secret)

    @app.post("/slack/interactions", include_in_schema=False)
    async def interactions(request: Request) -> Response:
        body = await request.body()
        desk = await desk_of()
        try:
            verify_request(verifier, body, request.headers.get("x-slack-request-timestamp"), request.headers.get("x-slack-signature"), clock())
            payload = parse_payload(body)
            if not await desk.store.first_sighting("slack", interaction_id(payload)):
                raise InteractionRefused(409, "replayed_interaction", "this Slack interaction was already received; a replay changes nothing")
            kind = payload.get("type")
            if kind == "block_actions":
                return await _button(desk, slack, payload)
            if kind == "view_submission" and (payload.get("view") or {}).get("callback_id") == blocks.DENY_MODAL:
                return await _deny_submitted(desk, slack, payload)
            raise InteractionRefused(400, "unsupported_interaction", f"Keyturn does not handle Slack interactions of type {kind!r}")
        except InteractionRefused as refused:
            await desk.refuse_interaction(SOURCE, refused.error, str(refused), body)
            await desk.flush()
            return JSONResponse({"error": refused.error, "message": str(refused)}, status_code=refused.status)


async def _button(desk: ApprovalDesk, slack: SlackChannel, payload: dict[str, Any]) -> Response:
    action = next(iter(payload.get("actions") or []), {})
    if action.get("action_id") not in (blocks.APPROVE, blocks.DENY):
        raise InteractionRefused(400, "unsupported_interaction", f"unknown button {action.get('action_id')!r}")
    shown = _json_object(action.get("value"), "button value")
    action_id, digest = str(shown.get("action_id", "")), str(shown.get("payload_digest", ""))
    channel = (payload.get("channel") or {}).get("id") or (payload.get("container") or {}).get("channel_id") or ""
    user = payload["user"]["id"]
    choice = "approve" if action["action_id"] == blocks.APPROVE else "deny"
    approver = await _approver(desk, slack, payload, action_id, choice, digest, channel)
    if approver is None:
        return Response(status_code=200)
    if choice == "deny":
        view = await desk.view(action_id)
        if view is not None and view["status"] == "pending" and payload.get("trigger_id"):
            await slack.open_deny_modal(payload["trigger_id"], view, channel=channel, message_ts=(payload.get("container") or {}).get("message_ts", ""))
            return Response(status_code=200)
    result = await desk.vote(action_id, approver, choice, digest, None, "slack")
    await desk.flush()
    if not result.accepted:
        await slack.tell_user(channel, user, f":warning: Your answer was not applied — {result.refusal}: {result.message}")
    return Response(status_code=200)


async def _deny_submitted(desk: ApprovalDesk, slack: SlackChannel, payload: dict[str, Any]) -> Response:
    view = payload["view"]
    shown = _json_object(view.get("private_metadata"), "modal metadata")
    action_id, digest = str(shown.get("action_id", "")), str(shown.get("payload_digest", ""))
    reason = (((view.get("state") or {}).get("values") or {}).get(blocks.REASON_BLOCK) or {}).get(blocks.REASON_BLOCK, {}).get("value")
    approver = await _approver(desk, slack, payload, action_id, "deny", digest, str(shown.get("channel", "")))
    if approver is None:
        return JSONResponse({"response_action": "errors", "errors": {blocks.REASON_BLOCK: "Keyturn does not know who you are; your answer was not applied."}})
    result = await desk.vote(action_id, approver, "deny", digest, reason, "slack")
    await desk.flush()
    if not result.accepted:
        return JSONResponse({"response_action": "errors", "errors": {blocks.REASON_BLOCK: f"{result.refusal}: {result.message}"[:2000]}})
    return Response(status_code=200)


async def _approver(desk: ApprovalDesk, slack: SlackChannel, payload: dict[str, Any], action_id: str, choice: str, digest: str, channel: str) -> Principal | None:
    """The principal behind the Slack user, or None after recording and telling why not."""
    user = payload["user"]["id"]
    try:
        return await slack.principal_of(user)
    except UnknownChatUser as unknown:
        team = (payload.get("team") or {}).get("id") or "?"
        await desk.refuse_answer(action_id, Principal(f"slack:{team}/{user}", PrincipalKind.HUMAN), choice, digest, "slack",
                                 "UnknownChatUser", str(unknown))
        await desk.flush()
        if channel:
            await slack.tell_user(channel, user, f":warning: Your answer was not applied — {unknown}")
        return None


def _json_object(text: Any, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise InteractionRefused(400, "malformed_payload", f"the {what} is not the JSON object Keyturn put there")
    return value
