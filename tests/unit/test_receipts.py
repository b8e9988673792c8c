"""Approval receipts verify offline, and refuse another payload, another key, expiry and reuse."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from keyturn.core.events import payload_digest as keyturn_digest
from keyturn.receipts import (
    ReceiptInvalid,
    ReceiptReused,
    ReceiptSigner,
    UsedReceipts,
    jwks,
    keys_from,
    payload_digest,
    verify_receipt,
)

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
PAYLOAD = {"action": "cache.entry.delete", "resource": "redis://staging/c/k", "parameters": {"key": "é", "n": 1.5}}


def issue(key: Ed25519PrivateKey, **changes):
    fields = dict(
        action_id="6c0a1f9e-8a3f-4a7e-9a55-2b8f0d6e7a10",
        action=PAYLOAD["action"],
        resource=PAYLOAD["resource"],
        payload_digest=payload_digest(PAYLOAD["action"], PAYLOAD["resource"], PAYLOAD["parameters"]),
        requester="agent:reporter",
        acting_for=["human:alice"],
        approvers=["human:carol"],
        decision="approved",
        policy_revision="sha256:0011",
        decision_id="d-1",
        issued_at=NOW,
        expires_at=NOW + timedelta(minutes=15),
    )
    return ReceiptSigner(key).issue(**{**fields, **changes})


def test_the_digest_is_the_one_approvals_bind_to() -> None:
    assert payload_digest(**PAYLOAD) == str(keyturn_digest(**PAYLOAD))


def test_a_receipt_verifies_offline_with_the_published_jwks_or_the_pem() -> None:
    key = Ed25519PrivateKey.generate()
    receipt = json.loads(json.dumps(issue(key)))  # as it travels
    pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    for source in (json.dumps(jwks([key.public_key()])), pem):
        claims = verify_receipt(receipt, keys_from(source), now=NOW, payload=PAYLOAD)
        assert (claims["approvers"], claims["policy_revision"]) == (["human:carol"], "sha256:0011")


def test_another_payload_another_key_an_edit_or_expiry_is_refused() -> None:
    key = Ed25519PrivateKey.generate()
    keys = keys_from(jwks([key.public_key()]))
    receipt = issue(key)
    with pytest.raises(ReceiptInvalid, match="not the approved payload"):
        verify_receipt(receipt, keys, now=NOW, payload={**PAYLOAD, "parameters": {"key": "other"}})
    with pytest.raises(ReceiptInvalid, match="not among the trusted keys"):
        verify_receipt(receipt, keys_from(jwks([Ed25519PrivateKey.generate().public_key()])), now=NOW)
    edited = {**receipt, "claims": {**receipt["claims"], "approvers": ["human:mallory"]}}
    with pytest.raises(ReceiptInvalid, match="altered or forged"):
        verify_receipt(edited, keys, now=NOW)
    with pytest.raises(ReceiptInvalid, match="expired"):
        verify_receipt(receipt, keys, now=NOW + timedelta(minutes=15))


@pytest.mark.parametrize("number", [float("nan"), float("inf")])
def test_a_payload_json_cannot_carry_is_refused_as_invalid_not_a_crash(number: float) -> None:
    key = Ed25519PrivateKey.generate()
    with pytest.raises(ReceiptInvalid, match="JSON cannot carry"):
        verify_receipt(
            issue(key), keys_from(jwks([key.public_key()])), now=NOW, payload={**PAYLOAD, "parameters": {"n": number}}
        )


def test_a_receipt_is_used_once(tmp_path) -> None:
    key = Ed25519PrivateKey.generate()
    claims = verify_receipt(issue(key), keys_from(jwks([key.public_key()])), now=NOW)
    ledger = UsedReceipts(tmp_path / "used.sqlite3")
    ledger.claim(claims, now=NOW)
    with pytest.raises(ReceiptReused, match="already used"):
        UsedReceipts(tmp_path / "used.sqlite3").claim(claims, now=NOW)
    assert issue(key)["claims"]["receipt_id"] != claims["receipt_id"]  # every receipt has its own id
