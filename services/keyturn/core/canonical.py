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
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson

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
    floats: list[float] = []
    plain = _plain(value, floats.append)
    return canonical_json_of_plain(plain, holds_floats=bool(floats))


def canonical_json_of_plain(value: Any, *, holds_floats: bool = True) -> str:
    """:func:`canonical_json` of a value already made of JSON types only (dicts with string keys,
    lists, strings, integers, finite floats, booleans, None): the same text, without the walk that
    converts other types. A caller whose walk saw no float says so (``holds_floats=False``) and
    the faster writer spells it (:func:`canonical_json_without_floats`)."""
    return _CANONICAL.encode(value) if holds_floats else canonical_json_without_floats(value)


_SORTED = orjson.OPT_SORT_KEYS


def canonical_json_without_floats(value: Any) -> str:
    """:func:`canonical_json_of_plain` of a value its caller knows holds no float (an audit
    record's fields; a payload whose walk saw none): the same text, written by orjson, five to
    seven times faster than the standard library's encoder (``tests/unit/test_canonical_json.py``
    checks the two agree).

    Why only without floats: orjson spells some floats differently (``0.00001`` for ``1e-05``)
    and writes NaN as ``null`` where the canonical form refuses it; for strings (the same escapes,
    non-ASCII as itself), integers, booleans, null and keys sorted by code point the two write the
    same bytes. What orjson refuses (integers past 64 bits, lone surrogates, keys that are not
    strings) is handed to the standard library's encoder, which writes or refuses it as before.
    """
    try:
        return orjson.dumps(value, option=_SORTED).decode()
    except orjson.JSONEncodeError:
        return _CANONICAL.encode(value)


def canonical_json_converting(value: Any, convert: Callable[[Any], Any]) -> str:
    """:func:`canonical_json_without_floats` of ``value`` with what JSON has no type for made
    JSON by ``convert`` (orjson's ``default``: called for bytes and any other type orjson does
    not write itself), and aware datetimes written as ``datetime.isoformat`` writes them. The
    caller knows ``value`` holds no float and no type orjson writes in a spelling of its own
    (UUIDs, dates, enums, dataclasses). Raises ``TypeError`` for what neither writes."""
    return orjson.dumps(value, default=convert, option=_SORTED).decode()


class CanonicalJson(str):
    """Text already in the canonical spelling (made by :func:`canonical_json` or
    :func:`canonical_json_of_plain`): a consumer that canonicalises what it is given (the audit
    chain's payloads) takes it as it is, without parsing and writing it again."""

    __slots__ = ()


_NOT_FLOAT_SCALARS = frozenset({str, int, bool, type(None)})


def _plain(value: Any, saw_float: Callable[[float], None]) -> Any:
    """``value`` as JSON types; ``saw_float`` is told of every float met (``canonical_json``
    chooses its writer by it)."""
    kind = type(value)
    if kind in _NOT_FLOAT_SCALARS:  # the common case first: exact JSON types need no conversion
        return value
    if kind is list:
        return [_plain(item, saw_float) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        if isinstance(value, enum.Enum):
            return _plain(value.value, saw_float)
        if isinstance(value, float):
            saw_float(value)
        return value
    if isinstance(value, Mapping):
        plain = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"key {key!r} is a {type(key).__name__}; keys must be strings")
            plain[key] = _plain(item, saw_float)
        return plain
    if isinstance(value, (list, tuple)):
        return [_plain(item, saw_float) for item in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_plain(item, saw_float) for item in value), key=canonical_json)
    if isinstance(value, datetime):
        return to_millis(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, (uuid.UUID, Decimal)):
        return str(value)
    if isinstance(value, enum.Enum):
        return _plain(value.value, saw_float)
    raise TypeError(
        f"a value of type {type(value).__name__} has no canonical JSON form; convert it to JSON types first"
    )
