"""Every service of a deployment holds the same seal keys: checked as each one starts.

The seal keyring (``KEYTURN_SEAL_KEYS``) does two jobs across services: the intake seals
parameters that the executor (and the policy's impact preview) open, and the policy and approval
services warrant the orders that the executor and the intake check (``bus.warrants``). A service
started with another ring breaks both, quietly: on hosts where ``KEYTURN_SEAL_KEYS`` was left
unset each service makes a local key of its own, and then the executor refuses every order as
unwarranted, with a warning per record, and every action waits for good.

So each service that keeps state in Keyturn's database checks its ring there as it starts,
against what the services before it recorded, and refuses to start on a disagreement, naming
key ids and services only:

- a key id must stand for the same key in every ring;
- each service must hold the key every other service seals and warrants with (its current key),
  and its own current key must be in every other service's ring. A rotation therefore adds the
  new key to every ring first and makes it current afterwards, as ``Keyring.rotated`` assumes.

Of a key, only a check value is recorded: HMAC-SHA256(key, ``keyturn.keyring.check.v1``), as the
warrants derive theirs. Two equal keys give equal values; the value gives nothing of the key.

A service is recorded by its name (the intake, the policy…): the last replica to start speaks for
all. The audit service keeps no state in the database but checks warrants, and one with another
ring would leave every genuine event out of the chain: it checks with a connection of its own
(``start_only_in_agreement_at``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from keyturn.masking.sealing import Keyring

log = logging.getLogger(__name__)

_LABEL = b"keyturn.keyring.check.v1"
EXIT_CONFIG = 78  # sysexits' EX_CONFIG: what a supervisor shows for a configuration to correct

DDL = """
CREATE TABLE IF NOT EXISTS keyring_keys (
    kid text PRIMARY KEY,
    check_value bytea NOT NULL,
    first_by text NOT NULL,
    first_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS keyring_services (
    service text PRIMARY KEY,
    current_kid text NOT NULL,
    kids text[] NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
"""


def check_value(key: bytes) -> bytes:
    """What is recorded of a key: equal for equal keys, and nothing of the key."""
    return hmac.new(key, _LABEL, hashlib.sha256).digest()


@dataclass(frozen=True)
class RecordedKey:
    check_value: bytes
    first_by: str


@dataclass(frozen=True)
class RecordedService:
    current_kid: str
    kids: frozenset[str]
    recorded_at: datetime


class KeyringDisagreement(Exception):
    """This service's seal keys disagree with those of the deployment's other services."""


def disagreements(
    service: str,
    keyring: Keyring,
    keys: Mapping[str, RecordedKey],
    services: Mapping[str, RecordedService],
) -> list[str]:
    """What keeps ``service`` with ``keyring`` from working with the services recorded before it
    (``keys``: the recorded key ids; ``services``: each service's ring as it last started)."""
    problems = []
    for kid, key in keyring.keys.items():
        recorded = keys.get(kid)
        if recorded is not None and not hmac.compare_digest(recorded.check_value, check_value(key)):
            problems.append(
                f"seal key {kid!r} is not the key of that id the {recorded.first_by} service holds: "
                "a key id must stand for one key in every ring"
            )
    mine = set(keyring.keys)
    for other, ring in sorted(services.items()):
        if other == service:
            continue
        when = ring.recorded_at.isoformat(timespec="seconds")
        if ring.current_kid not in mine:
            problems.append(
                f"the {other} service (started {when}) seals and warrants with key {ring.current_kid!r}, "
                "which this ring does not hold"
            )
        if keyring.current_key_id not in ring.kids:
            problems.append(
                f"this service would seal and warrant with key {keyring.current_key_id!r}, which the ring of "
                f"the {other} service (started {when}) does not hold: add a key to every ring before any "
                "service makes it current"
            )
    return problems


async def agree_on_keyring(pool: Any, service: str, keyring: Keyring) -> None:
    """Check ``keyring`` against what the other services recorded, and record it; raise
    ``KeyringDisagreement`` (recording nothing) when they disagree.

    The tables (``DDL``) are made by ``db.open_pool`` with the service's own, under the schema's
    lock: made here under another, a service's start and the audit's pool collided in the catalog
    (a unique violation on the table's type). The check is one transaction under that same lock,
    so of two services starting at once with rings that disagree, the second sees the first's."""
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext(current_schema()))")
        cur = await conn.execute("SELECT kid, check_value, first_by FROM keyring_keys")
        keys = {kid: RecordedKey(bytes(value), by) for kid, value, by in await cur.fetchall()}
        cur = await conn.execute("SELECT service, current_kid, kids, recorded_at FROM keyring_services")
        services = {
            name: RecordedService(current, frozenset(kids), at) for name, current, kids, at in await cur.fetchall()
        }
        problems = disagreements(service, keyring, keys, services)
        if problems:
            raise KeyringDisagreement(
                f"KEYTURN_SEAL_KEYS of the {service} service disagrees with the deployment's other services: "
                + "; ".join(problems)
                + ". Every service needs the same ring (docs/architecture.md, Warrants)"
            )
        for kid, key in keyring.keys.items():
            await conn.execute(
                "INSERT INTO keyring_keys (kid, check_value, first_by) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                (kid, check_value(key), service),
            )
        await conn.execute(
            """INSERT INTO keyring_services (service, current_kid, kids) VALUES (%s, %s, %s)
               ON CONFLICT (service) DO UPDATE SET current_kid = excluded.current_kid, kids = excluded.kids,
                   recorded_at = now()""",
            (service, keyring.current_key_id, sorted(keyring.keys)),
        )


async def start_only_in_agreement(pool: Any, service: str, keyring: Keyring) -> None:
    """``agree_on_keyring``, ending the process (exit status 78, a configuration error) when the
    rings disagree: a service that cannot open or warrant what the others send must not run.
    It ends at once, whatever framework runs it, before it takes any record."""
    try:
        await agree_on_keyring(pool, service, keyring)
    except KeyringDisagreement as refusal:
        log.critical("%s refuses to start: %s", service, refusal)
        logging.shutdown()
        os._exit(EXIT_CONFIG)


async def start_only_in_agreement_at(database_url: str, namespace: str, service: str, keyring: Keyring) -> None:
    """``start_only_in_agreement`` for a service that keeps no pool (the audit): one connection,
    for the tables and the check alone."""
    from keyturn.db import open_pool, schema_name

    pool = await open_pool(database_url, DDL, schema=schema_name(namespace), max_size=1)
    try:
        await start_only_in_agreement(pool, service, keyring)
    finally:
        await pool.close()
