"""Warrants: proof that an order on the decided or resolved topic comes from Keyturn's policy or
approval service, not from anyone else who can write to the topic.

The executor acts on ``ActionDecided`` (allowed) and ``ApprovalResolved`` (approved) records. Who
may write those topics is the broker's to say (ACLs), and an agent submitting over Kafka holds a
producer's credentials: without more, a record it wrote there, an approval nobody gave, ran (a
probe made the executor run a DELETE that way while the approval still stood pending). So the
services that decide and resolve send each such record with a warrant, an HMAC-SHA256 over its
topic, key and value under a key derived from the seal keyring (``KEYTURN_SEAL_KEYS``), which the
services that seal, decide and execute already share and agents never hold; the executor runs
only what carries a valid one.

    header ``keyturn-warrant``: ``<seal key id>:<base64 HMAC>``
    HMAC key = HMAC-SHA256(seal key, "keyturn.warrant.v1") (never the AES key itself)
    HMAC input = topic NUL key NUL value

Bound to the exact bytes: a warrant copied onto another record, or kept after the record was
edited, fails. Replaying a genuine record is what the broker redelivers anyway, and the
execution ledger runs an action at most once. Keys rotate with the ring: a warrant names the
key it was made with, and every key of the ring verifies.

The standard library's ``hmac``: no library signs Kafka records, and what a warrant covers
(topic, key, value) is the whole of the design.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from keyturn.masking.sealing import Keyring

HEADER = "keyturn-warrant"
T = TypeVar("T")
log = logging.getLogger(__name__)
_LABEL = b"keyturn.warrant.v1"


class Warrants:
    """Makes warrants for records sent to ``topics`` and checks those of consumed records."""

    def __init__(self, keyring: Keyring, topics: Iterable[str]) -> None:
        self.topics = frozenset(topics)
        self._current = keyring.current_key_id
        self._keys = {kid: hmac.new(key, _LABEL, hashlib.sha256).digest() for kid, key in keyring.keys.items()}

    def _mac(self, kid: str, topic: str, key: bytes, value: bytes) -> bytes:
        return hmac.new(self._keys[kid], b"\0".join((topic.encode(), key, value)), hashlib.sha256).digest()

    def signed(self, topic: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
        """``headers`` with the record's warrant when ``topic`` is one of ours to warrant (any
        warrant already among them dropped: a record is sent with one, ours)."""
        if topic not in self.topics:
            return headers
        warrant = f"{self._current}:".encode() + base64.b64encode(self._mac(self._current, topic, key, value))
        return [*(h for h in headers if h[0] != HEADER), (HEADER, warrant)]

    def problem(self, message: Any) -> str | None:
        """Why a consumed record (``topic``, ``key``, ``value``, ``headers``) is not warranted, or
        None when it carries exactly one valid warrant."""
        raw = getattr(message, "headers", None) or ()
        pairs = raw.items() if isinstance(raw, Mapping) else raw
        found = [bytes(value) for name, value in pairs if name == HEADER]
        if len(found) != 1:
            return "no warrant" if not found else "more than one warrant"
        kid, separator, encoded = found[0].partition(b":")
        key_id = kid.decode("ascii", errors="replace")
        if not separator or key_id not in self._keys:  # the id is not repeated: a header holds what anyone wrote
            return "a warrant made with a key this service does not hold"
        try:
            given = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            return "a warrant that is not base64"
        expected = self._mac(key_id, str(message.topic), bytes(message.key or b""), bytes(message.value or b""))
        return None if hmac.compare_digest(given, expected) else "a warrant that does not match the record"

    def sorted(self, batch: Iterable[tuple[T, Any]]) -> tuple[list[tuple[T, Any]], list[tuple[T, Any, str]]]:
        """A consumed batch of (event, record) split into those carrying a valid warrant and the
        others, each with why (``problem``): the one check every reader of warranted topics makes."""
        kept: list[tuple[T, Any]] = []
        refused: list[tuple[T, Any, str]] = []
        for event, message in batch:
            if (why := self.problem(message)) is None:
                kept.append((event, message))
            else:
                refused.append((event, message, why))
        return kept, refused


def log_skipped(refused: Iterable[tuple[Any, Any, str]], reader: str) -> None:
    """A warning line per record a reader skipped for its warrant (``Warrants.sorted``)."""
    for event, _, why in refused:
        log.warning("%s: %s for %s skipped, %s", reader, type(event).__name__, getattr(event, "action_id", "?"), why)


async def dead_letter_unwarranted(publisher: Any, message: Any, error_type: str, reason: str) -> None:
    """Record a consumed record refused for its warrant (``Warrants.problem``) as this service's
    dead letter: its digest and length, never its bytes (``bus.refusals``)."""
    from keyturn.bus.codec import UndecodableMessage

    await publisher.dead_letter(
        source_topic=str(getattr(message, "topic", "") or ""),
        partition=int(getattr(message, "partition", -1)),
        offset=int(getattr(message, "offset", -1)),
        key=getattr(message, "key", None),
        payload=bytes(getattr(message, "value", b"") or b""),
        error=UndecodableMessage(error_type, reason),
        by_service=True,
    )
