"""Secrets the executor uses on an agent's behalf, which the agent never sees.

An agent names a secret, never its value: ``{"secret": "NAME"}`` anywhere inside an action's
parameters (an ``http.request`` header, a ``sql.query`` ``connection_string``). The reference
is what travels, is approved and is hashed into the payload digest; only the executor, right
before the plugin runs, replaces it with the value from a ``SecretStore``
(``resolve_references``), and replaces the value back with ``<SECRET:NAME>`` in whatever the
plugin answers (``redact``), so no topic, log, result or audit record carries it.

``PostgresSecretStore`` keeps each secret as a row sealed with the seal keys
(``KEYTURN_SEAL_KEYS``, AES-GCM, bound to the secret's name so rows cannot be swapped); an
operator puts one with ``keyturn secrets put NAME`` (the value read from stdin). It is the
small built-in store; the interface (``get``, ``put``) is meant for the real ones: HashiCorp
Vault's KV engine, AWS Secrets Manager, Google Secret Manager, Azure Key Vault.

``secrets.read`` as an action is not how a secret reaches anyone: see the catalog's execution
modes (``data.keyturn.execution``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from keyturn.core.events import SealedParameters
from keyturn.core.parameters import is_secret_reference
from keyturn.masking.sealing import Keyring, SealError, open_sealed, seal_parameters

DDL = """
CREATE TABLE IF NOT EXISTS {schema}.secrets (
    name        text PRIMARY KEY,
    key_id      text NOT NULL,
    nonce       bytea NOT NULL,
    ciphertext  bytea NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
"""
_DIGEST = "keyturn-secret-store"  # what the seal binds besides the name (no action digest applies)


class SecretNotFound(LookupError):
    """No secret by that name (or it does not open): the action fails, naming the reference."""


class SecretStore(Protocol):
    async def get(self, name: str) -> str: ...

    async def put(self, name: str, value: str) -> None: ...


class PostgresSecretStore:
    """Secrets as sealed rows of ``<schema>.secrets`` on Keyturn's own database."""

    def __init__(self, pool: Any, keyring: Keyring) -> None:
        self.pool = pool  # a keyturn.db pool whose search_path is the namespace's schema
        self.keyring = keyring

    async def put(self, name: str, value: str) -> None:
        sealed = seal_parameters(
            {"value": value}, action_id=f"secret:{name}", payload_digest=_DIGEST, keyring=self.keyring
        )
        async with self.pool.connection() as conn:
            await conn.execute(
                "INSERT INTO secrets (name, key_id, nonce, ciphertext) VALUES (%s, %s, %s, %s) ON CONFLICT (name) "
                "DO UPDATE SET key_id = EXCLUDED.key_id, nonce = EXCLUDED.nonce, ciphertext = EXCLUDED.ciphertext, "
                "updated_at = now()",
                (name, sealed.key_id, sealed.nonce, sealed.ciphertext),
            )

    async def get(self, name: str) -> str:
        async with self.pool.connection() as conn:
            cursor = await conn.execute("SELECT key_id, nonce, ciphertext FROM secrets WHERE name = %s", (name,))
            row = await cursor.fetchone()
        if row is None:
            raise SecretNotFound(f"no secret named {name!r} in the secret store")
        sealed = SealedParameters(key_id=row[0], nonce=bytes(row[1]), ciphertext=bytes(row[2]))
        try:
            return str(
                open_sealed(sealed, action_id=f"secret:{name}", payload_digest=_DIGEST, keyring=self.keyring)["value"]
            )
        except SealError as exc:
            raise SecretNotFound(
                f"the secret {name!r} does not open with the seal keys ({type(exc).__name__})"
            ) from None


is_reference = is_secret_reference  # the one rule (``core.parameters``)


def references_in(value: Any) -> list[str]:
    """The secret names ``value`` refers to, in order."""
    if is_reference(value):
        return [value["secret"]]
    if isinstance(value, Mapping):
        return [name for item in value.values() for name in references_in(item)]
    if isinstance(value, list):
        return [name for item in value for name in references_in(item)]
    return []


async def resolve_references(parameters: dict[str, Any], store: SecretStore) -> tuple[dict[str, Any], dict[str, str]]:
    """``parameters`` with every reference replaced by its secret, and the secrets used by name."""
    used: dict[str, str] = {}
    for name in references_in(parameters):
        if name not in used:
            used[name] = await store.get(name)

    def replaced(value: Any) -> Any:
        if is_reference(value):
            return used[value["secret"]]
        if isinstance(value, Mapping):
            return {key: replaced(item) for key, item in value.items()}
        if isinstance(value, list):
            return [replaced(item) for item in value]
        return value

    return replaced(parameters), used


def redact(value: Any, used: Mapping[str, str]) -> Any:
    """``value`` (a result or a message) with every secret used replaced by ``<SECRET:name>``."""
    if not used:
        return value
    if isinstance(value, str):
        for name, secret in sorted(used.items(), key=lambda kv: -len(kv[1])):
            if secret:
                value = value.replace(secret, f"<SECRET:{name}>")
        return value
    if isinstance(value, Mapping):
        return {redact(key, used): redact(item, used) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(item, used) for item in value]
    return value
