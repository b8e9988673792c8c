"""An audit record's payload as the auditors' tools read it, checked in one place.

A writer stores each event as canonical JSON, so a genuine payload always has the shapes below.
But anyone who can produce to the audit topic can append a correctly hashed record holding
anything; such a record must be reported where it stands, never stop ``verify``, ``replay``,
``timeline``, ``stats`` or the report. So every reader takes payloads through
:func:`read_payload`, which refuses one that is not a JSON object or whose fields have another
type than the tools read them as. Fields the tools do not read (the policy's exact input, an
impact preview's details) are not looked into: an event type may grow without failing this.
"""

from __future__ import annotations

import json
from typing import Any


class MalformedPayload(ValueError):
    """A record's payload is not an event the tools can read (the message says what is wrong)."""


# Objects the tools look inside, wherever they appear in an event (a decision embeds the request,
# a resolution the decision), with the type of each field they read. ``None`` is always accepted:
# the tools read an absent field and a null one alike.
_OBJECTS = frozenset({"request", "decision", "requester", "vote", "approver", "provenance", "approvals"})
# (a decision's ``approvals.groups`` are objects; other events name groups by their names)
_LISTS_OF: dict[str, type | tuple[type, ...]] = {
    "votes": dict,
    "groups": (dict, str),
    "chain": str,
    "rules": str,
    "reasons": str,
    "denials": dict,
}
_SCALARS: dict[str, type | tuple[type, ...]] = {
    "id": str,
    "action": str,
    "outcome": str,
    "choice": str,
    "channel": str,
    "reason": str,
    "rule": str,
    "refusal": str,
    "message": str,
    "summary": str,
    "error": str,
    "plugin": str,
    "name": str,
    "policy_revision": str,
    "decision_id": str,
    "input_json": str,
    "parameters_json": str,
    "accepted": bool,
    "break_glass": bool,
    "min_approvals": int,
    "impact": dict,
}


def read_payload(payload_json: str) -> dict[str, Any]:
    """The event a record carries; raises :class:`MalformedPayload` saying what is wrong."""
    try:
        value = json.loads(payload_json)
    except (ValueError, TypeError) as error:  # JSONDecodeError, a lone surrogate, not text at all
        raise MalformedPayload(f"its payload is not JSON ({error})") from None
    if not isinstance(value, dict):
        raise MalformedPayload(f"its payload is a JSON {_kind(value)}, not an object")
    _check(value, "payload")
    return value


def _check(value: dict[str, Any], where: str) -> None:
    for name, field in value.items():
        if field is None:
            continue
        path = f"{where}.{name}"
        if name in _OBJECTS:
            if not isinstance(field, dict):
                raise MalformedPayload(f"{path} is a JSON {_kind(field)}, not an object")
            _check(field, path)
        elif name in _LISTS_OF:
            item_type = _LISTS_OF[name]
            if not isinstance(field, list):
                raise MalformedPayload(f"{path} is a JSON {_kind(field)}, not an array")
            for position, item in enumerate(field):
                if not isinstance(item, item_type):
                    raise MalformedPayload(f"{path}[{position}] is a JSON {_kind(item)}, not {_named(item_type)}")
                if isinstance(item, dict):
                    _check(item, f"{path}[{position}]")
        elif name in _SCALARS:
            expected = _SCALARS[name]
            # bool is an int in Python, not in JSON: a count of ``true`` is no count
            if not isinstance(field, expected) or (expected is int and isinstance(field, bool)):
                raise MalformedPayload(f"{path} is a JSON {_kind(field)}, not {_named(expected)}")


_NAMES: dict[Any, str] = {str: "text", bool: "true or false", int: "an integer", dict: "an object"}


def _named(expected: type | tuple[type, ...]) -> str:
    return " or ".join(_NAMES[t] for t in expected) if isinstance(expected, tuple) else _NAMES[expected]


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    return "number"
