"""HTTP serving shared by the intake and the approval service: a uvicorn server that lives inside
a faust worker's event loop (the worker owns signals and shutdown), and the bounds every request
meets before an app reads it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any

import h11
import uvicorn
from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.h11_impl import H11Protocol

from keyturn.core.text import plausible_id
from keyturn.masking.protect import mask_text


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the faust worker it runs in."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def server_options(event_loop: str, *, access_log: bool = False) -> dict[str, Any]:
    """uvicorn's loop, HTTP parser and access log for every Keyturn server.

    The access log (``KEYTURN_ACCESS_LOG``) is off unless asked for: with one POST per action its
    line, masked like every line, cost an eighth of the intake's CPU.

    The loop is the process's (``KEYTURN_EVENT_LOOP``). The parser is h11 even where httptools is
    installed: h11 refuses a header block over 16 KiB while it reads it, where uvicorn's
    httptools protocol keeps every header line a client sends until the block ends, so a client
    that never ends it grows the process without bound (``BoundedRequests`` sees headers only
    once they are all read).
    """
    return {"loop": event_loop, "http": TimelyH11Protocol, "access_log": access_log}


REQUEST_READ_S = 15.0


class TimelyH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, with a limit on how long a request may take to arrive.

    uvicorn bounds only the wait between requests on a kept connection: a client that sends half
    a header block, or declares a body and sends a byte of it, held its connection (a socket, a
    task, buffers) for as long as it liked, and enough such clients hold every one a process
    may open. Here every request must arrive whole, headers and body, within ``REQUEST_READ_S``
    of its first byte (of the connection's start, for the first): else the connection is closed,
    as the keep-alive limit closes an idle one, and an app waiting for the body hears the
    client went away. Written here because uvicorn has no such setting for h11.
    """

    read_limit_s = REQUEST_READ_S

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._reading: asyncio.TimerHandle | None = None
        self._watch()

    def data_received(self, data: bytes) -> None:
        if self._reading is None and self.conn.their_state in (h11.IDLE, h11.SEND_BODY):
            self._watch()  # the first byte of the next request on a kept connection
        super().data_received(data)
        if self.conn.their_state not in (h11.IDLE, h11.SEND_BODY) or self.conn.our_state is h11.SEND_BODY:
            self._unwatch()  # the request is in (or answered before it was: a refusal at the edge)

    def connection_lost(self, exc: Exception | None) -> None:
        self._unwatch()
        super().connection_lost(exc)

    def _watch(self) -> None:
        self._unwatch()
        self._reading = self.loop.call_later(self.read_limit_s, self._too_slow)

    def _unwatch(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
            self._reading = None

    def _too_slow(self) -> None:
        self._reading = None
        if not self.transport.is_closing():
            self.transport.close()


def embedded_server(
    app, host: str, port: int, *, event_loop: str = "uvloop", access_log: bool = False
) -> EmbeddedServer:
    return EmbeddedServer(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="info" if access_log else "warning",  # uvicorn writes its access lines at INFO
            lifespan="off",
            **server_options(event_loop, access_log=access_log),
        )
    )


MAX_HEADER_COUNT = 100

Refused = Callable[[dict[str, Any], int, list[str], bytes], Awaitable[None]]
"""(ASGI scope, status, problems, the bytes received) → record or count the refusal."""


class BoundedRequests:
    """ASGI middleware: every request's headers and body are bounded before the app sees them.

    More than ``max_header_bytes`` of headers (or more than ``MAX_HEADER_COUNT`` of them) is
    answered 431; ``Authorization`` given twice, 400; a body whose ``Content-Length`` is over
    ``max_body_bytes`` is answered 413 before a byte of it is read; a body without one
    (chunked) is read up to the limit and answered 413 as soon as it passes it. Each answer is
    a Problem body, and ``on_refused`` hears of it with the bytes received (none, when the
    declared length was refused).

    The servers bound what they parse too (uvicorn's own header limits), but not bodies:
    a framework reads the whole body before any handler can look at it.
    """

    def __init__(
        self, app: Any, *, max_body_bytes: int, max_header_bytes: int, on_refused: Refused | None = None
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_header_bytes = max_header_bytes
        self.on_refused = on_refused

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers") or []
        size = sum(len(name) + len(value) for name, value in headers)
        if len(headers) > MAX_HEADER_COUNT or size > self.max_header_bytes:
            await self._refuse(
                scope,
                send,
                431,
                "headers_too_large",
                [
                    f"headers: {len(headers)} headers, {size} bytes; at most {MAX_HEADER_COUNT} headers "
                    f"and {self.max_header_bytes} bytes"
                ],
                b"",
            )
            return
        if sum(1 for name, _ in headers if name.lower() == b"authorization") > 1:
            # readers taking the first and the last (a proxy, this app) would see two callers; whose
            # refusal it is cannot be said either, so it is answered and recorded under neither
            await self._refuse(
                scope,
                send,
                400,
                "ambiguous_caller",
                ["headers: Authorization given more than once; send one caller's token per request"],
                b"",
                record=False,
            )
            return
        declared = _content_length(headers)
        if declared is not None and declared > self.max_body_bytes:
            await self._refuse(
                scope,
                send,
                413,
                "body_too_large",
                [f"body: {declared} bytes declared; the limit is {self.max_body_bytes} bytes, so it was not read"],
                b"",
            )
            return
        if declared is not None or scope.get("method") in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        body, complete = await _read_at_most(receive, self.max_body_bytes)
        if not complete:
            await self._refuse(
                scope,
                send,
                413,
                "body_too_large",
                [f"body: more than {self.max_body_bytes} bytes; the rest was not read"],
                body,
            )
            return
        await self.app(scope, _replay(body, receive), send)

    async def _refuse(
        self,
        scope: dict[str, Any],
        send: Any,
        status: int,
        error: str,
        problems: list[str],
        received: bytes,
        *,
        record: bool = True,
    ) -> None:
        if self.on_refused is not None and record:
            await self.on_refused(scope, status, problems, received)
        body = json.dumps({"error": error, "detail": "; ".join(problems), "problems": problems}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/problem+json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def id_in_path(text: str) -> bool:
    """Whether an id taken from a URL path could name something Keyturn stored: printable, not
    over long (``core.text.plausible_id``), and nothing masking would hide (Keyturn's ids are
    UUIDs). Any other is answered as an unknown id, without a statement, and never repeated on
    a page or in an answer: a link can carry whatever its maker put in it."""
    return plausible_id(text) and mask_text(text) == text


def shown_id(text: str) -> str:
    """``text`` when a page may repeat it as an action's id, else "": only Keyturn's own ids
    (UUIDs). Any printable text may name nothing and still be looked up (``id_in_path``), but a
    page that repeats it lets whoever made a link write its heading ("… IS APPROVED. Sign in
    again at …")."""
    try:
        return text if str(uuid.UUID(text)) == text.lower() else ""
    except ValueError:
        return ""


def route_of(scope: Any) -> str:
    """``METHOD /route/{template}`` of a request (an ASGI scope, or a request that has one): the
    route it matched, never the path it sent, which carries whatever the caller put in it (an
    id, a token pasted by mistake) into the refusal records, the audit and the logs that name
    it. A request refused before routing (a body over the bounds) or that matched no route is
    named by its path masked like any text."""
    scope = getattr(scope, "scope", scope)
    template = getattr(scope.get("route"), "path", None)
    if not isinstance(template, str):
        template = mask_text(" ".join(str(scope.get("path") or "").split())[:200])
    return f"{scope.get('method')} {template}"


def header(scope: dict[str, Any], name: str) -> str | None:
    """One request header from an ASGI scope (the first, if repeated)."""
    wanted = name.lower().encode()
    return next((v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == wanted), None)


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _read_at_most(receive: Any, limit: int) -> tuple[bytes, bool]:
    """(what was read, whether that is the whole body); stops reading once past ``limit``."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks), True
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"".join(chunks), False
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), True


def _replay(body: bytes, receive: Any) -> Any:
    sent = False

    async def replayed() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def received_body(request: Request) -> bytes:
    """The body a refused request sent, for its record; what arrived of it when the client went
    away before sending all of it (it is recorded all the same, as what it is: fewer bytes)."""
    try:
        return await request.body()
    except ClientDisconnect:
        return getattr(request, "_body", b"")


async def masked_http_error(request: Any, exc: Any) -> Any:
    """The framework's answer to an HTTP error, with its detail masked: a detail may quote what
    the caller sent (an id in the path, a claim of a refused token), and answers are written
    down by proxies and clients like any log."""
    from fastapi.exception_handlers import http_exception_handler

    from keyturn.bus.refusals import masked_line

    if isinstance(exc.detail, str):
        exc.detail = masked_line(exc.detail)
    return await http_exception_handler(request, exc)


#: What FastAPI answers (400) when a body cannot be read at all (``strict_json``: not UTF-8).
UNPARSEABLE_BODY = "There was an error parsing the body"


class RepeatedKey(json.JSONDecodeError):
    """An object that names the same key twice (the key is not repeated: it may be anything)."""


def _once_each(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        raise RepeatedKey("an object holds the same key twice", "", 0)
    return found


def strict_json(body: bytes | str) -> Any:
    """A request body read as RFC 8259 asks of JSON between systems: UTF-8 with no byte-order
    mark, and each object's keys named once. The ``json`` module would also guess UTF-16 and
    UTF-32 and keep the last of a repeated key, where another reader of the same bytes (a proxy,
    the agent's own log, a signature check) may keep the first: the action an approver is shown
    could then differ from the one that reader saw. Bytes that are not UTF-8 raise
    ``UnicodeDecodeError`` (FastAPI answers 400), the rest ``json.JSONDecodeError`` (422), JSON
    nested past what the parser reads included (named so, not "an error parsing the body")."""
    text = body.decode("utf-8") if isinstance(body, bytes) else body
    try:
        return json.loads(text, object_pairs_hook=_once_each)
    except RecursionError:
        raise json.JSONDecodeError("nested deeper than a body may be", text, 0) from None


class StrictJsonRequest(Request):
    """The request a route reads its JSON from; its body is the one Starlette made first (which
    the exception handlers are given), read once and kept there for both."""

    def __init__(self, first: Request) -> None:
        super().__init__(first.scope, first.receive)
        self._first = first

    async def body(self) -> bytes:
        return await self._first.body()

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = strict_json(await self.body())
        return self._json


class StrictJsonRoute(APIRoute):
    """Routes whose JSON bodies are read by ``strict_json`` (FastAPI's documented way to give a
    route its own request class: ``app.router.route_class = StrictJsonRoute`` before any route)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictJsonRequest(request))

        return strict
