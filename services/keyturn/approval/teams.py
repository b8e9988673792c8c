"""Microsoft Teams as an approver channel, through the Teams SDK (microsoft-teams-apps).

Outgoing: an Adaptive Card per approver conversation, sent and updated through the Bot
Connector with an app token obtained by the OAuth client-credentials grant. Incoming: Teams
posts ``invoke`` activities (``adaptiveCard/action``) to ``/api/messages``; the SDK checks
the bearer token against the Bot Framework's OpenID keys, issuer, audience (our app id) and
service URL before our handler sees anything. A click on Approve / Deny then goes through
``ApprovalDesk.vote`` like every other vote — but only when the card it came from (the
conversation and ``replyToId``) is one Keyturn sent for the action the card's data names
(``channels.not_shown``); the answer to the invoke is the refreshed card.

Every endpoint (token URL, OpenID metadata, issuer, service URL) is a setting, so tests run
against a local connector and token issuer, and sovereign clouds need no code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from datetime import datetime
from typing import Any, Literal

import httpx
import jwt
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from microsoft_teams.api.activities import ActivityTypeAdapter

# from its module: the package re-exports it through a computed __all__, which type checkers cannot follow
from microsoft_teams.api.activities.message import MessageActivityInput
from microsoft_teams.api.auth.cloud_environment import PUBLIC, with_overrides
from microsoft_teams.api.models.adaptive_card import AdaptiveCardActionCardResponse, AdaptiveCardActionMessageResponse
from microsoft_teams.apps import App
from microsoft_teams.apps.events import CoreActivity
from microsoft_teams.apps.http.fastapi_adapter import FastAPIAdapter

from keyturn.approval import teams_cards as cards
from keyturn.approval.channels import NOT_SHOWN, ChatTargets, UnknownChatUser, message_ref, not_shown
from keyturn.approval.desk import ApprovalDesk, DeskUnavailable
from keyturn.approval.http import UNATTRIBUTED
from keyturn.approval.identities import principal_for, teams_account
from keyturn.approval.views import reason_missing
from keyturn.bus.http import id_in_path
from keyturn.core import approval as rules
from keyturn.core.principal import Principal, PrincipalKind
from keyturn.core.text import problem_in
from keyturn.faults import DATABASE_UNAVAILABLE
from keyturn.identity.claims import unverified_expiry

log = logging.getLogger(__name__)
SOURCE = "teams:messages"
# replies (outcome, reminder, escalation) quote people's words: shown as written, never as Markdown
PLAIN: Literal["plain"] = "plain"


class ClientCredentialTokens:
    """App tokens for the Bot Connector by the OAuth 2.0 client-credentials grant, cached until near expiry."""

    def __init__(self, token_url: str, client_id: str, client_secret: str) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self.client_secret = client_secret
        self._cache: dict[str, tuple[str, float]] = {}

    async def __call__(self, scope: str | list[str], tenant_id: str | None = None) -> str:
        scope = scope if isinstance(scope, str) else " ".join(scope)
        token, expires = self._cache.get(scope, ("", 0.0))
        if time.time() < expires - 60:
            return token
        async with httpx.AsyncClient(timeout=10) as client:
            answer = await client.post(
                self.token_url,
                data={
                    "grant_type": "client_credentials",
                    "client_id": self.client_id,
                    "client_secret": self.client_secret,
                    "scope": scope,
                },
            )
        if answer.status_code != 200:
            raise RuntimeError(
                f"the token endpoint refused the Teams app credentials ({answer.status_code}): {answer.text[:200]}"
            )
        body = answer.json()
        self._cache[scope] = (body["access_token"], time.time() + float(body.get("expires_in", 300)))
        return body["access_token"]


def activity_problem(body: dict[str, Any]) -> str | None:
    """Why the Teams SDK would reject this activity (it validates it, after the token, into its own
    models and answers a failure with 500), or None when it would take it. Checked by the same
    models the SDK uses, so the two cannot disagree."""
    try:
        core = CoreActivity.model_validate(body)
        ActivityTypeAdapter.validate_python(core.model_dump(by_alias=True, exclude_none=True))
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        first = exc.errors()[0] if hasattr(exc, "errors") and exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())) or "the activity"
        return f"{where}: {first.get('msg', str(exc))}"[:500]
    return None


# The SDK's HTTP server, which logs with its traceback any activity it fails to read.
SDK_SERVER_LOGGER = "microsoft_teams.apps.http.http_server"
# Set while the SDK is handed an empty activity only to judge the token of a malformed one.
_JUDGING_THE_TOKEN_ONLY: ContextVar[bool] = ContextVar("judging_the_token_only", default=False)


class _TokenOnlyFailure(logging.Filter):
    """Leaves out the SDK's failure to read the empty activity it is handed to judge only the token
    of a malformed one: that failure is expected, and the refusal is ours (a 400, recorded as a
    dead letter under the sender). Logged, it was an error with a traceback per malformed
    activity. That is the one error the SDK's server logs (its request's last resort); its
    warnings (a token refused) and anything in any other request are kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_JUDGING_THE_TOKEN_ONLY.get() and record.levelno >= logging.ERROR)


_TOKEN_ONLY_FAILURE = _TokenOnlyFailure()


class TeamsChannel:
    """The Teams adapter (see ``channels.ApproverChannel``)."""

    name = "teams"

    def __init__(
        self,
        app: App,
        targets: ChatTargets,
        user_map: dict[str, str],
        *,
        tenant: str,
        email_domains: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.targets = targets
        self.user_map = user_map
        self.tenant = tenant  # approvers' accounts must be in this tenant
        self.email_domains = email_domains
        self._desk_of: Callable[[], Awaitable[ApprovalDesk]] | None = None
        app.on_card_action_execute(self._card_action)

    @classmethod
    async def connect(
        cls,
        *,
        app_id: str,
        app_password: str,
        tenant_id: str,
        token_url: str,
        openid_url: str,
        token_issuer: str,
        service_url: str,
        targets: ChatTargets,
        user_map: dict[str, str],
        email_domains: tuple[str, ...] = (),
    ) -> TeamsChannel:
        """The adapter with its SDK app initialised (the app's tokens, the Bot Framework's keys)."""
        cloud = with_overrides(
            PUBLIC, openid_metadata_url=openid_url, token_issuer=token_issuer, login_tenant=tenant_id
        )
        app = App(
            client_id=app_id,
            token=ClientCredentialTokens(token_url, app_id, app_password),
            tenant_id=tenant_id,
            service_url=service_url,
            cloud=cloud,
            http_server_adapter=FastAPIAdapter(
                app=FastAPI()
            ),  # the route is ours (mount); the SDK only validates and routes
            dangerously_allow_unauthenticated_requests=False,
        )
        await app.initialize()
        return cls(app, targets, user_map, tenant=tenant_id, email_domains=email_domains)

    async def mount(self, http: FastAPI, desk_of: Callable[[], Awaitable[ApprovalDesk]]) -> None:
        """Add ``POST /api/messages`` (the bot's messaging endpoint) to the approval service."""
        self._desk_of = desk_of
        logging.getLogger(SDK_SERVER_LOGGER).addFilter(_TOKEN_ONLY_FAILURE)  # once: the same filter

        @http.post("/api/messages", include_in_schema=False)
        async def messages(request: Request) -> Response:
            raw = await request.body()
            desk = await desk_of()
            problem: str | None
            try:
                body = json.loads(raw)
                if not isinstance(body, dict):
                    raise ValueError("not a JSON object")
            except (ValueError, RecursionError) as exc:
                # the SDK still judges the token (on an empty activity), so an unsigned body is a 401
                body, problem = {}, f"the body is not a Bot Framework activity: {type(exc).__name__}"
            else:
                # text no record can hold (a lone surrogate, a NUL) fails wherever it is written
                problem = problem_in(_without_reason(body), "activity") or activity_problem(body)
                problem = problem and f"the activity is not one the Bot Framework sends ({problem})"
            # The SDK checks the token first, and its answer decides 401; only an authenticated
            # activity it cannot read is refused here as malformed, with a 400 rather than its 500
            # (the SDK then judges the token on an empty activity: nothing of it reaches a handler).
            answer: dict[str, Any] = {"status": 401}
            if expiring(request.headers.get("authorization")):
                activity = body if problem is None else {}
                judging = _JUDGING_THE_TOKEN_ONLY.set(problem is not None)
                try:
                    answer = dict(
                        await self.app.server.handle_request({"body": activity, "headers": dict(request.headers)})
                    )
                finally:
                    _JUDGING_THE_TOKEN_ONLY.reset(judging)
            if answer["status"] == 401:  # nobody can be held to it: counted, not recorded
                UNATTRIBUTED.labels("teams", "unauthenticated_bot_request").inc()
                return JSONResponse(
                    {
                        "error": "unauthenticated_bot_request",
                        "message": "the bearer token is missing or is not a valid Bot Framework token for this app",
                    },
                    status_code=401,
                )
            if problem is not None:  # under its sender's account when the activity names one readably
                await desk.refuse_interaction(SOURCE, "malformed_activity", problem, raw, principal=_sender_in(body))
                return JSONResponse({"error": "malformed_activity", "message": problem}, status_code=400)
            if answer.get("body") is None:
                return Response(status_code=answer["status"])
            return JSONResponse(answer["body"], status_code=answer["status"])

    # --- telling approvers ----------------------------------------------------------------------

    async def notify_opened(self, target: str, view: dict[str, Any], *, notification_id: int) -> str:
        sent = await self.app.send(target, cards.approval_card(view))
        return message_ref(target, sent.id)

    async def notify_progress(self, target: str, ref: str, view: dict[str, Any]) -> None:
        conversation, activity_id = _split(ref)
        await self.app.api.conversations.activities(conversation).update(
            activity_id, MessageActivityInput().add_card(cards.approval_card(view))
        )

    async def notify_resolved(self, target: str, ref: str, view: dict[str, Any], *, notification_id: int) -> None:
        await self.notify_progress(target, ref, view)
        conversation, activity_id = _split(ref)
        await self.app.api.conversations.activities(conversation).reply(
            activity_id, MessageActivityInput(text=cards.outcome_text(view), text_format=PLAIN)
        )

    async def remind(
        self, target: str, ref: str, view: dict[str, Any], fraction: float, *, notification_id: int
    ) -> None:
        conversation, activity_id = _split(ref)
        await self.app.api.conversations.activities(conversation).reply(
            activity_id, MessageActivityInput(text=cards.reminder_text(view, fraction), text_format=PLAIN)
        )

    async def escalate(self, target: str, ref: str | None, view: dict[str, Any], *, notification_id: int) -> str | None:
        if ref is None:
            sent = await self.app.send(
                target, cards.approval_card(view, headline=f"Escalated to {view['escalation_group']}")
            )
            return message_ref(target, sent.id)
        conversation, activity_id = _split(ref)
        await self.app.api.conversations.activities(conversation).reply(
            activity_id, MessageActivityInput(text=cards.escalation_text(view), text_format=PLAIN)
        )
        return None

    async def notify_break_glass(self, target: str, view: dict[str, Any], *, notification_id: int) -> str:
        sent = await self.app.send(target, cards.break_glass_card(view))
        return message_ref(target, sent.id)

    async def notify_reviewed(self, target: str, ref: str, view: dict[str, Any]) -> None:
        conversation, activity_id = _split(ref)
        await self.app.api.conversations.activities(conversation).update(
            activity_id, MessageActivityInput().add_card(cards.break_glass_card(view))
        )

    async def find_sent(self, target: str, parent_ref: str | None, notification_id: int, since: datetime) -> str | None:
        # The Bot Connector cannot list a conversation's past activities, so a message whose
        # confirmation was lost in a crash is sent again (at least once, never lost).
        return None

    # --- answers --------------------------------------------------------------------------------

    async def _desk(self) -> ApprovalDesk:
        """The desk ``mount`` was given: card actions arrive only through the route it adds."""
        if self._desk_of is None:
            raise RuntimeError("a Teams card action arrived before TeamsChannel.mount() gave it the desk")
        return await self._desk_of()

    async def _card_action(self, ctx: Any) -> Any:
        try:
            return await self._answer_card(ctx)
        except DATABASE_UNAVAILABLE:
            # the SDK would turn the error into a 500, which Teams shows as a bare failure
            await (await self._desk()).recover()
            return _message(
                "Keyturn cannot reach its database right now, so your answer was not recorded. Try again in a minute."
            )

    async def _answer_card(self, ctx: Any) -> Any:
        activity = ctx.activity
        desk = await self._desk()
        action = activity.value.action
        data = action.data or {}
        action_id, digest, reason = data.get("action_id"), data.get("payload_digest", ""), data.get(cards.REASON_INPUT)
        if not isinstance(action_id, str) or not id_in_path(action_id) or not isinstance(digest, str):
            # Keyturn's cards name an action and its digest as text; nothing can be recorded for this
            await desk.refuse_interaction(
                SOURCE,
                "malformed_activity",
                "the card's data names no action and digest as text",
                _bytes_of(activity),
                principal=_sender_in(activity.model_dump(by_alias=True)),
            )
            return _message("This card names no action Keyturn knows; nothing was recorded.")
        conversation = activity.conversation.id
        # in a channel, Teams names the thread: "<conversation>;messageid=<root>"; Keyturn sent to the conversation
        unbound = await not_shown(
            desk.store, self.name, conversation.partition(";messageid=")[0], activity.reply_to_id or "", action_id
        )
        if action.verb == cards.REFRESH:
            if unbound is not None:
                return _message("This card is not one Keyturn sent for that action.")
            view = await desk.view(action_id)
            return _card(view) if view else _message("This action is not known to Keyturn.")
        user = activity.from_
        if not await desk.store.first_sighting("teams", f"{conversation}:{activity.id}"):
            await desk.refuse_interaction(
                SOURCE,
                "replayed_interaction",
                f"Teams activity {activity.id} was already received",
                _bytes_of(activity),
                principal=_account(user).id,
            )
            return _message("This answer was already received; a replay changes nothing.")
        if action.verb not in (cards.APPROVE, cards.DENY):
            await desk.refuse_interaction(
                SOURCE,
                "unsupported_interaction",
                "the card action is not one Keyturn's cards have",
                _bytes_of(activity),
                principal=_account(user).id,
            )
            return _message("Keyturn does not know this card action; nothing was recorded.")
        choice = "approve" if action.verb == cards.APPROVE else "deny"
        if unbound is not None:
            await desk.refuse_answer(action_id, _account(user), choice, digest, "teams", NOT_SHOWN, unbound)
            return _message(f"Your answer was not applied — {unbound}")
        view = await desk.view(action_id)
        try:
            approver = await self._principal_of(ctx, conversation)
        except UnknownChatUser as unknown:
            await desk.refuse_answer(
                action_id, _recorded_as(unknown, user), choice, digest, "teams", "UnknownChatUser", str(unknown)
            )
            return (
                _card(view, f"Your answer was not applied — {unknown}")
                if view
                else _message(f"Your answer was not applied — {unknown}")
            )
        reason = reason.strip() or None if isinstance(reason, str) else reason
        if reason is not None and (why := rules.reason_problem(reason)) is not None:  # as on every channel
            await desk.refuse_interaction(
                SOURCE, "invalid_reason", f"reason: {why}", _bytes_of(activity), principal=approver.id
            )
            refused = f"reason: {why}. Nothing was recorded."
            return _card(view, refused) if view else _message(refused)
        if view is not None and (missing := reason_missing(view, choice, reason)) is not None:
            return _card(view, f"{missing} Nothing was recorded.")
        try:
            result = await desk.vote(action_id, approver, choice, digest, reason, "teams")
        except DeskUnavailable as unavailable:
            return _card(view, str(unavailable)) if view else _message(str(unavailable))
        view = await desk.view(action_id)
        problem = None if result.accepted else f"Your answer was not applied — {result.refusal}: {result.message}"
        if view is not None and view["status"] == "break_glass" and result.accepted:
            return AdaptiveCardActionCardResponse(value=cards.break_glass_card(view, notice=result.summary))
        return _card(view, problem) if view else _message(problem or "")

    async def _principal_of(self, ctx: Any, conversation: str) -> Principal:
        """The principal a Teams user answers as (the rule is ``identities.principal_for``), from the
        conversation's member record: its role, tenant, UPN and email."""
        user = ctx.activity.from_
        try:
            member = await ctx.api.conversations.members(conversation).get(user.id)
        except Exception as exc:  # the connector answers 404 for people outside the conversation
            # the connector's own words name its address and the path asked for: only the status is told
            status = exc.response.status_code if isinstance(exc, httpx.HTTPStatusError) else type(exc).__name__
            raise UnknownChatUser(
                f"{_account(user).id} could not be looked up in the conversation ({status}), "
                "so Keyturn cannot tell whether the account may approve"
            ) from exc
        record = member.model_dump(by_alias=True, exclude_none=True) if hasattr(member, "model_dump") else dict(member)
        if user.user_role and not record.get("userRole"):
            record["userRole"] = user.user_role
        account = teams_account(user.id, user.aad_object_id, record, self.tenant)
        return principal_for(
            account,
            self.user_map,
            self.email_domains,
            map_setting="KEYTURN_TEAMS_USER_MAP",
            domains_setting="KEYTURN_TEAMS_EMAIL_DOMAINS",
        )


def expiring(authorization: str | None) -> bool:
    """Whether the bearer token says when it expires. The SDK checks ``exp`` only when a token has
    one, and a token without it would be good forever; the signature and every other claim are
    the SDK's to judge (``identity.claims.unverified_expiry`` reads it only to refuse more)."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return True  # nothing to read: the SDK answers a missing token itself
    try:
        jwt.get_unverified_header(token.strip())
    except jwt.PyJWTError:
        return True  # not a JWT: the SDK refuses it
    return unverified_expiry(token.strip()) is not None


def _recorded_as(unknown: UnknownChatUser, user: Any) -> Principal:
    """Whom a refused answer is recorded under: the account as the conversation's member record
    names it when that was read (the activity's own ids are the sender's word), else ``_account``."""
    if unknown.account and _plain_id(unknown.account.removeprefix("teams:")):
        return Principal(unknown.account, PrincipalKind.HUMAN)
    return _account(user)


def _account(user: Any) -> Principal:
    """The Teams account itself, for records of answers that did not come from a known person: its
    AAD object id (a GUID), else its Teams user id, each only when it is a plain id
    (``_plain_id``), else a digest of them. These records are written down, so nothing the
    activity carries in those fields is repeated unless it is an id."""
    aad, teams_id = user.aad_object_id or "", user.id or ""
    for known in (aad, teams_id):
        if _plain_id(known):
            return Principal(f"teams:{known}", PrincipalKind.HUMAN)
    digest = hashlib.sha256(f"{aad}|{teams_id}".encode(errors="surrogatepass")).hexdigest()[:32]
    return Principal(f"teams:sha256:{digest}", PrincipalKind.HUMAN)


def _sender_in(activity: Any) -> str | None:
    """The account an activity (as JSON) names as its sender, as ``_account`` records it, when its
    ``from`` is readable at all; None when it names nobody."""
    sender = activity.get("from") if isinstance(activity, dict) else None
    if not isinstance(sender, dict):
        return None
    for known in (sender.get("aadObjectId"), sender.get("id")):
        if isinstance(known, str) and _plain_id(known):
            return f"teams:{known}"
    return None


def _plain_id(text: str) -> bool:
    """An id as Teams gives them (``29:…``, a GUID): no spaces, nothing masking would hide."""
    return bool(text) and id_in_path(text) and not any(c.isspace() for c in text)


def _without_reason(activity: dict[str, Any]) -> dict[str, Any]:
    """The activity without the reason typed on the card, which is judged on the card, where the
    person reads why (``_answer_card``); everything else must be text a record can hold."""
    value = activity.get("value")
    action = value.get("action") if isinstance(value, dict) else None
    data = action.get("data") if isinstance(action, dict) else None
    if not isinstance(value, dict) or not isinstance(action, dict) or not isinstance(data, dict):
        return activity
    data = {key: item for key, item in data.items() if key != cards.REASON_INPUT}
    return {**activity, "value": {**value, "action": {**action, "data": data}}}


def _bytes_of(activity: Any) -> bytes:
    """An activity as JSON for a refusal's record (which masks it): escaped, so text a record
    cannot hold (a lone surrogate in a reason) is carried to where it is cleaned, not a crash."""
    return json.dumps(activity.model_dump(mode="json", by_alias=True, exclude_none=True)).encode()


def _card(view: dict[str, Any], problem: str | None = None) -> AdaptiveCardActionCardResponse:
    if view["status"] == "break_glass":
        return AdaptiveCardActionCardResponse(value=cards.break_glass_card(view, problem=problem))
    return AdaptiveCardActionCardResponse(value=cards.approval_card(view, problem=problem))


def _message(text: str) -> AdaptiveCardActionMessageResponse:
    return AdaptiveCardActionMessageResponse(value=text)


def _split(ref: str) -> tuple[str, str]:
    conversation, _, activity_id = ref.rpartition("|")
    return conversation, activity_id
