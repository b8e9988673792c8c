"""Checking Keyturn's signed approval receipts, offline: what the system that performs an ``external`` action runs.

Keyturn does not run an action its catalog marks ``execution: external``; it decides it,
collects the approvals, and hands the requester a receipt (``GET /v1/actions/{id}``, in
``result.receipt``, once the action is ``approved_external``). The performing system checks
the receipt before it acts:

- the **signature** (Ed25519 over the canonical JSON of ``claims``) against Keyturn's published
  receipt key (``/.well-known/keyturn-receipt-keys.json`` on the intake, or the PEM file
  ``receipt-signing.pub.pem``);
- the **expiry** (``expires_at``: the end of the approval's execution window);
- the **payload digest**: SHA-256 over the canonical JSON of ``{"action", "resource",
  "parameters"}`` it is about to perform, the digest people approved;
- **single use**: ``UsedReceipts`` is a small ledger the performing system keeps (an SQLite file
  here; any table with a unique key on ``receipt_id`` does the same); a receipt id is taken
  once, a second use is refused.

    from keyturn.sdk import UsedReceipts, keys_from, verify_receipt

    claims = verify_receipt(receipt, keys_from(jwks_text), payload={"action": ..., "resource": ..., "parameters": ...})
    UsedReceipts("used-receipts.sqlite3").claim(claims)

This module needs the standard library, ``cryptography`` (the SDK's ``receipts`` extra) and the
SDK's own models (where a receipt's expiry is read, for the guard too). It holds the one
definition of the receipt format and its canonical form: Keyturn's signer (``keyturn.receipts``)
imports them from here, so what is signed and what is checked cannot drift apart.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

from keyturn.sdk.models import receipt_expiry

FORMAT = "keyturn-receipt/1"
ALGORITHM = "EdDSA"


class ReceiptInvalid(ValueError):
    """The receipt must not be acted on; the message says why."""


class ReceiptReused(ReceiptInvalid):
    """The receipt was already used once."""


def canonical(value: Any) -> bytes:
    """Canonical JSON (sorted keys, no whitespace, UTF-8, non-ASCII kept): what is signed and digested.

    The same text as Keyturn's ``core.canonical`` for JSON values; repeated here (not imported)
    so the SDK needs nothing of the services.
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def payload_digest(action: str, resource: str, parameters: Any) -> str:
    """The digest approvals bind to, ``sha256:<hex>``: SHA-256 of the canonical JSON of action, resource, parameters."""
    document = {"action": action, "resource": resource, "parameters": parameters}
    return "sha256:" + hashlib.sha256(canonical(document)).hexdigest()


def key_id(public_key: Ed25519PublicKey) -> str:
    """A key's id: the first 16 hex digits of SHA-256 over its raw 32 bytes."""
    return hashlib.sha256(public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()[:16]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def keys_from(source: bytes | str | Mapping[str, Any]) -> dict[str, Ed25519PublicKey]:
    """Public keys by id from a JWKS document (parsed or as text) or a PEM public key."""
    if isinstance(source, (bytes, str)):
        text = source.decode() if isinstance(source, bytes) else source
        if "-----BEGIN PUBLIC KEY-----" in text:
            key = load_pem_public_key(text.encode())
            if not isinstance(key, Ed25519PublicKey):
                raise ReceiptInvalid(f"the key is a {type(key).__name__}, not an Ed25519 public key")
            return {key_id(key): key}
        try:
            source = json.loads(text)
        except ValueError:
            raise ReceiptInvalid("the key is neither a PEM public key nor a JWKS document") from None
    if not isinstance(source, Mapping) or not isinstance(source.get("keys"), list):
        raise ReceiptInvalid("a JWKS document has a list of keys")
    keys: dict[str, Ed25519PublicKey] = {}
    for entry in source["keys"]:
        if isinstance(entry, Mapping) and entry.get("kty") == "OKP" and entry.get("crv") == "Ed25519":
            key = Ed25519PublicKey.from_public_bytes(unb64url(str(entry.get("x", ""))))
            keys[str(entry.get("kid") or key_id(key))] = key
    if not keys:
        raise ReceiptInvalid("the JWKS document holds no Ed25519 key")
    return keys


def instant(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def verify_receipt(
    receipt: Any,
    keys: Mapping[str, Ed25519PublicKey],
    *,
    now: datetime | None = None,
    payload: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The receipt's claims when it is signed by one of ``keys`` and not expired, and, when
    ``payload`` (``{"action", "resource", "parameters"}``) is given, approves exactly that
    payload. Raises ``ReceiptInvalid`` naming the first check that fails. Single use is
    ``UsedReceipts.claim``'s job, after this."""
    if not isinstance(receipt, Mapping) or not isinstance(receipt.get("claims"), Mapping):
        raise ReceiptInvalid("not a Keyturn receipt: it has no claims")
    claims = dict(receipt["claims"])
    signature = receipt.get("signature")
    if not isinstance(signature, Mapping) or signature.get("alg") != ALGORITHM:
        raise ReceiptInvalid(f"the signature is missing or not {ALGORITHM}")
    key = keys.get(str(signature.get("kid")))
    if key is None:
        raise ReceiptInvalid(f"signed with key {signature.get('kid')!r}, which is not among the trusted keys")
    try:
        key.verify(unb64url(str(signature.get("value", ""))), canonical(claims))
    except (InvalidSignature, ValueError):
        raise ReceiptInvalid("the signature does not match the claims: the receipt was altered or forged") from None
    if claims.get("format") != FORMAT:
        raise ReceiptInvalid(f"unknown receipt format {claims.get('format')!r}")
    expires_at = receipt_expiry(receipt)
    if expires_at is None:
        raise ReceiptInvalid("the receipt has no valid expiry")
    moment = now or datetime.now(UTC)
    if moment >= expires_at:
        raise ReceiptInvalid(f"the receipt expired at {claims['expires_at']}")
    if payload is not None:
        try:
            actual = payload_digest(payload["action"], payload["resource"], payload["parameters"])
        except (KeyError, TypeError):
            raise ReceiptInvalid("the payload must be an object with action, resource and parameters") from None
        except ValueError:  # NaN or an infinity: no JSON text holds one, so no approved payload did
            raise ReceiptInvalid("the payload holds a number JSON cannot carry (NaN, Infinity)") from None
        if actual != claims.get("payload_digest"):
            raise ReceiptInvalid(
                f"the payload hashes to {actual}, but {claims.get('payload_digest')} was approved: "
                "this is not the approved payload"
            )
    return claims


class UsedReceipts:
    """The performing system's ledger of receipts already used (an SQLite file; one row per use).

    ``claim`` records a receipt id and refuses one already recorded, atomically (a primary key),
    so two workers of the performing system cannot both act on one receipt. Rows of receipts
    past their expiry can be purged: an expired receipt is refused anyway.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS used_receipts (receipt_id TEXT PRIMARY KEY, action_id TEXT NOT NULL, "
                "expires_at TEXT NOT NULL, used_at TEXT NOT NULL)"
            )

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=10)

    def claim(self, claims: Mapping[str, Any], *, now: datetime | None = None) -> None:
        moment = now or datetime.now(UTC)
        try:
            with self._connect() as db:
                db.execute(
                    "INSERT INTO used_receipts VALUES (?, ?, ?, ?)",
                    (str(claims["receipt_id"]), str(claims["action_id"]), str(claims["expires_at"]), instant(moment)),
                )
        except sqlite3.IntegrityError:
            with self._connect() as db:
                row = db.execute(
                    "SELECT used_at FROM used_receipts WHERE receipt_id = ?", (str(claims["receipt_id"]),)
                ).fetchone()
            raise ReceiptReused(
                f"receipt {claims['receipt_id']} was already used at {row[0] if row else 'an earlier time'}"
            ) from None

    def purge_expired(self, *, now: datetime | None = None, grace: timedelta = timedelta(days=1)) -> int:
        cutoff = instant((now or datetime.now(UTC)) - grace)
        with self._connect() as db:
            return db.execute("DELETE FROM used_receipts WHERE expires_at < ?", (cutoff,)).rowcount
