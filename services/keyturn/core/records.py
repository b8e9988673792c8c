"""Convert between event dataclasses and the plain dicts fastavro reads and writes.

Written here rather than taken from a library because it is ~40 lines over our own frozen
dataclasses and the Avro-friendly types they use (str enums, tuples, aware datetimes, bytes);
the general-purpose converters we tried either need their own model base class or lose tuples.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from datetime import UTC, datetime
from enum import Enum
from functools import cache
from typing import Any, TypeVar

T = TypeVar("T")


def to_record(event: Any) -> Any:
    """A dataclass (recursively) as a dict of Avro-ready values."""
    if dataclasses.is_dataclass(event) and not isinstance(event, type):
        return {f.name: to_record(getattr(event, f.name)) for f in dataclasses.fields(event)}
    if isinstance(event, Enum):
        return event.value
    if isinstance(event, (tuple, list)):
        return [to_record(item) for item in event]
    return event


@cache
def _hints(cls: Any) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_record(cls: type[T], record: dict[str, Any]) -> T:
    """The dataclass ``cls`` built from a dict as fastavro returns it."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = _hints(cls)
    kwargs = {f.name: _convert(hints[f.name], record[f.name]) for f in dataclasses.fields(cls) if f.name in record}
    return cls(**kwargs)


def _convert(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return _convert(inner, value)
    if origin is tuple:
        item = typing.get_args(hint)[0]
        return tuple(_convert(item, v) for v in value)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return from_record(hint, value)
    if isinstance(hint, type) and issubclass(hint, Enum):
        return hint(value)
    if hint is datetime and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value
