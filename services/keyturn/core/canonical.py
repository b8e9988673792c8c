"""Canonical JSON, the one spelling of a document wherever its bytes matter, and UTC instants.

Audit record hashes and payloads, payload and policy-input digests, sealed parameters and the
execution results all use :func:`canonical_json`, so its output for existing data never changes
(``tests/unit/test_canonical_json.py`` holds data written before and checks it still matches).
Pure: no I/O.
"""

from __future__ import annotations

import base64
import enum
import json
import uuid
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)

Millis = int | datetime
"""A UTC instant as integer milliseconds since the epoch, or a timezone-aware datetime."""


def to_millis(instant: Millis) -> int:
    """Integer UTC milliseconds for ``instant``; naive datetimes are refused as ambiguous."""
    if isinstance(instant, bool):
        raise TypeError("a timestamp must be integer milliseconds or an aware datetime, not a bool")
    if isinstance(instant, int):
        return instant
    if isinstance(instant, datetime):
        if instant.tzinfo is None or instant.utcoffset() is None:
            raise ValueError(f"timestamp {instant.isoformat()} has no timezone; pass an aware datetime (UTC)")
        return (instant - _EPOCH) // _ONE_MS
    raise TypeError(f"a timestamp must be integer milliseconds or an aware datetime, not {type(instant).__name__}")


def now_millis() -> int:
    """Now, as integer UTC milliseconds since the epoch."""
    return to_millis(datetime.now(UTC))


def from_millis(millis: int) -> datetime:
    """The aware UTC datetime for integer milliseconds since the epoch."""
    return _EPOCH + timedelta(milliseconds=millis)


def canonical_json(value: Any) -> str:
    """``value`` as canonical JSON text: sorted keys, no whitespace, non-ASCII kept as is.

    Beyond JSON's own types: aware datetimes become integer milliseconds (as Avro
    timestamp-millis), bytes become standard base64, UUIDs and Decimals their string form,
    enums their value, tuples and sets arrays (sets sorted). Mapping keys must be strings
    and floats finite; anything else is refused rather than guessed at.
    """
    return _CANONICAL.encode(_plain(value))


def canonical_json_of_plain(value: Any) -> str:
    """:func:`canonical_json` of a value already made of JSON types only (dicts with string keys,
    lists, strings, integers, finite floats, booleans, None): the same text, without the walk that
    converts other types; for hot paths such as audit record hashes."""
    return _CANONICAL.encode(value)


class CanonicalJson(str):
    """Text already in the canonical spelling (made by :func:`canonical_json` or
    :func:`canonical_json_of_plain`): a consumer that canonicalises what it is given (the audit
    chain's payloads) takes it as it is, without parsing and writing it again."""

    __slots__ = ()


_JSON_SCALARS = frozenset({str, int, float, bool, type(None)})


def _plain(value: Any) -> Any:
    kind = type(value)
    if kind in _JSON_SCALARS:  # the common case first: exact JSON types need no conversion
        return value
    if kind is list:
        return [_plain(item) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        if isinstance(value, enum.Enum):
            return _plain(value.value)
        return value
    if isinstance(value, Mapping):
        plain = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"key {key!r} is a {type(key).__name__}; keys must be strings")
            plain[key] = _plain(item)
        return plain
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_plain(item) for item in value), key=canonical_json)
    if isinstance(value, datetime):
        return to_millis(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, (uuid.UUID, Decimal)):
        return str(value)
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    raise TypeError(
        f"a value of type {type(value).__name__} has no canonical JSON form; convert it to JSON types first"
    )
