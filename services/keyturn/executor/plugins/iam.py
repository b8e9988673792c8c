"""The ``iam`` plugin: role memberships and table privileges on the SQL target, as GRANT / REVOKE.

- ``iam.role.grant`` / ``iam.role.revoke``: ``GRANT <role> TO <principal>`` / ``REVOKE <role> FROM
  <principal>``; parameters ``role`` and ``principal``, both role names on the target database
  (taken as written, case and all).
- ``iam.permission.change``: ``GRANT | REVOKE <privileges> ON <table> TO | FROM <principal>``;
  parameters ``principal``, ``table`` (``schema.table``), ``privileges`` (a list of SELECT, INSERT,
  UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER) and ``change`` (``grant`` or ``revoke``).

Refused before anything runs: a role or principal that does not exist, a superuser role, the
executor's own role, and Keyturn's temporary roles.

Each command runs as its own temporary role (``keyturn_cmd_<action>``, LOGIN, one connection,
VALID UNTIL now + the policy's credential TTL; ``sql_roles``), which may ``SET ROLE`` to the
executor's role and nothing else (NOINHERIT): a grant is recorded with the executor's role as
grantor, so it outlives the temporary role, which is dropped right after. The statements are
built here from identifiers (``psycopg.sql``), never from text the agent wrote. Afterwards the
change is read back from the catalog (``pg_auth_members``, ``has_table_privilege``); a change
the catalog does not show ends ``outcome_unknown``.

A change whose connection broke (a database restart) or whose read-back failed is read back as
soon as the target answers again, for up to ``settle_s``: after a break, once no session of the
command's role is left (an open one might yet commit), the catalog decides between ``succeeded``
and ``failed`` (nothing was changed). Only a target that cannot say in time leaves it
``outcome_unknown``. A run interrupted by the executor's death is read back the same way
(``settle``) once ``abandon`` ended its sessions and dropped its role.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from keyturn.executor.plugins.base import Command, ExecutionFailed, OutcomeUnknown
from keyturn.executor.plugins.sql import SqlPlugin, _credential_ttl, _resolve, postgres_message
from keyturn.executor.plugins.sql_roles import (
    PREVIEW_ROLE_PREFIX,
    ROLE_PREFIX,
    Grants,
    Relation,
    TemporaryRole,
    lock_privilege_statements,
    retry_collisions,
    role_name_for,
)
from keyturn.faults import Unavailable

PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")


class IamPlugin(SqlPlugin):
    name = "iam"
    follows_references = False  # its commands run on the plugin's own target (``SqlPlugin.target_of``)

    async def execute(self, command: Command) -> Any:
        ttl_s = _credential_ttl(command)
        name = role_name_for(command.action_id)

        async def prepared() -> tuple[str, _Change, bool, TemporaryRole]:
            async with self._admin() as admin:
                try:
                    executor_role = await _current_user(admin)
                    change = await _change_for(admin, command, executor_role)
                    before = await change.holds(admin)
                except psycopg.OperationalError:
                    raise  # the connection broke: tried again (``before_any_change``)
                except psycopg.Error as exc:
                    raise ExecutionFailed(
                        f"nothing was changed: reading {self.target_name} before the change failed "
                        f"({postgres_message(exc)})"
                    ) from None
                grants = Grants(member_of=(executor_role,))
                return (
                    executor_role,
                    change,
                    before,
                    await self._mint(admin, command.action_id, ttl_s, grants),
                )

        executor_role, change, before, role = await self.before_any_change(prepared)
        broke: str | None = None
        try:
            conn = await self._connect_as(role.name, role.password, min(self.statement_timeout_s, ttl_s))
            try:
                async with conn:
                    await change.apply(conn, executor_role)
            except psycopg.OperationalError as exc:  # the connection broke, or the statement was cancelled
                broke = f"{change.describe()} did not complete on {self.target_name} ({postgres_message(exc)})"
            except psycopg.Error as exc:
                raise ExecutionFailed(f"PostgreSQL refused {change.describe()}: {postgres_message(exc)}") from None
            # after a break the catalog says whether it took effect, once no session of the command's
            # role is left to commit it: read before the role is dropped (its sessions are found by name)
            if broke is not None and await self._read_back(change, broke, name) != change.grants:
                raise ExecutionFailed(f"{broke}; read back once its session had ended, it was not applied")
        finally:
            await self._drop_quietly(name)
        if broke is None:
            read_back = f"{change.describe()} ran, but reading it back from {change.catalog} failed"
            if await self._read_back(change, read_back) != change.grants:
                raise OutcomeUnknown(
                    f"{change.describe()} ran, but {change.catalog} does not show it: check the target"
                )
        return {
            "performed": change.describe(),
            "already_so": before == change.grants,
            "verified_in": change.catalog,
            "temporary_role": name,
        } | ({"connection_broke": broke} if broke is not None else {})

    async def settle(self, command: Command) -> Any:
        """After a run interrupted by the executor's death (its sessions ended and its role dropped by
        ``abandon``): whether the change is in effect, from the catalog. ``ExecutionFailed`` when it is
        not (nothing changed: the dead run's session can commit nothing more)."""

        async def read() -> tuple[_Change, bool]:
            async with self._admin() as admin:
                try:
                    change = await _change_for(admin, command, await _current_user(admin))
                    return change, await change.holds(admin)
                except psycopg.OperationalError:
                    raise
                except psycopg.Error as exc:
                    raise OutcomeUnknown(f"reading {self.target_name} failed ({postgres_message(exc)})") from None

        try:
            change, held = await self.before_any_change(read)
        except ExecutionFailed as exc:  # a target that stayed away, a role gone since: it cannot tell
            raise OutcomeUnknown(f"the catalog could not be read back: {exc}") from None
        if held != change.grants:
            raise ExecutionFailed(f"{change.describe()} is not in effect: nothing was changed, it may be asked again")
        # in effect, but whether the dead run made it or it was so before cannot be known: the run's
        # first reading went with it, so the result does not say the change was performed
        return {"in_effect": change.describe(), "verified_in": change.catalog, "performed": "not known"}

    async def _read_back(self, change: _Change, why: str, role: str | None = None) -> bool:
        """Whether the catalog shows ``change``'s state, read as soon as the target answers, within
        ``settle_s`` (a database restart: the fault drill's; ``while_target_restarts``). With ``role``,
        only once no session of that role is left (one still open might yet commit).
        ``OutcomeUnknown`` (``why``, and the last reason) when the target cannot say."""

        async def read() -> bool:
            async with self._admin() as admin:
                if role is not None and await _sessions_of(admin, role):
                    raise Unavailable(f"a session of {role} is still open")
                return await change.holds(admin)

        return await self.read_back(
            read,
            f"iam: reading a change back from {self.target_name}",
            f"{why}: it may or may not have been applied, and {self.target_name} could not say",
        )


class _Change:
    """One GRANT or REVOKE, and how to read it back from the catalog."""

    def __init__(
        self,
        grants: bool,
        principal: str,
        *,
        role: str | None = None,
        table: Relation | None = None,
        privileges: tuple[str, ...] = (),
    ) -> None:
        self.grants, self.principal, self.role, self.table, self.privileges = grants, principal, role, table, privileges
        self.catalog = "pg_auth_members" if role is not None else "information_schema.role_table_grants"

    @property
    def statement(self) -> sql.Composed:
        who = sql.Identifier(self.principal)
        if self.role is not None:
            template = "GRANT {} TO {}" if self.grants else "REVOKE {} FROM {}"
            return sql.SQL(template).format(sql.Identifier(self.role), who)
        assert self.table is not None
        template = "GRANT {} ON TABLE {} TO {}" if self.grants else "REVOKE {} ON TABLE {} FROM {}"
        return sql.SQL(template).format(
            sql.SQL(", ").join(sql.SQL(p) for p in self.privileges), self.table.identifier(), who
        )

    def describe(self) -> str:
        if self.role is not None:
            return (
                f"GRANT {self.role} TO {self.principal}" if self.grants else f"REVOKE {self.role} FROM {self.principal}"
            )
        verb, to = ("GRANT", "TO") if self.grants else ("REVOKE", "FROM")
        return f"{verb} {', '.join(self.privileges)} ON {self.table} {to} {self.principal}"

    async def apply(self, conn: psycopg.AsyncConnection, executor_role: str) -> None:
        """The statement, as the executor's role, behind Keyturn's other grants on this database;
        a collision with anyone else's is tried again (``sql_roles.retry_collisions``)."""

        async def once() -> None:
            async with conn.transaction():
                await conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(executor_role)))
                await lock_privilege_statements(conn)
                await conn.execute(self.statement)

        await retry_collisions(once)

    async def holds(self, admin: psycopg.AsyncConnection) -> bool:
        """Whether the catalog shows the granted state: the membership, or every privilege, held directly."""
        if self.role is not None:
            cursor = await admin.execute(
                "SELECT 1 FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid JOIN pg_roles p ON "
                "p.oid = m.member WHERE r.rolname = %s AND p.rolname = %s",
                (self.role, self.principal),
            )
            return await cursor.fetchone() is not None
        assert self.table is not None
        cursor = await admin.execute(
            "SELECT count(DISTINCT privilege_type) FROM information_schema.role_table_grants WHERE grantee = %s AND "
            "table_schema = %s AND table_name = %s AND privilege_type = ANY(%b)",
            (self.principal, self.table.schema, self.table.name, list(self.privileges)),
        )
        row = await cursor.fetchone()
        held = int(row[0]) if row else 0
        return held == len(self.privileges) if self.grants else held > 0


async def _sessions_of(admin: psycopg.AsyncConnection, role: str) -> int:
    """Open sessions of ``role`` on the server (any user may count them)."""
    cursor = await admin.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (role,))
    row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def _current_user(admin: psycopg.AsyncConnection) -> str:
    cursor = await admin.execute("SELECT current_user")
    row = await cursor.fetchone()
    return str(row[0]) if row else ""


async def _change_for(admin: psycopg.AsyncConnection, command: Command, executor_role: str) -> _Change:
    parameters = command.parameters
    principal = await _existing_role(admin, parameters.get("principal"), "principal", executor_role)
    if command.action in ("iam.role.grant", "iam.role.revoke"):
        role = await _existing_role(admin, parameters.get("role"), "role", executor_role)
        if command.action == "iam.role.grant" and (why := await _administrative(admin, role)) is not None:
            raise ExecutionFailed(f"parameters.role: {why}; Keyturn never grants it, and nothing was changed")
        return _Change(command.action == "iam.role.grant", principal, role=role)
    if command.action == "iam.permission.change":
        change = parameters.get("change")
        if change not in ("grant", "revoke"):
            raise ExecutionFailed('parameters.change must be "grant" or "revoke"; nothing was changed')
        privileges = parameters.get("privileges")
        if (
            not isinstance(privileges, list)
            or not privileges
            or not all(isinstance(p, str) and p.upper() in PRIVILEGES for p in privileges)
        ):
            raise ExecutionFailed(
                f"parameters.privileges must be a non-empty list of {', '.join(PRIVILEGES)}; nothing was changed"
            )
        table = parameters.get("table")
        if not isinstance(table, str) or not table.strip():
            raise ExecutionFailed("parameters.table must name a table; nothing was changed")
        found = await _resolve(admin, table.strip())
        if found is None:
            raise ExecutionFailed(f"table {table.strip()} does not exist on the target; nothing was changed")
        return _Change(
            change == "grant",
            principal,
            table=found[0],
            privileges=tuple(sorted({p.upper() for p in privileges})),
        )
    raise ExecutionFailed(f"the iam plugin does not perform {command.action}")


# What a role (or any role it is a member of) may hold that only the database's administrators
# should: a member can take it on with SET ROLE. PostgreSQL's predefined roles (``pg_*``) read and
# write every file and table or run programs on the server (``pg_execute_server_program``).
_ADMINISTRATIVE = """
WITH RECURSIVE held(oid) AS (
    SELECT oid FROM pg_roles WHERE rolname = %s
    UNION SELECT m.roleid FROM pg_auth_members m JOIN held h ON m.member = h.oid
)
SELECT r.rolname, r.rolsuper, r.rolcreaterole, r.rolcreatedb, r.rolreplication, r.rolbypassrls
FROM held JOIN pg_roles r ON r.oid = held.oid ORDER BY r.rolname"""


async def _administrative(admin: psycopg.AsyncConnection, role: str) -> str | None:
    """Why granting ``role`` would hand out what only an administrator of the target holds, or None."""
    cursor = await admin.execute(_ADMINISTRATIVE, (role,))
    for name, *powers in await cursor.fetchall():
        through = "" if name == role else f" through its membership in {name!r}"
        if name.startswith("pg_"):
            return f"{role!r} is PostgreSQL's predefined role {name!r}{through}, which reaches beyond any table"
        attributes = [
            a
            for a, on in zip(("SUPERUSER", "CREATEROLE", "CREATEDB", "REPLICATION", "BYPASSRLS"), powers, strict=True)
            if on
        ]
        if attributes:
            return f"{role!r} holds {', '.join(attributes)}{through}"
    return None


async def _existing_role(admin: psycopg.AsyncConnection, value: Any, field: str, executor_role: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ExecutionFailed(f"parameters.{field} must name a role on the target database; nothing was changed")
    name = value.strip()
    cursor = await admin.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (name,))
    row = await cursor.fetchone()
    if row is None:
        raise ExecutionFailed(f"parameters.{field}: role {name!r} does not exist on the target; nothing was changed")
    if row[0]:
        raise ExecutionFailed(f"parameters.{field}: {name!r} is a superuser role, never granted or changed by Keyturn")
    if name == executor_role or name.startswith((ROLE_PREFIX, PREVIEW_ROLE_PREFIX)):
        raise ExecutionFailed(f"parameters.{field}: {name!r} is Keyturn's own role; nothing was changed")
    return name
