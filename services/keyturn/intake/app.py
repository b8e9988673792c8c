"""Intake service: agents submit actions over HTTP or the submissions topic; requesters follow them.

routes    POST /v1/actions · GET /v1/actions/{id} · GET /v1/actions/{id}/wait · GET /.well-known/jwks.json
consumes  <ns>.submissions (ActionSubmitted + JWT header) · lifecycle topics (status of each action)
produces  <ns>.actions.requested · <ns>.dlq
state     intake_actions in PostgreSQL: idempotency keys, the outbox of accepted requests, status
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from fastapi import FastAPI, Header, HTTPException, Query, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

from keyturn.bus.codec import UndecodableMessage, registry
from keyturn.bus.http import BoundedRequests, header, masked_http_error
from keyturn.bus.publisher import Publisher
from keyturn.bus.refusals import MAX_PROBLEMS, masked_line, validation_problems
from keyturn.bus.topics import Topics
from keyturn.config import Settings
from keyturn.core.events import SubmissionChannel
from keyturn.core.principal import Principal
from keyturn.db import open_pool
from keyturn.faults import supervised, until_done
from keyturn.identity import InvalidToken, bearer_token, load_or_create_signing_key, verifier_from_settings
from keyturn.intake.status import StatusFollower
from keyturn.intake.store import DDL, ActionStore, StoreUnavailable
from keyturn.intake.submissions import ActionSubmission, IdempotencyConflict, Intake, submission_from_record
from keyturn.masking.protect import parameter_protector

log = logging.getLogger(__name__)


class Problem(BaseModel):
    """What a refused request is told: a code, a sentence, and each problem found."""

    error: str
    detail: str
    problems: list[str]

REJECTED = Counter("keyturn_intake_rejected_total", "Submissions refused at intake", ["channel", "reason"])
RETRY_AFTER_S = 2
UNAVAILABLE = {
    "model": Problem,
    "description": "The intake's database is not answering; nothing to fix in the request, try again after Retry-After seconds",
    "headers": {"Retry-After": {"description": "Seconds to wait before trying again", "schema": {"type": "integer"}}},
}


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    topics = Topics.from_settings(settings)
    state: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        pool = await open_pool(settings, DDL)
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True)
        await producer.start()

        async def send(topic: str, key: bytes, value: bytes) -> None:
            await producer.send_and_wait(topic, value, key=key)

        publisher = Publisher(send, topics, "intake")
        store = ActionStore(pool)
        intake = Intake(store, publisher, parameter_protector(settings))
        follower = StatusFollower(settings, store)
        state.update(store=store, intake=intake, publisher=publisher, follower=follower,
                     verifier=verifier_from_settings(settings.jwks_url or None, settings.jwks_path or None, settings.keys_dir, settings.jwt_issuer, settings.jwt_audience), jwks=load_or_create_signing_key(settings.keys_dir).jwks())
        tasks = [
            asyncio.create_task(follower.run(), name="status"),
            asyncio.create_task(supervised("submissions consumer", lambda: _consume_submissions(settings, topics, intake, publisher, state["verifier"])), name="submissions"),
            asyncio.create_task(supervised("outbox sweep", lambda: _republish_outbox(intake, store)), name="outbox"),
            asyncio.create_task(supervised("published marks", store.keep_marking), name="marks"),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            try:
                await store.flush_marks(patience_s=2.0)
            except Exception as exc:  # harmless: the next intake's sweep republishes them under the same event ids
                log.warning("published marks not recorded at shutdown: %s", exc)
            await producer.stop()
            await pool.close()

    app = FastAPI(
        title="Keyturn intake",
        version="0.1.0",
        description="Submit privileged actions on behalf of an agent and follow them to their outcome.",
        lifespan=lifespan,
    )

    def authenticate(authorization: str | None) -> Principal:
        try:
            return state["verifier"].verify(bearer_token(authorization))
        except InvalidToken as exc:
            REJECTED.labels("http", f"token_{exc.code}").inc()
            if exc.code == "jwks_unavailable":
                raise HTTPException(503, detail=f"cannot verify tokens right now: {exc}") from exc
            raise HTTPException(401, detail=f"invalid token ({exc.code}): {exc}", headers={"WWW-Authenticate": "Bearer"}) from exc

    async def refuse(request: Request, status: int, error: str, problems: list[str]) -> JSONResponse:
        """Answer a bad request with what is wrong, and record it under the caller's identity.

        The caller is authenticated first: without a valid token the answer is 401 and nothing
        is written anywhere but a counter. The record holds no byte of the body (``bus.refusals``).
        """
        try:
            principal = authenticate(request.headers.get("authorization"))
        except HTTPException as unauthenticated:  # raised out of a handler it would become a 500
            return await http_exception_handler(request, unauthenticated)
        problems = [masked_line(p) for p in problems[:MAX_PROBLEMS]]
        REJECTED.labels("http", error).inc()
        body = await request.body()
        await state["publisher"].dead_letter(
            source_topic=f"http:{request.method} {request.url.path}", partition=-1, offset=-1, key=None, payload=body,
            error=UndecodableMessage(error, f"{request.method} {request.url.path} refused {len(body)} bytes from {principal.id}"),
            principal=principal.id, problems=tuple(problems), excerpt=True,
        )
        return JSONResponse(status_code=status, content=Problem(error="invalid_request", detail="; ".join(problems), problems=problems).model_dump())

    async def refused_at_the_edge(scope: dict[str, Any], status: int, problems: list[str], received: bytes) -> None:
        """A body or headers over the bounds: recorded (size and digest) for a verified caller only."""
        REJECTED.labels("http", f"http_{status}").inc()
        try:
            principal = state["verifier"].verify(bearer_token(header(scope, "authorization")))
        except InvalidToken:
            return
        await state["publisher"].dead_letter(
            source_topic=f"http:{scope.get('method')} {scope.get('path')}", partition=-1, offset=-1, key=None, payload=received,
            error=UndecodableMessage("body_too_large" if status == 413 else "headers_too_large", "; ".join(problems)),
            principal=principal.id, problems=tuple(problems),
        )

    app.add_middleware(BoundedRequests, max_body_bytes=settings.max_body_bytes, max_header_bytes=settings.max_header_bytes,
                       on_refused=refused_at_the_edge)

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
        log.warning("%s %s answered 503: %s", request.method, request.url.path, exc)
        detail = f"the intake cannot reach its database right now; try again in {RETRY_AFTER_S} s"
        if request.method == "POST":
            detail += " with the same idempotency key (a retry with it never creates a second action)"
        problem = Problem(error="unavailable", detail=detail, problems=["database: not answering"])
        return JSONResponse(status_code=503, content=problem.model_dump(), headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.post("/v1/actions", status_code=202, responses={200: {"description": "Same idempotency key: the existing action"}, 400: {"model": Problem, "description": "Body is not parseable JSON"}, 401: {"description": "Missing or invalid token"}, 409: {"description": "Idempotency key reused for a different request"}, 422: {"model": Problem, "description": "Invalid body"}, 503: UNAVAILABLE})
    async def submit_action(submission: ActionSubmission, response: Response, authorization: str | None = Header(None)) -> dict[str, str]:
        """Submit an action; 202 with its id, or 200 with the existing id for a repeated idempotency key."""
        principal = authenticate(authorization)
        try:
            stored, created = await state["intake"].submit(principal, submission, SubmissionChannel.HTTP)
        except IdempotencyConflict as exc:
            REJECTED.labels("http", "idempotency_conflict").inc()
            raise HTTPException(409, detail=str(exc)) from exc
        if not created:
            response.status_code = 200
        return {"action_id": stored.action_id, "state": stored.state.value}

    async def visible_action(action_id: str, principal: Principal) -> Any:
        stored = await state["store"].get(action_id)
        # the requester and everyone it acts for may read it; others learn nothing, not even that it exists
        if stored is None or not (principal.everyone & set(stored.principals)):
            raise HTTPException(404, detail=f"no action {action_id} visible to {principal.id}")
        return stored

    @app.get("/v1/actions/{action_id}", responses={401: {"description": "Missing or invalid token"}, 404: {"description": "Unknown action"}, 422: {"model": Problem, "description": "Invalid request"}, 503: UNAVAILABLE})
    async def get_action(action_id: str, authorization: str | None = Header(None)) -> dict[str, Any]:
        """The action's current state and its history."""
        return (await visible_action(action_id, authenticate(authorization))).view()

    @app.get("/v1/actions/{action_id}/wait", responses={401: {"description": "Missing or invalid token"}, 404: {"description": "Unknown action"}, 422: {"model": Problem, "description": "Invalid timeout"}, 503: UNAVAILABLE})
    async def wait_for_action(action_id: str, timeout: float = Query(30.0, ge=0, le=300), authorization: str | None = Header(None)) -> dict[str, Any]:
        """Returns when the action is terminal, or at the timeout with its current state."""
        principal = authenticate(authorization)
        stored = await visible_action(action_id, principal)
        if not stored.state.is_terminal:
            await state["follower"].wait_terminal(action_id, timeout)
            stored = await visible_action(action_id, principal)
        return stored.view()

    @app.get("/.well-known/jwks.json")
    async def jwks() -> dict[str, Any]:
        """Public keys of the local development token issuer."""
        return state["jwks"]

    @app.get("/healthz")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


async def _consume_submissions(settings: Settings, topics: Topics, intake: Intake, publisher: Publisher, verifier: Any) -> None:
    """Agents that publish instead of calling HTTP: same checks; failures go to the DLQ.

    A submission carries its parameters in clear (the agent's own channel in, like an HTTP
    body). Once accepted (masked, sealed, stored) or dead-lettered, and committed, it is deleted
    from the topic, so the clear copy lives only until the intake has taken it.
    """
    consumer = AIOKafkaConsumer(
        topics.submissions, bootstrap_servers=settings.kafka_bootstrap, group_id=f"{settings.namespace}-intake-submissions",
        enable_auto_commit=False, auto_offset_reset="earliest",
    )
    taken: dict[TopicPartition, int] = {}
    forgetting = asyncio.create_task(supervised("forgetting taken submissions", lambda: _forget_taken(settings, taken)))
    try:
        await consumer.start()
        async for message in consumer:
            await _accept_submission(message, intake, publisher, verifier)
            await consumer.commit()
            taken[TopicPartition(message.topic, message.partition)] = message.offset + 1
    finally:
        forgetting.cancel()
        await asyncio.gather(forgetting, return_exceptions=True)
        await consumer.stop()


async def _forget_taken(settings: Settings, taken: dict[TopicPartition, int], every_s: float = 2.0) -> None:
    """Delete committed submissions from the topic (the broker's DeleteRecords), every ``every_s``."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    forgotten: dict[TopicPartition, int] = {}
    try:
        while True:
            await asyncio.sleep(every_s)
            due = {tp: offset for tp, offset in list(taken.items()) if forgotten.get(tp) != offset}
            if due:
                await admin.delete_records({tp: RecordsToDelete(before_offset=offset) for tp, offset in due.items()})
                forgotten.update(due)
    finally:
        await admin.close()


async def _accept_submission(message: Any, intake: Intake, publisher: Publisher, verifier: Any) -> None:
    """Accept one submission or dead-letter it; a database outage is waited out, never dead-lettered.

    The message stays on the submissions topic (partition and offset point at it); the dead
    letter holds no byte of it, and names the sender only when its token was verified.
    """
    principal: Principal | None = None
    try:
        principal = verifier.verify(bearer_token(dict(message.headers).get("authorization", b"").decode() or None))
        name, record = registry().decode(message.value)
        if name != "ActionSubmitted":
            raise UndecodableMessage("unexpected_type", f"{name} does not belong on {message.topic}")
        submission = submission_from_record(record)
        await until_done(lambda: intake.submit(principal, submission, SubmissionChannel.TOPIC),
                         f"intake: accepting submission {message.topic}:{message.partition}:{message.offset}")
    except Exception as exc:  # every refusal is recorded, whatever its cause
        error = exc if isinstance(exc, UndecodableMessage) else UndecodableMessage(_error_type(exc), str(exc))
        REJECTED.labels("topic", error.error_type).inc()
        await publisher.dead_letter(
            source_topic=message.topic, partition=message.partition, offset=message.offset,
            key=message.key, payload=message.value or b"", error=error,
            principal=principal.id if principal else None, problems=tuple(getattr(exc, "problems", ())),
        )


def _error_type(exc: Exception) -> str:
    if isinstance(exc, InvalidToken):
        return f"token_{exc.code}"
    if isinstance(exc, IdempotencyConflict):
        return "idempotency_conflict"
    return "invalid_submission"


async def _republish_outbox(intake: Intake, store: ActionStore, every_s: float = 5.0) -> None:
    """Publish accepted requests a crash left unpublished (the outbox sweep)."""
    while True:
        await asyncio.sleep(every_s)
        try:
            for stored in await store.unpublished():
                await intake.publish_stored(stored)
        except StoreUnavailable as exc:
            log.warning("outbox sweep waits for the database; next try in %ss: %s", every_s, exc)
        except Exception:
            log.exception("outbox sweep failed; retrying in %ss", every_s)
