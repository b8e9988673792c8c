"""``Keyturn`` and ``AsyncKeyturn``: the intake's HTTP API for an agent, on httpx.

Both share ``_Protocol`` (what to send, what an answer means, whether to try again) and differ
only in how they wait: a blocking client for scripts and threads, an asyncio one for agents
that already run an event loop.

Retries are our own loop rather than httpx's transport retries (those cover only failed
connects) or a retry library: a retry here must reuse the first attempt's idempotency key and
honour the Problem answer's Retry-After, and that is all the loop does.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import os
import random
import re
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from keyturn.sdk import errors
from keyturn.sdk.models import Action, Submitted

__all__ = ["DEFAULT_TIMEOUT", "AsyncKeyturn", "Keyturn", "configure", "default_client"]

log = logging.getLogger("keyturn.sdk")
VERSION = "0.1.0"
DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
LONG_POLL_S = 50.0  # one wait request's server-side timeout: under the idle limit of most proxies
RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
F = TypeVar("F", bound=Callable[..., Any])
# A bearer token as a header can carry it: visible ASCII only (RFC 9110 field-vchar, no space: RFC 6750's
# b64token is narrower still). Anything else makes httpx raise an error that quotes the whole header.
_HEADER_TOKEN = re.compile(r"[\x21-\x7e]*")  # empty: sent, and refused by the intake (401)


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    json: dict[str, Any] | None = None
    params: dict[str, Any] | None = None
    read_timeout: float | None = None  # longer than the default for a long poll


class _Protocol:
    """What both clients share: requests, answers, retry decisions. No I/O."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None,
        token_provider: Callable[[], Any] | None,
        timeout: float | httpx.Timeout,
        retries: int,
        backoff_s: float,
        max_retry_after_s: float,
        max_outage_s: float = 120.0,
    ) -> None:
        if (token is None) == (token_provider is None):
            raise ValueError("give exactly one of token= (a bearer token) or token_provider= (a callable)")
        if retries < 0:
            raise ValueError("retries must be 0 or more")
        self.url = url.rstrip("/")
        self.token = token
        self.token_provider = token_provider
        self.timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_retry_after_s = max_retry_after_s
        self.max_outage_s = max_outage_s

    def headers(self, token: str) -> dict[str, str]:
        """The request's headers; a token no header may carry is refused here, before httpx (whose
        errors quote the header's value) ever sees it: a caller's mistake, not an outage to retry."""
        if not _HEADER_TOKEN.fullmatch(token):
            raise errors.InvalidRequest(
                "the token holds characters no header may carry (a line break, a space, a non-ASCII "
                "character); the request was not sent"
            )
        return {"Authorization": f"Bearer {token}", "User-Agent": f"keyturn-sdk/{VERSION}"}

    def timeout_for(self, request: _Request) -> httpx.Timeout:
        if request.read_timeout is None:
            return self.timeout
        return httpx.Timeout(
            connect=self.timeout.connect,
            read=request.read_timeout,
            write=self.timeout.write,
            pool=self.timeout.pool,
        )

    @staticmethod
    def submission(
        action: str,
        resource: str,
        parameters: Mapping[str, Any] | None,
        reason: str,
        idempotency_key: str | None,
        callback_url: str | None,
    ) -> tuple[_Request, str]:
        # every submission carries a key, so a retry after a lost answer can only find the same action
        key = idempotency_key or f"sdk-{uuid.uuid4()}"
        body: dict[str, Any] = {
            "action": action,
            "resource": resource,
            "parameters": dict(parameters or {}),
            "reason": reason,
            "idempotency_key": key,
        }
        if callback_url is not None:
            body["callback_url"] = callback_url
        return _Request("POST", "/v1/actions", json=body), key

    @staticmethod
    def status(action_id: str) -> _Request:
        return _Request("GET", f"/v1/actions/{path_segment(action_id)}")

    @staticmethod
    def long_poll(action_id: str, seconds: float) -> _Request:
        seconds = max(0.0, min(seconds, LONG_POLL_S))
        return _Request(
            "GET",
            f"/v1/actions/{path_segment(action_id)}/wait",
            params={"timeout": round(seconds, 3)},
            read_timeout=seconds + 15.0,  # the server answers at its timeout; give it room
        )

    def retry_delay(self, attempt: int, failure: errors.RequestError) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or None to give up and raise ``failure``."""
        if not isinstance(failure, errors.Unavailable) or attempt >= self.retries:
            return None
        if failure.retry_after is not None:
            # the server said when: honour it, unless it is longer than the caller will sit blocked
            return failure.retry_after if failure.retry_after <= self.max_retry_after_s else None
        exponential = self.backoff_s * (2**attempt)
        return min(exponential, 10.0) * random.uniform(0.5, 1.0)  # jitter: many agents, one outage

    def outage_pause(self, failure: errors.Unavailable, outage_began: float, deadline: float) -> float | None:
        """While waiting: seconds to pause before asking again after ``failure`` (each request's own retries
        already spent), or None to give up. Waiting only reads, so a restart of the intake or an outage of
        its database is sat out, for at most ``max_outage_s`` in a row and never past the wait's deadline."""
        now = time.monotonic()
        if now - outage_began >= self.max_outage_s or now >= deadline:
            return None
        pause = failure.retry_after if failure.retry_after is not None else 2.0
        return max(0.1, min(pause, deadline - now, self.max_outage_s - (now - outage_began)))

    @staticmethod
    def transport_failure(exc: httpx.TransportError, request: _Request) -> tuple[errors.RequestError, Exception | None]:
        """The error a transport failure means, and the cause to chain to it (None: not chained).

        A local protocol error is a request this client built wrong (a header value no header may
        carry): not retried, and never chained, since its message quotes the header, token included."""
        if isinstance(exc, httpx.LocalProtocolError):
            detail = f"Keyturn's request {request.method} {request.path} could not be built: a header holds "
            return errors.InvalidRequest(detail + "characters no header may carry; it was not sent"), None
        where = f"{request.method} {request.path}"
        return errors.Unavailable(f"no answer from Keyturn for {where}: {type(exc).__name__}"), exc

    @staticmethod
    def answer(response: httpx.Response) -> Any:
        """The answer's JSON body, or the typed error its status means."""
        if response.status_code < 400:
            try:
                return response.json()
            except ValueError as exc:
                raise errors.Unavailable(
                    f"Keyturn answered {response.status_code} with a body that is not JSON", status=response.status_code
                ) from exc
        raise problem_error(response)


def problem_error(response: httpx.Response) -> errors.RequestError:
    """The exception a refused answer means, from its Problem body (RFC 9457 ``type``/``title``/``detail``,
    or the intake's ``error``/``detail``/``problems``)."""
    problem: dict[str, Any] = {}
    try:
        body = response.json()
        if isinstance(body, dict):
            problem = body
    except ValueError:
        pass
    detail = problem.get("detail") or problem.get("title")
    if isinstance(detail, list):  # a framework's own validation answer: a list of errors
        detail = "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail)
    status = response.status_code
    detail = str(detail) if detail else f"Keyturn answered {status} {response.reason_phrase}".rstrip()
    problems = [str(p) for p in problem.get("problems") or () if p]
    common: dict[str, Any] = {"status": status, "problem": problem, "problems": problems}
    if status in RETRYABLE_STATUS:
        return errors.Unavailable(detail, retry_after=retry_after(response), **common)
    if status == 401:
        return errors.AuthenticationFailed(detail, **common)
    if status == 404:
        return errors.NotFound(detail, **common)
    if status == 409:
        return errors.IdempotencyConflict(detail, **common)
    if status in (400, 413, 422, 431):
        return errors.InvalidRequest(detail, **common)
    return errors.RequestError(detail, **common)


def retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds (RFC 9110: delay-seconds or an HTTP date), or None."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _submitted(status: int, body: Any, key: str, *, first_answered: bool) -> Submitted:
    if not isinstance(body, dict) or not body.get("action_id") or not body.get("state"):
        raise errors.RequestError("Keyturn answered a submission without an action id", status=status)
    created = status == 202
    # not created, and answered at the first attempt: no attempt of this submission can have made it
    return Submitted(str(body["action_id"]), str(body["state"]), created, key, found=not created and first_answered)


def path_segment(action_id: str) -> str:
    """``action_id`` as one URL path segment, or ValueError. An id is printable text with no "/":
    a control character made the HTTP library raise instead of asking, and "?" or "#" cut the
    path short (``abc?x`` asked about ``abc``), so the rest is percent-encoded. The message does
    not repeat the id: it may be anything a caller pasted."""
    if not action_id or not action_id.isprintable() or "/" in action_id or action_id in (".", ".."):
        raise ValueError("not an action id: empty, or holding a slash or a control character")
    return quote(action_id, safe="")


def _deadline(timeout: float | None) -> float:
    return math.inf if timeout is None else time.monotonic() + timeout


class Keyturn:
    """A blocking client of the intake.

    >>> kt = Keyturn("http://127.0.0.1:8080", token=AGENT_TOKEN)
    >>> done = kt.run("sql.query", "postgres://staging/app", {"statement": "SELECT 1"}, reason="health check")
    >>> done.result

    ``token`` is a bearer token; ``token_provider`` a callable returning one, called for every
    request (so it may refresh) and once more after a 401. ``timeout`` bounds each request
    (seconds or an ``httpx.Timeout``); a request without an answer, or answered 502/503/504/429,
    is tried again up to ``retries`` times, waiting the server's Retry-After when it gives one
    (at most ``max_retry_after_s``) and an exponential backoff from ``backoff_s`` otherwise.
    ``wait`` (and ``run``) also sit out an outage of up to ``max_outage_s`` seconds in a row (an
    intake restarting, its database away): waiting only reads, so asking again is always safe.
    ``transport`` replaces httpx's (tests, proxies).
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        token_provider: Callable[[], str] | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retries: int = 4,
        backoff_s: float = 0.5,
        max_retry_after_s: float = 60.0,
        max_outage_s: float = 120.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._p = _Protocol(
            url,
            token=token,
            token_provider=token_provider,
            timeout=timeout,
            retries=retries,
            backoff_s=backoff_s,
            max_retry_after_s=max_retry_after_s,
            max_outage_s=max_outage_s,
        )
        self._http = httpx.Client(base_url=self._p.url, timeout=self._p.timeout, transport=transport)

    @property
    def url(self) -> str:
        return self._p.url

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Keyturn:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()

    def _token(self) -> str:
        if self._p.token is not None:
            return self._p.token
        assert self._p.token_provider is not None
        return str(self._p.token_provider())

    def _call(self, request: _Request, tries: list[int] | None = None) -> tuple[int, Any]:
        """(status, body) of ``request``, tried again as ``retry_delay`` says; ``tries``, when given, is
        told how many attempts went unanswered before the one that was answered."""
        attempt, refreshed = 0, False
        while True:
            try:
                response = self._http.request(
                    request.method,
                    request.path,
                    json=request.json,
                    params=request.params,
                    headers=self._p.headers(self._token()),
                    timeout=self._p.timeout_for(request),
                )
                if tries is not None:
                    tries.append(attempt)
                return response.status_code, self._p.answer(response)
            except httpx.TransportError as exc:
                failure, cause = self._p.transport_failure(exc, request)
            except errors.AuthenticationFailed:
                if self._p.token_provider is None or refreshed:
                    raise
                refreshed = True  # the provider's token may have expired meanwhile: ask it once more
                continue
            except errors.RequestError as exc:
                failure, cause = exc, exc
            delay = self._p.retry_delay(attempt, failure)
            if delay is None:
                if failure is cause or cause is None:
                    raise failure  # raised outside the except block: no implicit context either
                raise failure from cause
            log.info("%s %s: %s; trying again in %.1f s", request.method, request.path, failure, delay)
            time.sleep(delay)
            attempt += 1

    def submit(
        self,
        action: str,
        resource: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        reason: str,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
    ) -> Submitted:
        """Submit an action; returns at once with its id. Without ``idempotency_key`` the SDK makes one, so
        retries after a lost answer never create a second action; give your own to make repeated calls
        (after a crash, say) land on the same action."""
        request, key = _Protocol.submission(action, resource, parameters, reason, idempotency_key, callback_url)
        tries: list[int] = []
        status, body = self._call(request, tries)
        return _submitted(status, body, key, first_answered=tries == [0])

    def status(self, action_id: str) -> Action:
        """The action's current state, history and (masked) result."""
        return Action.from_json(self._call(_Protocol.status(action_id))[1])

    def wait(self, action_id: str, timeout: float | None = None) -> Action:
        """Block until the action is over (any terminal state, denied included) and return it; raise
        ``WaitTimeout`` (carrying where it stood) if it is not over after ``timeout`` seconds (None: no limit)."""
        deadline = _deadline(timeout)
        outage_began: float | None = None
        while True:
            remaining = deadline - time.monotonic()
            try:
                action = Action.from_json(self._call(_Protocol.long_poll(action_id, max(0.0, remaining)))[1])
            except errors.Unavailable as failure:
                outage_began = outage_began or time.monotonic()
                pause = self._p.outage_pause(failure, outage_began, deadline)
                if pause is None:
                    raise
                log.warning(
                    "waiting for %s: Keyturn is unavailable (%s); asking again in %.1f s", action_id, failure, pause
                )
                time.sleep(pause)
                continue
            outage_began = None
            if action.terminal:
                return action
            if time.monotonic() >= deadline:
                raise errors.WaitTimeout(f"{action.action} {action_id} is still {action.state}", action)

    def run(
        self,
        action: str,
        resource: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        reason: str,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
        timeout: float | None = None,
    ) -> Action:
        """Submit, wait for the end, and return the action when it ended approved (``succeeded``: its
        masked ``result``; ``approved_external``: its ``receipt``). Any other end raises its exception
        (``Denied``, ``ApprovalRefused``, ``Expired``, ``ExecutionFailed``, ``OutcomeUnknown``,
        ``UnexpectedState``); ``WaitTimeout`` if it is still running after ``timeout`` seconds."""
        submitted = self.submit(
            action, resource, parameters, reason=reason, idempotency_key=idempotency_key, callback_url=callback_url
        )
        return self.wait(submitted.action_id, timeout).raise_for_outcome()

    def guard(self, action: str, **options: Any) -> Callable[[F], F]:
        """Decorator: every call of the function becomes an action (see ``keyturn.sdk.guard``)."""
        from keyturn.sdk.guard import guard

        return guard(action, client=self, **options)


class AsyncKeyturn:
    """The asyncio twin of ``Keyturn``: the same arguments and methods, awaited. ``token_provider`` may
    be a plain or an async callable."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        token_provider: Callable[[], str | Awaitable[str]] | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retries: int = 4,
        backoff_s: float = 0.5,
        max_retry_after_s: float = 60.0,
        max_outage_s: float = 120.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._p = _Protocol(
            url,
            token=token,
            token_provider=token_provider,
            timeout=timeout,
            retries=retries,
            backoff_s=backoff_s,
            max_retry_after_s=max_retry_after_s,
            max_outage_s=max_outage_s,
        )
        self._http = httpx.AsyncClient(base_url=self._p.url, timeout=self._p.timeout, transport=transport)

    @property
    def url(self) -> str:
        return self._p.url

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncKeyturn:
        return self

    async def __aexit__(self, *_: Any) -> None:
        await self.aclose()

    async def _token(self) -> str:
        if self._p.token is not None:
            return self._p.token
        assert self._p.token_provider is not None
        token = self._p.token_provider()
        if inspect.isawaitable(token):
            token = await token
        return str(token)

    async def _call(self, request: _Request, tries: list[int] | None = None) -> tuple[int, Any]:
        """(status, body) of ``request``, tried again as ``retry_delay`` says; ``tries``, when given, is
        told how many attempts went unanswered before the one that was answered."""
        attempt, refreshed = 0, False
        while True:
            try:
                response = await self._http.request(
                    request.method,
                    request.path,
                    json=request.json,
                    params=request.params,
                    headers=self._p.headers(await self._token()),
                    timeout=self._p.timeout_for(request),
                )
                if tries is not None:
                    tries.append(attempt)
                return response.status_code, self._p.answer(response)
            except httpx.TransportError as exc:
                failure, cause = self._p.transport_failure(exc, request)
            except errors.AuthenticationFailed:
                if self._p.token_provider is None or refreshed:
                    raise
                refreshed = True
                continue
            except errors.RequestError as exc:
                failure, cause = exc, exc
            delay = self._p.retry_delay(attempt, failure)
            if delay is None:
                if failure is cause or cause is None:
                    raise failure  # raised outside the except block: no implicit context either
                raise failure from cause
            log.info("%s %s: %s; trying again in %.1f s", request.method, request.path, failure, delay)
            await asyncio.sleep(delay)
            attempt += 1

    async def submit(
        self,
        action: str,
        resource: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        reason: str,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
    ) -> Submitted:
        """See ``Keyturn.submit``."""
        request, key = _Protocol.submission(action, resource, parameters, reason, idempotency_key, callback_url)
        tries: list[int] = []
        status, body = await self._call(request, tries)
        return _submitted(status, body, key, first_answered=tries == [0])

    async def status(self, action_id: str) -> Action:
        """See ``Keyturn.status``."""
        return Action.from_json((await self._call(_Protocol.status(action_id)))[1])

    async def wait(self, action_id: str, timeout: float | None = None) -> Action:
        """See ``Keyturn.wait``."""
        deadline = _deadline(timeout)
        outage_began: float | None = None
        while True:
            remaining = deadline - time.monotonic()
            try:
                poll = _Protocol.long_poll(action_id, max(0.0, remaining))
                action = Action.from_json((await self._call(poll))[1])
            except errors.Unavailable as failure:
                outage_began = outage_began or time.monotonic()
                pause = self._p.outage_pause(failure, outage_began, deadline)
                if pause is None:
                    raise
                log.warning(
                    "waiting for %s: Keyturn is unavailable (%s); asking again in %.1f s", action_id, failure, pause
                )
                await asyncio.sleep(pause)
                continue
            outage_began = None
            if action.terminal:
                return action
            if time.monotonic() >= deadline:
                raise errors.WaitTimeout(f"{action.action} {action_id} is still {action.state}", action)

    async def run(
        self,
        action: str,
        resource: str,
        parameters: Mapping[str, Any] | None = None,
        *,
        reason: str,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
        timeout: float | None = None,
    ) -> Action:
        """See ``Keyturn.run``."""
        submitted = await self.submit(
            action, resource, parameters, reason=reason, idempotency_key=idempotency_key, callback_url=callback_url
        )
        return (await self.wait(submitted.action_id, timeout)).raise_for_outcome()

    def guard(self, action: str, **options: Any) -> Callable[[F], F]:
        """Decorator for async functions: every call becomes an action (see ``keyturn.sdk.guard``)."""
        from keyturn.sdk.guard import guard

        return guard(action, client=self, **options)


_default: Keyturn | None = None
_default_lock = threading.Lock()


def configure(url: str | None = None, **options: Any) -> Keyturn:
    """Set the client ``keyturn.sdk.guard`` uses when none is given: ``Keyturn(url, **options)``. Without a
    ``url``, ``KEYTURN_INTAKE_URL`` (default http://127.0.0.1:8080); without ``token``/``token_provider``,
    the ``KEYTURN_TOKEN`` of the environment at each request."""
    global _default
    options.setdefault("token_provider", None if "token" in options else _token_from_environment)
    client = Keyturn(url or os.environ.get("KEYTURN_INTAKE_URL", "http://127.0.0.1:8080"), **options)
    with _default_lock:
        previous, _default = _default, client
    if previous is not None:
        previous.close()
    return client


def default_client() -> Keyturn:
    """The client ``configure`` set, or one made from the environment on first use."""
    with _default_lock:
        current = _default
    return current if current is not None else configure()


def _token_from_environment() -> str:
    token = os.environ.get("KEYTURN_TOKEN")
    if not token:
        raise errors.AuthenticationFailed("no token: set KEYTURN_TOKEN or call keyturn.sdk.configure(token=...)")
    return token
