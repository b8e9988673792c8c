"""Slack's interaction endpoint: verify the request, map the person, vote like any other channel.

Checks, in order, each refused with a clear error and a dead letter the audit records:
the timestamp (missing, or more than 5 minutes from now), the signature (Slack's v0 HMAC over
``v0:<timestamp>:<body>`` with the signing secret), the payload shape (every field Keyturn
reads must have the type Slack gives it: a signed body is still only as good as its sender),
and replay (a (team, trigger id) pair seen before). A verified answer counts only when its
message (``container.message_ts`` and the channel; for the Deny modal, the message its metadata
names) is one Keyturn posted for the action the button names (``channels.not_shown``); it then
goes through ``ApprovalDesk.vote`` exactly like a CLI vote, so it meets the same refusals. An
answer from another message, or from a Slack user Keyturn cannot map, is recorded as a refused
vote under the Slack account. When the desk cannot take an answer now (policy engine or
database unreachable) the person is told to answer again, and nothing is recorded.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from slack_sdk.signature import SignatureVerifier

from keyturn.approval import slack_messages as blocks
from keyturn.approval.callbacks import unix_seconds
from keyturn.approval.channels import NOT_SHOWN, UnknownChatUser, not_shown
from keyturn.approval.desk import ApprovalDesk, DeskUnavailable
from keyturn.approval.http import UNATTRIBUTED
from keyturn.approval.slack import SlackChannel
from keyturn.approval.views import reason_missing
from keyturn.bus.http import id_in_path
from keyturn.core.principal import Principal, PrincipalKind
from keyturn.core.text import words_problem

SOURCE = "slack:interactions"
MAX_AGE_S = 5 * 60
SLACK_ID = re.compile(r"[A-Za-z0-9._-]{1,255}")  # every id Slack sends: U0…, T0…, C0…, 1700000000.123456


UNSIGNED = frozenset({"missing_timestamp", "stale_timestamp", "forged_signature"})
"""Refusals of requests Slack did not sign (for this app, now): anyone who reaches the port can
send them, so they are counted on ``/metrics``, never written to the DLQ and the audit."""


class InteractionRefused(Exception):
    """A Slack request refused before any vote: ``status`` for the HTTP answer, ``error`` for the record."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error


def verify_request(
    verifier: SignatureVerifier, body: bytes, timestamp: str | None, signature: str | None, now: float
) -> None:
    """Raise ``InteractionRefused`` unless Slack signed ``body`` within the last 5 minutes."""
    signed_at = unix_seconds(timestamp)
    if timestamp is None or signed_at is None:
        raise InteractionRefused(
            400,
            "missing_timestamp",
            "X-Slack-Request-Timestamp is missing or not a unix time; only Slack may call this endpoint",
        )
    age = now - signed_at
    if abs(age) > MAX_AGE_S:
        raise InteractionRefused(
            401,
            "stale_timestamp",
            f"the Slack request was signed {int(age)} s ago; requests more than "
            f"{MAX_AGE_S} s away from now are refused so a captured request cannot be replayed",
        )
    # The HMAC is computed over the bytes as received: the SDK's check decodes the body as UTF-8
    # first and fails on anything else, and an unsigned body must be refused as unsigned (401).
    expected = (
        "v0="
        + hmac.new(
            verifier.signing_secret.encode(), b"v0:" + timestamp.encode() + b":" + body, hashlib.sha256
        ).hexdigest()
    )
    if not signature or not hmac.compare_digest(expected.encode(), signature.encode(errors="replace")):
        raise InteractionRefused(
            401, "forged_signature", "X-Slack-Signature does not match the body signed with this app's signing secret"
        )


def parse_payload(body: bytes) -> dict[str, Any]:
    """The JSON ``payload`` form field Slack posts."""
    try:
        payload = json.loads(parse_qs(body.decode(), strict_parsing=True)["payload"][0])
    except (UnicodeDecodeError, ValueError, KeyError, IndexError, RecursionError) as exc:
        # the parser's message quotes the body; a refusal names the problem, never the input
        raise InteractionRefused(
            400, "malformed_payload", f"the body is not a Slack interaction (payload=<json>): {type(exc).__name__}"
        ) from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("user"), dict):
        raise InteractionRefused(400, "malformed_payload", "the interaction names no user")
    if not _id(payload["user"].get("id"), "user.id", names_someone=True):
        raise InteractionRefused(400, "malformed_payload", "the interaction names no user")
    return payload


def signed_sender(body: bytes) -> str | None:
    """The Slack account a signed interaction names (``slack:T…/U…``, as ``_account`` spells it),
    for the record of its refusal: Slack signed the body, so the account is Slack's word even when
    the rest of it is refused. None when the body names no account Keyturn can read."""
    try:
        payload = parse_payload(body)
        user = payload["user"]
        team = _id(user.get("team_id"), "user.team_id", names_someone=True) or _id(
            _object(payload, "team").get("id"), "team.id", names_someone=True
        )
    except InteractionRefused:
        return None
    return f"slack:{team or '?'}/{user['id']}"


def interaction_id(payload: dict[str, Any]) -> str:
    """What makes one interaction unique: Slack's trigger id (or action timestamp) within a team."""
    team = (
        _id(_object(payload, "team").get("id"), "team.id", names_someone=True)
        or _id(payload["user"].get("team_id"), "user.team_id", names_someone=True)
        or "?"
    )
    unique = _id(payload.get("trigger_id"), "trigger_id") or next(
        (ts for a in _actions(payload) if (ts := _id(a.get("action_ts"), "actions[].action_ts"))), None
    )
    if not unique:
        raise InteractionRefused(400, "malformed_payload", "the interaction has neither trigger_id nor action_ts")
    return f"{team}:{unique}"


@dataclass(frozen=True)
class Interaction:
    """The fields Keyturn acts on, each checked to be what Slack sends; read before anything is done."""

    kind: str
    user: str
    team: str
    trigger_id: str | None
    button: str | None = None  # the action_id of the button clicked
    shown: dict[str, Any] = field(default_factory=dict)  # the button value or modal metadata: action id and digest
    channel: str = ""
    message_ts: str = ""
    deny_reason: str | None = None
    user_team: str | None = None  # the team Slack says the user belongs to


def read_interaction(payload: dict[str, Any]) -> Interaction:
    """An ``Interaction`` from a parsed payload, or ``InteractionRefused`` (400) naming the field
    that is not what Slack sends."""
    kind = payload.get("type")
    user = payload["user"]["id"]
    team = _id(_object(payload, "team").get("id"), "team.id", names_someone=True) or "?"
    user_team = _id(payload["user"].get("team_id"), "user.team_id", names_someone=True)
    trigger = _id(payload.get("trigger_id"), "trigger_id")
    if kind == "block_actions":
        action = next(iter(_actions(payload)), {})
        button = action.get("action_id")
        if button not in (blocks.APPROVE, blocks.DENY):
            # the answer names the buttons it knows, never the value sent (any text a caller chose)
            raise InteractionRefused(
                400, "unsupported_interaction", f"the button is none of {blocks.APPROVE!r}, {blocks.DENY!r}"
            )
        container = _object(payload, "container")
        channel = _same(
            _id(_object(payload, "channel").get("id"), "channel.id"),
            _id(container.get("channel_id"), "container.channel_id"),
            "channel.id and container.channel_id",
        )
        message_ts = _same(
            _id(container.get("message_ts"), "container.message_ts"),
            _id(_object(payload, "message").get("ts"), "message.ts"),
            "container.message_ts and message.ts",
        )
        return Interaction(
            kind,
            user,
            team,
            trigger,
            button,
            _shown(action.get("value"), "button value"),
            channel or "",
            message_ts or "",
            user_team=user_team,
        )
    view = _object(payload, "view")
    if kind == "view_submission" and view.get("callback_id") == blocks.DENY_MODAL:
        shown = _shown(view.get("private_metadata"), "modal metadata")
        state = _object(view, "state", "view.state")
        reason_block = _object(_object(state, "values", "view.state.values"), blocks.REASON_BLOCK, "the reason block")
        reason = _text(_object(reason_block, blocks.REASON_BLOCK, "the reason input").get("value"), "reason")
        return Interaction(
            kind,
            user,
            team,
            trigger,
            shown=shown,
            channel=_id(shown.get("channel"), "modal channel") or "",
            message_ts=_id(shown.get("ts"), "modal message ts") or "",
            deny_reason=reason,
            user_team=user_team,
        )
    raise InteractionRefused(
        400, "unsupported_interaction", f"Keyturn does not handle Slack interactions of type {kind!r}"
    )


def _same(first: str | None, second: str | None, what: str) -> str | None:
    """One value Slack gives in two places; refused when the two disagree."""
    if first and second and first != second:
        raise InteractionRefused(400, "malformed_payload", f"the interaction's {what} name different messages")
    return first or second


def _object(container: dict[str, Any], key: str, what: str | None = None) -> dict[str, Any]:
    value = container.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InteractionRefused(400, "malformed_payload", f"the interaction's {what or key} is not an object")
    return value


def _actions(payload: dict[str, Any]) -> list[dict[str, Any]]:
    actions = payload.get("actions")
    if actions is None:
        return []
    if not isinstance(actions, list) or not all(isinstance(a, dict) for a in actions):
        raise InteractionRefused(400, "malformed_payload", "the interaction's actions are not a list of objects")
    return actions


def _text(value: Any, what: str) -> str | None:
    """A string field Slack sends. Its values are stored (seen interactions, votes, their reasons),
    so one PostgreSQL cannot hold, or one that steers a reader (``core.text.words_problem``), is
    refused here, naming the field."""
    if value is not None and not isinstance(value, str):
        raise InteractionRefused(400, "malformed_payload", f"the interaction's {what} is not a string")
    if value and (why := words_problem(value)) is not None:
        raise InteractionRefused(400, "malformed_payload", f"the interaction's {what} {why}")
    return value or None


def _id(value: Any, what: str, *, names_someone: bool = False) -> str | None:
    """An id Slack sends (a user, team, channel, trigger or message timestamp): letters, digits,
    dots, dashes and underscores, as every Slack id is. A user's and a team's id name the account
    on the record of a refused answer, so they must also hold nothing masking would hide
    (``bus.http.id_in_path``): Slack's are never an address, a key or a card number. (The
    others are numbers with dots, which a phone-number recogniser would take for one, and are
    never written down: replay keys are kept as digests.) A payload whose ids are not ids did
    not come from Slack, and is refused before any of it is written down."""
    text = _text(value, what)
    if text is not None and not (SLACK_ID.fullmatch(text) and (not names_someone or id_in_path(text))):
        raise InteractionRefused(400, "malformed_payload", f"the interaction's {what} is not an id Slack gives")
    return text


def mount_slack(
    app: FastAPI,
    desk_of: Callable[[], Awaitable[ApprovalDesk]],
    slack: SlackChannel,
    signing_secret: str,
    clock: Callable[[], float] = time.time,
) -> None:
    """Add ``POST /slack/interactions`` (the app's Interactivity Request URL)."""
    verifier = SignatureVerifier(signing_secret)

    @app.post("/slack/interactions", include_in_schema=False)
    async def interactions(request: Request) -> Response:
        body = await request.body()
        desk = await desk_of()
        try:
            verify_request(
                verifier,
                body,
                request.headers.get("x-slack-request-timestamp"),
                request.headers.get("x-slack-signature"),
                clock(),
            )
            payload = parse_payload(body)
            unique = interaction_id(payload)
            interaction = read_interaction(payload)
            if not await desk.store.first_sighting("slack", unique):
                raise InteractionRefused(
                    409, "replayed_interaction", "this Slack interaction was already received; a replay changes nothing"
                )
            if interaction.kind == "block_actions":
                return await _button(desk, slack, interaction)
            return await _deny_submitted(desk, slack, interaction)
        except InteractionRefused as refused:
            if refused.error in UNSIGNED:  # nobody can be held to it: counted, not recorded
                UNATTRIBUTED.labels("slack", refused.error).inc()
            else:
                await desk.refuse_interaction(SOURCE, refused.error, str(refused), body, principal=signed_sender(body))
            return JSONResponse({"error": refused.error, "message": str(refused)}, status_code=refused.status)


async def _button(desk: ApprovalDesk, slack: SlackChannel, click: Interaction) -> Response:
    action_id, digest = str(click.shown.get("action_id", "")), str(click.shown.get("payload_digest", ""))
    choice = "approve" if click.button == blocks.APPROVE else "deny"
    if (why := await _unbound(desk, slack, click, action_id, choice, digest)) is not None:
        await slack.tell_user(click.channel, click.user, f":warning: Your answer was not applied — {why}")
        return Response(status_code=200)
    approver = await _approver(desk, slack, click, action_id, choice, digest, click.channel)
    if approver is None:
        return Response(status_code=200)
    if choice == "deny":
        view = await desk.view(action_id)
        if (missing := reason_missing(view, choice, None)) is not None:
            assert view is not None
            if click.trigger_id:  # the reason is asked for in a modal; its submission is the answer
                await slack.open_deny_modal(click.trigger_id, view, channel=click.channel, message_ts=click.message_ts)
            else:  # no modal can be opened without a trigger: never an answer without its reason
                await slack.tell_user(click.channel, click.user, f":warning: {missing} Nothing was recorded.")
            return Response(status_code=200)
    try:
        result = await desk.vote(action_id, approver, choice, digest, None, "slack")
    except DeskUnavailable as unavailable:
        await slack.tell_user(click.channel, click.user, f":hourglass: {unavailable}")
        return Response(status_code=200)
    if not result.accepted:
        await slack.tell_user(
            click.channel, click.user, f":warning: Your answer was not applied — {result.refusal}: {result.message}"
        )
    elif result.status == "break_glass":  # a review changes no message: the reviewer is told it counted
        await slack.tell_user(click.channel, click.user, f":white_check_mark: {result.summary}")
    return Response(status_code=200)


async def _deny_submitted(desk: ApprovalDesk, slack: SlackChannel, submitted: Interaction) -> Response:
    action_id, digest = str(submitted.shown.get("action_id", "")), str(submitted.shown.get("payload_digest", ""))
    if (why := await _unbound(desk, slack, submitted, action_id, "deny", digest)) is not None:
        return JSONResponse(
            {
                "response_action": "errors",
                "errors": {blocks.REASON_BLOCK: f"Your answer was not applied — {why}"[:2000]},
            }
        )
    approver = await _approver(desk, slack, submitted, action_id, "deny", digest, submitted.channel)
    if approver is None:
        return JSONResponse(
            {
                "response_action": "errors",
                "errors": {blocks.REASON_BLOCK: "Keyturn does not know who you are; your answer was not applied."},
            }
        )
    if not (submitted.deny_reason or "").strip():  # the modal requires one; a payload without it says why
        missing = reason_missing(await desk.view(action_id), "deny", None) or "A reason is needed."
        return JSONResponse({"response_action": "errors", "errors": {blocks.REASON_BLOCK: missing}})
    try:
        result = await desk.vote(action_id, approver, "deny", digest, submitted.deny_reason, "slack")
    except DeskUnavailable as unavailable:
        # the modal stays open with the reason typed, so submitting again is one click
        return JSONResponse({"response_action": "errors", "errors": {blocks.REASON_BLOCK: str(unavailable)[:2000]}})
    if not result.accepted:
        return JSONResponse(
            {"response_action": "errors", "errors": {blocks.REASON_BLOCK: f"{result.refusal}: {result.message}"[:2000]}}
        )
    if result.status == "break_glass":
        await slack.tell_user(submitted.channel, submitted.user, f":white_check_mark: {result.summary}")
    return Response(status_code=200)


async def _unbound(
    desk: ApprovalDesk, slack: SlackChannel, answer: Interaction, action_id: str, choice: str, digest: str
) -> str | None:
    """None when the answer came from a message Keyturn posted for ``action_id``; else why not,
    after recording the refused answer under the Slack account (nothing changes)."""
    why = await not_shown(desk.store, slack.name, answer.channel, answer.message_ts, action_id)
    if why is not None:
        await desk.refuse_answer(action_id, _account(answer), choice, digest, "slack", NOT_SHOWN, why)
    return why


def _account(answer: Interaction) -> Principal:
    """The Slack account itself, for records of answers that did not come from a known person."""
    return Principal(f"slack:{answer.user_team or answer.team}/{answer.user}", PrincipalKind.HUMAN)


async def _approver(
    desk: ApprovalDesk, slack: SlackChannel, answer: Interaction, action_id: str, choice: str, digest: str, channel: str
) -> Principal | None:
    """The principal behind the Slack user, or None after recording and telling why not."""
    try:
        return await slack.principal_of(answer.user, answer.user_team, None if answer.team == "?" else answer.team)
    except UnknownChatUser as unknown:
        await desk.refuse_answer(action_id, _account(answer), choice, digest, "slack", "UnknownChatUser", str(unknown))
        if channel:
            await slack.tell_user(channel, answer.user, f":warning: Your answer was not applied — {unknown}")
        return None


def _shown(text: Any, what: str) -> dict[str, Any]:
    """What a button value or a modal's metadata says was shown: Keyturn put an action id there, so
    one that cannot name an action (``bus.http.id_in_path``) did not come from Keyturn."""
    shown = _json_object(text, what)
    if not id_in_path(str(shown.get("action_id", ""))):
        raise InteractionRefused(400, "malformed_payload", f"the {what} names no action")
    return shown


def _json_object(text: Any, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise InteractionRefused(400, "malformed_payload", f"the {what} is not the JSON object Keyturn put there")
    return value
