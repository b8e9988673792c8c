"""Signed checkpoints: Ed25519 signing and checking, key ids, and the message a checkpoint signs.

A checkpoint is a record of type ``Checkpoint`` whose ``checkpoint`` field carries an Ed25519
signature over :func:`checkpoint_message` of (``covers_sequence``, ``chain_hash``, ``key_id``):
it vouches that the chain up to the record before it ends in that hash. Without the private key
nobody can rewrite history behind a checkpoint; records after the last checkpoint are only as
trustworthy as the medium holding them, which :func:`keyturn.core.audit.verify.verify` reports.

Pure: no I/O (keys are loaded by ``keyturn.audit.keys``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from keyturn.core.audit.record import Checkpoint
from keyturn.core.canonical import canonical_json

CHECKPOINT_DOMAIN = "keyturn.AuditRecord.checkpoint/v1"


def checkpoint_message(covers_sequence: int, chain_hash: str, key_id: str) -> bytes:
    """The bytes a checkpoint signs: canonical JSON of the statement, domain-separated."""
    statement = {
        "chain_hash": chain_hash,
        "covers_sequence": covers_sequence,
        "domain": CHECKPOINT_DOMAIN,
        "key_id": key_id,
    }
    return canonical_json(statement).encode("utf-8")


def key_id_for(public_key: Ed25519PublicKey) -> str:
    """A stable id for a checkpoint key: ``ed25519:`` and 16 hex of SHA-256 of its raw bytes."""
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


class CheckpointSigner:
    """Signs checkpoints with one Ed25519 private key, under ``key_id``."""

    def __init__(self, private_key: Ed25519PrivateKey, key_id: str | None = None) -> None:
        self._private_key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id if key_id is not None else key_id_for(self.public_key)

    def sign(self, covers_sequence: int, chain_hash: str) -> Checkpoint:
        """A checkpoint vouching that the chain up to ``covers_sequence`` ends in ``chain_hash``."""
        message = checkpoint_message(covers_sequence, chain_hash, self.key_id)
        return Checkpoint(
            covers_sequence=covers_sequence,
            chain_hash=chain_hash,
            key_id=self.key_id,
            signature=self._private_key.sign(message).hex(),
        )


class CheckpointRejected(Exception):
    """A checkpoint that does not prove anything."""


class UnknownCheckpointKey(CheckpointRejected):
    """The checkpoint names a key that is not among the trusted ones."""


class ForgedCheckpoint(CheckpointRejected):
    """The checkpoint's signature does not verify with the key it names."""


class CheckpointVerifier:
    """Checks checkpoint signatures against trusted public keys, by key id.

    Keep retired keys here after rotation: old checkpoints stay signed with them.
    """

    def __init__(self, public_keys: Mapping[str, Ed25519PublicKey]) -> None:
        self._public_keys = dict(public_keys)

    @classmethod
    def from_keys(cls, public_keys: Iterable[Ed25519PublicKey]) -> CheckpointVerifier:
        """A verifier trusting ``public_keys`` under the ids :func:`key_id_for` gives them."""
        return cls({key_id_for(key): key for key in public_keys})

    @property
    def key_ids(self) -> frozenset[str]:
        """The ids of the trusted keys."""
        return frozenset(self._public_keys)

    def verify(self, checkpoint: Checkpoint) -> None:
        """Return if the signature is genuine; raise :class:`CheckpointRejected` otherwise."""
        public_key = self._public_keys.get(checkpoint.key_id)
        if public_key is None:
            raise UnknownCheckpointKey(
                f"it is signed with key {checkpoint.key_id!r}, which is not a trusted checkpoint key"
            )
        try:
            signature = bytes.fromhex(checkpoint.signature)
        except ValueError:
            raise ForgedCheckpoint("its signature is not hexadecimal") from None
        message = checkpoint_message(checkpoint.covers_sequence, checkpoint.chain_hash, checkpoint.key_id)
        try:
            public_key.verify(signature, message)
        except InvalidSignature:
            raise ForgedCheckpoint(
                f"its signature does not verify with key {checkpoint.key_id!r}: it is forged "
                "or the checkpoint was altered"
            ) from None
