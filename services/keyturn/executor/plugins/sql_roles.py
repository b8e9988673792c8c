"""Temporary PostgreSQL roles: one per command, created with only its grants, dropped after.

The executor's own connection needs CREATEROLE and the right to grant what commands need
(ownership of, or GRANT OPTION on, the tables), and, once, CREATE on the database for the schema
of its lock (``LOCK_SCHEMA``; or that schema made for it by the database's owner). A role is named after its action
(``keyturn_cmd_<action id hex>``), so a role left behind by a crash is found and dropped by
the next run of that action's recovery, or by ``sweep_expired_roles`` at start.

The password never reaches the server in clear: ``CREATE ROLE`` gets a SCRAM-SHA-256
verifier computed here, so even ``log_statement = 'all'`` logs nothing a client could log
in with. The target's ``pg_hba.conf`` must check passwords (``scram-sha-256``) for these
roles; under ``trust`` the credential limits nothing. A role also holds whatever PUBLIC holds
(EXECUTE on functions, TEMP, CONNECT): revoke those from PUBLIC on a target that needs it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import random
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from keyturn.db import OWN_SCHEMA_COMMENT

ROLE_PREFIX = "keyturn_cmd_"
# An impact preview's role (``policy.impact``) lives for one dry run and is dropped after it; one
# found past its validity at an executor's start is a leftover (a policy that died mid-preview, or
# earlier builds, which never dropped them), and ``sweep_expired_roles`` drops it with the
# privileges it holds.
PREVIEW_ROLE_PREFIX = "keyturn_preview_"
# PBKDF2 rounds in a command role's SCRAM verifier. Stretching slows guesses at a password a person
# chose; a command's password is 256 random bits used once within minutes, which no number of
# guesses finds. PostgreSQL's default of 4096 cost the executor two PBKDF2 runs per command (the
# verifier, then the client's proof at login: about 1 ms each) and bought nothing.
SCRAM_ITERATIONS = 16

# PostgreSQL keeps a privilege list (a table's ACL, a schema's, a database's) in one catalog row and
# updates it in place. Of two transactions granting on one table at once, the second waits for the
# first and then fails with "tuple concurrently updated" [XX000] instead of re-reading the row.
# Commands on one table are what agents send in batches, so Keyturn's own privilege statements on
# a target (a command role's creation and drop, ``iam``'s GRANT / REVOKE) first lock this table and
# queue behind each other (``lock_privilege_statements``). Anyone else's (a DBA's, or the policy's
# rolled-back dry run, which must not hold the lock while its statement runs) can still collide:
# those transactions are tried again (``retry_collisions``). A dry run's uncommitted grant holds its
# table's row until it rolls back (at most its time limit, 5 s by default): a command role granted
# on that table waits that long, and the lock's queue with it.
#
# The lock must be one no command role can take: an agent whose role held it could stall every SQL
# command until its own time limit ended, with reads that need no approval. So not an advisory
# lock, which anyone may take (PUBLIC may execute the advisory lock functions, and ``pg_locks``
# shows every key held). A table in a schema of Keyturn's own, whose ACL gives PUBLIC nothing:
# without USAGE on the schema a command role cannot name the table, and locking it takes UPDATE,
# DELETE or TRUNCATE on it besides. EXCLUSIVE mode, not ACCESS EXCLUSIVE: the only lock a role
# without privileges can get on a table (ACCESS SHARE, through functions that take a relation's
# oid, such as ``pg_relation_size``) does not conflict with it. The schema is marked as Keyturn's
# own (``keyturn.db.OWN_SCHEMA_COMMENT``), so no statement of an agent's is granted on the table
# and no ``iam`` command grants it to anyone (``executor.plugins.sql._resolve``).
# The executor and the policy's previewer use one connection string (``sql_target_url``), so one
# role owns the table and both may lock it.
LOCK_SCHEMA = "keyturn_lock"
LOCK_TABLE = "privilege_statements"
# Targets whose lock table this process has seen or made (``prepare_privilege_lock``), by host, port
# and database; forgotten when the table turns out to be gone (``retry_collisions``).
_LOCK_READY: set[tuple[str, int, str]] = set()
# what the loser of two processes making the lock table at once gets (a duplicate catalog row)
_MADE_AT_ONCE = (
    psycopg.errors.UniqueViolation,
    psycopg.errors.DuplicateSchema,
    psycopg.errors.DuplicateTable,
    psycopg.errors.DuplicateObject,
)
COLLISION_ATTEMPTS = 6
T = TypeVar("T")


class PrivilegeLockUnavailable(psycopg.errors.InsufficientPrivilege):
    """The target has no lock table and its admin role may not create it; the text says what to run."""


def collided(exc: BaseException) -> bool:
    """Whether PostgreSQL refused a catalog update because another transaction updated the row first
    (or chose this transaction as a deadlock's victim: it rolled back, and may simply go again)."""
    return isinstance(exc, psycopg.errors.DeadlockDetected) or (
        isinstance(exc, psycopg.errors.InternalError_) and "concurrently updated" in str(exc)
    )


async def retry_collisions(attempt: Callable[[], Awaitable[T]], attempts: int = COLLISION_ATTEMPTS) -> T:
    """``attempt()`` (one whole transaction) again after a collision, with a short random pause.

    Nothing of a collided transaction stayed: PostgreSQL rolled all of it back. A transaction that
    found the lock table gone (dropped since this process made it, or a new server at the same
    address) is tried again too, once the process has forgotten every table it knew: an ``attempt``
    that calls ``prepare_privilege_lock`` first makes it again."""
    for tried in range(1, attempts + 1):
        try:
            return await attempt()
        except psycopg.Error as exc:
            if lock_gone(exc):
                _LOCK_READY.clear()
            elif not collided(exc):
                raise
            if tried == attempts:
                raise
        await asyncio.sleep(random.uniform(0.005, 0.02) * tried)
    raise AssertionError("unreachable: the last attempt returns or raises")


async def lock_privilege_statements(conn: psycopg.AsyncConnection) -> None:
    """Inside an open transaction: wait for Keyturn's other privilege statements on this database.

    The lock table must exist (``prepare_privilege_lock``, run first by whoever holds ``conn``)."""
    await conn.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(sql.Identifier(LOCK_SCHEMA, LOCK_TABLE)))


def lock_gone(exc: BaseException) -> bool:
    """Whether ``lock_privilege_statements`` failed because the lock table (or its schema) is missing."""
    return isinstance(exc, psycopg.errors.UndefinedTable | psycopg.errors.InvalidSchemaName) and LOCK_SCHEMA in str(exc)


async def prepare_privilege_lock(conn: psycopg.AsyncConnection) -> None:
    """Make the lock table of ``lock_privilege_statements`` on ``conn``'s database if it is missing:
    once per process and target, by whichever of the executor (its start-up sweep) and the policy's
    previewer uses the target first. ``conn`` must be outside a transaction.

    Its schema is made by Keyturn's own role, so PUBLIC holds nothing on it (revoked all the same:
    default privileges may say otherwise). Where that role may not create a schema (no CREATE on the
    database), nothing falls back: an advisory lock is what command roles could take, and no lock at
    all turns a batch of commands on one table into collisions tried again until some fail. So every
    privilege statement fails with ``PrivilegeLockUnavailable``, whose text says what the database's
    owner must run; the executor logs it at start (``SqlPlugin.start``).

    Several processes may make it at once: the loser of that race (a duplicate catalog row, or
    "tuple concurrently updated") finds it made on its next try."""
    info = conn.info
    where = (info.host, info.port, info.dbname)
    if where in _LOCK_READY:
        return
    schema, table = sql.Identifier(LOCK_SCHEMA), sql.Identifier(LOCK_SCHEMA, LOCK_TABLE)
    for tried in range(1, COLLISION_ATTEMPTS + 1):
        try:
            async with conn.transaction():
                cursor = await conn.execute(
                    "SELECT n.oid IS NOT NULL, c.oid IS NOT NULL, "
                    "obj_description(n.oid, 'pg_namespace') IS NOT DISTINCT FROM %s "
                    "FROM (VALUES (1)) AS one LEFT JOIN pg_namespace n ON n.nspname = %s "
                    "LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = %s",
                    (OWN_SCHEMA_COMMENT, LOCK_SCHEMA, LOCK_TABLE),
                )
                has_schema, has_table, marked = await _one_row(cursor)
                if not has_schema:
                    await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(schema))
                    await conn.execute(sql.SQL("REVOKE ALL ON SCHEMA {} FROM PUBLIC").format(schema))
                if not has_table:
                    await conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ()").format(table))
                    await conn.execute(sql.SQL("REVOKE ALL ON TABLE {} FROM PUBLIC").format(table))
                if not marked:
                    mark = sql.SQL("COMMENT ON SCHEMA {} IS {}").format(schema, sql.Literal(OWN_SCHEMA_COMMENT))
                    await conn.execute(mark)
            break
        except psycopg.errors.InsufficientPrivilege as exc:
            reason = " ".join(str(exc).split())
            raise PrivilegeLockUnavailable(
                f"Keyturn's lock for its privilege statements ({LOCK_SCHEMA}.{LOCK_TABLE}) is missing on database "
                f"{info.dbname} and {info.user} may not make it ({reason}): as the database's owner, run "
                f"CREATE SCHEMA {LOCK_SCHEMA} AUTHORIZATION {info.user} (or, when the schema exists, "
                f"ALTER SCHEMA {LOCK_SCHEMA} OWNER TO {info.user})"
            ) from None
        except psycopg.Error as exc:
            if not (collided(exc) or isinstance(exc, _MADE_AT_ONCE)) or tried == COLLISION_ATTEMPTS:
                raise
        await asyncio.sleep(random.uniform(0.005, 0.02) * tried)
    _LOCK_READY.add(where)


def role_name_for(action_id: str) -> str:
    """The temporary role of one action: the same name on every try, so a leftover is found."""
    try:
        suffix = uuid.UUID(action_id).hex
    except ValueError:
        suffix = hashlib.sha256(action_id.encode()).hexdigest()[:32]
    return ROLE_PREFIX + suffix


def scram_sha256_verifier(password: str, *, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5802, RFC 7677)."""
    salt = salt or secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


@dataclass(frozen=True, order=True)
class Relation:
    """A table (or view, or sequence) the role is granted something on; ordered by schema, then name."""

    schema: str
    name: str

    def identifier(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class Grants:
    """What one command may do: privileges per table, sequences it may draw from."""

    tables: dict[Relation, tuple[str, ...]] = field(default_factory=dict)
    sequences: tuple[Relation, ...] = ()
    # roles the temporary role may SET ROLE to (it is NOINHERIT: nothing of theirs applies until it does)
    member_of: tuple[str, ...] = ()

    @property
    def schemas(self) -> tuple[str, ...]:
        return tuple(sorted({r.schema for r in (*self.tables, *self.sequences)}))

    def describe(self) -> str:
        """``SELECT on public.orders; INSERT on public.marks`` (for messages)."""
        parts = [
            f"{', '.join(privileges)} on {relation}"
            for relation, privileges in sorted(self.tables.items(), key=lambda kv: str(kv[0]))
        ]
        parts += [f"SET ROLE {role}" for role in self.member_of]
        return "; ".join(parts) or "no table privileges"


@dataclass(frozen=True)
class TemporaryRole:
    name: str
    password: str = field(repr=False)
    valid_until: datetime


@dataclass(frozen=True)
class RoleCleanup:
    """What dropping a role found: whether it existed and how many of its sessions were ended."""

    role: str
    existed: bool
    sessions_terminated: int

    def as_evidence(self) -> dict[str, object]:
        return {
            "temporary_role": self.role,
            "role_existed": self.existed,
            "sessions_terminated": self.sessions_terminated,
            "role_dropped": self.existed,
        }


async def create_role(
    admin: psycopg.AsyncConnection, name: str, ttl_s: float, grants: Grants, attempts: int = COLLISION_ATTEMPTS
) -> TemporaryRole:
    """Create ``name`` (LOGIN, one connection, VALID UNTIL now + ttl) holding exactly ``grants``;
    tried ``attempts`` times when its grants collide with another transaction's.

    One transaction: a role exists with all its grants or not at all. In psycopg's pipeline
    mode, so the role and its grants go out together after the server's clock for VALID UNTIL
    (the transaction's begin and commit still wait for their answers).
    """
    password = secrets.token_urlsafe(32)
    verifier = sql.Literal(scram_sha256_verifier(password))
    role = sql.Identifier(name)

    async def attempt() -> TemporaryRole:
        await prepare_privilege_lock(admin)
        async with admin.pipeline(), admin.transaction():
            await lock_privilege_statements(admin)
            cursor = await admin.execute("SELECT now() + make_interval(secs => %s)", (float(ttl_s),))
            (valid_until,) = await _one_row(cursor)
            await admin.execute(
                sql.SQL(
                    "CREATE ROLE {} LOGIN NOINHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
                    "CONNECTION LIMIT 1 PASSWORD {} VALID UNTIL {}"
                ).format(role, verifier, sql.Literal(valid_until.isoformat()))
            )
            await grant(admin, role, grants)
        return TemporaryRole(name, password, valid_until)

    return await retry_collisions(attempt, attempts)


async def grant(conn: psycopg.AsyncConnection, role: sql.Identifier, grants: Grants) -> None:
    """Give ``role`` exactly ``grants``: schema usage, table privileges, sequences, memberships.

    Always in one order (schemas, then tables and sequences by name): a grant waits for the rows
    of the privileges it updates, and two transactions taking them in other orders could
    deadlock (the policy's dry run takes no lock of ours)."""
    for schema in grants.schemas:
        await conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), role))
    for relation, privileges in sorted(grants.tables.items()):
        await conn.execute(
            sql.SQL("GRANT {} ON TABLE {} TO {}").format(
                sql.SQL(", ").join(sql.SQL(p) for p in privileges), relation.identifier(), role
            )
        )
    for sequence in sorted(grants.sequences):
        await conn.execute(sql.SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(sequence.identifier(), role))
    for member_of in grants.member_of:
        await conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(member_of), role))


async def drop_role(admin: psycopg.AsyncConnection, name: str) -> RoleCleanup:
    """End the role's sessions, revoke everything it was granted (DROP OWNED) and drop it.

    One transaction, in pipeline mode: the role and the memberships it holds in one query, then
    the revokes, the session ends, ``DROP OWNED`` and ``DROP ROLE`` sent together (the
    transaction's begin and commit still wait for their answers)."""
    role = sql.Identifier(name)

    async def attempt() -> RoleCleanup:
        await prepare_privilege_lock(admin)
        async with admin.pipeline():
            async with admin.transaction():
                await lock_privilege_statements(admin)
                cursor = await admin.execute(
                    "SELECT ARRAY(SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
                    "WHERE m.member = p.oid) FROM pg_roles p WHERE p.rolname = %s",
                    (name,),
                )
                found = await cursor.fetchone()
                if found is None:
                    return RoleCleanup(name, existed=False, sessions_terminated=0)
                # the memberships it held (``Grants.member_of``) go first: granting it to the executor below
                # would be circular while it is a member of the executor's role
                for held in found[0]:
                    await admin.execute(sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(held), role))
                # membership gives the executor the right to end the role's sessions and DROP OWNED it
                await admin.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(role))
                ended = await admin.execute(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE usename = %s AND pid <> pg_backend_pid()",
                    (name,),
                )
                await admin.execute(sql.SQL("DROP OWNED BY {}").format(role))
                await admin.execute(sql.SQL("DROP ROLE {}").format(role))
            (terminated,) = await _one_row(ended)
        return RoleCleanup(name, existed=True, sessions_terminated=int(terminated))

    return await retry_collisions(attempt)


async def sweep_expired_roles(admin: psycopg.AsyncConnection, *, grace_s: float = 60.0) -> list[str]:
    """Drop temporary roles whose validity ended more than ``grace_s`` ago (crash leftovers): a
    command's (``ROLE_PREFIX``) or an impact preview's (``PREVIEW_ROLE_PREFIX``), and a preview
    role with no validity at all (earlier builds made those). A preview role still valid belongs
    to a dry run under way in some policy process, which drops it itself: sweeping it would end
    that preview as unavailable whenever any executor starts."""
    cursor = await admin.execute(
        "SELECT rolname FROM pg_roles WHERE (starts_with(rolname, %s) OR starts_with(rolname, %s)) "
        "AND rolvaliduntil < now() - make_interval(secs => %s) "
        "OR starts_with(rolname, %s) AND rolvaliduntil IS NULL",
        (ROLE_PREFIX, PREVIEW_ROLE_PREFIX, grace_s, PREVIEW_ROLE_PREFIX),
    )
    names = [row[0] for row in await cursor.fetchall()]
    dropped = []
    for name in names:
        try:
            if (await drop_role(admin, name)).existed:
                dropped.append(name)
        except psycopg.Error:
            continue  # another executor is dropping it right now
    return dropped


async def _one_row(cursor: Any) -> tuple[Any, ...]:
    """The one row an aggregate or expression SELECT always returns."""
    row = await cursor.fetchone()
    if row is None:
        raise RuntimeError("a single-row SELECT returned no row")
    return tuple(row)
