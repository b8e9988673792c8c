"""The approval API: what an approver may see and answer (used by the CLI and the console)."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from pydantic import BaseModel, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from keyturn.approval.desk import ApprovalDesk, DeskUnavailable
from keyturn.approval.views import approval_view
from keyturn.bus.http import UNPARSEABLE_BODY, StrictJsonRoute, id_in_path, masked_http_error, received_body, route_of
from keyturn.bus.refusals import MAX_PROBLEMS, masked_line, validation_problems
from keyturn.core.approval import REASON_MAX_CHARS, ApiVoteChannel
from keyturn.core.principal import Principal
from keyturn.core.text import words_problem
from keyturn.faults import DATABASE_UNAVAILABLE
from keyturn.identity import InvalidToken, bearer_token

REFUSAL_STATUS = {
    "UnknownAction": 404,
    "UnknownChatUser": 403,
    "SelfApprovalRefused": 403,
    "DelegatedVoteRefused": 403,
    "ApproverNotAuthorised": 403,
    "DigestMismatch": 409,
    "DuplicateVote": 409,
    "AlreadyResolved": 409,
    "ApprovalExpired": 410,
    "InvalidReason": 422,
}


UNATTRIBUTED = Counter(
    "keyturn_approval_unattributed_refusals_total",
    "Requests refused before anyone could be held to them (no valid token or signature, over the size bounds); "
    "counted, not recorded",
    ["channel", "reason"],
)


class VoteRequest(BaseModel):
    choice: Literal["approve", "deny"]
    payload_digest: str = Field(..., min_length=8, description="The digest shown with the parameters (sha256:<hex>)")
    reason: str | None = Field(None, max_length=REASON_MAX_CHARS)
    channel: ApiVoteChannel = Field(
        "cli",
        description="Where the vote was cast: api or cli (core.approval.API_VOTE_CHANNELS). The console, Slack "
        "and Teams name themselves; a vote claiming one of them here is refused",
    )

    @field_validator("reason")
    @classmethod
    def _storable(cls, value: str | None) -> str | None:
        """A vote's words travel on to the audit and the requester's status (PostgreSQL rows), which
        cannot hold every string: refused here, naming the field, rather than failing there."""
        if value is not None and (why := words_problem(value)) is not None:
            raise ValueError(why)
        return value


def unknown_action() -> HTTPException:
    """The answer to an action id that cannot name an action (``bus.http.id_in_path``): 404, from no
    store, since PostgreSQL would refuse to even look such an id up."""
    return HTTPException(404, detail={"error": "UnknownAction", "message": "action_id names no action"})


def unavailable(exc: DeskUnavailable) -> JSONResponse:
    """Nothing was recorded, try again: 503 (a dependency is down) or 425 (the approval has not
    opened yet), with the refusal shape every other answer uses, and when to try again."""
    return JSONResponse(
        {"detail": {"error": exc.error, "message": masked_line(str(exc))}},
        status_code=exc.status,
        headers={"Retry-After": str(exc.retry_after_s)},
    )


def session_digest(token: str) -> bytes:
    """What is kept of a signed-out session token, never the token: the SHA-256 of what its
    signature signs (``header.payload``, before the last dot), not of the whole text. The same
    signed session can be written with other signature text that verifies as well (an ECDSA
    signature's s as n - s, the spare bits of its base64), and each such copy would otherwise be
    a session never signed out. The one key of a signed-out session: recorded, and asked for."""
    signed, _, _ = token.rpartition(".")
    return hashlib.sha256(signed.encode()).digest()


def mount_routes(app: FastAPI, desk_of: Callable[[], Awaitable[ApprovalDesk]], verifier: Any) -> None:
    # the API's routes, and every one mounted after them (console, history, chat), read JSON
    # bodies as UTF-8 with each key once (``bus.http.strict_json``)
    app.router.route_class = StrictJsonRoute

    @app.exception_handler(DeskUnavailable)
    async def desk_unavailable(_: Request, exc: DeskUnavailable) -> JSONResponse:
        return unavailable(exc)

    # Any route (inbox, console, chat endpoints) that meets a database outage answers 503 "try
    # again", not 500; and the dead connections go, so the first request after the restart works.
    async def database_unavailable(_: Request, exc: Exception) -> JSONResponse:
        try:
            await (await desk_of()).recover()
        except Exception:  # the desk may not even be built yet (the database was down at start)
            pass
        return unavailable(
            DeskUnavailable(
                "database_unavailable",
                "Keyturn cannot reach its database right now; nothing was changed. Try again in a minute.",
            )
        )

    for error in DATABASE_UNAVAILABLE:
        app.add_exception_handler(error, database_unavailable)

    async def approver_of(authorization: str | None) -> Principal:
        """The caller, from a token that verifies and whose console session was not signed out:
        signing out of the console ends that token at every door of the approval service."""
        try:
            token = bearer_token(authorization)
            principal = verifier().verify(token)
        except InvalidToken as exc:
            raise HTTPException(
                401, detail=f"invalid token ({exc.code}): {exc}", headers={"WWW-Authenticate": "Bearer"}
            ) from exc
        if await (await desk_of()).store.session_ended(session_digest(token)):
            raise HTTPException(
                401,
                detail="invalid token (signed_out): this token's session was signed out; sign in again",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return principal

    async def refused_body(request: Request, status: int, error_type: str, problems: list[str]) -> JSONResponse:
        """Who is asking comes first: 401 records nothing; a signed-in caller's refusal is recorded
        under their name, without the values it refused (and the answer does not echo them)."""
        try:
            approver = await approver_of(request.headers.get("authorization"))
        except HTTPException as unauthenticated:  # raised out of a handler it would become a 500
            UNATTRIBUTED.labels("api", "invalid_token").inc()
            return await masked_http_error(request, unauthenticated)
        problems = [masked_line(p) for p in problems[:MAX_PROBLEMS]]
        desk = await desk_of()
        await desk.refuse_interaction(
            f"http:{route_of(request)}",
            error_type,
            f"{route_of(request)} refused from {approver.id}",
            await received_body(request),
            problems=tuple(problems),
            principal=approver.id,
        )
        return JSONResponse(
            {"detail": {"error": "invalid_request", "message": "; ".join(problems), "problems": problems}},
            status_code=status,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 400 and exc.detail == UNPARSEABLE_BODY:  # not UTF-8: FastAPI's own words
            return await refused_body(request, 400, "unparseable_body", ["body: not UTF-8 JSON; send UTF-8 JSON"])
        return await masked_http_error(request, exc)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return await refused_body(request, 422, "invalid_body", validation_problems(exc.errors()))

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def health() -> dict[str, str]:
        await desk_of()
        return {"status": "ok"}

    @app.get(
        "/v1/approvals",
        responses={
            401: {"description": "Missing or invalid token"},
            503: {"description": "Policy engine unreachable: who may decide what is unknown; ask again later"},
        },
    )
    async def inbox(authorization: str | None = Header(None)) -> list[dict[str, Any]]:
        """Pending approvals the signed-in principal may decide now (``ApprovalDesk.inbox``)."""
        approver = await approver_of(authorization)
        desk = await desk_of()
        return [approval_view(decided, state) for decided, state in await desk.inbox(approver)]

    @app.get(
        "/v1/approvals/{action_id}",
        responses={
            401: {"description": "Missing or invalid token"},
            404: {"description": "The id cannot name an action"},
            425: {
                "description": "No approval is open for this action yet (its decision may be on its way), or it "
                "is not yours to see: retry after Retry-After"
            },
            503: {"description": "Policy engine unreachable: whether you may see it is unknown; ask again later"},
        },
    )
    async def show(action_id: str, authorization: str | None = Header(None)) -> dict[str, Any]:
        """One approval with masked parameters and the digest a vote must name; a break-glass action
        (``status: break_glass``) is shown the same way, and a vote on it records its review. Shown
        to its requester's chain and to approvers (``ApprovalDesk.may_see``); anyone else is
        answered as for an action not on record."""
        viewer = await approver_of(authorization)
        if not id_in_path(action_id):
            raise unknown_action()
        desk = await desk_of()
        found = await desk.approval(viewer, action_id)
        if found is None:
            view = await desk.view(action_id)  # break-glass: the action already ran, awaiting its review
            if view is None:  # pragma: no cover - approval() raises when nothing is on record
                raise HTTPException(404, detail=f"nothing is on record for action {action_id}")
            return view
        view = approval_view(*found)
        view["execution"] = (await desk.execution_modes()).mode_for(view["action"]).execution.value
        return view

    @app.post(
        "/v1/approvals/{action_id}/votes",
        responses={
            401: {"description": "Missing or invalid token"},
            403: {"description": "Self-approval, a vote acting for someone else, or not an approver"},
            404: {"description": "The id cannot name an action"},
            409: {"description": "Resolved already, duplicate vote or digest drift"},
            410: {"description": "Approval expired"},
            425: {
                "description": "The approval has not opened yet: nothing was recorded, answer again after Retry-After"
            },
            503: {
                "description": "Policy engine or database unreachable: nothing was recorded, answer again later "
                "(Retry-After)"
            },
        },
    )
    async def vote(action_id: str, body: VoteRequest, authorization: str | None = Header(None)) -> dict[str, Any]:
        """Approve or deny. Refusals are recorded and audited, and change nothing."""
        approver = await approver_of(authorization)
        if not id_in_path(action_id):
            raise unknown_action()
        desk = await desk_of()
        result = await desk.vote(action_id, approver, body.choice, body.payload_digest, body.reason, body.channel)
        if not result.accepted:
            raise HTTPException(
                REFUSAL_STATUS.get(result.refusal or "", 409),
                detail={"error": result.refusal, "message": result.message},
            )
        return {"action_id": action_id, "accepted": True, "status": result.status, "summary": result.summary}
