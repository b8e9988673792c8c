"""Grants on one table at once: none fails because another came first.

PostgreSQL keeps a table's privileges in one catalog row and refuses the second of two concurrent
updates of it ("tuple concurrently updated") instead of waiting and re-reading. Agents send
commands on one table in batches, and each command's role is granted on that table: before
Keyturn's privilege statements queued behind each other (``sql_roles.lock_privilege_statements``),
5 of 12 such commands run at once failed, and role drops failed too, leaving credentials behind
until they expired. Grants by anyone else (a DBA's, which takes no lock of ours) are waited out and
tried again. That lock is a table no command role can lock: the advisory lock it once was, any
role could take and hold, and every SQL command waited.

A real, password-checking PostgreSQL; the shipped role statements and the policy's dry run.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest

from keyturn.config import REPO_ROOT
from keyturn.db import OWN_SCHEMA_COMMENT
from keyturn.executor.plugins.base import Command, ExecutionFailed
from keyturn.executor.plugins.iam import IamPlugin
from keyturn.executor.plugins.sql import SqlPlugin
from keyturn.executor.plugins.sql_roles import LOCK_SCHEMA, LOCK_TABLE, Grants, Relation, create_role, drop_role
from keyturn.policy.catalog import SOURCE, ParameterCatalog
from keyturn.policy.impact import SqlPreviewer
from tests.integration.test_executor_support import SqlTarget, sql_target  # noqa: F401  (fixture)
from tests.unit.service_events import requested

pytestmark = pytest.mark.integration

TABLE = Relation("public", "collide_marks")
GRANTS = Grants(tables={TABLE: ("INSERT",)}, sequences=(Relation("public", "collide_marks_id_seq"),))
APP = "keyturn-collision-test"


@pytest.fixture(scope="module")
def target(sql_target: SqlTarget) -> SqlTarget:
    with sql_target.admin() as conn:
        conn.execute("CREATE TABLE collide_marks (id serial PRIMARY KEY, note text NOT NULL)")
        conn.execute("CREATE ROLE collide_reader NOLOGIN")
        for i in range(8):
            conn.execute(f"CREATE ROLE collide_analyst{i} NOLOGIN")
    return sql_target


def privileges(target: SqlTarget, role: str) -> bool:
    with target.admin() as conn:
        return bool(
            conn.execute("SELECT has_table_privilege(%s, 'public.collide_marks', 'INSERT')", (role,)).fetchone()[0]
        )


async def admin_connections(target: SqlTarget, count: int) -> list[psycopg.AsyncConnection]:
    return [
        await psycopg.AsyncConnection.connect(target.url, autocommit=True, application_name=APP) for _ in range(count)
    ]


def test_sixteen_command_roles_on_one_table_are_created_and_dropped_at_once(target: SqlTarget) -> None:
    names = [f"keyturn_cmd_collide{i:02d}" for i in range(16)]

    async def scenario() -> list[Any]:
        conns = await admin_connections(target, len(names))
        try:
            created = await asyncio.gather(*(create_role(c, n, 60, GRANTS) for c, n in zip(conns, names, strict=True)))
            assert [role.name for role in created] == names
            assert all(privileges(target, name) for name in names)
            return await asyncio.gather(*(drop_role(c, n) for c, n in zip(conns, names, strict=True)))
        finally:
            for conn in conns:
                await conn.close()

    cleanups = asyncio.run(scenario())
    assert all(cleanup.existed for cleanup in cleanups)
    assert not set(names) & set(target.temporary_roles())


def test_eight_permission_changes_on_one_table_at_once_are_all_made(target: SqlTarget) -> None:
    """``iam.permission.change`` is a GRANT on the table itself, run as the command's role."""
    plugin = IamPlugin(target.url)
    principals = [f"collide_analyst{i}" for i in range(8)]
    commands = [
        Command(
            str(uuid.uuid4()),
            "iam.permission.change",
            "iam://staging/tables/collide_marks",
            {"principal": p, "table": "collide_marks", "privileges": ["SELECT"], "change": "grant"},
            60,
        )
        for p in principals
    ]

    async def scenario() -> list[Any]:
        return await asyncio.gather(*(plugin.execute(command) for command in commands))

    results = asyncio.run(scenario())
    assert [r["performed"] for r in results] == [f"GRANT SELECT ON public.collide_marks TO {p}" for p in principals]
    with target.admin() as conn:
        granted = conn.execute(
            "SELECT grantee FROM information_schema.role_table_grants WHERE table_name = 'collide_marks' "
            "AND privilege_type = 'SELECT' AND grantee LIKE 'collide_analyst%' ORDER BY 1"
        ).fetchall()
    assert [row[0] for row in granted] == principals
    assert not target.temporary_roles()  # every command's role dropped after it


def collides_with_an_outside_grant(target: SqlTarget, ours: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``ours`` while another session holds an uncommitted GRANT on the table, commit that
    grant once ours waits for it, and return what ours returned; PostgreSQL logged the collision."""
    logged = target.log_path.stat().st_size
    outside = psycopg.connect(target.url, application_name="keyturn-outside-grant")

    def waiting() -> bool:
        with target.superuser() as conn:
            return (
                conn.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE application_name = ANY(%s) AND wait_event_type = 'Lock'",
                    ([APP, "keyturn-impact-preview"],),
                ).fetchone()
                is not None
            )

    async def scenario() -> Any:
        outside.execute("GRANT SELECT ON public.collide_marks TO collide_reader")  # holds the table's row
        task = asyncio.create_task(ours())
        deadline = time.monotonic() + 30
        while not await asyncio.to_thread(waiting):
            assert not task.done(), task.result()
            assert time.monotonic() < deadline, "ours never waited for the outside grant"
            await asyncio.sleep(0.05)
        outside.commit()  # now ours is told the row changed under it
        return await task

    try:
        result = asyncio.run(scenario())
    finally:
        outside.close()
    with target.admin() as conn:
        conn.execute("REVOKE SELECT ON public.collide_marks FROM collide_reader")
    assert "tuple concurrently updated" in target.log_path.read_text()[logged:]  # it did collide
    return result


def test_a_command_role_whose_grant_collides_with_an_outside_one_is_made_on_the_next_try(target: SqlTarget) -> None:
    name = "keyturn_cmd_collide_outside"

    async def ours() -> Any:
        (conn,) = await admin_connections(target, 1)
        async with conn:
            return await create_role(conn, name, 60, GRANTS)

    assert collides_with_an_outside_grant(target, ours).name == name
    assert privileges(target, name)

    async def dropped() -> Any:
        (conn,) = await admin_connections(target, 1)
        async with conn:
            return await drop_role(conn, name)

    assert asyncio.run(dropped()).existed and name not in target.temporary_roles()


def test_a_dry_run_whose_grant_collides_with_an_outside_one_still_counts(target: SqlTarget) -> None:
    parameters = {"statement": "INSERT INTO collide_marks (note) VALUES ('previewed')"}
    previewer = SqlPreviewer(target.url, ParameterCatalog.load(REPO_ROOT / SOURCE), lambda _: parameters)
    request = requested("collide-preview", action="sql.query", parameters=parameters)

    preview = collides_with_an_outside_grant(target, lambda: previewer.preview(request))
    assert preview is not None and (preview.status, preview.rows, preview.method) == ("computed", 1, "exact"), preview
    with target.admin() as conn:
        assert conn.execute("SELECT count(*) FROM collide_marks").fetchone()[0] == 0  # rolled back


# --- the lock no command role can take ------------------------------------------------------------

# what the privilege statements' lock once was: pg_advisory_xact_lock of this key, which any role may take
OLD_ADVISORY_KEY = 4923627923665605440
LOCK = f"{LOCK_SCHEMA}.{LOCK_TABLE}"


def sql_command(statement: str) -> Command:
    return Command(str(uuid.uuid4()), "sql.query", "postgres://staging/keyturn/public", {"statement": statement}, 60)


async def logged_in_as(target: SqlTarget, role: Any, url: str | None = None) -> psycopg.AsyncConnection:
    return await psycopg.AsyncConnection.connect(url or target.url, user=role.name, password=role.password)


def test_a_command_role_holding_the_old_advisory_lock_stalls_no_other_command(target: SqlTarget) -> None:
    """A command role takes the old key for its session and, in an open transaction, a lock on the lock
    table by its oid (``pg_relation_size`` checks no privilege): another command still runs at once."""
    plugin = SqlPlugin(target.url)

    async def scenario() -> Any:
        (admin,) = await admin_connections(target, 1)
        async with admin:
            holder = await create_role(admin, "keyturn_cmd_lock_holder", 60, Grants())
            oid = (await (await admin.execute("SELECT %s::regclass::oid", (LOCK,))).fetchall())[0][0]
            try:
                async with await logged_in_as(target, holder) as session:
                    await session.execute("SELECT pg_advisory_lock(%s)", (OLD_ADVISORY_KEY,))
                    await session.execute("SELECT pg_relation_size(%s)", (oid,))  # ACCESS SHARE, held: not autocommit
                    started = time.monotonic()
                    result = await asyncio.wait_for(
                        plugin.execute(sql_command("SELECT count(*) AS n FROM collide_marks")), 20
                    )
                    return result, time.monotonic() - started
            finally:
                await drop_role(admin, holder.name)

    result, took = asyncio.run(scenario())
    assert result["rows"] == [{"n": 0}]
    assert took < 10, took
    assert not target.temporary_roles()


def test_a_command_role_cannot_lock_the_lock_table(target: SqlTarget) -> None:
    async def scenario() -> list[str]:
        (admin,) = await admin_connections(target, 1)
        async with admin:
            role = await create_role(admin, "keyturn_cmd_lock_taker", 60, GRANTS)
            refused = []
            try:
                async with await logged_in_as(target, role) as session:
                    for mode in ("EXCLUSIVE", "ROW SHARE", "ACCESS SHARE"):
                        with pytest.raises(psycopg.errors.InsufficientPrivilege) as denied:
                            async with session.transaction():
                                await session.execute(f"LOCK TABLE {LOCK} IN {mode} MODE")
                        refused.append(str(denied.value))
            finally:
                await drop_role(admin, role.name)
            return refused

    refused = asyncio.run(scenario())
    assert all(f"permission denied for schema {LOCK_SCHEMA}" in why for why in refused), refused
    with target.admin() as conn:
        found = conn.execute(
            "SELECT obj_description(n.oid, 'pg_namespace'), "
            "(SELECT count(*) FROM aclexplode(n.nspacl) a WHERE a.grantee <> n.nspowner), "
            "(SELECT count(*) FROM aclexplode(c.relacl) a WHERE a.grantee <> c.relowner) "
            "FROM pg_namespace n JOIN pg_class c ON c.relnamespace = n.oid WHERE n.nspname = %s AND c.relname = %s",
            (LOCK_SCHEMA, LOCK_TABLE),
        ).fetchone()
    assert found == (OWN_SCHEMA_COMMENT, 0, 0)  # marked as Keyturn's own; nobody but its owner holds anything


def test_no_statement_and_no_grant_may_name_the_lock_table(target: SqlTarget) -> None:
    """What an agent could otherwise ask for to hold the lock: a write on the table (ROW EXCLUSIVE for the
    statement's length), or UPDATE on it granted to a role of its own."""
    sql_plugin, iam = SqlPlugin(target.url), IamPlugin(target.url)
    grant = Command(
        str(uuid.uuid4()),
        "iam.permission.change",
        "iam://staging/tables/lock",
        {"principal": "collide_reader", "table": LOCK, "privileges": ["UPDATE"], "change": "grant"},
        60,
    )

    async def scenario() -> list[str]:
        refused = []
        for plugin, command in (
            (sql_plugin, sql_command(f"DELETE FROM {LOCK} WHERE pg_sleep(30) IS NULL")),
            (sql_plugin, sql_command(f"SELECT * FROM {LOCK}")),
            (iam, grant),
        ):
            with pytest.raises(ExecutionFailed) as failed:
                await plugin.execute(command)
            refused.append(str(failed.value))
        return refused

    refused = asyncio.run(scenario())
    assert all(f"{LOCK} is Keyturn's own state" in why for why in refused), refused
    assert not target.temporary_roles()


def fresh_database(target: SqlTarget, name: str, *, owner: str = "keyturn") -> str:
    with target.superuser() as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name} OWNER {owner}")
    return target.url.rsplit("/", 1)[0] + "/" + name


def lock_made(target: SqlTarget, url: str) -> bool:
    with psycopg.connect(url, user="keyturn", password="keyturn") as conn:
        return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (LOCK,)).fetchone()[0]


def test_the_previewer_and_the_executor_each_make_the_lock_where_the_other_never_ran(target: SqlTarget) -> None:
    previewed = fresh_database(target, "lock_previewer_first")
    executed = fresh_database(target, "lock_executor_first")
    parameters = {"statement": "SELECT 1 AS one"}
    previewer = SqlPreviewer(previewed, ParameterCatalog.load(REPO_ROOT / SOURCE), lambda _: parameters)
    preview = asyncio.run(previewer.preview(requested("lock-preview", action="sql.query", parameters=parameters)))
    assert preview is not None and (preview.status, preview.rows) == ("computed", 1), preview
    assert lock_made(target, previewed)

    asyncio.run(SqlPlugin(executed).start())
    assert lock_made(target, executed)


def test_an_executor_that_may_not_make_the_lock_says_what_to_create(
    target: SqlTarget, caplog: pytest.LogCaptureFixture
) -> None:
    """A database whose owner is not the executor's role, which then may not create a schema: no
    fallback to a lock anyone could take; start logs what the owner must run, each command fails saying it."""
    url = fresh_database(target, "lock_not_ours", owner="postgres")
    plugin = SqlPlugin(url)
    with caplog.at_level("ERROR"):
        asyncio.run(plugin.start())
    create = f"CREATE SCHEMA {LOCK_SCHEMA} AUTHORIZATION keyturn"
    assert create in caplog.text
    with pytest.raises(ExecutionFailed) as failed:
        asyncio.run(plugin.execute(sql_command("SELECT 1 AS one")))
    assert create in str(failed.value)

    with psycopg.connect(
        host=str(target.socket_dir), port=target.port, user="postgres", dbname="lock_not_ours"
    ) as conn:
        conn.execute(create)  # what the message says: then the executor makes the table in it
    assert asyncio.run(plugin.execute(sql_command("SELECT 1 AS one")))["rows"] == [{"one": 1}]
    assert lock_made(target, url)
