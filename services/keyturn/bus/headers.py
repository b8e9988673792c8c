"""What an event is, in its Kafka headers, so a consumer can skip what it has no part in
without decoding it (an ``ActionDecided`` is over a kilobyte of Avro, read by four groups).

The headers repeat what the Avro body says; the body stays the record of truth and no schema
changes. A record without them (an older producer, a tool) is decoded and handled as before:
a consumer skips a record only when its headers positively say it has no part in it, and only
when the record's own writer-schema fingerprint names the type its headers name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from keyturn.bus.codec import HEADER_SIZE, MAGIC, registry
from keyturn.core.events import ActionDecided, ActionExecuted, ApprovalResolved, ExecutionOutcome

Headers = list[tuple[str, bytes]]

TYPE = "keyturn-type"  # the event's record name (ActionDecided, ...)
OUTCOME = "keyturn-outcome"  # its outcome, for the events that have one
CALLBACK = "keyturn-callback"  # "1" when the action's requester asked for a webhook
BREAK_GLASS = "keyturn-break-glass"  # "1" for a break-glass decision

_YES, _NO = b"1", b"0"


def headers_of(event: Any, *, callback: bool | None = None) -> Headers:
    """The headers of ``event``; ``callback`` says whether its action has a webhook when the
    event does not carry the request (an ``ActionExecuted``), None when unknown."""
    headers: Headers = [(TYPE, type(event).__name__.encode())]
    outcome = getattr(event, "outcome", None)
    if outcome is not None:
        headers.append((OUTCOME, str(outcome.value).encode()))
    if isinstance(event, ActionDecided):
        callback = bool(event.request.callback_url)
        headers.append((BREAK_GLASS, _YES if event.break_glass else _NO))
    elif isinstance(event, ApprovalResolved):
        callback = bool(event.decision.request.callback_url)
    if callback is not None and isinstance(event, ActionDecided | ApprovalResolved | ActionExecuted):
        headers.append((CALLBACK, _YES if callback else _NO))
    return headers


def executed_headers(outcome: ExecutionOutcome, *, callback: bool) -> Headers:
    """``headers_of`` an ``ActionExecuted`` of ``outcome``, without the event: the executor holds
    each outcome beside the encoded event it was recorded with, and decoding that event again
    only for its headers cost more than the headers are worth."""
    return [
        (TYPE, ActionExecuted.__name__.encode()),
        (OUTCOME, outcome.value.encode()),
        (CALLBACK, _YES if callback else _NO),
    ]


def type_headers(value: bytes) -> Headers:
    """The headers of already-encoded bytes (from an outbox): the type only, read from the writer schema."""
    writer = registry().writers.get(bytes(value[2:HEADER_SIZE])) if value[:2] == MAGIC else None
    return [(TYPE, writer.name.encode())] if writer is not None else []


def read(message: Any) -> Mapping[str, bytes] | None:
    """The Keyturn headers of a consumed record that carries them and whose body's writer
    schema is of the type they name; None otherwise (then only decoding tells)."""
    raw = getattr(message, "headers", None)
    if not raw:
        return None
    pairs = raw.items() if isinstance(raw, Mapping) else raw
    found = {key: bytes(value) for key, value in pairs if isinstance(key, str) and key.startswith("keyturn-")}
    named = found.get(TYPE)
    value = message.value or b""
    writer = registry().writers.get(bytes(value[2:HEADER_SIZE])) if value[:2] == MAGIC else None
    if named is None or writer is None or writer.name.encode() != named:
        return None
    return found


Wants = Callable[[Any], bool]


def wanting(rules: Mapping[str, Callable[[Mapping[str, bytes]], bool]]) -> Wants:
    """A consumer's filter: per event type, whether it wants a record from its headers. A type
    not named is wanted; a record without (matching) headers is wanted (decode and see)."""

    def wants(message: Any) -> bool:
        headers = read(message)
        if headers is None:
            return True
        rule = rules.get(headers[TYPE].decode())
        return True if rule is None else rule(headers)

    return wants


def outcome_in(*outcomes: str) -> Callable[[Mapping[str, bytes]], bool]:
    """Wanted when the outcome header is one of ``outcomes`` (or missing)."""
    accepted = {o.encode() for o in outcomes}
    return lambda headers: OUTCOME not in headers or headers[OUTCOME] in accepted


def any_of(*rules: Callable[[Mapping[str, bytes]], bool]) -> Callable[[Mapping[str, bytes]], bool]:
    return lambda headers: any(rule(headers) for rule in rules)


def flag(name: str) -> Callable[[Mapping[str, bytes]], bool]:
    """Wanted when the flag header says yes (or is missing: an older producer did not say)."""
    return lambda headers: headers.get(name, _YES) == _YES
