"""The web console: an approver's inbox, one page per action, approve / deny with a reason.

Server-rendered (Jinja2, autoescaped) from the approval service itself. Who is signed in comes
from a bearer token — an ``Authorization`` header set by an OIDC proxy in production, or the
``keyturn_session`` cookie holding a token pasted at sign-in (or, in development only, minted
for ``human:NAME``). Every form carries a CSRF token derived from the session token, and the
session cookie is HttpOnly and SameSite=Strict. Signing out ends the session on every instance:
a digest of its token (never the token; ``http.session_digest``, which every other writing of the
same signed token shares) is recorded in the approval database until the token's own expiry, and
a page asks for it by that digest (one primary-key lookup) after the token verifies
(``Console.session``). Votes go through ``ApprovalDesk.vote`` like every other channel
(``channel=console``).

An action whose approval has not opened yet (a link followed right after the agent asked) gets a
page that says so and reloads itself every ``Retry-After`` seconds, up to ``NOT_OPEN_WAIT_S``;
then it says that no approval is on record for the action. An action is shown to its requester's
chain and to approvers (``ApprovalDesk.may_see``); to anyone else its page is that of an action
not on record, and the inbox lists what the person may decide (``ApprovalDesk.inbox``), as the API.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import re
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from keyturn.approval.desk import ApprovalDesk, ApprovalNotOpenYet, DeskUnavailable
from keyturn.approval.http import REFUSAL_STATUS, session_digest
from keyturn.approval.views import reason_missing, requester_line, timeline
from keyturn.bus.codec import registry
from keyturn.bus.http import id_in_path, shown_id
from keyturn.core import approval as rules
from keyturn.core.principal import Principal
from keyturn.identity import TOKEN_ERROR_CODES, InvalidToken, issue_token, load_or_create_signing_key
from keyturn.identity.claims import unverified_expiry

SESSION_COOKIE = "keyturn_session"
SIGN_IN_COOKIE = "keyturn_sign_in"
SESSION_TTL = timedelta(hours=8)
FORM_MAX_BYTES = 64 * 1024  # the console's own forms are a few hundred bytes; a reason at most 2,000 characters
#: How long past its own expiry a signed-out token stays remembered: beyond any verifier leeway
#: (``TokenVerifier.leeway_s``, 30 s), during which it would otherwise verify again.
SIGNED_OUT_PAST_EXPIRY = timedelta(minutes=5)
NOT_OPEN_WAIT_S = 10  # how long the page for an approval not open yet keeps reloading itself
ENDED_KEPT = 4096  # signed-out session digests an instance remembers, to refuse them without a lookup
HUMAN_NAME = re.compile(r"^(human:)?([a-z][a-z0-9._-]{0,63})$")
# Why a sign-in failed travels in the redirect as one of these codes, and the page shows only the
# words it maps to (an unknown code shows nothing): a link could otherwise put any text, or a
# secret it carries, on Keyturn's page.
SIGN_IN_ERRORS: dict[str, str] = {
    "bad_name": "Use a name like carol (people only).",
    "no_token": "Paste a token from your identity provider.",
    **{f"token_{code}": f"That token was refused ({code})." for code in TOKEN_ERROR_CODES},
    "token_signed_out": "That token was signed out; paste a fresh token from your identity provider.",
}
TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(("html",), default=True),
)
TEMPLATES.globals["requester_line"] = requester_line
TEMPLATES.filters["when"] = lambda iso: datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(frozen=True)
class DevSignIn:
    """Development sign-in by name: tokens minted with the local key for ``human:NAME``."""

    keys_dir: Path
    audience: str
    issuer: str


#: Every console page: nothing but its own inline style and charts runs or loads (no script
#: anywhere), forms post only here, no site may frame it (a vote button under someone else's
#: page), and pages showing approvals are neither cached nor named in a referrer.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Console:
    """Sessions, CSRF and the pages; routes are added by ``mount_console``.

    ``dev_sign_in`` is None in production (sign in with a token from the identity provider)."""

    def __init__(
        self,
        desk_of: Callable[[], Awaitable[ApprovalDesk]],
        verifier: Callable[[], Any],
        dev_sign_in: DevSignIn | None,
        form_key: bytes | None = None,
    ) -> None:
        self.desk_of = desk_of
        self.verifier = verifier
        self.dev = dev_sign_in
        self.dev_sign_in = dev_sign_in is not None
        # the key of the forms' CSRF tokens: the deployment's (``ApprovalRuntime.console_form_key``),
        # so every replica accepts a form another rendered; none given, this process's own
        self._secret = form_key or secrets.token_bytes(32)
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)
        self._ended: OrderedDict[bytes, None] = OrderedDict()  # digests this instance knows were signed out

    async def session(self, request: Request) -> tuple[Principal, str] | None:
        """(principal, token) of the signed-in person, from the Authorization header or the cookie;
        None when there is none, it does not verify, or it was signed out (on any instance)."""
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else request.cookies.get(SESSION_COOKIE, "")
        if not token:
            return None
        try:
            principal = self.verifier().verify(token)
        except InvalidToken:
            return None
        if await self.signed_out(token):
            return None
        return principal, token

    async def signed_in(self, scope: dict[str, Any]) -> Principal | None:
        """The signed-in person of a request known only by its scope (refused before its body
        was read: ``bus.http.BoundedRequests``), or None."""
        signed_in = await self.session(Request(scope))
        return None if signed_in is None else signed_in[0]

    async def signed_out(self, token: str) -> bool:
        """Whether ``token``'s session was signed out: known here, else asked of the shared store."""
        digest = session_digest(token)
        if digest in self._ended:
            return True
        if not await (await self.desk_of()).store.session_ended(digest):
            return False
        self._remember_ended(digest)
        return True

    async def end(self, token: str) -> None:
        """Sign ``token``'s session out for good, on every instance: its digest is kept until the
        token's own expiry (read from the token, which has verified), when the verifier refuses it."""
        now = self.clock()
        expires_at, expiry = now + SESSION_TTL, unverified_expiry(token)
        if expiry is not None:
            with contextlib.suppress(ValueError, OverflowError, OSError):  # the verifier refuses such an exp
                # kept past the expiry by the verifier's leeway, which takes a token that long after it
                expires_at = datetime.fromtimestamp(expiry, UTC) + SIGNED_OUT_PAST_EXPIRY
        await (await self.desk_of()).store.end_session(session_digest(token), expires_at, now)
        self._remember_ended(session_digest(token))

    def _remember_ended(self, digest: bytes) -> None:
        self._ended[digest] = None
        self._ended.move_to_end(digest)
        while len(self._ended) > ENDED_KEPT:
            self._ended.popitem(last=False)

    def csrf(self, token: str) -> str:
        return hmac.new(self._secret, b"csrf:" + token.encode(), hashlib.sha256).hexdigest()[:40]

    def csrf_valid(self, token: str, presented: str) -> bool:
        return hmac.compare_digest(self.csrf(token), presented or "")

    def render(self, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        return HTMLResponse(TEMPLATES.get_template(name).render(**context), status_code=status, headers=PAGE_HEADERS)

    def missing(self, signed_in: tuple[Principal, str], action_id: str, waited: int = 0) -> HTMLResponse:
        """The page for an action that is not on record (or not this person's to see): 404. Only an
        id Keyturn could have made is repeated on it (``bus.http.shown_id``)."""
        approver, token = signed_in
        return self.render(
            "missing.html",
            404,
            approver=approver,
            action_id=shown_id(action_id),
            csrf=self.csrf(token),
            waited=waited,
        )

    def unavailable(self, signed_in: tuple[Principal, str], away: DeskUnavailable) -> HTMLResponse:
        """The page for a question the desk cannot answer now (the policy engine away): 503, and it
        reloads itself after ``Retry-After``."""
        approver, token = signed_in
        response = self.render(
            "unavailable.html",
            away.status,
            approver=approver,
            csrf=self.csrf(token),
            message=str(away),
            retry_after_s=away.retry_after_s,
        )
        response.headers["Retry-After"] = str(away.retry_after_s)
        return response


def mount_console(
    app: FastAPI,
    desk_of: Callable[[], Awaitable[ApprovalDesk]],
    verifier: Callable[[], Any],
    dev_sign_in: DevSignIn | None,
    form_key: bytes | None = None,
) -> Console:
    """Add the ``/console`` pages to the approval service's HTTP app."""
    console = Console(desk_of, verifier, dev_sign_in, form_key)

    @app.get("/console", response_class=HTMLResponse, include_in_schema=False)
    async def inbox(request: Request) -> Response:
        signed_in = await console.session(request)
        if signed_in is None:
            return RedirectResponse("/console/sign-in", status_code=303)
        approver, token = signed_in
        desk = await desk_of()
        try:
            items, error = [_item(decided, state) for decided, state in await desk.inbox(approver)], ""
        except DeskUnavailable as away:  # the reviews below say what they can on their own
            items, error = [], str(away)
        reviews = await desk.reviews_due(approver)
        return console.render(
            "inbox.html", approver=approver, items=items, reviews=reviews, error=error, csrf=console.csrf(token)
        )

    @app.get("/console/sign-in", response_class=HTMLResponse, include_in_schema=False)
    async def sign_in_page(request: Request, error: str = "") -> Response:
        nonce = secrets.token_urlsafe(24)
        response = console.render(
            "sign_in.html", dev=console.dev_sign_in, error=SIGN_IN_ERRORS.get(error, ""), nonce=nonce, approver=None
        )
        response.set_cookie(
            SIGN_IN_COOKIE,
            nonce,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/console",
        )
        return response

    @app.post("/console/sign-in", include_in_schema=False)
    async def sign_in(request: Request) -> Response:
        nonce, name, token = await _form(console, request, "nonce", "name", "token")
        if not nonce or not hmac.compare_digest(nonce, request.cookies.get(SIGN_IN_COOKIE, "")):
            return console.render(
                "sign_in.html",
                403,
                dev=console.dev_sign_in,
                error="The sign-in form expired; try again.",
                nonce="",
                approver=None,
            )
        if token.strip():
            chosen = token.strip()
        elif name.strip() and console.dev is not None:
            match = HUMAN_NAME.match(name.strip().lower())
            if not match:
                return _sign_in_again("bad_name")
            key = load_or_create_signing_key(console.dev.keys_dir)
            chosen = issue_token(
                key,
                subject=f"human:{match.group(2)}",
                audience=console.dev.audience,
                issuer=console.dev.issuer,
                ttl=SESSION_TTL,
            )
        else:
            return _sign_in_again("no_token")
        try:
            verifier().verify(chosen)
        except InvalidToken as exc:
            return _sign_in_again(f"token_{exc.code}")
        if await console.signed_out(chosen):  # else every page after this one would send them back here
            return _sign_in_again("token_signed_out")
        response = RedirectResponse("/console", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            chosen,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            max_age=int(SESSION_TTL.total_seconds()),
            path="/console",
        )
        response.delete_cookie(SIGN_IN_COOKIE, path="/console")
        return response

    @app.post("/console/sign-out", include_in_schema=False)
    async def sign_out(request: Request) -> Response:
        (csrf,) = await _form(console, request, "csrf")
        signed_in = await console.session(request)
        if signed_in is not None and not console.csrf_valid(signed_in[1], csrf):
            return HTMLResponse("The form expired; reload the page.", status_code=403)
        if signed_in is not None:  # ended here and on every other instance, not only forgotten by this browser
            await console.end(signed_in[1])
            cookie = request.cookies.get(SESSION_COOKIE, "")
            if cookie and cookie != signed_in[1] and _verifies(console, cookie):
                await console.end(cookie)  # signed in through a proxy's header, with a pasted token too
        response = RedirectResponse("/console/sign-in", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/console")
        return response

    @app.get("/console/actions/{action_id}", response_class=HTMLResponse, include_in_schema=False)
    async def action_page(request: Request, action_id: str, done: str = "", waited: str = "") -> Response:
        signed_in = await console.session(request)
        if signed_in is None:
            return RedirectResponse("/console/sign-in", status_code=303)
        if not id_in_path(action_id):
            return console.missing(signed_in, action_id)
        return await _action_page(console, signed_in, action_id, notice=_notice(done), waited=_seconds_waited(waited))

    @app.post("/console/actions/{action_id}/vote", include_in_schema=False)
    async def vote(request: Request, action_id: str) -> Response:
        choice, reason, payload_digest, csrf = await _form(
            console, request, "choice", "reason", "payload_digest", "csrf"
        )
        signed_in = await console.session(request)
        if signed_in is None:
            return RedirectResponse("/console/sign-in", status_code=303)
        if not id_in_path(action_id):  # before anything is recorded: no record can hold such an id
            return console.missing(signed_in, action_id)
        approver, token = signed_in
        if not console.csrf_valid(token, csrf):
            await _refused(
                console,
                request,
                approver,
                "csrf_failed",
                f"a console vote on {action_id} without this session's form token",
            )
            return await _action_page(
                console,
                signed_in,
                action_id,
                error="The form expired or did not come from this console; nothing was recorded. Try again.",
                status=403,
            )
        if choice not in ("approve", "deny"):
            await _refused(
                console,
                request,
                approver,
                "invalid_choice",
                f"a console vote on {action_id} chose neither approve nor deny",
            )
            return await _action_page(console, signed_in, action_id, error="Choose Approve or Deny.", status=400)
        if (why := rules.reason_problem(reason)) is not None:  # as on every channel (ApprovalDesk.vote)
            await _refused(console, request, approver, "invalid_reason", f"a console vote on {action_id}: reason {why}")
            return await _action_page(console, signed_in, action_id, error=f"reason: {why}", status=422)
        desk = await desk_of()
        if choice == "deny" and not reason.strip():  # a denial, or an objection: its own words (views)
            missing = reason_missing(await _view_for(desk, approver, action_id), choice, reason)
            return await _action_page(console, signed_in, action_id, error=missing or "A reason is needed.", status=400)
        try:
            result = await desk.vote(action_id, approver, choice, payload_digest, reason.strip() or None, "console")
        except DeskUnavailable as unavailable:
            if unavailable.error == "database_unavailable":
                raise  # the page itself cannot be read back: the service's 503 "try again" answer
            return await _action_page(console, signed_in, action_id, error=str(unavailable), status=503)
        if not result.accepted:
            return await _action_page(
                console,
                signed_in,
                action_id,
                error=f"{result.refusal}: {result.message}",
                status=REFUSAL_STATUS.get(result.refusal or "", 409),
            )
        done = f"review-{choice}" if result.status == "break_glass" else choice
        return RedirectResponse(f"/console/actions/{quote(action_id)}?done={done}", status_code=303)

    return console


async def _action_page(
    console: Console,
    signed_in: tuple[Principal, str],
    action_id: str,
    *,
    notice: str = "",
    error: str = "",
    status: int = 200,
    waited: int = 0,
) -> Response:
    approver, token = signed_in
    desk = await console.desk_of()
    try:
        found = await desk.approval(approver, action_id)
    except ApprovalNotOpenYet as early:  # not on record yet, or not this person's to see: alike
        if waited >= NOT_OPEN_WAIT_S or not shown_id(action_id):  # no id but Keyturn's can ever open
            return console.missing(signed_in, action_id, waited)
        # the decision may be on its way: this page reloads itself until the approval opens
        again = f"/console/actions/{quote(action_id)}?waited={waited + early.retry_after_s}"
        response = console.render(
            "not_open.html",
            early.status,
            approver=approver,
            action_id=action_id,
            csrf=console.csrf(token),
            retry_after_s=early.retry_after_s,
            again=again,
            error=error,
        )
        response.headers["Retry-After"] = str(early.retry_after_s)
        return response
    except DeskUnavailable as away:  # the policy engine cannot say whether this person may see it
        return console.unavailable(signed_in, away)
    view = await desk.view(action_id)
    if view is None:  # desk.approval found it just above, and approval rows are never deleted
        raise RuntimeError(f"approval {action_id} vanished while shown")
    if found is None:  # allowed without approval under break-glass: an answer is its review
        may, why = await desk.may_review(approver, action_id)
    else:
        may, why = await desk.may_decide(approver, *found)
    history = [registry().decode_event(v) for v in await desk.store.vote_history(action_id)]
    return console.render(
        "action.html",
        status,
        approver=approver,
        view=view,
        timeline=timeline(view, history, await desk.store.notifications_of(action_id)),
        may_decide=may,
        why=why,
        notice=notice,
        error=error,
        csrf=console.csrf(token),
        parameters=_pretty(view["parameters"]),
    )


async def _view_for(desk: ApprovalDesk, viewer: Principal, action_id: str) -> dict[str, Any] | None:
    """The action's view when ``viewer`` may see it now, else None (as for an action not on record)."""
    try:
        await desk.approval(viewer, action_id)
    except DeskUnavailable:  # not on record, not theirs to see, or the policy engine away
        return None
    return await desk.view(action_id)


def _verifies(console: Console, token: str) -> bool:
    try:
        console.verifier().verify(token)
    except InvalidToken:
        return False
    return True


def _sign_in_again(error: str) -> RedirectResponse:
    """Back to the sign-in page, saying why by one of ``SIGN_IN_ERRORS``' codes."""
    if error not in SIGN_IN_ERRORS:
        raise ValueError(f"sign-in error {error!r} has no words in SIGN_IN_ERRORS")
    return RedirectResponse(f"/console/sign-in?error={error}", status_code=303)


async def _refused(console: Console, request: Request, approver: Principal, error: str, reason: str) -> None:
    """A signed-in approver's form that cannot count: recorded under their name, without the form."""
    desk = await console.desk_of()
    await desk.refuse_interaction("console", error, reason, await request.body(), principal=approver.id)


async def _form(console: Console, request: Request, *names: str) -> tuple[str, ...]:
    """Fields of an urlencoded form (the first value of each; missing ones empty). A form larger
    than any the console sends is refused whole (413), never cut: the fields past the cut were lost,
    and the answer blamed an expired form. The refusal is recorded under the signed-in approver
    (size and digest only), as every other refused console form is."""
    received = await request.body()
    if len(received) > FORM_MAX_BYTES:
        too_large = f"the form is larger than {FORM_MAX_BYTES // 1024} KB; nothing was recorded"
        if (signed_in := await console.session(request)) is not None:
            await _refused(console, request, signed_in[0], "body_too_large", f"{request.url.path}: {too_large}")
        raise HTTPException(413, detail=too_large)
    try:  # refused, not repaired: a reason rewritten with U+FFFD is not what the approver wrote
        fields = parse_qs(received.decode("utf-8"), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        unreadable = "the form holds bytes that are not UTF-8 text; nothing was recorded"
        if (signed_in := await console.session(request)) is not None:
            await _refused(console, request, signed_in[0], "invalid_form", f"{request.url.path}: {unreadable}")
        raise HTTPException(422, detail=unreadable) from None
    return tuple(fields.get(name, [""])[0] for name in names)


def _item(decided: Any, state: Any) -> dict[str, Any]:
    request = decided.request
    return {
        "action_id": decided.action_id,
        "action": request.action,
        "resource": request.resource,
        "requester": requester_line(request.requester.id, list(request.requester.chain)),
        "reason": request.reason,
        "impact": decided.impact.summary() if decided.impact is not None else "",
        "expires_at": state.expires_at.isoformat(timespec="seconds"),
    }


def _seconds_waited(waited: str) -> int:
    """How long a page for an approval not open yet has reloaded itself (its own link's
    ``waited``). Taken as text, and anything but a small whole number read as 0: an edited link
    gets the page, not the API's refusal (which knows no cookie, and so no one signed in)."""
    return int(waited) if waited.isascii() and waited.isdigit() and len(waited) <= 6 else 0


def _notice(done: str) -> str:
    return {
        "approve": "Your approval was recorded.",
        "deny": "Your denial was recorded.",
        "review-approve": "Your review was recorded: no objection.",
        "review-deny": "Your review was recorded: you objected.",
    }.get(done, "")


def _pretty(parameters: Any) -> str:
    return json.dumps(parameters, indent=2, sort_keys=True, ensure_ascii=False)
