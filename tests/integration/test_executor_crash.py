"""At most once, across a crash: the executor is SIGKILLed while a write runs, then restarted.
(And a grant: the catalog says what the dead run did, so it ends ``failed`` or ``succeeded``.)

The write is a real slow statement (an INSERT fed by ``pg_sleep``), so the kill lands between
the ledger's "started" and "finished" every time, before the write's COMMIT. The redelivered
order must not run again: the dead run noted no transaction in the ledger (a write notes its
transaction id just before committing), so once its session is ended nothing can have
changed, and the action ends ``failed`` saying so, with the evidence; the temporary role is
gone, and the INSERT was sent once and never committed — counted in its table and in the
target's statement log. (A write killed after noting its transaction is read back from the
target: ``tests/integration/test_sql_commit_lost.py``.)
"""

from __future__ import annotations

import json
import re
import time
import uuid

import httpx
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from keyturn.bus.topics import Topics
from keyturn.core.events import ActionDecided, ActionExecuted
from keyturn.db import schema_name
from keyturn.executor.plugins.sql_roles import role_name_for
from tests.integration.conftest import Agent, approval_shown, eventually, mint, produce, read_topic
from tests.integration.test_executor_support import (  # noqa: F401  (fixture)
    ExecutorUnderTest,
    SqlTarget,
    put_secret,
    sql_target,
)

pytestmark = pytest.mark.integration

STATEMENT = "INSERT INTO crash_marks (note) SELECT 'interrupted' FROM pg_sleep(30)"


@pytest.fixture(scope="module")
def executor(settings, services, sql_target: SqlTarget):
    with sql_target.admin() as conn:
        conn.execute("CREATE TABLE crash_marks (id serial PRIMARY KEY, note text NOT NULL)")
    overrides = {"KEYTURN_SQL_TARGET_URL": sql_target.url, "KEYTURN_SQL_STATEMENT_TIMEOUT_S": "120"}
    with ExecutorUnderTest(settings, services, overrides) as running:
        yield running


def ledger_entry(settings, action_id: str) -> tuple | None:
    with psycopg.connect(settings.database_url) as conn:
        return conn.execute(
            f"SELECT executor, started_at, finished_at, outcome FROM "
            f'"{schema_name(settings.namespace)}".executions WHERE action_id = %s',
            (action_id,),
        ).fetchone()


def statement_running(target: SqlTarget, role: str) -> bool:
    with target.superuser() as conn:
        row = conn.execute(
            "SELECT query FROM pg_stat_activity WHERE usename = %s AND state = 'active'", (role,)
        ).fetchone()
    return row is not None and "pg_sleep" in row[0]


def test_a_write_interrupted_by_a_crash_before_its_commit_ends_failed_and_never_runs_twice(
    settings, executor: ExecutorUnderTest, sql_target: SqlTarget
) -> None:
    agent = Agent(settings, "agent:reporter", ("human:alice",))
    action_id = agent.submit_ok("sql.query", "postgres://staging/shop", {"statement": STATEMENT})
    role = role_name_for(action_id)

    # started, and the statement is running on the target as the action's own role: now crash
    assert eventually(lambda: statement_running(sql_target, role), timeout=60), "the statement never started"
    started = ledger_entry(settings, action_id)
    assert started is not None and started[2] is None  # started, not finished
    executor.kill()
    assert agent.status(action_id)["state"] == "allowed"  # nobody has said anything about the outcome yet

    executor.start()
    view = agent.wait(action_id, timeout=120)
    assert view["state"] == "failed", view
    reason = view["reasons"][0]
    assert reason.startswith(f"started at {started[1].isoformat()} by {started[0]} and never finished")
    assert "not run again" in reason
    assert "it never reached its COMMIT), and its session was ended: nothing was changed" in reason
    evidence = view["result"]["evidence"]
    assert evidence["started_by"] == started[0] and evidence["plugin"] == "sql"
    assert evidence["cleanup"]["temporary_role"] == role
    assert role not in sql_target.temporary_roles()

    def count() -> int:
        with sql_target.admin() as conn:
            return conn.execute("SELECT count(*) FROM crash_marks").fetchone()[0]

    assert count() == 0  # killed mid-statement: its transaction ended with its session

    # the order arrives once more (a second redelivery): still not run, same answer
    topics = Topics(settings.namespace, settings.partitions)
    sent = next(
        m for e, m in read_topic(settings, topics.decided) if isinstance(e, ActionDecided) and e.action_id == action_id
    )
    # the record as the broker would redeliver it: the same bytes, with the policy's warrant
    produce(settings, topics.decided, sent.value, key=sent.key, headers=list(sent.headers))

    def answers() -> list[ActionExecuted] | None:
        found = [
            e
            for e, _ in read_topic(settings, topics.executed)
            if isinstance(e, ActionExecuted) and e.action_id == action_id
        ]
        return found if len(found) >= 2 else None

    executed = eventually(answers, timeout=60)
    assert {e.outcome.value for e in executed} == {"failed"}
    time.sleep(1)
    assert not statement_running(sql_target, role)
    assert count() == 0
    # the executor sent the target the statement exactly once (log_statement = 'all' logs every
    # statement received; the policy's impact preview dry-ran it before, in a transaction it rolled back)
    received = [
        line
        for line in sql_target.log_path.read_text().splitlines()
        if re.search(r"LOG:  (statement|execute [^:]*): ", line) and STATEMENT in line
    ]
    assert len([line for line in received if "app=keyturn-command " in line]) == 1, received
    assert all("app=keyturn-impact-preview " in line for line in received if "app=keyturn-command " not in line)
    assert ledger_entry(settings, action_id)[3] == "failed"


def test_a_command_interrupted_on_a_target_in_a_secret_has_its_role_dropped_there(
    settings, executor: ExecutorUnderTest, sql_target: SqlTarget
) -> None:
    """The command runs on a database that only a secret names, on another server than the
    plugin's own target (the session's database server): the role made for it lives there, so
    after the crash it must be dropped there, and nothing of the secret may show."""
    suffix = uuid.uuid4().hex[:8]
    database, secret = f"crashref_{suffix}", f"crash-ref-{suffix}"
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {database}")
    url = make_conninfo(settings.database_url, dbname=database)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE crash_marks (id serial PRIMARY KEY, note text NOT NULL)")
        put_secret(settings, secret, url)
        agent = Agent(settings, "agent:reporter", ("human:alice",))
        parameters = {"statement": STATEMENT, "connection_string": {"secret": secret}}
        action_id = agent.submit_ok("sql.query", "postgres://staging/shop", parameters)
        # no dry run on a target only the executor can resolve: a db owner approves it
        assert agent.wait_for_state(action_id, "needs_approval")["state"] == "needs_approval"
        frank = {"Authorization": f"Bearer {mint(settings, 'human:frank')}"}
        shown = approval_shown(settings, action_id, "human:frank")
        vote = {"choice": "approve", "payload_digest": shown["payload_digest"], "channel": "api", "reason": "test"}
        voted = httpx.post(
            f"{settings.approval_url}/v1/approvals/{action_id}/votes", json=vote, headers=frank, timeout=30
        )
        assert voted.status_code == 200, voted.text

        role = role_name_for(action_id)

        def role_connected() -> bool:
            with psycopg.connect(url) as conn:
                return conn.execute("SELECT 1 FROM pg_stat_activity WHERE usename = %s", (role,)).fetchone() is not None

        def role_exists() -> bool:
            with psycopg.connect(url) as conn:
                return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is not None

        assert eventually(role_connected, timeout=60), "the command never connected to the referenced target"
        executor.kill()
        assert role_exists()  # left behind by the crash, on the referenced server only
        assert role not in sql_target.temporary_roles()

        executor.start()
        view = agent.wait(action_id, timeout=120)
        assert view["state"] == "failed", view  # read back there: it never reached its COMMIT
        assert f"committing anything on the target in secret '{secret}'" in view["reasons"][0]
        cleanup = view["result"]["evidence"]["cleanup"]
        assert cleanup["temporary_role"] == role and "cleanup_error" not in cleanup, cleanup
        assert not role_exists()
        text = json.dumps(view)
        assert database not in text and "password=" not in text  # the secret (a keyword connection string)
    finally:
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def test_a_grant_interrupted_by_a_crash_is_read_back_from_the_catalog_not_left_unknown(
    settings, executor: ExecutorUnderTest, sql_target: SqlTarget
) -> None:
    """The executor dies while an approved GRANT waits for another session's uncommitted grant on
    the same table. The dead run can commit nothing more once its session is gone, so the
    redelivered order reads the catalog (``settle``, after ``abandon``): the change is not in
    effect, and the action ends ``failed`` with nothing changed, to be asked again, instead of
    ``outcome_unknown``."""
    with sql_target.admin() as conn:
        conn.execute("CREATE ROLE crash_auditor NOLOGIN")
    outside = psycopg.connect(sql_target.url, application_name="keyturn-outside-grant")
    outside.execute("GRANT SELECT ON public.crash_marks TO crash_auditor")  # holds the table's row, uncommitted
    try:
        agent = Agent(settings, "agent:reporter", ("human:alice",))
        parameters = {"principal": "crash_auditor", "table": "crash_marks", "privileges": ["UPDATE"], "change": "grant"}
        action_id = agent.submit_ok("iam.permission.change", "iam://staging/tables/crash_marks", parameters)
        assert agent.wait_for_state(action_id, "needs_approval")["state"] == "needs_approval"
        shown = approval_shown(settings, action_id, "human:carol")  # security approves
        vote = {"choice": "approve", "payload_digest": shown["payload_digest"], "channel": "api", "reason": "test"}
        carol = {"Authorization": f"Bearer {mint(settings, 'human:carol')}"}
        voted = httpx.post(
            f"{settings.approval_url}/v1/approvals/{action_id}/votes", json=vote, headers=carol, timeout=30
        )
        assert voted.status_code == 200, voted.text
        role = role_name_for(action_id)

        def grant_waiting() -> bool:
            with sql_target.superuser() as conn:
                row = conn.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE usename = %s AND wait_event_type = 'Lock'", (role,)
                ).fetchone()
            return row is not None

        assert eventually(grant_waiting, timeout=60), "the command's GRANT never waited for the outside one"
        executor.kill()
        outside.rollback()  # the dead run's GRANT may now finish its statement, never its transaction
    finally:
        outside.close()

    executor.start()
    view = agent.wait(action_id, timeout=120)
    assert view["state"] == "failed", view
    reason = view["reasons"][0]
    assert "never finished" in reason and "read back from the target" in reason, reason
    assert "GRANT UPDATE ON public.crash_marks TO crash_auditor is not in effect: nothing was changed" in reason
    assert view["result"]["evidence"]["cleanup"]["temporary_role"] == role
    with sql_target.admin() as conn:
        held = conn.execute("SELECT has_table_privilege('crash_auditor', 'public.crash_marks', 'UPDATE')").fetchone()
    assert held is not None and not held[0]
    assert role not in sql_target.temporary_roles()
