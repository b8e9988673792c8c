"""What text and numbers Keyturn accepts from outside, and how it stores text it did not choose.

Every value a caller sends ends up in PostgreSQL (rows, ``jsonb`` columns), in Avro strings and
in the policy engine's JSON. None of them holds every Python string or integer:

- PostgreSQL refuses the NUL character in ``text`` and ``jsonb`` (``\\u0000``), and a lone
  surrogate (``\\ud800``, which JSON can spell but no UTF-8 can encode) anywhere;
- the policy engine's input and ``jsonb`` numbers are read as 64-bit integers or doubles.

So the doors (the intake's submissions, an approver's reason) refuse such values with a
problem that names the field, never the value (``problem_in``), and what a service stores
from an event it did not write itself passes through ``storable`` (the intake's status:
``intake.store.jsonb``), so one odd string can never stop a consumer that must record it.
Pure: no I/O.
"""

from __future__ import annotations

import re
from typing import Any

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
REPLACEMENT = "\ufffd"
_NAMED = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a key shown in a problem's path; any other is "*"


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be taken, or None."""
    if "\x00" in text:
        return "holds a NUL character (U+0000), which no stored text may hold"
    if not text.isascii() and any("\ud800" <= c <= "\udfff" for c in text):
        return "holds a lone surrogate (not Unicode text)"
    return None


def problem_in(value: Any, path: str) -> str | None:
    """The first problem of a JSON ``value`` (its keys, strings and integers), as ``path: why``."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        current, where = stack.pop()
        if isinstance(current, str):
            if (why := text_problem(current)) is not None:
                return f"{where}: {why}"
        elif isinstance(current, bool):
            continue
        elif isinstance(current, int):
            if not INT64_MIN <= current <= INT64_MAX:
                return f"{where}: an integer outside the 64-bit range (±9223372036854775807)"
        elif isinstance(current, dict):
            for key, child in current.items():
                if isinstance(key, str) and (why := text_problem(key)) is not None:
                    return f"{where}: a key {why}"
                named = isinstance(key, str) and _NAMED.fullmatch(key)
                stack.append((child, f"{where}.{key if named else '*'}"))
        elif isinstance(current, list):
            stack.extend((child, f"{where}.{index}") for index, child in enumerate(current))
    return None


def _bad_text(value: Any) -> bool:
    """Whether any string in ``value`` (keys too) holds a NUL or a lone surrogate."""
    if isinstance(value, str):
        return text_problem(value) is not None
    if isinstance(value, dict):
        return any(_bad_text(k) or _bad_text(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_bad_text(v) for v in value)
    return False


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return "".join(REPLACEMENT if c == "\x00" or "\ud800" <= c <= "\udfff" else c for c in value)
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def storable(value: Any) -> Any:
    """``value`` with every NUL and lone surrogate in its strings (keys too) replaced by U+FFFD,
    so PostgreSQL stores it; ``value`` itself when nothing needs replacing (the common case)."""
    return _clean(value) if _bad_text(value) else value


# Characters that steer a terminal or a text's direction rather than show: C0 controls but tab
# and line feed (ESC starts the sequences that clear a screen, move the cursor, hide what follows),
# DEL, C1 controls, and the bidirectional overrides and isolates (U+202A-U+202E, U+2066-U+2069),
# which show a line in another order than it is written.
_STEERING = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def steering_problem(text: str) -> str | None:
    """Why free text someone will read cannot be taken (a control character, a direction
    override), or None. Not for parameters: they are data, shown as JSON, which escapes them."""
    found = _STEERING.search(text)
    if found is None:
        return None
    return (
        f"holds a control or text-direction character (U+{ord(found.group()):04X}), which only steers what a "
        "reader sees"
    )


def words_problem(text: str) -> str | None:
    """Why words a person will read (a reason, a resource, a key) cannot be taken: text no record
    can hold (``text_problem``), or characters that steer a reader (``steering_problem``)."""
    return text_problem(text) or steering_problem(text)


def for_terminal(text: str) -> str:
    """``text`` with every character that would steer a terminal written out as an escape
    (``\x1b``, ``\u202e``): what a record holds is shown, never obeyed."""
    if _STEERING.search(text) is None:
        return text
    return _STEERING.sub(
        lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}", text
    )


def plausible_id(text: str, max_length: int = 200) -> bool:
    """Whether ``text`` could name something Keyturn stored (an action id from a URL path, say):
    printable and at most ``max_length`` characters. Anything else names nothing, and a route
    answers it as it answers an unknown id, without asking the database."""
    return 0 < len(text) <= max_length and text.isprintable()


def whole_runs(text: str, chars: int) -> str:
    """``text`` cut to at most ``chars``, without the run of non-space characters the cut went through."""
    if len(text) <= chars:
        return text
    cut = text[: chars + 1]
    return cut[: max((i for i, c in enumerate(cut) if c.isspace()), default=0)]


#: Any placeholder masking writes (``<EMAIL_ADDRESS>``, ``****1111``; ``<SECRET:NAME>`` for a
#: redacted secret reference): the one pattern for telling masked text from clear.
PLACEHOLDER = re.compile(r"<[A-Z_]+(:[^<>]*)?>|\*{4}\d{4}")
