"""What a refusal may write down: who, why, where, a digest and a length — never the input.

Every dead letter, whichever service writes it and whatever it refused (an HTTP body, a chat
interaction, a topic message), is built here, so the rule lives in one place:

- the refused bytes are kept only as their SHA-256 and length; a message refused on a topic
  stays in that topic, where partition and offset find it for repair;
- the reason and each problem (a field path and a message) pass through the masker, and are
  cut to a bounded length, because a field *name* or an exception's text can carry a value;
- the principal is named only when it was verified; unauthenticated input is not written here
  at all by the HTTP services (they count it on ``/metrics``);
- at most a short excerpt of a JSON object body, masked as accepted parameters are.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from keyturn.core.events import DeadLetter, Digest
from keyturn.core.text import whole_runs
from keyturn.masking.protect import mask_text, masked_excerpt, masked_within

MAX_PROBLEMS = 20
MAX_TEXT_CHARS = 300  # a reason or one problem
MAX_KEY_BYTES = 200
EXCERPT_CHARS = 512
EXCERPT_FROM_BYTES = 64 * 1024  # larger bodies get no excerpt: masking them costs more than it tells


def refusal_letter(
    *,
    service: str,
    source_topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    payload: bytes,
    error_type: str,
    reason: str,
    problems: Iterable[str] = (),
    principal: str | None = None,
    excerpt: bool = False,
    by_service: bool = False,
) -> DeadLetter:
    """The dead letter for refused input, holding nothing of it in clear.

    An input refused on a topic has one letter per place (``partition``/``offset``), so a
    redelivery writes the same event id; a message that failed in one service's handling
    (``by_service``) is that service's own record, so several services failing on one message
    each keep theirs. Input from HTTP (``offset`` < 0) gets a fresh id.
    """
    digest = hashlib.sha256(payload).hexdigest()
    if offset >= 0:
        event_id = f"dlq:{service + ':' if by_service else ''}{source_topic}:{partition}:{offset}"
    else:
        event_id = f"dlq:{source_topic}:{uuid.uuid4()}"
    return DeadLetter(
        event_id=event_id,
        source_topic=source_topic,
        partition=partition,
        offset=offset,
        key=_masked_key(key),
        payload_digest=Digest(digest),
        payload_length=len(payload),
        error_type=error_type[:64],
        reason=masked_line(reason),
        problems=tuple(masked_line(p) for p in list(problems)[:MAX_PROBLEMS]),
        principal=principal,
        excerpt=masked_excerpt(payload, chars=EXCERPT_CHARS, read_at_most=EXCERPT_FROM_BYTES) if excerpt else None,
        service=service,
        failed_at=datetime.now(UTC),
    )


def masked_line(text: str) -> str:
    """One line of refusal text, masked, then bounded (``masking.protect.masked_within``)."""
    # a run of text longer than a line can show (a key of thousands of characters) is named, not
    # repeated: cut, it would be half of something; and the words around it still say what is wrong
    text = _LONG_RUN.sub(TOO_LONG, text[: MAX_TEXT_CHARS * 64])
    return masked_within(" ".join(text.split()), MAX_TEXT_CHARS)


TOO_LONG = "<too long to repeat>"
_LONG_RUN = re.compile(rf"\S{{{MAX_TEXT_CHARS // 2},}}")


def _masked_key(key: bytes | None) -> bytes | None:
    """A topic key is chosen by whoever produced the message: masked and bounded like text."""
    if key is None:
        return None
    # masked whole (within reason, as ``masked_line``), then cut: a cut first can leave half a
    # secret masking no longer recognises
    text = whole_runs(key.decode("utf-8", errors="replace"), MAX_KEY_BYTES * 8)
    masked = mask_text(text).encode()
    return masked[:MAX_KEY_BYTES].decode("utf-8", errors="ignore").encode()


def validation_problems(errors: Iterable[Mapping[str, Any]]) -> list[str]:
    """Each validation error as ``field.path: message``, never with the offending value.

    Validation errors carry the input they refused (``input``, and ``input_value`` in their
    text); a refusal must not repeat it, so only the location and the message are kept.
    """
    problems = []
    for error in errors:
        if error.get("type") == "json_invalid":  # loc is ("body", character): say what it is
            reason = (error.get("ctx") or {}).get("error", "invalid")
            problems.append(f"body: not JSON: {reason} (at character {error.get('loc', ('', 0))[-1]})")
            continue
        path = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        problems.append(f"{path}: {error.get('msg', 'invalid')}")
    return problems
