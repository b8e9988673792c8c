"""Checkpoint signing keys as PEM files, for local development.

Production keys live in the deployment's secret store; these helpers give ``make run`` a key
that is created once, owner-readable only, and a public key file verifiers can be given.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from os import PathLike
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)

from keyturn.core.audit.checkpoint import CheckpointSigner, CheckpointVerifier

KeyPath = str | PathLike[str]


class InsecureKeyFile(PermissionError):
    """A private key file that others than its owner can read or write."""


class WrongKeyType(ValueError):
    """A PEM file holding something other than an Ed25519 key."""


def create_signing_key(path: KeyPath) -> Ed25519PrivateKey:
    """Generate an Ed25519 key and write it as unencrypted PKCS#8 PEM, mode 0600.

    Refuses to overwrite an existing file (``FileExistsError``): losing a signing key leaves
    its checkpoints verifiable only by whoever kept the public key.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(pem)
    return key


def load_signing_key(path: KeyPath) -> Ed25519PrivateKey:
    """Read an Ed25519 private key PEM; refuses a file readable by group or others."""
    path = Path(path)
    mode = path.stat().st_mode
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InsecureKeyFile(
            f"{path} is accessible to other users (mode {stat.filemode(mode)}); run: chmod 600 {path}"
        )
    key = load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise WrongKeyType(f"{path} holds a {type(key).__name__}, not an Ed25519 private key")
    return key


def load_or_create_signing_key(path: KeyPath) -> Ed25519PrivateKey:
    """The key at ``path``, created on first use."""
    try:
        return create_signing_key(path)
    except FileExistsError:
        return load_signing_key(path)


def write_public_key(public_key: Ed25519PublicKey, path: KeyPath) -> None:
    """Write the public half as SubjectPublicKeyInfo PEM, for verifiers."""
    Path(path).write_bytes(public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))


def load_public_key(path: KeyPath) -> Ed25519PublicKey:
    """Read an Ed25519 public key PEM."""
    key = load_pem_public_key(Path(path).read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise WrongKeyType(f"{path} holds a {type(key).__name__}, not an Ed25519 public key")
    return key


def load_signer(path: KeyPath) -> CheckpointSigner:
    """A checkpoint signer for the key at ``path`` (created on first use), id derived from it."""
    return CheckpointSigner(load_or_create_signing_key(path))


def load_verifier(public_key_paths: Iterable[KeyPath]) -> CheckpointVerifier:
    """A verifier trusting the public keys in these files, under their derived key ids."""
    return CheckpointVerifier.from_keys(load_public_key(path) for path in public_key_paths)
