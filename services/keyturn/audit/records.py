"""What the audit chain stores of each event: who caused it, when, and the event without secrets."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from keyturn.bus.codec import registry
from keyturn.core.audit.record import FLAG_BREAK_GLASS, FLAG_MANDATORY_REVIEW, FLAG_VOTE_REFUSED
from keyturn.core.canonical import (
    CanonicalJson,
    canonical_json_converting,
    canonical_json_of_plain,
)
from keyturn.core.records import to_record

_TIME_FIELDS = ("requested_at", "decided_at", "recorded_at", "resolved_at", "finished_at", "failed_at")


def audit_payload(event: Any) -> Any:
    """The event as JSON-able data; bytes (sealed parameters, dead-letter payloads) become digests."""
    return AuditedEvent.of(event).payload


_SCALARS = frozenset({str, int, bool, type(None)})


def _without_bytes(value: Any, floats: list[float] | None = None) -> Any:
    """A decoded record as JSON types only: bytes become their digest and length, times ISO text;
    every float met is added to ``floats`` (``payload_json`` chooses its writer by it)."""
    kind = type(value)
    if kind in _SCALARS:  # most values: one look-up before any isinstance check
        return value
    if kind is float:
        if floats is not None:
            floats.append(value)
        return value
    if isinstance(value, dict):
        return {k: _without_bytes(v, floats) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_bytes(v, floats) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return _digest(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _digest(value: bytes | bytearray) -> dict[str, Any]:
    return {"sha256": hashlib.sha256(value).hexdigest(), "length": len(value)}


def _bytes_digested(value: Any) -> Any:
    """orjson's ``default`` for a payload: bytes become their digest, as ``_without_bytes`` makes
    them; anything else is refused (and the payload takes the walk)."""
    if isinstance(value, (bytes, bytearray)):
        return _digest(value)
    raise TypeError(type(value).__name__)


#: The logical types a record may hold for its payload to be written straight from it: aware
#: timestamps, which orjson writes as ``datetime.isoformat`` does.
_WRITTEN_AS_PAYLOAD = frozenset({"timestamp-millis"})

#: A step into every element of an array or every value of a map, in a float's path.
_EACH = object()


@dataclass(frozen=True)
class _Shape:
    """What the payload writer needs to know of a record type, from its current schema (every
    record is read into it): whether it holds a logical type orjson would spell otherwise than
    the walk (anything but timestamps), and where a float can be (orjson spells some floats
    otherwise, and NaN as null), as paths of field names and ``_EACH``."""

    other_logical_types: bool
    float_paths: tuple[tuple[Any, ...], ...]

    def written_straight(self, record: dict[str, Any]) -> bool:
        """Whether ``record`` can be written by orjson with no walk: no float in it."""
        return not self.other_logical_types and not any(_float_at(record, path) for path in self.float_paths)


@cache
def _shape(name: str) -> _Shape:
    schema = registry().readers.get(name)
    if schema is None:
        return _Shape(other_logical_types=True, float_paths=())
    paths: list[tuple[Any, ...]] = []
    logical: set[str] = set()
    _walk_schema(schema, (), {}, paths, logical, frozenset())
    return _Shape(bool(logical - _WRITTEN_AS_PAYLOAD), tuple(paths))


def _walk_schema(
    node: Any,
    path: tuple[Any, ...],
    named: dict[str, Any],
    paths: list[tuple[Any, ...]],
    logical: set[str],
    inside: frozenset[str],
) -> None:
    """Note every path to a float in ``node`` and every logical type it holds; ``named`` maps the
    named types defined so far (a later mention is by name), ``inside`` the records being
    walked (a recursive type is walked once per path)."""
    if isinstance(node, list):  # a union: any branch
        for branch in node:
            _walk_schema(branch, path, named, paths, logical, inside)
        return
    if isinstance(node, str):
        if node in ("double", "float"):
            paths.append(path)
        elif node in named or f"keyturn.{node}" in named:
            _walk_schema(named.get(node, named.get(f"keyturn.{node}")), path, named, paths, logical, inside)
        return
    if not isinstance(node, dict):
        return
    if "logicalType" in node:
        logical.add(node["logicalType"])
    kind = node.get("type")
    if kind in ("record", "enum", "fixed") and "name" in node:
        full = node["name"] if "." in node["name"] else f"{node.get('namespace', 'keyturn')}.{node['name']}"
        named.setdefault(full, node)
        if kind == "record" and full not in inside:
            for field in node.get("fields", ()):
                _walk_schema(field["type"], (*path, field["name"]), named, paths, logical, inside | {full})
        return
    if kind == "array":
        _walk_schema(node.get("items"), (*path, _EACH), named, paths, logical, inside)
    elif kind == "map":
        _walk_schema(node.get("values"), (*path, _EACH), named, paths, logical, inside)
    else:
        _walk_schema(kind, path, named, paths, logical, inside)


def _float_at(value: Any, path: tuple[Any, ...]) -> bool:
    """Whether a float sits at ``path`` in a decoded record (a union's null ends the path)."""
    if not path:
        return isinstance(value, float)
    step, rest = path[0], path[1:]
    if step is _EACH:
        items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        return any(_float_at(item, rest) for item in items)
    return isinstance(value, dict) and step in value and _float_at(value[step], rest)


def actor_of(event: Any) -> str | None:
    """The principal or service that caused the event (the rule is ``AuditedEvent.actor``)."""
    return AuditedEvent.of(event).actor


def occurred_at(event: Any) -> datetime:
    return AuditedEvent.of(event).occurred_at


def flags_of(event: Any) -> tuple[str, ...]:
    """Marks analysts filter on (the rule is ``AuditedEvent.flags``)."""
    return AuditedEvent.of(event).flags


@dataclass(frozen=True, slots=True)
class AuditedEvent:
    """An event as the audit chains it, read straight from its decoded Avro record.

    The audit used to build the event's dataclass and turn it back into the same record for the
    payload; it was a fifth of the audit process's CPU, and the audit's CPU per record caps every
    deployment (``bench/README.md``, cost model). The rules (who caused an event, when, its flags)
    are here once; ``actor_of``, ``occurred_at``, ``flags_of`` and ``audit_payload`` apply them to
    a dataclass through ``of``. ``tests/unit/test_audit_records.py`` checks that a decoded record
    and its dataclass give the same, for random records of every event type.
    """

    name: str
    record: dict[str, Any]

    @classmethod
    def of(cls, event: Any) -> AuditedEvent:
        """An event dataclass as the audit chains it."""
        return cls(type(event).__name__, to_record(event))

    @property
    def event_id(self) -> str:
        return str(self.record["event_id"])

    @property
    def action_id(self) -> str | None:
        return self.record.get("action_id")

    @property
    def payload(self) -> Any:
        return _without_bytes(self.record)

    @property
    def payload_json(self) -> CanonicalJson:
        """``payload`` in its canonical spelling. It holds JSON types only (a decoded Avro record:
        string keys; bytes and times converted above), so the general conversion walk of
        ``canonical_json`` is left out; the text is the same (``tests/unit/test_audit_records.py``).
        A record whose type holds no float is written straight from the decoded record by orjson
        (bytes digested by its ``default``), with no walk: the audit's largest cost per record.
        Any other takes the walk, and a payload it shows holds no float still the faster writer."""
        if _shape(self.name).written_straight(self.record):
            try:
                return CanonicalJson(canonical_json_converting(self.record, _bytes_digested))
            except TypeError:  # something orjson and the digest do not write: the walk decides
                pass
        floats: list[float] = []
        payload = _without_bytes(self.record, floats)
        return CanonicalJson(canonical_json_of_plain(payload, holds_floats=bool(floats)))

    @property
    def occurred_at(self) -> datetime:
        for name in _TIME_FIELDS:
            if (at := self.record.get(name)) is not None:
                return at
        raise TypeError(f"{self.name} carries no time")

    @property
    def actor(self) -> str | None:
        record, name = self.record, self.name
        if name == "ActionRequested":
            return record["requester"]["id"]
        if name == "ActionDecided":
            return "service:policy"
        if name == "VoteRecorded":
            return record["vote"]["approver"]["id"]
        if name == "ApprovalResolved":
            return record["votes"][-1]["approver"]["id"] if record["votes"] else "service:approval"
        if name == "ActionExecuted":
            return f"service:executor{':' + record['executor'] if record.get('executor') else ''}"
        if name == "DeadLetter":
            return f"service:{record['service']}"
        return None

    @property
    def flags(self) -> tuple[str, ...]:
        if self.name == "ActionDecided" and self.record.get("break_glass"):
            return (FLAG_BREAK_GLASS, FLAG_MANDATORY_REVIEW)
        if self.name == "VoteRecorded" and not self.record.get("accepted"):
            return (FLAG_VOTE_REFUSED,)
        return ()
