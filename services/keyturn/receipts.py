"""Signing Keyturn's approval receipts (the executor's side) and publishing the receipt keys (the intake's).

The receipt format, its canonical form and the verifier live in the SDK (``keyturn.sdk.receipts``),
which a performing system installs on its own (``pip install 'keyturn-sdk[receipts]'``) or runs
as ``keyturn receipt verify``; they are re-exported here for the services' own use.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from keyturn.sdk.receipts import (
    ALGORITHM,
    FORMAT,
    ReceiptInvalid,
    ReceiptReused,
    UsedReceipts,
    b64url,
    canonical,
    instant,
    key_id,
    keys_from,
    payload_digest,
    verify_receipt,
)

__all__ = [
    "ALGORITHM",
    "FORMAT",
    "ReceiptInvalid",
    "ReceiptReused",
    "ReceiptSigner",
    "UsedReceipts",
    "canonical",
    "jwks",
    "key_id",
    "keys_from",
    "payload_digest",
    "verify_receipt",
]


def jwks(public_keys: Iterable[Ed25519PublicKey]) -> dict[str, Any]:
    """The keys as a JWKS document (RFC 8037 OKP keys), the form the intake publishes."""
    return {
        "keys": [
            {
                "kty": "OKP",
                "crv": "Ed25519",
                "alg": ALGORITHM,
                "use": "sig",
                "kid": key_id(key),
                "x": b64url(key.public_bytes(Encoding.Raw, PublicFormat.Raw)),
            }
            for key in public_keys
        ]
    }


@dataclass(frozen=True)
class ReceiptSigner:
    """Issues receipts with one Ed25519 key (kept by the executor, published by the intake)."""

    private_key: Ed25519PrivateKey
    kid: str = field(init=False)  # the key's id, derived once rather than per receipt

    def __post_init__(self) -> None:
        object.__setattr__(self, "kid", key_id(self.private_key.public_key()))

    def issue(
        self,
        *,
        action_id: str,
        action: str,
        resource: str,
        payload_digest: str,
        requester: str,
        acting_for: Iterable[str],
        approvers: Iterable[str],
        decision: str,
        policy_revision: str,
        decision_id: str,
        issued_at: datetime,
        expires_at: datetime,
    ) -> dict[str, Any]:
        """A signed receipt: ``{"claims": {...}, "signature": {"alg", "kid", "value"}}``."""
        claims = {
            "format": FORMAT,
            "receipt_id": str(uuid.uuid4()),
            "action_id": action_id,
            "action": action,
            "resource": resource,
            "payload_digest": payload_digest,
            "requester": requester,
            "acting_for": list(acting_for),
            "approvers": sorted(set(approvers)),
            "decision": decision,
            "policy_revision": policy_revision,
            "decision_id": decision_id,
            "issued_at": instant(issued_at),
            "expires_at": instant(expires_at),
        }
        signature = self.private_key.sign(canonical(claims))
        return {"claims": claims, "signature": {"alg": ALGORITHM, "kid": self.kid, "value": b64url(signature)}}
