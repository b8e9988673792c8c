"""Sealing: only the executor, for exactly the approved action and digest, opens parameters."""

from __future__ import annotations

import base64
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from keyturn.masking import (
    InvalidKeyring,
    Keyring,
    SealTampered,
    UnknownSealKey,
    open_sealed,
    seal_parameters,
)

ACTION = "act-7f3a9c2e"
DIGEST = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
PARAMETERS = {
    "query": "SELECT id FROM customers WHERE region = 'eu'",
    "destination": {"bucket": "s3://exports-eu/", "password": "hunter2"},
    "limit": 1000,
    "notify": ["ops@example.com"],
}


@pytest.fixture
def keyring() -> Keyring:
    return Keyring.generate("seal-2024-05")


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def test_sealed_parameters_open_to_the_clear_parameters(keyring):
    sealed = seal_parameters(PARAMETERS, action_id=ACTION, payload_digest=DIGEST, keyring=keyring)
    assert sealed.key_id == "seal-2024-05"
    assert len(sealed.nonce) == 12
    assert b"hunter2" not in sealed.ciphertext
    opened = open_sealed(sealed, action_id=ACTION, payload_digest=DIGEST, keyring=keyring)
    assert opened == PARAMETERS


def test_each_seal_uses_a_fresh_nonce(keyring):
    first = seal_parameters(PARAMETERS, action_id=ACTION, payload_digest=DIGEST, keyring=keyring)
    second = seal_parameters(PARAMETERS, action_id=ACTION, payload_digest=DIGEST, keyring=keyring)
    assert first.nonce != second.nonce and first.ciphertext != second.ciphertext


def test_the_sealed_bytes_are_canonical_json(keyring):
    def clear_bytes(parameters: dict) -> bytes:
        sealed = seal_parameters(parameters, action_id=ACTION, payload_digest=DIGEST, keyring=keyring)
        return AESGCM(keyring.keys[sealed.key_id]).decrypt(
            sealed.nonce,
            sealed.ciphertext,
            b"\x00".join((b"keyturn.seal.v1", sealed.key_id.encode(), ACTION.encode(), DIGEST.encode())),
        )

    assert clear_bytes({"b": [1, {"d": "é", "c": None}], "a": True}) == '{"a":true,"b":[1,{"c":null,"d":"é"}]}'.encode()
    assert clear_bytes({"x": 1, "y": 2}) == clear_bytes({"y": 2, "x": 1})


def test_non_json_numbers_are_refused_before_sealing(keyring):
    with pytest.raises(ValueError):
        seal_parameters({"x": float("nan")}, action_id=ACTION, payload_digest=DIGEST,
                        keyring=keyring)  # fmt: skip


@pytest.mark.parametrize("index", [0, 17, -1])
def test_an_edited_ciphertext_is_refused(keyring, index):
    sealed = seal_parameters(PARAMETERS, action_id=ACTION, payload_digest=DIGEST, keyring=keyring)
    edited = replace(sealed, ciphertext=_flip(sealed.ciphertext, index % len(sealed.ciphertext)))
    with pytest.raises(SealTampered, match="altered"):
        open_sealed(edited, action_id=ACTION, payload_digest=DIGEST, keyring=keyring)


def test_an_edited_nonce_is_refused(keyring):
    sealed = seal_parameters(PARAMETERS, action_id=ACTION, payload_digest=DIGEST, keyring=keyring)
    with pytest.raises(SealTampered):
        open_sealed(replace(sealed, nonce=_flip(sealed.nonce, 0)), action_id=ACTION,
                    payload_digest=DIGEST, keyring=keyring)  # fmt: skip
    with pytest.raises(SealTampered, match="nonce"):
        open_sealed(replace(sealed, nonce=sealed.nonce[:8]), action_id=ACTION,
                    payload_digest=DIGEST, keyring=keyring)  # fmt: skip


def test_a_seal_replayed_onto_another_action_is_refused(keyring):
    sealed = seal_parameters(PARAMETERS, action_id=ACTION, payload_digest=DIGEST, keyring=keyring)
    with pytest.raises(SealTampered, match=r"act-other.*another action or digest"):
        open_sealed(sealed, action_id="act-other", payload_digest=DIGEST, keyring=keyring)


def test_a_seal_for_other_parameters_is_refused(keyring):
    sealed = seal_parameters(PARAMETERS, action_id=ACTION, payload_digest=DIGEST, keyring=keyring)
    with pytest.raises(SealTampered):
        open_sealed(sealed, action_id=ACTION, payload_digest=DIGEST[:-1] + "9", keyring=keyring)


def test_action_id_and_digest_cannot_be_shifted_into_each_other(keyring):
    sealed = seal_parameters(PARAMETERS, action_id="act-1", payload_digest="2abc", keyring=keyring)
    with pytest.raises(SealTampered):
        open_sealed(sealed, action_id="act-12", payload_digest="abc", keyring=keyring)


def test_a_relabelled_key_id_is_refused():
    ring = Keyring("a", {"a": os.urandom(32), "b": os.urandom(32)})
    other = Keyring("b", ring.keys)
    sealed = seal_parameters(PARAMETERS, action_id=ACTION, payload_digest=DIGEST, keyring=other)
    with pytest.raises(SealTampered):
        open_sealed(replace(sealed, key_id="a"), action_id=ACTION, payload_digest=DIGEST,
                    keyring=ring)  # fmt: skip


def test_old_keys_still_open_old_seals_after_rotation(keyring):
    old = seal_parameters(PARAMETERS, action_id=ACTION, payload_digest=DIGEST, keyring=keyring)
    rotated = keyring.rotated("seal-2024-06")
    new = seal_parameters(PARAMETERS, action_id=ACTION, payload_digest=DIGEST, keyring=rotated)

    assert rotated.current_key_id == "seal-2024-06"
    assert new.key_id == "seal-2024-06"
    assert open_sealed(old, action_id=ACTION, payload_digest=DIGEST, keyring=rotated) == PARAMETERS
    assert open_sealed(new, action_id=ACTION, payload_digest=DIGEST, keyring=rotated) == PARAMETERS
    with pytest.raises(UnknownSealKey):
        open_sealed(new, action_id=ACTION, payload_digest=DIGEST, keyring=keyring)


def test_an_unknown_key_id_is_named_in_the_error(keyring):
    sealed = seal_parameters(PARAMETERS, action_id=ACTION, payload_digest=DIGEST, keyring=keyring)
    stranger = Keyring.generate("seal-other")
    with pytest.raises(UnknownSealKey, match=r"'seal-2024-05'.*not in the keyring.*seal-other"):
        open_sealed(sealed, action_id=ACTION, payload_digest=DIGEST, keyring=stranger)


def test_the_environment_lists_keys_current_first():
    k1, k2 = os.urandom(32), os.urandom(32)
    spec = f"new:{base64.b64encode(k1).decode()}, old:{base64.b64encode(k2).decode()}"
    ring = Keyring.from_env({"KEYTURN_SEAL_KEYS": spec})
    assert ring.current_key_id == "new"
    assert ring.keys == {"new": k1, "old": k2}
    assert Keyring.parse(ring.to_spec()) == ring


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "not set"),
        ("k1", "no ':'"),
        ("k1:not-base64!", "not valid base64"),
        (f"k1:{base64.b64encode(b'short').decode()}", "5 bytes; AES-256 needs 32"),
        (f"bad id:{base64.b64encode(bytes(32)).decode()}", "must be 1-64"),
        (f"k1:{base64.b64encode(bytes(32)).decode()},k1:{base64.b64encode(bytes(32)).decode()}",
         "appears twice"),
    ],
)  # fmt: skip
def test_a_malformed_environment_is_refused_with_a_reason(spec, message):
    with pytest.raises(InvalidKeyring, match=message):
        Keyring.from_env({"KEYTURN_SEAL_KEYS": spec})


def test_a_bare_key_without_its_id_is_not_echoed_in_the_error():
    bare = base64.b64encode(bytes(range(32))).decode()
    with pytest.raises(InvalidKeyring) as refused:
        Keyring.parse(bare)
    assert bare[:4] not in str(refused.value)


def test_key_bytes_never_show_in_the_keyring_repr():
    key = os.urandom(32)
    text = repr(Keyring("k1", {"k1": key}))
    assert "k1" in text
    assert repr(key) not in text and base64.b64encode(key).decode() not in text


def test_a_local_key_file_is_created_private_and_reused(tmp_path):
    path = tmp_path / "seal.keys"
    created = Keyring.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Keyring.load_or_create(path) == created
    sealed = seal_parameters(PARAMETERS, action_id=ACTION, payload_digest=DIGEST, keyring=created)
    reloaded = Keyring.load_or_create(path)
    assert open_sealed(sealed, action_id=ACTION, payload_digest=DIGEST, keyring=reloaded)


def test_the_key_file_directory_is_created_private(tmp_path):
    path = tmp_path / "run" / "keys" / "seal.keys"
    Keyring.load_or_create(path)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["seal.keys"]


def test_processes_starting_together_share_one_key_file(tmp_path):
    path = tmp_path / "seal.keys"
    with ThreadPoolExecutor(max_workers=8) as pool:
        rings = list(pool.map(lambda _: Keyring.load_or_create(path), range(16)))
    assert all(ring == rings[0] for ring in rings)


def test_a_readable_key_file_is_refused(tmp_path):
    path = tmp_path / "seal.keys"
    Keyring.load_or_create(path)
    path.chmod(0o644)
    with pytest.raises(InvalidKeyring, match="chmod 600"):
        Keyring.load_or_create(path)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=10,
)  # fmt: skip


@settings(max_examples=50, deadline=None, database=None)
@given(parameters=st.dictionaries(st.text(max_size=8), json_values, max_size=4))
def test_any_json_object_round_trips(parameters):
    ring = Keyring.generate()
    sealed = seal_parameters(parameters, action_id=ACTION, payload_digest=DIGEST, keyring=ring)
    assert open_sealed(sealed, action_id=ACTION, payload_digest=DIGEST, keyring=ring) == parameters
