"""An external action: approved, never run by Keyturn, ended approved_external everywhere, and its
signed receipt checked offline by ``keyturn receipt verify`` — once, for exactly that payload, with
the published key only."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from keyturn.audit.stream import read_audit_log
from keyturn.bus.topics import Topics
from keyturn.receipts import ReceiptInvalid, keys_from, verify_receipt
from tests.integration.conftest import Agent, eventually, keyturn_cli, mint

pytestmark = pytest.mark.integration

ACTION, RESOURCE = "scratch.dir.delete", "file://staging/scratch/reports"
PARAMETERS = {"path": "/scratch/reports", "recursive": True}


def test_an_approved_external_action_ends_approved_external_with_a_receipt_verified_once(
    reporter: Agent, settings, tmp_path: Path
) -> None:
    action_id = reporter.submit_ok(ACTION, RESOURCE, PARAMETERS)  # a deletion outside the database: external
    assert reporter.wait_for_state(action_id, "needs_approval")["state"] == "needs_approval"
    judy = mint(settings, "human:judy")
    shown = httpx.get(
        f"{settings.approval_url}/v1/approvals/{action_id}", headers={"Authorization": f"Bearer {judy}"}, timeout=30
    )
    assert shown.json()["execution"] == "external", shown.text  # approvers are told before they answer
    vote = keyturn_cli(settings, "approve", action_id, "--reason", "cleanup ok", token=judy)
    assert vote.returncode == 0, vote.stderr

    view = reporter.wait(action_id)
    assert view["state"] == "approved_external", view
    states = [step["state"] for step in view["history"]]
    assert states == ["requested", "needs_approval", "approved", "approved_external"]
    claims = view["result"]["receipt"]["claims"]
    assert (claims["action_id"], claims["approvers"], claims["decision"]) == (action_id, ["human:judy"], "approved")
    assert claims["policy_revision"].startswith("sha256:") and claims["expires_at"]

    receipt, payload = tmp_path / "receipt.json", tmp_path / "payload.json"
    receipt.write_text(json.dumps(view))  # the status answer as the requester got it
    wanted = {"action": ACTION, "resource": RESOURCE, "parameters": PARAMETERS}
    payload.write_text(json.dumps(wanted))
    published = tmp_path / "keys.json"  # the intake's published key, kept for offline use
    published.write_text(httpx.get(f"{settings.intake_url}/.well-known/keyturn-receipt-keys.json", timeout=30).text)
    stranger = tmp_path / "stranger.pem"
    stranger.write_bytes(
        Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    )
    ledger = tmp_path / "used.sqlite3"

    def verify(*args: str):
        return keyturn_cli(settings, "receipt", "verify", str(receipt), "--ledger", str(ledger), *args)

    # another payload and another key are refused (in-process: the same function the command calls)
    with pytest.raises(ReceiptInvalid, match="not the approved payload"):
        verify_receipt(
            view["result"]["receipt"], keys_from(published.read_text()), payload={**wanted, "parameters": {}}
        )
    with pytest.raises(ReceiptInvalid, match="not among the trusted keys"):
        verify_receipt(view["result"]["receipt"], keys_from(stranger.read_bytes()), payload=wanted)
    first = verify("--key", str(published), "--payload", str(payload))
    assert first.returncode == 0, first.stderr
    assert f"receipt {claims['receipt_id']} valid" in first.stdout and "recorded as used" in first.stdout
    again = verify("--key", str(published), "--payload", str(payload))
    assert again.returncode != 0 and "already used" in again.stderr

    audit = Topics(settings.namespace, settings.partitions).audit

    def executed_record():
        records = asyncio_run(read_audit_log(settings.kafka_bootstrap, audit))
        return [r for r in records if r.action_id == action_id and r.event_type == "ActionExecuted"]

    recorded = eventually(executed_record)
    assert recorded and json.loads(recorded[0].payload_json)["outcome"] == "approved_external"


def asyncio_run(coroutine):
    import asyncio

    return asyncio.run(coroutine)
