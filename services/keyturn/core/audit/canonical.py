"""The canonical encoding of an audit record (what its ``hash`` is computed over), and record ids.

Version 1:

* Take every field of the record except ``hash`` as a JSON object: ``record_id``,
  ``sequence``, ``recorded_at``, ``event_id``, ``event_type``, ``action_id``, ``actor``,
  ``source_topic``, ``occurred_at``, ``payload_json``, ``prev_hash``, ``checkpoint`` (``null``
  or an object with ``covers_sequence``, ``chain_hash``, ``key_id``, ``signature``) and
  ``flags`` (an array of strings, in stored order).
* Timestamps are integers (UTC milliseconds since the epoch), as in the Avro schema; there
  are no floating-point numbers anywhere in the record.
* Serialise with keys sorted, no whitespace (``,`` and ``:`` separators), non-ASCII characters
  written as themselves, and only ``"``, ``\\`` and control characters escaped (``\\b \\f \\n
  \\r \\t``, other controls as lowercase ``\\u00xx``); encode as UTF-8. For these records (ASCII
  keys, integers below 2**53) this is exactly RFC 8785 (JCS), so any language can reproduce it.
* ``hash`` = lowercase hex SHA-256 of those bytes; ``prev_hash`` of sequence 0 is 64 zeros.

Fields added to the schema after version 1 must join the canonical form only when they differ
from their default, so records written before the change keep their hashes.
"""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from keyturn.core.audit.record import AuditRecord
from keyturn.core.canonical import canonical_json_without_floats

GENESIS_HASH = "0" * 64

# Fixed namespace so record_id = uuid5(namespace, event_id) is the same on every replica.
RECORD_ID_NAMESPACE = uuid.UUID("6b1d3f0e-51a4-4c5e-9f0a-4b6579747572")


def canonical_bytes(record: AuditRecord) -> bytes:
    """The exact bytes ``hash`` is computed over (see the module docstring)."""
    fields = record.to_dict()
    del fields["hash"]
    return canonical_bytes_of(fields)


def canonical_bytes_of(fields: dict[str, Any]) -> bytes:
    """:func:`canonical_bytes` of a record in its ``to_dict`` form without ``hash``: what the
    chain hashes before the record exists (it is built once, with its hash)."""
    # Canonical JSON, not Avro bytes: the hash must not change when the schema evolves.
    return canonical_json_without_floats(fields).encode("utf-8")  # the record has no float (above)


def record_hash(record: AuditRecord) -> str:
    """Lowercase hex SHA-256 of :func:`canonical_bytes`."""
    return hashlib.sha256(canonical_bytes(record)).hexdigest()


_NAMESPACE_BYTES = RECORD_ID_NAMESPACE.bytes


def record_id_for(event_id: str) -> str:
    """The record id for an event: the same event always gets the same id.

    ``str(uuid.uuid5(RECORD_ID_NAMESPACE, event_id))``, spelled out (RFC 4122 §4.3: SHA-1 of
    namespace and name, version 5, the RFC's variant): the standard library builds two UUID
    objects on the way, a fifth of what ``_link`` spends per record. A test holds the two to
    the same text.
    """
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + event_id.encode("utf-8"), usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
