"""The ``sql`` plugin: one statement on PostgreSQL, as a role that exists for that statement only.

For each command (``sql.query`` with ``parameters.statement`` and optionally ``max_rows``):

1. read what the statement touches (``sql_text``); refuse anything but one SELECT / VALUES /
   TABLE / INSERT / UPDATE / DELETE;
2. resolve the tables on the target (unqualified names mean ``public.``) and create the role
   ``keyturn_cmd_<action>``: LOGIN, one connection, VALID UNTIL now + the policy's credential
   TTL, granted SELECT on the tables a read names, or the write's privilege on its target
   (plus SELECT where the statement reads, and the target's serial sequences for INSERT);
3. connect as that role with a statement timeout (the smaller of the setting and the TTL)
   and run the statement: reads in a READ ONLY transaction through a server-side cursor
   (only the rows that travel back are fetched; the rest are counted), writes in one
   transaction, rolled back instead of committed when they touched more rows than the
   approved impact preview allows (``executor.impact``);
4. always, in ``finally``: end the role's sessions, revoke everything (DROP OWNED), drop it.

Statement errors, timeouts and refused connections end the command ``failed`` with the
reason. A write notes its transaction id (``pg_current_xact_id``) in the executor's ledger just
before its COMMIT (``Command.note``; a note that cannot be kept rolls the write back). So a
connection lost while committing, or an executor that died mid-command, is settled by asking
the target what became of that transaction (``pg_xact_status``, PostgreSQL 13 or later):
committed, the command ``succeeded``; rolled back, or never committed, ``failed`` with nothing
changed; ``outcome_unknown`` only when the target cannot say within ``settle_s``.

The target is the plugin's (``KEYTURN_SQL_TARGET_URL``) unless the command names another one
as a secret reference, ``"connection_string": {"secret": "NAME"}``: the executor resolves it
right before this plugin runs, and everything above happens on that database instead (the
connection string's user must be able to create roles there). Messages then speak of
``the target in secret 'NAME'``, never of its host, database or credentials. After a crash
mid-command, the redelivered order's ``abandon`` drops the role where the command ran (the
executor resolves the reference again for it). The start-up sweep covers the plugin's own
target only: a referenced target is known from its order, so a role there whose order never
comes back cannot log in past its VALID UNTIL, but stays until dropped there.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus

from keyturn.core.environments import unserved
from keyturn.db import OWN_SCHEMA_COMMENT
from keyturn.executor.impact import enforce_impact
from keyturn.executor.plugins.base import Command, ExecutionFailed, OutcomeUnknown
from keyturn.executor.plugins.sql_roles import (
    Grants,
    PrivilegeLockUnavailable,
    Relation,
    RoleCleanup,
    TemporaryRole,
    create_role,
    drop_role,
    prepare_privilege_lock,
    role_name_for,
    sweep_expired_roles,
)
from keyturn.executor.plugins.sql_text import StatementShape, UnsupportedStatement, statement_shape
from keyturn.executor.results import SOURCE_COLUMNS
from keyturn.executor.values import jsonable
from keyturn.faults import DATABASE_UNAVAILABLE, Unavailable, until_done

log = logging.getLogger(__name__)
T = TypeVar("T")

# kept admin connections by target URL, shared by the plugins of one process (sql, iam, deletion, export)
_IDLE_ADMIN: dict[str, list[psycopg.AsyncConnection]] = {}
# A command holds up to two connections (the executor's, its own role's login). A backlog (after
# an outage, or approvals answered together) ran hundreds at once and the target refused them all
# ("sorry, too many clients already"): 200 grants at once failed 200 of 200 on PostgreSQL's
# default of 100 connections. So the commands of one process on one target take turns
# (``turns_for``, which the runner waits for before a command's time limit starts).
COMMANDS_AT_ONCE = 16
# Past a statement's time limit, how long before the command cancels it itself (``within``).
STATEMENT_GRACE_S = 1.0
# by event loop (a semaphore belongs to the loop it first waited in), then by target URL
_TURNS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Semaphore]] = weakref.WeakKeyDictionary()
_GRANTABLE_KINDS = {"r", "p", "v", "m", "f"}  # tables, partitioned tables, views, materialized views, foreign tables
_PUBLIC_CATALOGS = {"pg_catalog", "information_schema"}  # readable by everyone already


@dataclass(frozen=True)
class Target:
    """A database to run on: its connection string and the name messages use for it."""

    url: str
    name: str
    from_secret: bool = False  # a referenced target: connection errors withhold the server's words

    def refused(self, exc: Exception) -> str:
        """Why a connection failed; for a referenced target without the server's words, which quote its
        host and user (parts of the secret)."""
        if self.from_secret:
            return (
                f"the connection was refused ({type(exc).__name__}; the server's words withheld: they quote the secret)"
            )
        return postgres_message(exc)


# What a server says when it refuses the login itself, not because it is restarting: a password,
# role, database or pg_hba.conf to fix, which no wait mends. libpq gives no SQLSTATE for a failed
# connection, so its text is read; a server speaking another language is waited for as before.
_LOGIN_REFUSED = re.compile(
    r"FATAL:\s+(password authentication failed|role \".*\" does not exist|database \".*\" does not exist"
    r"|no pg_hba\.conf entry|pg_hba\.conf rejects|permission denied for database)"
    r"|no password supplied"
)


class TargetAway(ExecutionFailed, Unavailable):
    """The target could not be reached, or the connection broke, before the command changed
    anything: transient (``faults.is_transient``), so ``SqlPlugin.before_any_change`` tries
    again while the target restarts. Its text names the target as ``Target.refused`` does."""


def target_name(url: str) -> str:
    target = conninfo_to_dict(url)
    return f"{target.get('host', 'localhost')}:{target.get('port', 5432)}/{target.get('dbname', '')}"


class SqlPlugin:
    name = "sql"

    def __init__(
        self,
        target_url: str,
        *,
        statement_timeout_s: float = 30.0,
        max_result_rows: int = 50,
        connect_timeout_s: int = 5,
        credential_observer: Callable[[str], None] | None = None,
        commands_at_once: int = COMMANDS_AT_ONCE,
        serves: frozenset[str] = frozenset({"production"}),
    ) -> None:
        self.target_url = target_url
        self.serves = serves  # the environments the target is in (``Settings.sql_target_serves``)
        self.statement_timeout_s = statement_timeout_s
        self.max_result_rows = max_result_rows
        self.connect_timeout_s = connect_timeout_s
        # Tests pass an observer to learn every minted password and prove it leaks nowhere.
        self.credential_observer = credential_observer
        self.target_name = target_name(target_url)
        self.target = Target(target_url, self.target_name)
        self._idle_admin = _IDLE_ADMIN.setdefault(target_url, [])  # kept admin connections (``_admin``)
        self.commands_at_once = commands_at_once
        # roles whose creation this process sent when the connection broke, with when: the next
        # attempt of the same command may find one there (the CREATE committed, its answer lost),
        # and it is this command's own, not another run's (``_mint``)
        self._broken_mints: dict[str, float] = {}

    def turns_for(self, command: Command) -> asyncio.Semaphore:
        """The turns of this process's commands on ``command``'s target (the plugin's own, or the
        one a secret reference names), shared by its SQL plugins."""
        try:
            url = self.target_of(command).url
        except ExecutionFailed:  # the command fails on its own, in a turn on the plugin's target
            url = self.target_url
        by_target = _TURNS.setdefault(asyncio.get_running_loop(), {})
        return by_target.setdefault(url, asyncio.Semaphore(self.commands_at_once))

    async def start(self) -> None:
        """Make the target's lock for Keyturn's privilege statements if it is missing
        (``sql_roles.prepare_privilege_lock``), and drop temporary roles that outlived their
        validity (left by a crash). A lock that cannot be made is logged as an error: no SQL
        command can run until the database's owner makes its schema, as the message says."""
        try:
            async with self._admin() as admin:
                await prepare_privilege_lock(admin)
                dropped = await sweep_expired_roles(admin)
        except ExecutionFailed as exc:
            log.warning("sql plugin: no sweep of expired temporary roles: %s", exc)
            return
        except PrivilegeLockUnavailable as exc:
            log.error("sql plugin: no command on %s can run: %s", self.target_name, exc)
            return
        if dropped:
            log.info("sql plugin: dropped %d expired temporary roles", len(dropped))

    # whether a command may name its target by a secret reference (``sql.query``); the families
    # built on this plugin (deletions, exports, grants) run on the plugin's own target only
    follows_references = True
    # how long a command that changed nothing yet waits for a target that is away (a restart)
    settle_s = 30.0
    settle_every_s = 0.5

    def environment_refusal(self, command: Command, environment: str) -> str | None:
        """Why ``command``, decided under ``environment`` (the policy's answer for its resource), may
        not run on the plugin's own target: the target is in another environment. None when it may,
        and for a target a secret reference names (the operator's, not labelled)."""
        try:
            if self.target_of(command) is not self.target:
                return None
        except ExecutionFailed:
            return None  # the command fails on its own, saying why
        return unserved(environment, self.serves, f"this executor's SQL target ({self.target_name})")

    def target_of(self, command: Command) -> Target:
        """Where ``command`` runs, and where a crash's leftovers are cleaned up: the plugin's
        target, or the one the command names by a secret reference (resolved by now)."""
        if not self.follows_references or "connection_string" not in command.parameters:
            return self.target
        secret = command.secret_fields.get("connection_string")
        if secret is None:
            # the schema admits only a reference; a clear connection string is refused, never used
            raise ExecutionFailed(
                'parameters.connection_string must be a secret reference {"secret": NAME}, not a connection string'
            )
        url = command.parameters["connection_string"]
        try:
            dsn = conninfo_to_dict(url) if isinstance(url, str) else None
        except psycopg.Error:
            dsn = None
        if not dsn:  # psycopg's own message could quote the value: ours names the secret only
            raise ExecutionFailed(f"the secret {secret!r} does not hold a PostgreSQL connection string")
        return Target(url, f"the target in secret {secret!r}", from_secret=True)

    async def while_target_restarts(self, work: Callable[[], Awaitable[T]], what: str) -> T:
        """``work()``, tried again while it fails transiently (the target restarting), every
        ``settle_every_s`` and up to ``settle_s`` in all (``faults.until_done``); ``what`` names it
        in the log, never a parameter."""
        return await until_done(
            work,
            what,
            first_wait_s=self.settle_every_s,
            max_wait_s=max(self.settle_every_s, 2.0),
            give_up_after_s=self.settle_s,
        )

    async def before_any_change(self, prepare: Callable[[], Awaitable[T]], target: Target | None = None) -> T:
        """``prepare()``: a command's reads on its target and the minting of its role, which end
        the part that changes nothing. While the target cannot be reached or the connection breaks
        during those reads (a restart), it is tried again for up to ``settle_s``
        (``faults.until_done``); an approved command does not fail for a blip. Nothing after the
        mint is ever tried again, and a mint that failed is not (``_mint`` raises ``ExecutionFailed``)."""
        where = target or self.target

        async def attempt() -> T:
            try:
                return await prepare()
            except DATABASE_UNAVAILABLE as exc:  # named as the target is, before anything logs it
                raise TargetAway(
                    f"the connection to {where.name} broke before anything was changed ({where.refused(exc)})"
                ) from None

        try:
            return await self.while_target_restarts(attempt, f"{self.name}: preparing a command on {where.name}")
        except TargetAway as away:
            raise ExecutionFailed(
                f"nothing was changed: {away}; the target did not answer within {self.settle_s:g}s"
            ) from None

    async def execute(self, command: Command) -> Any:
        statement, max_rows = _statement_parameters(command.parameters)
        target = self.target_of(command)
        try:
            shape = statement_shape(statement)
        except UnsupportedStatement as exc:
            raise ExecutionFailed(f"statement refused before running: {exc}") from None
        ttl_s = _credential_ttl(command)
        timeout_s = min(self.statement_timeout_s, ttl_s)
        name = role_name_for(command.action_id)

        async def prepared() -> tuple[Grants, TemporaryRole]:
            async with self._admin(target) as admin:
                grants = await grants_for(admin, shape, target.name)
                return grants, await self._mint(admin, command.action_id, ttl_s, grants, target)

        grants, role = await self.before_any_change(prepared, target)
        try:
            return await self._run_as(
                role.name,
                role.password,
                shape,
                statement,
                max_rows,
                timeout_s,
                grants,
                # more rows than the approved preview allows: raising inside the transaction rolls the write back
                before_commit=lambda result: enforce_impact(
                    command.impact, command.payload_digest, changed_rows(result)
                ),
                target=target,
                note=command.note,
            )
        finally:
            await self._drop_quietly(name, target)

    async def settle(self, command: Command) -> Any:
        """After a run interrupted by the executor's death (``abandon`` ended its session and
        dropped its role, so its transaction has ended): what became of it. A run that noted no
        transaction never sent its COMMIT (reads note none: they change nothing), so nothing
        changed; a noted one is read back from the target (``transaction_fate``)."""
        if command.noted is None:  # started by an executor that kept no notes: it cannot be told
            raise OutcomeUnknown("the interrupted run kept no note of its transaction in the ledger")
        xid = command.noted.get("transaction")
        target = self.target_of(command)
        if not isinstance(xid, str):
            raise ExecutionFailed(
                f"the run stopped before committing anything on {target.name} (it never reached its COMMIT), and "
                "its session was ended: nothing was changed, it may be asked again"
            )
        if await self.transaction_fate(xid, target) == "aborted":
            raise ExecutionFailed(f"its transaction on {target.name} was rolled back: nothing was changed")
        # the statement's own result (its row count, its rows) went with the dead run
        return {"in_effect": f"its transaction committed on {target.name}", "transaction": xid}

    async def transaction_fate(self, xid: str, target: Target) -> str:
        """``"committed"`` or ``"aborted"``: what became of transaction ``xid`` on ``target``, read
        once it has ended and as soon as the target answers, within ``settle_s``
        (``while_target_restarts``). ``OutcomeUnknown`` when the target cannot say."""

        async def read() -> str:
            async with self._admin(target) as admin:
                try:
                    cursor = await admin.execute("SELECT pg_xact_status(%s::xid8)", (xid,))
                except psycopg.OperationalError:
                    raise
                except psycopg.Error as exc:  # an id it refuses (from a later epoch: another server)
                    raise OutcomeUnknown(f"{target.name} refused to say: {postgres_message(exc)}") from None
                row = await cursor.fetchone()
            status = row[0] if row else None
            if status == "in progress":  # still committing (a synchronous standby not yet answering)
                raise Unavailable(f"transaction {xid} has not ended yet")
            if status not in ("committed", "aborted"):  # older than the status it keeps
                raise OutcomeUnknown(f"{target.name} no longer keeps the status of transaction {xid}")
            return str(status)

        return await self.read_back(
            read,
            f"{self.name}: reading a transaction back from {target.name}",
            f"{target.name} could not say whether transaction {xid} committed",
        )

    async def read_back(self, read: Callable[[], Awaitable[T]], what: str, cannot_say: str) -> T:
        """``read()`` of what a break left on a target, as soon as the target answers
        (``while_target_restarts``); ``OutcomeUnknown`` (``cannot_say``, and the last reason) when
        it cannot within ``settle_s``. An ``OutcomeUnknown`` of ``read`` itself passes as it is."""
        try:
            return await self.while_target_restarts(read, what)
        except (ExecutionFailed, Unavailable, psycopg.Error) as exc:
            reason = postgres_message(exc) if isinstance(exc, psycopg.Error) else str(exc)
            raise OutcomeUnknown(f"{cannot_say} within {self.settle_s:g}s ({reason}): check the target") from None

    async def abandon(self, command: Command) -> dict[str, Any]:
        """After a crash mid-command: end the role's sessions and drop it where the command ran
        (the plugin's target, or the one its secret reference names); report what was found, or
        raise ``ExecutionFailed`` when it could not (the runner records the failure as the evidence)."""
        cleanup = await self._drop(role_name_for(command.action_id), self.target_of(command))
        return cleanup.as_evidence()

    @asynccontextmanager
    async def _admin(self, target: Target | None = None) -> AsyncIterator[psycopg.AsyncConnection]:
        """The executor's own connection to ``target`` (the plugin's target by default).

        Connections to the plugin's own target are kept for the next command (as many as the
        process's commands may hold at once there, ``commands_at_once``, shared by its SQL
        plugins): a command takes three or four admin turns (mint, drop, verify), and a new
        connection each time cost PostgreSQL a backend and its authentication, which measured
        more CPU than everything else the command does. Keeping fewer (8 of 16) still started
        a backend for one command in four under bursts of grants (bench/README.md). A kept
        connection answers a ``SELECT 1`` before it is used again (a restarted server left it
        dead). Not psycopg_pool: it connects in the background and reports a refusing target
        only as a timeout, and a command's failure must say at once why the target refused.
        Connections to a secret-referenced target are made for the command and closed.
        """
        target = target or self.target
        kept = target is self.target
        conn = await self._kept_admin() if kept else None
        if conn is None:
            conn = await self._connect_admin(target)
        try:
            yield conn
        finally:
            reusable = (
                kept
                and len(self._idle_admin) < self.commands_at_once
                and not conn.closed
                and not conn.broken
                and conn.info.transaction_status == TransactionStatus.IDLE
            )
            if reusable:
                self._idle_admin.append(conn)
            else:
                await conn.close()

    async def _kept_admin(self) -> psycopg.AsyncConnection | None:
        while self._idle_admin:
            conn = self._idle_admin.pop()
            try:
                await conn.execute("SELECT 1")
                return conn
            except Exception:  # dead (a restarted server) or made in an event loop that is gone
                await conn.close()
        return None

    async def _connect_admin(self, target: Target) -> psycopg.AsyncConnection:
        try:
            return await psycopg.AsyncConnection.connect(
                target.url,
                autocommit=True,
                connect_timeout=self.connect_timeout_s,
                options="-c search_path=public",
                application_name="keyturn-executor",
            )
        except psycopg.OperationalError as exc:
            if _LOGIN_REFUSED.search(str(exc)):
                raise ExecutionFailed(
                    f"cannot connect to the SQL target {target.name}: {target.refused(exc)}; it refused the login "
                    "itself (a configuration to fix, not a restart), so it was not tried again"
                ) from None
            raise TargetAway(f"cannot connect to the SQL target {target.name}: {target.refused(exc)}") from None

    async def _drop(self, name: str, target: Target | None = None) -> RoleCleanup:
        try:
            async with self._admin(target) as admin:
                return await drop_role(admin, name)
        except (ExecutionFailed, psycopg.Error) as exc:
            reason = str(exc) if isinstance(exc, ExecutionFailed) else postgres_message(exc)
            log.error("sql plugin: temporary role %s not dropped: %s", name, reason)
            raise ExecutionFailed(f"temporary role {name} not dropped: {reason}") from None

    async def _drop_quietly(self, name: str, target: Target | None = None) -> None:
        """``_drop`` after a command, whatever it did: a failure is logged by ``_drop``; the role
        expires with its TTL and the next start sweeps it."""
        try:
            await self._drop(name, target)
        except ExecutionFailed:
            pass

    async def _mint(
        self, admin: psycopg.AsyncConnection, action_id: str, ttl_s: float, grants: Grants, target: Target | None = None
    ) -> TemporaryRole:
        """The command's temporary role (``role_name_for(action_id)``), shown to the credential observer.

        It exists once per action: finding it already there means another run started, and this
        one is refused rather than run twice, unless this process's own earlier attempt for the
        command broke while creating it (then that role is dropped and made again). A connection
        that breaks here is the target away (``TargetAway``): the command's preparation is tried
        again (``before_any_change``), since nothing the command does has happened yet."""
        name = role_name_for(action_id)
        where = target or self.target
        try:
            if name in self._broken_mints:
                await drop_role(admin, name)  # what the broken attempt may have left: nothing if none
            role = await create_role(admin, name, ttl_s, grants)
        except psycopg.errors.DuplicateObject:
            raise ExecutionFailed(
                f"the temporary role for action {action_id} already exists: "
                "another run of it started; refusing to run it twice"
            ) from None
        except DATABASE_UNAVAILABLE as exc:
            self._note_broken_mint(name)
            raise TargetAway(
                f"the connection to {where.name} broke while the command's temporary role was made "
                f"({where.refused(exc)})"  # a referenced target's connection errors quote its host and user
            ) from None
        except psycopg.Error as exc:
            raise ExecutionFailed(
                f"could not create the temporary role on {where.name}: {postgres_message(exc)}"
            ) from None
        self._broken_mints.pop(name, None)
        if self.credential_observer is not None:
            self.credential_observer(role.password)
        return role

    def _note_broken_mint(self, name: str) -> None:
        """Remember that ``name``'s creation broke, for the same command's next attempt; forget
        those older than twice the wait for a target (``settle_s``): their commands gave up, and a
        command's role is never made by a later run (the ledger starts an action once)."""
        now = time.monotonic()
        for old in [n for n, at in self._broken_mints.items() if now - at > 2 * self.settle_s]:
            del self._broken_mints[old]
        self._broken_mints[name] = now

    async def _grants_for(self, admin: psycopg.AsyncConnection, shape: StatementShape) -> Grants:
        return await grants_for(admin, shape, self.target_name)

    async def _connect_as(
        self, role: str, password: str, timeout_s: float, target: Target | None = None
    ) -> psycopg.AsyncConnection:
        """A session as the temporary role, with the statement timeout. Nothing has been sent yet, so
        a target that is away (a restart) is waited for, within ``settle_s``; one that refuses the
        login itself, or stays away, fails the command with nothing changed."""
        options = (
            f"-c statement_timeout={int(timeout_s * 1000)} -c search_path=public -c "
            f"client_connection_check_interval=1000"
        )
        where = target or self.target

        async def attempt() -> psycopg.AsyncConnection:
            try:
                return await psycopg.AsyncConnection.connect(
                    where.url,
                    user=role,
                    password=password,
                    options=options,
                    connect_timeout=self.connect_timeout_s,
                    application_name="keyturn-command",
                )
            except psycopg.OperationalError as exc:
                refused = f"cannot connect to the SQL target {where.name} as the temporary role: {where.refused(exc)}"
                if _LOGIN_REFUSED.search(str(exc)):
                    raise ExecutionFailed(refused) from None
                raise TargetAway(refused) from None

        try:
            return await self.while_target_restarts(attempt, f"{self.name}: logging in as a command's role")
        except TargetAway as away:
            raise ExecutionFailed(f"{away}; the target did not answer within {self.settle_s:g}s") from None

    async def _run_as(
        self,
        role: str,
        password: str,
        shape: StatementShape,
        statement: str,
        max_rows: int | None,
        timeout_s: float,
        grants: Grants,
        before_commit: Callable[[dict[str, Any]], None] | None = None,
        target: Target | None = None,
        note: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
    ) -> dict[str, Any]:
        """Run ``statement`` as the role. ``before_commit`` sees a write's result inside its transaction and
        may raise ``ExecutionFailed`` to roll it back. A write's transaction id goes to ``note``
        (``Command.note``) before its COMMIT; a note that raises rolls the write back."""
        wanted = self.max_result_rows if max_rows is None else min(max_rows, self.max_result_rows)
        target = target or self.target
        conn = await self._connect_as(role, password, timeout_s, target)
        committing = False
        xid: str | None = None
        result: dict[str, Any] = {}
        try:
            async with conn:
                if shape.is_read:
                    await conn.set_read_only(True)
                    async with conn.transaction():
                        return await within(timeout_s, _read(conn, statement, wanted))
                transaction = conn.transaction()
                async with transaction:
                    result = await within(timeout_s, _write(conn, statement, wanted))
                    if before_commit is not None:
                        before_commit(result)  # raising here rolls the transaction back
                    xid = await _transaction_id(conn)
                    if note is not None:
                        await note({"transaction": xid})  # raising here rolls the transaction back
                    committing = True
                return result
        except psycopg.errors.QueryCanceled:
            raise ExecutionFailed(
                f"the statement ran longer than {timeout_s:g}s; PostgreSQL cancelled it and nothing was changed"
            ) from None
        except psycopg.errors.InsufficientPrivilege as exc:
            raise ExecutionFailed(
                f"PostgreSQL refused the statement: {postgres_message(exc)} (the temporary role held "
                f"{grants.describe()}; every table must be named after FROM, JOIN, INTO or UPDATE)"
            ) from None
        except psycopg.OperationalError as exc:
            if committing and xid is not None:
                broke = f"the connection to {target.name} broke while committing ({target.refused(exc)})"
                try:
                    fate = await self.transaction_fate(xid, target)
                except OutcomeUnknown as unknown:
                    raise OutcomeUnknown(f"{broke}: the write may or may not have been applied; {unknown}") from None
                if fate == "aborted":
                    rolled_back = f"{broke}, and the target rolled the transaction back: nothing was changed"
                    raise ExecutionFailed(rolled_back) from None
                return result | {"committed": f"{broke}; the target shows transaction {xid} committed"}
            raise ExecutionFailed(
                f"the connection to {target.name} broke before the statement committed; nothing was changed "
                f"({target.refused(exc)})"
            ) from None
        except psycopg.Error as exc:
            raise ExecutionFailed(f"PostgreSQL: {statement_error(exc)}") from None


def _credential_ttl(command: Command) -> float:
    """The command's credential TTL; none granted means nothing may run."""
    if command.credential_ttl_s <= 0:
        raise ExecutionFailed(f"the decision grants a credential TTL of {command.credential_ttl_s}s; nothing can run")
    return command.credential_ttl_s


async def grants_for(admin: psycopg.AsyncConnection, shape: StatementShape, target_name: str) -> Grants:
    """Exactly what ``shape`` needs on the target: SELECT on what it reads, the write's privilege
    on its target (and the target's serial sequences for INSERT). The impact preview uses it too."""
    tables: dict[Relation, list[str]] = {}
    for written in shape.reads:
        found = await _resolve(admin, written)
        if found is not None:
            tables.setdefault(found[0], []).append("SELECT")
    sequences: tuple[Relation, ...] = ()
    if shape.write_target is not None and shape.write_privilege is not None:  # the statement shape sets both
        found = await _resolve(admin, shape.write_target)
        if found is None:
            raise ExecutionFailed(
                f"{shape.write_privilege} refused before running: table {shape.write_target} does not exist "
                f"on {target_name}"
            )
        target, oid = found
        tables.setdefault(target, []).append(shape.write_privilege)
        if shape.write_privilege == "INSERT":
            sequences = await _serial_sequences(admin, oid)
    return Grants({relation: tuple(sorted(set(p))) for relation, p in tables.items()}, sequences)


async def _read(conn: psycopg.AsyncConnection, statement: str, wanted: int) -> dict[str, Any]:
    async with conn.cursor(name="keyturn_result") as cursor:
        await cursor.execute(statement)
        sources = await source_columns(conn, cursor)
        rows = await cursor.fetchmany(wanted) if wanted > 0 else []
        columns = [column.name for column in cursor.description or ()]
        moved = await conn.execute("MOVE FORWARD ALL IN keyturn_result")
        remaining = int((moved.statusmessage or "MOVE 0").split()[-1])
    result = {"row_count": len(rows) + remaining, "columns": columns, "rows": [_row(columns, r) for r in rows]}
    return result | ({SOURCE_COLUMNS: sources} if sources else {})


async def source_columns(conn: psycopg.AsyncConnection, cursor: Any) -> dict[str, str]:
    """{output column: the table column it holds} for the columns of ``cursor``'s result that are a
    table's column under another name (PostgreSQL says which table and column each output column
    comes straight from; a computed one comes from none)."""
    result = cursor.pgresult
    if result is None:
        return {}
    straight = {
        i: (result.ftable(i), result.ftablecol(i))
        for i in range(result.nfields)
        if result.ftable(i) and result.ftablecol(i)
    }
    if not straight:
        return {}
    found = await conn.execute(
        "SELECT attrelid::int8, attnum::int4, attname FROM pg_attribute WHERE attrelid = ANY(%s::oid[])",
        (sorted({table for table, _ in straight.values()}),),
    )
    names = {(table, number): name for table, number, name in await found.fetchall()}
    columns = [column.name for column in cursor.description or ()]
    return {
        columns[i]: names[where]
        for i, where in straight.items()
        if where in names and names[where].lower() != columns[i].lower()
    }


async def within(timeout_s: float, statement: Awaitable[T]) -> T:
    """``statement`` bounded by the command's time limit here as well as by the session's
    ``statement_timeout``, which a statement may turn off for the rest of its command
    (``set_config`` is anyone's to call, from inside a SELECT): past the limit and a second,
    the task is cancelled (psycopg then sends PostgreSQL a cancel request) and raises as
    PostgreSQL's own cancel would, so the command ends failed with nothing changed."""
    try:
        async with asyncio.timeout(timeout_s + STATEMENT_GRACE_S):
            return await statement
    except TimeoutError:
        raise psycopg.errors.QueryCanceled("the statement passed the command's time limit") from None


async def run_one(conn: psycopg.AsyncConnection, statement: str) -> psycopg.AsyncCursor[Any]:
    """Run an agent's ``statement`` as one statement, whatever its text holds.

    Without parameters psycopg sends a query in the simple protocol, where PostgreSQL runs every
    statement the text holds: a ``COMMIT`` hidden where the shape check (``sql_text``) read a
    comment would end the transaction that bounds, counts and rolls back the command, and what
    follows would run outside it. A prepared statement goes through the extended protocol, whose
    parse step refuses more than one ("cannot insert multiple commands into a prepared
    statement"). Server-side cursors (reads, exports) always use it."""
    return await conn.execute(statement, prepare=True)


async def _write(conn: psycopg.AsyncConnection, statement: str, wanted: int) -> dict[str, Any]:
    cursor = await run_one(conn, statement)
    result: dict[str, Any] = {"row_count": cursor.rowcount}
    if cursor.description:  # RETURNING
        columns = [column.name for column in cursor.description]
        rows = await cursor.fetchmany(wanted) if wanted > 0 else []
        result |= {"columns": columns, "rows": [_row(columns, r) for r in rows]}
    changed, tables = await rows_changed(conn)
    if changed > cursor.rowcount:  # cascades and triggers changed rows the statement's count leaves out
        result |= {"rows_changed": changed, "tables_changed": list(tables)}
    return result


#: Rows inserted, updated and deleted so far in the open transaction, by table: what a statement
#: changed through ``ON DELETE CASCADE``, ``SET NULL`` and triggers as well as by itself (its own
#: row count leaves those out). PostgreSQL keeps these counts per transaction for any role.
_CHANGED_IN_TRANSACTION = (
    "SELECT schemaname || '.' || relname, n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_xact_user_tables "
    "WHERE n_tup_ins + n_tup_upd + n_tup_del > 0 ORDER BY 1"
)


async def rows_changed(conn: psycopg.AsyncConnection) -> tuple[int, tuple[str, ...]]:
    """(rows changed in every table, the tables) in ``conn``'s open transaction (``_CHANGED_IN_TRANSACTION``)."""
    cursor = await conn.execute(_CHANGED_IN_TRANSACTION)
    found = await cursor.fetchall()
    return sum(int(n) for _, n in found), tuple(str(name) for name, _ in found)


def changed_rows(result: dict[str, Any]) -> int:
    """All the rows a write changed (``_write``): its own, and those its cascades and triggers changed."""
    return max(int(result.get("row_count") or 0), int(result.get("rows_changed") or 0))


async def _transaction_id(conn: psycopg.AsyncConnection) -> str:
    """The open transaction's id, with its epoch (``xid8``: never reused), as ``pg_xact_status`` takes it."""
    cursor = await conn.execute("SELECT pg_current_xact_id()::text")
    row = await cursor.fetchone()
    if row is None:
        raise ExecutionFailed("the target did not tell the transaction's id; rolled back, nothing was changed")
    return str(row[0])


def _row(columns: list[str], values: tuple) -> dict[str, Any]:
    return {column: jsonable(value) for column, value in zip(columns, values, strict=False)}


async def _resolve(admin: psycopg.AsyncConnection, written: str) -> tuple[Relation, int] | None:
    """The relation ``written`` names on the target (search_path ``public``), when it grants anything."""
    try:
        cursor = await admin.execute(
            "SELECT n.nspname, c.relname, c.relkind, c.oid, obj_description(n.oid, 'pg_namespace') = %s "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)",
            (OWN_SCHEMA_COMMENT, written),
        )
    except psycopg.OperationalError:
        raise  # the connection, not the name (``SqlPlugin.before_any_change``)
    except psycopg.Error as exc:
        raise ExecutionFailed(
            f"statement refused before running: {written!r} is not a table name ({postgres_message(exc)})"
        ) from None
    row = await cursor.fetchone()
    if row is not None and row[4]:  # keyturn.db.OWN_SCHEMA_COMMENT
        raise ExecutionFailed(
            f"{row[0]}.{row[1]} is Keyturn's own state (its approvals, ledger and secrets, or the lock of its "
            "privilege statements), never an action's target; nothing was changed"
        )
    if row is None or row[2] not in _GRANTABLE_KINDS or row[0] in _PUBLIC_CATALOGS:
        return None
    return Relation(row[0], row[1]), row[3]


async def _serial_sequences(admin: psycopg.AsyncConnection, table_oid: int) -> tuple[Relation, ...]:
    """Sequences behind the table's serial columns (an INSERT draws from them)."""
    cursor = await admin.execute(
        "SELECT n.nspname, s.relname FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' "
        "JOIN pg_namespace n ON n.oid = s.relnamespace "
        "WHERE d.classid = 'pg_class'::regclass AND d.refobjid = %s AND d.deptype = 'a'",
        (table_oid,),
    )
    return tuple(Relation(schema, name) for schema, name in await cursor.fetchall())


def _statement_parameters(parameters: dict[str, Any], field: str = "statement") -> tuple[str, int | None]:
    statement = parameters.get(field)
    if not isinstance(statement, str) or not statement.strip():
        raise ExecutionFailed(f"parameters.{field} must be a non-empty SQL string")
    max_rows = parameters.get("max_rows")
    if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 0):
        raise ExecutionFailed(f"parameters.max_rows must be a whole number ≥ 0, not {max_rows!r}")
    return statement, max_rows


# SQLSTATE classes whose primary message names only the statement's own words and the objects
# it names, never a value it read: connection, feature, integrity (the constraint's name; the
# values are in the detail, never shown), transaction state, rollback, syntax and access
# (column and table names), resources, limits, object state, operator intervention (timeouts).
_MESSAGE_WITHOUT_DATA = frozenset({"08", "0A", "23", "25", "40", "42", "53", "54", "55", "57"})


def statement_error(exc: Exception) -> str:
    """What an agent's statement failed with, for the requester, approvers and the audit: PostgreSQL's
    words where they cannot carry what the statement read, else only the condition's name and
    SQLSTATE. A data exception quotes the value it choked on (``invalid input syntax for type
    integer: "…"``), and a function may raise any text it likes: a failed cast of a column the
    role may read, or a preview of a statement nobody approved yet, would hand the rows back."""
    sqlstate = getattr(exc, "sqlstate", None)
    if not sqlstate or sqlstate[:2] in _MESSAGE_WITHOUT_DATA:
        return postgres_message(exc)
    condition = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", type(exc).__name__.rstrip("_")).lower()
    return f"{condition} (PostgreSQL's message is withheld: it may quote the data) [{sqlstate}]"


def postgres_message(exc: Exception) -> str:
    """PostgreSQL's own words on one line, with the SQLSTATE; never the connection string."""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    text = primary or " ".join(str(exc).split()) or type(exc).__name__
    sqlstate = getattr(exc, "sqlstate", None)
    return f"{text} [{sqlstate}]" if sqlstate else text
