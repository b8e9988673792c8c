"""Intake service: agents submit actions over HTTP or the submissions topic; requesters follow them.

routes    POST /v1/actions · POST /v1/actions:batch · GET /v1/actions/{id} · GET /v1/actions/{id}/wait
          · GET /.well-known/jwks.json · GET /v1/exports/{id} (a db.export's file, once, to its requester)
          · GET /.well-known/keyturn-receipt-keys.json (the key approval receipts are signed with)
consumes  <ns>.submissions (ActionSubmitted + JWT header) · lifecycle topics (status of each action)
produces  <ns>.actions.requested · <ns>.dlq
state     intake_actions in PostgreSQL: idempotency keys, the outbox of accepted requests, status
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

from fastapi import FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from keyturn.bus.codec import UndecodableMessage
from keyturn.bus.http import (
    BoundedRequests,
    StrictJsonRoute,
    header,
    id_in_path,
    masked_http_error,
    received_body,
    route_of,
)
from keyturn.bus.refusals import MAX_PROBLEMS, masked_line, validation_problems
from keyturn.config import Settings
from keyturn.core.events import SubmissionChannel
from keyturn.core.principal import Principal
from keyturn.exports import CONTENT_TYPES, export_file_name
from keyturn.identity import InvalidToken, bearer_token
from keyturn.intake.consumers import REJECTED
from keyturn.intake.store import StoreUnavailable
from keyturn.intake.submissions import (
    ActionSubmission,
    IdempotencyConflict,
    InvalidParameters,
    InvalidSubmission,
    NoExecutor,
    Submitted,
)
from keyturn.intake.throttle import Oversized, SubmissionThrottle, Throttled
from keyturn.intake.wiring import IntakeWiring, bootstrap, start_background

log = logging.getLogger(__name__)


class Problem(BaseModel):
    """What a refused request is told: a code, a sentence, and each problem found."""

    error: str
    detail: str
    problems: list[str]


class ItemResult(BaseModel):
    """What became of one item of a batch."""

    index: int = Field(description="The item's position in the request, from 0")
    status: int = Field(
        description="What a single POST /v1/actions would have answered: 202 accepted, 200 the existing action "
        "(idempotency key seen before), 409 idempotency key reused for a different request, 422 invalid item"
    )
    outcome: Literal["accepted", "duplicate", "refused"]
    action_id: str | None = None
    state: str | None = None
    problem: Problem | None = None


class BatchResult(BaseModel):
    """One result per item, in the order of the request."""

    accepted: int
    duplicates: int
    refused: int
    results: list[ItemResult]


RETRY_AFTER_S = 2
EXCERPTS_PER_BATCH = 10  # refused items of one batch recorded with a masked excerpt; the rest by digest and length
UNAVAILABLE = {
    "model": Problem,
    "description": "The intake's database is not answering; nothing to fix in the request, try again after "
    "Retry-After seconds",
    "headers": {"Retry-After": {"description": "Seconds to wait before trying again", "schema": {"type": "integer"}}},
}
SUBMISSION_ROUTES = frozenset({"POST /v1/actions", "POST /v1/actions:batch"})  # what the limit counts
RATE_LIMITED = {
    "model": Problem,
    "description": "The caller is over its submission limit (KEYTURN_SUBMISSION_LIMIT); try again after "
    "Retry-After seconds",
    "headers": {"Retry-After": {"description": "Seconds to wait before trying again", "schema": {"type": "integer"}}},
}


class _Wired:
    """The wiring once the lifespan built it (routes run only after that)."""

    parts: IntakeWiring


def create_app(
    settings: Settings | None = None, *, wire: Callable[[], Awaitable[IntakeWiring]] | None = None
) -> FastAPI:
    """The intake's HTTP app; ``wire`` builds its parts (default: ``wiring.bootstrap`` from ``settings``)."""
    settings = settings or Settings.from_env()
    build = wire or (lambda: bootstrap(settings))
    wired = _Wired()
    throttle = SubmissionThrottle(settings.submission_limit)  # a limit it cannot read stops the start

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        wired.parts = await build()
        tasks = start_background(wired.parts)
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if wired.parts.close is not None:
                await wired.parts.close()

    app = FastAPI(
        title="Keyturn intake",
        version="0.1.0",
        description="Submit privileged actions on behalf of an agent and follow them to their outcome.",
        lifespan=lifespan,
    )
    app.router.route_class = StrictJsonRoute  # UTF-8 JSON, each key once (before any route)

    def authenticate(authorization: str | None) -> Principal:
        try:
            return wired.parts.verifier.verify(bearer_token(authorization))
        except InvalidToken as exc:
            REJECTED.labels("http", f"token_{exc.code}").inc()
            if exc.code == "jwks_unavailable":
                raise HTTPException(503, detail=f"cannot verify tokens right now: {exc}") from exc
            raise HTTPException(
                401, detail=f"invalid token ({exc.code}): {exc}", headers={"WWW-Authenticate": "Bearer"}
            ) from exc

    async def record_refusal(**letter: Any) -> None:
        """Dead-letter a refusal; the caller is answered even when the broker cannot take the record."""
        try:
            await wired.parts.publisher.dead_letter(partition=-1, offset=-1, key=None, **letter)
        except Exception as exc:
            REJECTED.labels("http", "refusal_not_recorded").inc()
            log.warning(
                "a refusal from %s was answered but not recorded: %s", letter.get("principal"), type(exc).__name__
            )

    async def refuse(
        request: Request, status: int, error: str, problems: list[str], *, counted: bool = False
    ) -> JSONResponse:
        """Answer a bad request with what is wrong, and record it under the caller's identity.

        The caller is authenticated first: without a valid token the answer is 401 and nothing
        is written anywhere but a counter. The record holds no byte of the body (``bus.refusals``).
        """
        try:
            principal = authenticate(request.headers.get("authorization"))
        except HTTPException as unauthenticated:  # raised out of a handler it would become a 500
            return await masked_http_error(request, unauthenticated)
        route = route_of(request)
        # a refused submission counts against the caller's limit as an accepted one does (once: one
        # the handler counted, then refused for what it asks, is ``counted``): else a flood of bad
        # bodies would write a refusal record for each
        if not counted and route in SUBMISSION_ROUTES and (over := await throttled(principal, route, 1)) is not None:
            return over
        problems = [masked_line(p) for p in problems[:MAX_PROBLEMS]]
        REJECTED.labels("http", error).inc()
        body = await received_body(request)
        await record_refusal(
            source_topic=f"http:{route}",
            payload=body,
            error=UndecodableMessage(error, f"{route} refused {len(body)} bytes from {principal.id}"),
            principal=principal.id,
            problems=tuple(problems),
            excerpt=True,
        )
        return JSONResponse(
            status_code=status,
            content=Problem(error="invalid_request", detail="; ".join(problems), problems=problems).model_dump(),
        )

    async def refused_at_the_edge(scope: dict[str, Any], status: int, problems: list[str], received: bytes) -> None:
        """A body or headers over the bounds: recorded (size and digest) for a verified caller only."""
        REJECTED.labels("http", f"http_{status}").inc()
        try:
            principal = wired.parts.verifier.verify(bearer_token(header(scope, "authorization")))
        except InvalidToken:
            return
        route = route_of(scope)
        over = throttle.take(principal.id) if route in SUBMISSION_ROUTES else None
        if isinstance(over, Throttled) and not over.first:
            return  # over the caller's limit: answered and counted; its spell's first refusal was recorded
        await record_refusal(
            source_topic=f"http:{route}",
            payload=received,
            error=UndecodableMessage("body_too_large" if status == 413 else "headers_too_large", "; ".join(problems)),
            principal=principal.id,
            problems=tuple(problems),
        )

    app.add_middleware(
        BoundedRequests,
        max_body_bytes=settings.max_body_bytes,
        max_header_bytes=settings.max_header_bytes,
        on_refused=refused_at_the_edge,
    )

    async def throttled(principal: Principal, route: str, count: int) -> JSONResponse | None:
        """None when ``principal`` may make ``count`` more submissions now, else the answer: 429 with
        Retry-After, the first refusal of a spell recorded under the caller's identity (one record,
        not one per refused request: a caller over its limit would write them as fast as it sends);
        422 for a batch no window would ever take."""
        refusal = throttle.take(principal.id, count)
        if refusal is None:
            return None
        if isinstance(refusal, Oversized):
            REJECTED.labels("http", "batch_over_limit").inc()
            problem = f"items: {count} submissions, more than the limit of {refusal.limit} allows; send smaller batches"
            return JSONResponse(
                status_code=422,
                content=Problem(error="batch_over_limit", detail=problem, problems=[problem]).model_dump(),
            )
        REJECTED.labels("http", "rate_limited").inc()
        detail = (
            f"{principal.id} is over its submission limit ({refusal.limit}); try again in "
            f"{refusal.retry_after_s} s (with the same idempotency keys, nothing is created twice)"
        )
        if refusal.first:
            log.warning("%s refused: over its submission limit (%s)", principal.id, refusal.limit)
            await record_refusal(
                source_topic=f"http:{route}",
                payload=b"",  # not the body: the refusal is for how often, not for what
                error=UndecodableMessage("rate_limited", detail),
                principal=principal.id,
                problems=(f"over the submission limit {refusal.limit}",),
            )
        return JSONResponse(
            status_code=429,
            content=Problem(error="rate_limited", detail=detail, problems=[f"limit: {refusal.limit}"]).model_dump(),
            headers={"Retry-After": str(refusal.retry_after_s)},
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        return await refuse(request, 422, "invalid_body", validation_problems(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # a body that cannot even be parsed (not UTF-8, nested too deep for the parser)
            return await refuse(request, 400, "unparseable_body", [f"body: {exc.detail}; send UTF-8 JSON"])
        return await masked_http_error(request, exc)

    @app.exception_handler(StoreUnavailable)
    async def _database_unavailable(request: Request, exc: StoreUnavailable) -> JSONResponse:
        log.warning("%s answered 503: %s", route_of(request), exc)
        detail = f"the intake cannot reach its {exc.dependency} right now; try again in {RETRY_AFTER_S} s"
        if request.method == "POST":
            detail += " with the same idempotency key (a retry with it never creates a second action)"
        problem = Problem(error="unavailable", detail=detail, problems=[f"{exc.dependency}: not answering"])
        return JSONResponse(status_code=503, content=problem.model_dump(), headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.post(
        "/v1/actions",
        status_code=202,
        responses={
            200: {"description": "Same idempotency key: the existing action"},
            400: {"model": Problem, "description": "Body is not parseable JSON"},
            401: {"description": "Missing or invalid token"},
            409: {"description": "Idempotency key reused for a different request"},
            422: {
                "model": Problem,
                "description": "Invalid body, or parameters that do not match the action's schema in the catalog "
                "(docs/catalog.md); each problem names the field path, never its value",
            },
            429: RATE_LIMITED,
            503: UNAVAILABLE,
        },
    )
    async def submit_action(
        submission: ActionSubmission, request: Request, response: Response, authorization: str | None = Header(None)
    ) -> Any:
        """Submit an action; 202 with its id, or 200 with the existing id for a repeated idempotency key;
        422 naming why for an action the catalog refuses (``data.keyturn.execution``); 429 when the
        caller is over its submission limit."""
        principal = authenticate(authorization)
        if (refused := await throttled(principal, "POST /v1/actions", 1)) is not None:
            return refused
        try:
            stored, created = await wired.parts.intake.submit(principal, submission, SubmissionChannel.HTTP)
        except NoExecutor as exc:
            return await refuse(request, 422, NoExecutor.error_type, exc.problems, counted=True)
        except IdempotencyConflict as exc:
            REJECTED.labels("http", "idempotency_conflict").inc()
            raise HTTPException(409, detail=str(exc)) from exc
        except InvalidParameters as exc:
            return await refuse(request, 422, InvalidParameters.error_type, exc.problems, counted=True)
        if not created:
            response.status_code = 200
        return {"action_id": stored.action_id, "state": stored.state.value}

    batch_model: Any = create_model(
        "ActionBatch",
        __config__=ConfigDict(extra="forbid"),
        items=(
            list[Any],  # each item is checked on its own below: one that is not an object is refused alone
            Field(
                ...,
                min_length=1,
                max_length=settings.intake_batch_max_items,
                description="Each item is the body of a POST /v1/actions (see ActionSubmission), validated on its "
                "own: an invalid item is refused alone, the others are accepted",
            ),
        ),
    )

    async def submit_actions(batch: Any, authorization: str | None = Header(None)) -> BatchResult | JSONResponse:
        """Submit up to the allowed number of actions at once (one token check, one database statement,
        one produce batch); one result per item, in order. Retrying the whole batch with the same
        idempotency keys never creates a second action."""
        principal = authenticate(authorization)
        items: list[Any] = batch.items
        if (refused := await throttled(principal, "POST /v1/actions:batch", len(items))) is not None:
            return refused  # every item counts, valid or not: each costs the intake its checks
        results: list[ItemResult | None] = [None] * len(items)
        valid: list[tuple[int, ActionSubmission]] = []
        refusals: list[Awaitable[None]] = []
        for index, item in enumerate(items):
            try:
                if not isinstance(item, dict):
                    raise ValueError(f"items.{index}: must be an object (the body of a POST /v1/actions)")
                valid.append((index, ActionSubmission.model_validate(item)))
            except (ValidationError, ValueError) as exc:
                found = (
                    [f"items.{index}.{p}" for p in validation_problems(exc.errors(include_input=False))]
                    if isinstance(exc, ValidationError)
                    else [str(exc)]
                )
                problems = [masked_line(p) for p in found[:MAX_PROBLEMS]]  # cut first: each costs a masking
                REJECTED.labels("http", "invalid_item").inc()
                # a masked excerpt costs masking time on the event loop: the first few refused items get one
                excerpt = len(refusals) < EXCERPTS_PER_BATCH
                refusals.append(refused_item(principal.id, index, item, problems, excerpt=excerpt))
                problem = Problem(error="invalid_request", detail="; ".join(problems), problems=problems)
                results[index] = ItemResult(index=index, status=422, outcome="refused", problem=problem)
        # the malformed items are recorded first: storing the others may fail (503), and then no one would
        await asyncio.gather(*refusals)
        excerpted, refusals = len(refusals), []  # the batch's excerpts count across both rounds
        submitted = await wired.parts.intake.submit_many(
            [(principal, submission) for _, submission in valid], SubmissionChannel.HTTP
        )
        for (index, _), outcome in zip(valid, submitted, strict=True):
            if isinstance(outcome, InvalidSubmission):  # the catalog refuses it: recorded under the caller
                excerpt = excerpted + len(refusals) < EXCERPTS_PER_BATCH
                problems = [masked_line(f"items.{index}.{p}") for p in outcome.problems[:MAX_PROBLEMS]]
                refusals.append(refused_item(principal.id, index, items[index], problems, excerpt=excerpt))
            results[index] = item_result(index, outcome)
        await asyncio.gather(*refusals)
        answered = [r for r in results if r is not None]
        return BatchResult(
            accepted=sum(r.outcome == "accepted" for r in answered),
            duplicates=sum(r.outcome == "duplicate" for r in answered),
            refused=sum(r.outcome == "refused" for r in answered),
            results=answered,
        )

    submit_actions.__annotations__["batch"] = batch_model  # built from settings, so not a name the module can resolve
    app.post(
        "/v1/actions:batch",
        response_model=BatchResult,
        responses={
            400: {"model": Problem, "description": "Body is not parseable JSON"},
            401: {"description": "Missing or invalid token"},
            413: {"model": Problem, "description": "Body too large"},
            422: {
                "model": Problem,
                "description": "Not an object with 1 to the allowed number of items, or more items than the "
                "submission limit allows",
            },
            429: RATE_LIMITED,
            503: UNAVAILABLE,
        },
    )(submit_actions)

    def item_result(index: int, outcome: Submitted | IdempotencyConflict | InvalidSubmission) -> ItemResult:
        if isinstance(outcome, InvalidSubmission):
            error = getattr(outcome, "error_type", "invalid_request")
            REJECTED.labels("http", error).inc()
            problems = [masked_line(f"items.{index}.{p}") for p in outcome.problems][:MAX_PROBLEMS]
            problem = Problem(error=error, detail="; ".join(problems), problems=problems)
            return ItemResult(index=index, status=422, outcome="refused", problem=problem)
        if isinstance(outcome, IdempotencyConflict):
            REJECTED.labels("http", "idempotency_conflict").inc()
            detail = masked_line(str(outcome))
            problem = Problem(error="idempotency_conflict", detail=detail, problems=[f"items.{index}.idempotency_key"])
            return ItemResult(index=index, status=409, outcome="refused", problem=problem)
        stored, created = outcome
        return ItemResult(
            index=index,
            status=202 if created else 200,
            outcome="accepted" if created else "duplicate",
            action_id=stored.action_id,
            state=stored.state.value,
        )

    async def refused_item(principal: str, index: int, item: Any, problems: list[str], *, excerpt: bool) -> None:
        """Record one refused item under the caller's identity: its digest and length, a masked excerpt."""
        # as the caller sent it, a lone surrogate included (no UTF-8 spells one: kept as its code unit)
        payload = json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")
        await record_refusal(
            source_topic="http:POST /v1/actions:batch",
            payload=payload,
            error=UndecodableMessage(
                "invalid_body", f"item {index} of a batch refused ({len(payload)} bytes) from {principal}"
            ),
            principal=principal,
            problems=tuple(problems),
            excerpt=excerpt,
        )

    async def visible_action(action_id: str, principal: Principal) -> Any:
        stored = await wired.parts.store.get(action_id) if id_in_path(action_id) else None
        # the requester and each person it acted for may read it, each in their own name
        # (``Principal.owns_one_of``); others learn nothing, not even that it exists
        if stored is None or not principal.owns_one_of(stored.principals):
            raise HTTPException(404, detail=f"no action {action_id} visible to {principal.id}")
        return stored

    @app.get(
        "/v1/actions/{action_id}",
        responses={
            401: {"description": "Missing or invalid token"},
            404: {"description": "Unknown action"},
            422: {"model": Problem, "description": "Invalid request"},
            503: UNAVAILABLE,
        },
    )
    async def get_action(action_id: str, authorization: str | None = Header(None)) -> dict[str, Any]:
        """The action's current state and its history."""
        return (await visible_action(action_id, authenticate(authorization))).view()

    @app.get(
        "/v1/actions/{action_id}/wait",
        responses={
            401: {"description": "Missing or invalid token"},
            404: {"description": "Unknown action"},
            422: {"model": Problem, "description": "Invalid timeout"},
            503: UNAVAILABLE,
        },
    )
    async def wait_for_action(
        action_id: str,
        timeout: float = Query(30.0, ge=0, le=300, allow_inf_nan=False),  # "nan" is no number of seconds
        authorization: str | None = Header(None),
    ) -> dict[str, Any]:
        """Returns when the action is terminal, or at the timeout with its current state."""
        principal = authenticate(authorization)
        stored = await visible_action(action_id, principal)
        if not stored.state.is_terminal:
            await wired.parts.follower.wait_terminal(action_id, timeout)
            stored = await visible_action(action_id, principal)
        return stored.view()

    @app.get("/.well-known/jwks.json")
    async def jwks() -> dict[str, Any]:
        """Public keys of the local development token issuer."""
        return wired.parts.jwks

    @app.get(
        "/v1/exports/{action_id}",
        response_class=FileResponse,
        responses={
            401: {"description": "Missing or invalid token"},
            404: {"description": "Unknown action, or one with no export"},
            410: {"description": "Already downloaded, or expired"},
        },
    )
    async def download_export(action_id: str, authorization: str | None = Header(None)) -> FileResponse:
        """The file a db.export wrote, once, to its requester (and whom it acts for); then it is deleted."""
        stored = await visible_action(action_id, authenticate(authorization))
        result = stored.result if isinstance(stored.result, dict) else {}
        file_format = result.get("format")
        if stored.action != "db.export" or "download" not in result or file_format not in CONTENT_TYPES:
            raise HTTPException(404, detail=f"action {action_id} has no export to download")
        store = wired.parts.exports
        taken = store.take(export_file_name(action_id, file_format)) if store is not None else None
        if taken is None:
            raise HTTPException(
                410, detail=f"the export of {action_id} was already downloaded or has expired: submit the export again"
            )
        if time.time() - taken.stat().st_mtime > wired.parts.export_ttl_s:
            taken.unlink(missing_ok=True)
            raise HTTPException(410, detail=f"the export of {action_id} expired unread and was deleted")
        log.info("export of %s taken for download; deleted once sent", action_id)
        return FileResponse(
            taken,
            media_type=CONTENT_TYPES[file_format],
            filename=f"{action_id}.{file_format}",
            background=BackgroundTask(taken.unlink, missing_ok=True),
        )

    @app.get("/.well-known/keyturn-receipt-keys.json")
    async def receipt_keys() -> dict[str, Any]:
        """The Ed25519 key approval receipts of external actions are signed with (JWKS, RFC 8037)."""
        return wired.parts.receipt_keys()

    @app.get("/healthz", responses={503: {"description": "The database or the producer is not answering"}})
    async def health(response: Response) -> dict[str, Any]:
        """ok when the database and the producer answer; 503 naming what does not."""
        checks = wired.parts.health
        results = await asyncio.gather(*(check() for check in checks.values()), return_exceptions=True)
        report = {
            name: "ok" if result is None else masked_line(f"down: {type(result).__name__}: {result}".rstrip(": "))
            for name, result in zip(checks, results, strict=False)
        }
        if any(value != "ok" for value in report.values()):
            response.status_code = 503
            return {"status": "unavailable", **report}
        return {"status": "ok", **report}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
