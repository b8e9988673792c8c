"""The SDK-only distribution (services/keyturn/sdk/pyproject.toml) builds with pip, holds every
module of keyturn.sdk and nothing of the services, and imports on its own."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from keyturn.config import REPO_ROOT
from keyturn.receipts import ReceiptSigner, jwks, payload_digest

SDK = REPO_ROOT / "services" / "keyturn" / "sdk"


def test_the_sdk_builds_as_its_own_small_wheel_and_imports_without_the_services(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(SDK),
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    [wheel] = tmp_path.glob("keyturn_sdk-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(next(n for n in names if n.endswith("/METADATA"))).decode()
        archive.extractall(tmp_path / "installed")
    modules = {f"keyturn/sdk/{p.relative_to(SDK)}" for p in SDK.rglob("*.py") if "__pycache__" not in p.parts}
    assert {n for n in names if not n.startswith("keyturn_sdk-")} == modules | {"keyturn/sdk/py.typed"}
    assert "keyturn/__init__.py" not in names  # keyturn stays a namespace the services' package can share
    assert "Requires-Dist: httpx" in metadata
    assert "Requires-Dist: aiokafka==0.14.0; extra == 'topic'" in metadata
    assert "Requires-Dist: langgraph==1.2.22; extra == 'langgraph'" in metadata
    assert "Requires-Dist: pydantic-ai-slim==2.68.0; extra == 'pydantic-ai'" in metadata
    assert "Requires-Dist: cryptography<51,>=42; extra == 'receipts'" in metadata

    # a receipt signed by the services' signer, checked by the wheel's verifier alone
    private_key = Ed25519PrivateKey.generate()
    payload = {"action": "cache.entry.delete", "resource": "redis://cache/sessions", "parameters": {"key": "s:1"}}
    now = datetime.now(UTC)
    receipt = ReceiptSigner(private_key).issue(
        action_id="a-1",
        action=payload["action"],
        resource=payload["resource"],
        payload_digest=payload_digest(payload["action"], payload["resource"], payload["parameters"]),
        requester="agent:etl",
        acting_for=[],
        approvers=["user:ops"],
        decision="approved",
        policy_revision="r1",
        decision_id="d-1",
        issued_at=now,
        expires_at=now + timedelta(minutes=5),
    )
    tampered = {**payload, "parameters": {"key": "s:2"}}
    (tmp_path / "case.json").write_text(
        json.dumps({"receipt": receipt, "keys": jwks([private_key.public_key()]), "ok": payload, "bad": tampered})
    )

    # only the wheel and the site-packages (httpx), without the checkout's services on the path
    probe = (
        "import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]; "
        "import keyturn.sdk, importlib.util; "
        "assert keyturn.sdk.__file__.startswith(sys.argv[1]), keyturn.sdk.__file__; "
        "assert importlib.util.find_spec('keyturn.intake') is None; "
        "keyturn.sdk.Keyturn('http://127.0.0.1:1', token='t').close(); "
        "import json; from keyturn.sdk import ReceiptInvalid, UsedReceipts, keys_from, verify_receipt; "
        "assert verify_receipt.__module__ == 'keyturn.sdk.receipts'; "
        "case = json.load(open(sys.argv[3] + '/case.json')); keys = keys_from(json.dumps(case['keys'])); "
        "claims = verify_receipt(case['receipt'], keys, payload=case['ok']); "
        "ledger = UsedReceipts(sys.argv[3] + '/used.sqlite3'); ledger.claim(claims); "
        "refusals = []\n"
        "for check in (lambda: verify_receipt(case['receipt'], keys, payload=case['bad']), "
        "lambda: ledger.claim(claims)):\n"
        "    try: check()\n"
        "    except ReceiptInvalid as exc: refusals.append(str(exc))\n"
        "print('ok', claims['receipt_id']); print(json.dumps(refusals))"
    )
    site_packages = sysconfig.get_paths()["purelib"]
    answer = subprocess.run(
        [sys.executable, "-S", "-c", probe, str(tmp_path / "installed"), site_packages, str(tmp_path)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    lines = answer.stdout.strip().splitlines()
    assert lines[:1] == [f"ok {receipt['claims']['receipt_id']}"], answer.stderr
    refusals = json.loads(lines[1])
    assert len(refusals) == 2, refusals
    assert "this is not the approved payload" in refusals[0]
    assert "was already used" in refusals[1]
