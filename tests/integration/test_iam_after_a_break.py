"""A grant or revoke whose connection broke, or whose read-back failed, is settled by the catalog.

In the fault drill the database restarts while grants run. Each such command used to end
``outcome_unknown``, leaving a person to check the target by hand; the catalog knows the answer
once the command's own session is gone (a session that is gone commits nothing more). So the
plugin reads the change back as soon as the target answers again: a change cut off before it
committed ends ``failed`` (nothing was changed), one whose answer was lost after it committed ends
``succeeded``, and only a target that cannot say within ``settle_s`` leaves it ``outcome_unknown``.

A real, password-checking PostgreSQL; its own backends terminated as a restart would.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import psycopg
import pytest

from keyturn.executor.plugins.base import Command, ExecutionFailed, OutcomeUnknown
from keyturn.executor.plugins.iam import IamPlugin
from tests.integration.test_executor_support import SqlTarget, sql_target  # noqa: F401  (fixture)
from tests.processes import free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def target(sql_target: SqlTarget) -> SqlTarget:
    with sql_target.admin() as conn:
        conn.execute("CREATE TABLE break_ledger (id serial PRIMARY KEY, note text NOT NULL)")
        conn.execute("CREATE ROLE break_auditor NOLOGIN")
    return sql_target


def grant(privilege: str) -> Command:
    return Command(
        str(uuid.uuid4()),
        "iam.permission.change",
        "iam://staging/tables/break_ledger",
        {"principal": "break_auditor", "table": "break_ledger", "privileges": [privilege], "change": "grant"},
        60,
    )


def holds(target: SqlTarget, privilege: str) -> bool:
    with target.admin() as conn:
        return bool(
            conn.execute(
                "SELECT has_table_privilege('break_auditor', 'public.break_ledger', %s)", (privilege,)
            ).fetchone()[0]
        )


def test_a_grant_cut_off_before_it_committed_ends_failed_and_changes_nothing(target: SqlTarget) -> None:
    """Its session is terminated (as a restart would) while its GRANT waits for another session's
    uncommitted grant on the same table."""
    plugin = IamPlugin(target.url)
    plugin.settle_every_s = 0.1
    outside = psycopg.connect(target.url, application_name="keyturn-outside-grant")
    outside.execute("GRANT SELECT ON public.break_ledger TO break_auditor")  # holds the table's row

    def waiting_command() -> int | None:
        with target.superuser() as conn:
            row = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE usename LIKE 'keyturn\\_cmd\\_%' AND wait_event_type = 'Lock'"
            ).fetchone()
            return int(row[0]) if row else None

    async def scenario() -> Any:
        task = asyncio.create_task(plugin.execute(grant("UPDATE")))
        deadline = time.monotonic() + 30
        while (pid := await asyncio.to_thread(waiting_command)) is None:
            assert not task.done(), task
            assert time.monotonic() < deadline, "the command's GRANT never waited for the outside one"
            await asyncio.sleep(0.05)
        with target.superuser() as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        outside.rollback()
        return await task

    try:
        with pytest.raises(ExecutionFailed, match=r"did not complete .*it was not applied") as failed:
            asyncio.run(scenario())
    finally:
        outside.close()
    assert "GRANT UPDATE ON public.break_ledger TO break_auditor" in str(failed.value)
    assert not holds(target, "UPDATE")
    assert not target.temporary_roles()


def test_a_grant_whose_answer_was_lost_after_it_committed_ends_succeeded(target: SqlTarget, monkeypatch) -> None:
    from keyturn.executor.plugins import iam as iam_module

    apply = iam_module._Change.apply

    async def committed_then_cut_off(change: Any, conn: Any, executor_role: str) -> None:
        await apply(change, conn, executor_role)
        raise psycopg.OperationalError("consuming input failed: server closed the connection unexpectedly")

    monkeypatch.setattr(iam_module._Change, "apply", committed_then_cut_off)
    result = asyncio.run(IamPlugin(target.url).execute(grant("INSERT")))
    assert result["performed"] == "GRANT INSERT ON public.break_ledger TO break_auditor"
    assert "server closed the connection unexpectedly" in result["connection_broke"]
    assert holds(target, "INSERT")
    assert not target.temporary_roles()


def breaking_reads(monkeypatch, breaks: int) -> None:
    """The catalog reads after the first (the one before the change) fail ``breaks`` times."""
    from keyturn.executor.plugins import iam as iam_module

    reads: list[bool] = []
    read = iam_module._Change.holds

    async def breaking(change: Any, admin: Any) -> bool:
        reads.append(True)
        if 2 <= len(reads) < 2 + breaks:
            raise psycopg.OperationalError("consuming input failed: server closed the connection unexpectedly")
        return await read(change, admin)

    monkeypatch.setattr(iam_module._Change, "holds", breaking)


def test_a_read_back_that_breaks_is_read_again_once_the_target_answers(target: SqlTarget, monkeypatch) -> None:
    breaking_reads(monkeypatch, breaks=2)
    plugin = IamPlugin(target.url)
    plugin.settle_every_s = 0.1
    result = asyncio.run(plugin.execute(grant("DELETE")))
    assert result["performed"] == "GRANT DELETE ON public.break_ledger TO break_auditor"
    assert "connection_broke" not in result
    assert holds(target, "DELETE")


def test_a_target_that_cannot_say_in_time_leaves_it_outcome_unknown_never_failed(
    target: SqlTarget, monkeypatch
) -> None:
    breaking_reads(monkeypatch, breaks=1000)
    plugin = IamPlugin(target.url)
    plugin.settle_s, plugin.settle_every_s = 1.0, 0.1
    started = time.monotonic()
    with pytest.raises(OutcomeUnknown, match=r"GRANT TRUNCATE .* ran, but reading it back .* could not say within 1s"):
        asyncio.run(plugin.execute(grant("TRUNCATE")))
    assert 1.0 <= time.monotonic() - started < 10
    assert holds(target, "TRUNCATE")  # it did take effect: never reported failed


def test_a_grant_that_finds_the_target_away_waits_for_it_and_is_made(target: SqlTarget, monkeypatch) -> None:
    """The drill's database restart: the executor's first connections are refused (a port where
    nothing listens), then the target answers; the approved grant is made, not failed."""
    from keyturn.executor.plugins.sql import Target

    plugin = IamPlugin(target.url)
    plugin.settle_every_s = 0.1
    connect = plugin._connect_admin
    attempts: list[str] = []

    async def restarting(where: Target) -> psycopg.AsyncConnection:
        attempts.append(where.name)
        if len(attempts) <= 2:
            return await connect(Target(f"postgresql://keyturn@127.0.0.1:{free_port()}/keyturn", where.name))
        return await connect(where)

    monkeypatch.setattr(plugin, "_connect_admin", restarting)
    plugin._idle_admin.clear()  # no kept connection: every admin turn connects
    result = asyncio.run(plugin.execute(grant("REFERENCES")))
    assert result["performed"] == "GRANT REFERENCES ON public.break_ledger TO break_auditor"
    assert len(attempts) >= 3 and holds(target, "REFERENCES")
    assert not target.temporary_roles()


def test_after_the_executor_died_mid_grant_the_catalog_says_whether_it_took_effect(target: SqlTarget) -> None:
    """``settle``, as the runner calls it after ``abandon`` ended the dead run's sessions: a grant
    the dead run committed is in effect (succeeded); one it did not is not (failed, nothing changed)."""
    plugin = IamPlugin(target.url)
    committed, cut_off = grant("TRIGGER"), grant("TRIGGER")
    with pytest.raises(ExecutionFailed, match=r"GRANT TRIGGER .* is not in effect: nothing was changed"):
        asyncio.run(plugin.settle(cut_off))
    with target.admin() as conn:  # what the dead run committed before it was killed
        conn.execute("GRANT TRIGGER ON public.break_ledger TO break_auditor")
    result = asyncio.run(plugin.settle(committed))
    assert result["in_effect"] == "GRANT TRIGGER ON public.break_ledger TO break_auditor"
    assert result["performed"] == "not known"  # it may have been so before the dead run
    assert result["verified_in"] == "information_schema.role_table_grants"
