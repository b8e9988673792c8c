"""Grants on one table at once: none fails because another came first.

PostgreSQL keeps a table's privileges in one catalog row and refuses the second of two concurrent
updates of it ("tuple concurrently updated") instead of waiting and re-reading. Agents send
commands on one table in batches, and each command's role is granted on that table: before
``sql_roles.PRIVILEGE_STATEMENTS_LOCK``, 5 of 12 such commands run at once failed, and role drops
failed too, leaving credentials behind until they expired. Grants by anyone else (a DBA's, which
takes no lock of ours) are waited out and tried again.

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
from keyturn.executor.plugins.base import Command
from keyturn.executor.plugins.iam import IamPlugin
from keyturn.executor.plugins.sql_roles import Grants, Relation, create_role, drop_role
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
