"""Convert between event dataclasses and the plain dicts fastavro reads and writes.

Written here rather than taken from a library because it is ~40 lines over our own frozen
dataclasses and the Avro-friendly types they use (str enums, tuples, aware datetimes, bytes);
the general-purpose converters we tried either need their own model base class or lose tuples.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from datetime import UTC, datetime
from enum import Enum
from functools import cache
from typing import Any, TypeVar

T = TypeVar("T")


def to_record(event: Any) -> Any:
    """A dataclass (recursively) as a dict of Avro-ready values."""
    return _conversion(event.__class__)(event)


@cache
def _conversion(cls: type) -> Callable[[Any], Any]:
    """How ``to_record`` turns an instance of ``cls``, chosen once per class: asking each value
    whether it is a dataclass was a third of ``to_record``'s time."""
    if dataclasses.is_dataclass(cls):
        return _writer(cls)
    if issubclass(cls, Enum):
        return _enum_value
    if issubclass(cls, (tuple, list)):
        return _items
    return _itself


def _enum_value(event: Enum) -> Any:
    return event.value


def _items(event: tuple[Any, ...] | list[Any]) -> list[Any]:
    return [to_record(item) for item in event]


def _itself(event: Any) -> Any:
    return event


# Every event crosses these two functions several times per action (each consumer decodes,
# each producer encodes), so each dataclass gets its conversion planned once: which fields
# need converting and how. Walking the type hints per call cost more than the Avro codec.

Convert = Callable[[Any], Any]


@cache
def _writer(cls: type) -> Callable[[Any], dict[str, Any]]:
    """``to_record`` for instances of ``cls``: plain fields copied, the others converted."""
    names = tuple(f.name for f in dataclasses.fields(cls))

    def write(event: Any) -> dict[str, Any]:
        out = {}
        for name in names:
            value = getattr(event, name)
            if value is None or value.__class__ in _PLAIN:
                out[name] = value
            else:
                out[name] = _conversion(value.__class__)(value)
        return out

    return write


_PLAIN = frozenset({str, int, float, bool, bytes, datetime})


@cache
def _hints(cls: Any) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@cache
def _reader(cls: type) -> Callable[[dict[str, Any]], Any]:
    """``from_record`` for ``cls``: one converter per field, planned from its type hint."""
    hints = _hints(cls)
    plan = tuple((f.name, _converter(hints[f.name])) for f in dataclasses.fields(cls))

    def read(record: dict[str, Any]) -> Any:
        kwargs = {}
        for name, convert in plan:
            if name in record:
                value = record[name]
                kwargs[name] = value if convert is None or value is None else convert(value)
        return cls(**kwargs)

    return read


def from_record(cls: type[T], record: dict[str, Any]) -> T:
    """The dataclass ``cls`` built from a dict as fastavro returns it."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"{cls!r} is not a dataclass")
    return typing.cast(T, _reader(cls)(record))


def _converter(hint: Any) -> Convert | None:
    """How to turn a value of type ``hint`` from its Avro form; None when it is already right."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return _converter(inner)
    if origin is tuple:
        item = _converter(typing.get_args(hint)[0])
        if item is None:
            return tuple
        return lambda value: tuple(None if v is None else item(v) for v in value)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        # a nested record: its own plan (looked up when first needed, so a record that holds its own
        # type is planned once), without from_record's check of the class per value
        return lambda value: _reader(hint)(value)
    if isinstance(hint, type) and issubclass(hint, Enum):
        return hint
    if hint is datetime:
        return _aware
    return None


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
