"""Canonical JSON: data written before keeps its bytes.

Audit hashes, payload and policy-input digests and sealed parameters are all computed over
canonical JSON, so its output must never change for data that exists. ``golden/`` holds an
audit chain written by the chain writer as it was before canonical JSON became one function
(commit 832b6dc); the digest and the sealed blob below were computed by that code too.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from keyturn.audit.export import read_jsonl
from keyturn.core.audit.chain import AuditChain
from keyturn.core.audit.checkpoint import CheckpointSigner, CheckpointVerifier
from keyturn.core.audit.verify import verify
from keyturn.core.canonical import canonical_json, canonical_json_without_floats
from keyturn.core.events import Digest, SealedParameters
from keyturn.masking import Keyring, open_sealed, seal_parameters

GOLDEN_CHAIN = Path(__file__).parent / "golden" / "audit_chain_v1.jsonl"
T0 = 1_714_564_800_000  # 2024-05-01T12:00:00Z
AUDIT_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
KINDS = ("ActionRequested", "ActionDecided", "ApprovalResolved", "ActionExecuted")
PAYLOADS = [
    {
        "action_id": "act-0001",
        "parameters": {
            "query": "SELECT 1",
            "note": "café ✓ 日本",
            "limit": 10,
            "ratio": 0.25,
            "ok": True,
            "none": None,
        },
    },
    {
        "action_id": "act-0001",
        "outcome": "needs_approval",
        "reasons": ["tab\there", "line\nbreak", 'quote" back\\slash', "\u0001ctl", "\u2028sep"],
    },
    {
        "action_id": "act-0001",
        "at": datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC),
        "sealed": b"\x00\x01\xff",
        "groups": ("dba", "security"),
    },
    {
        "action_id": "act-0002",
        "big": 2**53 - 1,
        "neg": -17,
        "float": 1e-7,
        "exp": 1.5e300,
        "nested": {"z": [], "a": {}},
    },
    {"action_id": "act-0002", "emoji": "\U0001f512", "empty": ""},
    '{"action_id":"act-0002","from":"text","b":1,"a":2}',
    {"action_id": "act-0003"},
]

DOCUMENT = {
    "action": "read.sql",
    "resource": "postgres://staging/analytics/orders",
    "parameters": {
        "query": "SELECT id FROM customers WHERE region = 'eu'",
        "note": "café ✓",
        "limit": 1000,
        "ratio": 0.5,
        "flags": [True, False, None],
        "nested": {"b": [1, {"d": "é", "c": None}], "a": "\u0007"},
    },
}
DOCUMENT_JSON = (
    '{"action":"read.sql","parameters":{"flags":[true,false,null],"limit":1000,"nested":{"a":"\\u0007",'
    '"b":[1,{"c":null,"d":"é"}]},"note":"café ✓","query":"SELECT id FROM customers WHERE region = \'eu\'",'
    '"ratio":0.5},"resource":"postgres://staging/analytics/orders"}'
)
DOCUMENT_DIGEST = "sha256:d21345350dc881383b28cd9ce55d96a474914d48fdfe854f0b2d7505b8e8038d"
SEAL_KEYRING = Keyring("seal-golden", {"seal-golden": bytes(range(32))})
SEALED = SealedParameters(
    key_id="seal-golden",
    nonce=bytes.fromhex("50a46c1dd28a1ce5cb9ae16f"),
    ciphertext=bytes.fromhex(
        "53e40f75d022a8b6f3cb92ec6472dfb9f32a2dc098e1a8fd9dbd565f66c89a5447ff05f1fc72e26951a8f476ac74e5523f8b2683"
        "8e473fae7b1268e730f03680fcf5ed1b2b1bd110951d341100a707495f11bd0676095a14186106ed442b6e217e8ab6cb453a9b53"
        "6ef2feb6e086a43569b84ec4dd3292d223f8950e97ca69df2b0ad7c52daaab124b0a45a65925563e0170ebf218d591b3d24b2994"
        "ec7ae676d734c19c10c61e380a270111642a5308634abed6fd4197edb81b0ea90eaa9f322612"
    ),
)


def _golden_records() -> list[dict]:
    with GOLDEN_CHAIN.open("rb") as fp:
        return list(read_jsonl(fp))


def _chain_of_the_golden_events() -> list[dict]:
    """The same events, written again by today's chain writer."""
    chain = AuditChain(CheckpointSigner(AUDIT_KEY), checkpoint_every=3)
    records = []
    for n, payload in enumerate(PAYLOADS):
        kind = KINDS[n % 4]
        records.append(
            chain.append(
                event_id=f"keyturn.test:{n}:{kind}",
                event_type=kind,
                source_topic="keyturn.test",
                occurred_at=T0 + 1000 * n,
                payload=payload,
                now=T0 + 1000 * n + 7,
                action_id=payload["action_id"] if isinstance(payload, dict) else "act-0002",
                actor="human:alice" if kind == "ApprovalResolved" else "agent:reporter",
                flags=["break_glass", "mandatory_review"] if n == 2 else [],
            )
        )
        if chain.checkpoint_due:
            records.append(chain.checkpoint(T0 + 1000 * n + 9))
    records.append(chain.checkpoint(T0 + 99_000))
    return [record.to_dict() for record in records]


def test_an_audit_chain_written_before_still_verifies():
    report = verify(
        _golden_records(), CheckpointVerifier.from_keys([AUDIT_KEY.public_key()]), require_checkpoint_at_end=True
    )
    assert report.ok, report.summary()
    assert report.records_checked == 10 and report.last_checkpoint_sequence == 9


def test_the_same_events_still_make_the_same_records_and_hashes():
    assert _chain_of_the_golden_events() == _golden_records()


def test_a_payload_digest_stays_the_same_bytes():
    assert canonical_json(DOCUMENT) == DOCUMENT_JSON
    assert str(Digest.of_json(DOCUMENT)) == DOCUMENT_DIGEST


def test_parameters_sealed_before_still_open_and_seal_to_the_same_bytes(monkeypatch):
    opened = open_sealed(SEALED, action_id="act-golden", payload_digest=DOCUMENT_DIGEST, keyring=SEAL_KEYRING)
    assert opened == DOCUMENT["parameters"]
    monkeypatch.setattr("keyturn.masking.sealing.secrets.token_bytes", lambda n: SEALED.nonce)
    again = seal_parameters(
        DOCUMENT["parameters"], action_id="act-golden", payload_digest=DOCUMENT_DIGEST, keyring=SEAL_KEYRING
    )
    assert again == SEALED


def standard_spelling(value):
    """Canonical JSON as the standard library spells it: what every chain, digest and seal was
    written with."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES)
def test_json_values_keep_the_spelling_digests_and_seals_were_made_with(value):
    """Payload digests, policy input and seals are computed over JSON values (parsed JSON): for
    those, canonical JSON is exactly this spelling, as it has always been."""
    assert canonical_json(value) == standard_spelling(value)


#: Every character a string can hold and UTF-8 can carry (no lone surrogates): controls, quotes,
#: backslashes, line separators, the byte-order mark, astral characters.
_ANY_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
FLOATLESS_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80) | _ANY_TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_ANY_TEXT, children, max_size=5),
    max_leaves=25,
)


@settings(max_examples=1000, deadline=None)
@given(FLOATLESS_VALUES)
def test_the_fast_writer_spells_every_value_without_floats_as_the_standard_library_does(value):
    """Audit hashes and float-free payloads are written by orjson: every string (escapes, keys
    sorted by code point), integer (past 64 bits too) and nesting must come out byte for byte as
    the spelling the chains were written with."""
    assert canonical_json_without_floats(value) == standard_spelling(value)
    assert canonical_json(value) == standard_spelling(value)


@pytest.mark.parametrize("number", [1e-05, 1e16, 1.5e300, 5e-324, 0.1, -0.0, 123456789012345678.0])
def test_a_float_the_fast_writer_would_spell_otherwise_keeps_its_spelling(number):
    """orjson writes ``0.00001`` for ``1e-05``: a value holding a float is written as before."""
    value = {"a": [number], "b": "x"}
    assert canonical_json(value) == standard_spelling(value)


@pytest.mark.parametrize("number", [float("nan"), float("inf"), -float("inf")])
def test_a_number_json_cannot_spell_is_refused_not_written_as_null(number):
    """orjson would write ``null``: two different documents must never share a spelling."""
    with pytest.raises(ValueError):
        canonical_json({"ratio": number})


def test_keys_that_are_not_strings_are_refused_rather_than_guessed_at():
    """A digest over ``{1: ...}`` and ``{"1": ...}`` must not be the same: neither is spelt."""
    with pytest.raises(TypeError, match="keys must be strings"):
        Digest.of_json({"parameters": {1: "one"}})
