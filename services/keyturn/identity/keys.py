"""The local signing key: one ES256 (P-256) key on disk, published as a JWKS.

For development and tests only; in production tokens come from the organisation's identity
provider and Keyturn only verifies them against that provider's JWKS.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

PRIVATE_KEY_FILE = "signing-key.pem"
SIGNING_ALGORITHM = "ES256"

# RFC 7638 section 3.2: the members that identify a key, per key type.
_THUMBPRINT_MEMBERS = {
    "EC": ("crv", "kty", "x", "y"),
    "RSA": ("e", "kty", "n"),
    "OKP": ("crv", "kty", "x"),
}


class SigningKeyError(Exception):
    """The signing key file cannot be used; the message says how to fix it."""


@dataclass(frozen=True)
class SigningKey:
    """An ES256 private key and its RFC 7638 thumbprint, used as the ``kid``."""

    private_key: ec.EllipticCurvePrivateKey = field(repr=False)
    kid: str
    algorithm: str = SIGNING_ALGORITHM

    @classmethod
    def from_private_key(cls, private_key: ec.EllipticCurvePrivateKey) -> SigningKey:
        """Wrap a P-256 private key, deriving its kid from the public half."""
        if not isinstance(private_key, ec.EllipticCurvePrivateKey) or not isinstance(private_key.curve, ec.SECP256R1):
            raise SigningKeyError("the signing key must be an EC P-256 private key (ES256)")
        return cls(private_key=private_key, kid=jwk_thumbprint(_public_ec_jwk(private_key)))

    @classmethod
    def generate(cls) -> SigningKey:
        """A fresh key held only in memory."""
        return cls.from_private_key(ec.generate_private_key(ec.SECP256R1()))

    def public_jwk(self) -> dict[str, str]:
        """The public key as a JWK with its kid, algorithm and use."""
        public = _public_ec_jwk(self.private_key)
        return {**public, "kid": self.kid, "alg": self.algorithm, "use": "sig"}

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The public JWKS document that verifiers load."""
        return {"keys": [self.public_jwk()]}

    def private_key_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM; write it only to a 0600 file."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def load_or_create_signing_key(directory: Path) -> SigningKey:
    """The key stored in ``directory``, created there (mode 0600) on first run.

    Safe when several local services start at once: exactly one key is ever written.
    """
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / PRIVATE_KEY_FILE
    if not path.exists():
        _write_new_key(path)
    return _read_key(path)


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """The RFC 7638 SHA-256 thumbprint of a public JWK, base64url without padding."""
    members = _THUMBPRINT_MEMBERS.get(jwk.get("kty", ""))
    if members is None:
        raise ValueError(f"cannot take the thumbprint of a key of type {jwk.get('kty')!r}")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def _write_new_key(path: Path) -> None:
    pem = SigningKey.generate().private_key_pem()
    staging = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask may have narrowed the mode; set it exactly
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(staging, path)  # fails if another process got there first; its key wins
    except FileExistsError:
        pass
    finally:
        staging.unlink()


def _read_key(path: Path) -> SigningKey:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise SigningKeyError(
            f"{path} is readable by other users (mode {mode:o}); run 'chmod 600 {path}' "
            "or delete it to have a new key created"
        )
    try:
        private_key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except ValueError as exc:
        raise SigningKeyError(
            f"{path} is not an unencrypted PEM private key ({exc}); delete it to have a new key created"
        ) from exc
    if not isinstance(private_key, ec.EllipticCurvePrivateKey):
        raise SigningKeyError(f"{path} must hold an EC P-256 key; delete it to have one created")
    return SigningKey.from_private_key(private_key)


def _public_ec_jwk(private_key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    numbers = private_key.public_key().public_numbers()
    size = (private_key.curve.key_size + 7) // 8
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": _b64url(numbers.x.to_bytes(size, "big")),
        "y": _b64url(numbers.y.to_bytes(size, "big")),
    }


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
