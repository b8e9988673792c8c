"""Sealing: the clear parameters, encrypted so that only the executor can read them.

AES-256-GCM with a random 96-bit nonce per seal. The associated data binds a sealed copy to
its action and to the digest of the exact parameters approved (invariant 3), so a sealed
blob copied onto another action, or kept after the parameters changed, does not open::

    associated data = b"keyturn.seal.v1" NUL key_id NUL action_id NUL payload_digest

(NUL-separated so that no two different triples give the same bytes). The plaintext is the
parameters as canonical JSON (``keyturn.core.canonical``): sorted keys, no spaces, UTF-8.

Keys rotate: a :class:`Keyring` seals with its current key and opens with any key it holds,
so retired keys stay in the ring until no unopened blob needs them. Configuration:

``KEYTURN_SEAL_KEYS``
    ``kid1:base64key,kid2:base64key`` — the first is current, the others only open. Each key
    is 32 random bytes in standard base64 (``python -c "import os,base64;
    print(base64.b64encode(os.urandom(32)).decode())"``). Required in production.
``Keyring.load_or_create(path)``
    local development only: the same format in a file created with mode 0600 on first use.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keyturn.core.canonical import canonical_json
from keyturn.core.events import SealedParameters

ENV_VARIABLE = "KEYTURN_SEAL_KEYS"
KEY_BYTES = 32
NONCE_BYTES = 12
_KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_AAD_PREFIX = b"keyturn.seal.v1"


class SealError(Exception):
    """Sealed parameters could not be opened, or a keyring is unusable."""


class SealTampered(SealError):
    """The sealed parameters fail authentication: edited, or bound to another action."""


class UnknownSealKey(SealError):
    """The sealed parameters name a key id this keyring does not hold."""


class InvalidKeyring(SealError, ValueError):
    """A keyring specification or key file is malformed or unsafe."""


@dataclass(frozen=True)
class Keyring:
    """Seal keys by id; ``current_key_id`` seals, every key opens."""

    current_key_id: str
    keys: Mapping[str, bytes] = field(repr=False)

    def __post_init__(self) -> None:
        if self.current_key_id not in self.keys:
            raise InvalidKeyring(f"current seal key {self.current_key_id!r} is not in the ring")
        for key_id, key in self.keys.items():
            if not _KEY_ID.fullmatch(key_id):
                raise InvalidKeyring(f"seal key id {key_id!r} must be 1-64 of letters, digits, '.', '_', '-'")
            if len(key) != KEY_BYTES:
                raise InvalidKeyring(f"seal key {key_id!r} is {len(key)} bytes; AES-256 needs {KEY_BYTES}")
        object.__setattr__(self, "keys", dict(self.keys))

    def __repr__(self) -> str:
        return f"Keyring(current_key_id={self.current_key_id!r}, key_ids={list(self.keys)!r})"

    @classmethod
    def generate(cls, key_id: str | None = None) -> Keyring:
        """A ring with one fresh random key."""
        key_id = key_id or _new_key_id()
        return cls(key_id, {key_id: AESGCM.generate_key(bit_length=256)})

    @classmethod
    def parse(cls, spec: str) -> Keyring:
        """A ring from ``kid1:base64key,kid2:base64key``; the first key is current."""
        keys: dict[str, bytes] = {}
        for position, entry in enumerate((part.strip() for part in spec.split(",")), 1):
            if not entry:
                continue
            key_id, sep, encoded = entry.partition(":")
            if not sep:
                # Never echo the entry: without its "kid:" it is most likely a bare key.
                raise InvalidKeyring(f"seal key entry {position} has no ':'; expected kid:base64key")
            if key_id in keys:
                raise InvalidKeyring(f"seal key id {key_id!r} appears twice")
            try:
                keys[key_id] = base64.b64decode(encoded.strip(), validate=True)
            except (binascii.Error, ValueError):
                raise InvalidKeyring(f"seal key {key_id!r} is not valid base64") from None
        if not keys:
            raise InvalidKeyring("no seal keys given; expected kid1:base64key[,kid2:…]")
        return cls(next(iter(keys)), keys)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Keyring:
        """The ring configured in ``KEYTURN_SEAL_KEYS``."""
        environ = os.environ if environ is None else environ
        spec = environ.get(ENV_VARIABLE, "").strip()
        if not spec:
            raise InvalidKeyring(
                f"{ENV_VARIABLE} is not set; set it to kid:base64key (32 random bytes), "
                "or use Keyring.load_or_create(path) for local development"
            )
        return cls.parse(spec)

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str]) -> Keyring:
        """The ring in ``path``, created with one new key and mode 0600 if missing.

        For local development, where intake and executor may start together: the file is
        written aside and linked into place, so a reader never sees it half written and
        only one new key wins. Refuses a file that group or others can read.
        """
        path = Path(path)
        if not path.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            draft = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
            descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(descriptor, "w", encoding="ascii") as file:
                    file.write(cls.generate().to_spec() + "\n")
                    file.flush()
                    os.fsync(file.fileno())
                try:
                    os.link(draft, path)
                except FileExistsError:
                    pass  # another process created it first; use theirs
            finally:
                draft.unlink()
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise InvalidKeyring(f"seal key file {path} has mode {mode:04o}; run chmod 600 {path}")
        return cls.parse(path.read_text(encoding="ascii"))

    def rotated(self, key_id: str | None = None) -> Keyring:
        """A ring sealing with a new random key that still opens with every current key."""
        key_id = key_id or _new_key_id()
        if key_id in self.keys:
            raise InvalidKeyring(f"seal key id {key_id!r} is already in the ring")
        keys = {key_id: AESGCM.generate_key(bit_length=256), **self.keys}
        return Keyring(key_id, keys)

    def to_spec(self) -> str:
        """The ``KEYTURN_SEAL_KEYS`` form of this ring, current key first. Secret."""
        ordered = [self.current_key_id] + [k for k in self.keys if k != self.current_key_id]
        return ",".join(f"{k}:{base64.b64encode(self.keys[k]).decode()}" for k in ordered)


def seal_parameters(
    parameters: Mapping[str, Any], *, action_id: str, payload_digest: str, keyring: Keyring
) -> SealedParameters:
    """Encrypt ``parameters`` with the current key, bound to ``action_id`` and its digest."""
    key_id = keyring.current_key_id
    nonce = secrets.token_bytes(NONCE_BYTES)
    ciphertext = AESGCM(keyring.keys[key_id]).encrypt(
        nonce, canonical_json(parameters).encode("utf-8"), _associated_data(key_id, action_id, payload_digest)
    )
    return SealedParameters(key_id=key_id, nonce=nonce, ciphertext=ciphertext)


def open_sealed(sealed: SealedParameters, *, action_id: str, payload_digest: str, keyring: Keyring) -> dict[str, Any]:
    """The clear parameters, if ``sealed`` was sealed for exactly this action and digest.

    Raises :class:`UnknownSealKey` when the key id is not in the ring and
    :class:`SealTampered` when authentication fails.
    """
    key = keyring.keys.get(sealed.key_id)
    if key is None:
        raise UnknownSealKey(
            f"sealed parameters of action {action_id} use seal key {sealed.key_id!r}, which "
            f"is not in the keyring (holding {', '.join(sorted(keyring.keys))}); keep retired "
            f"keys after the current one in {ENV_VARIABLE} until their blobs are executed"
        )
    if len(sealed.nonce) != NONCE_BYTES:
        raise SealTampered(
            f"sealed parameters of action {action_id} have a {len(sealed.nonce)}-byte nonce; seals use {NONCE_BYTES}"
        )
    try:
        clear = AESGCM(key).decrypt(
            sealed.nonce,
            sealed.ciphertext,
            _associated_data(sealed.key_id, action_id, payload_digest),
        )
    except InvalidTag:
        raise SealTampered(
            f"sealed parameters do not open for action {action_id} with payload digest "
            f"{payload_digest}: either they were sealed for another action or digest "
            "(replayed), or the ciphertext or nonce was altered; refuse to execute"
        ) from None
    return json.loads(clear)


def _associated_data(key_id: str, action_id: str, payload_digest: str) -> bytes:
    parts = (key_id, action_id, payload_digest)
    if any("\x00" in part for part in parts):
        raise SealError("key id, action id and payload digest must not contain NUL")
    return b"\x00".join((_AAD_PREFIX, *(part.encode("utf-8") for part in parts)))


def _new_key_id() -> str:
    return "seal-" + secrets.token_hex(4)
