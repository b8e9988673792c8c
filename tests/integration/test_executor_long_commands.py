"""Commands that run for a long time: they hold up no other action, and a rebalance that moves
their orders while they run does not run them twice.

1. The executor has several batches in hand at once (``executor_batches_in_flight``): an order
   that arrives while a long command runs is executed at once, not after it.
2. A second executor joins the group while the first runs slow writes. The first is busy past the
   group's rebalance timeout, so the group goes on without it and hands its partitions to the
   newcomer, with orders whose commands still run on the first (their offsets are committed only
   once they finish). The newcomer must neither run them again nor take them for the remains of
   a crash (which would drop the credential under the running command and end the action
   ``outcome_unknown``): it waits for the first's outcome (the ledger's lease,
   docs/architecture.md decision 11). Every write happens once, to its end.

Real Kafka, real ledger, the shipped SQL plugin on a real target, executor processes.
"""

from __future__ import annotations

import re

import psycopg
import pytest

from keyturn.bus.topics import Topics
from keyturn.config import REPO_ROOT
from keyturn.core.events import ActionExecuted
from keyturn.db import schema_name
from keyturn.executor.plugins.sql_roles import role_name_for
from tests.integration.conftest import Agent, eventually, read_topic
from tests.integration.test_executor_crash import statement_running
from tests.integration.test_executor_support import (  # noqa: F401  (fixture)
    ExecutorUnderTest,
    SqlTarget,
    _wait_ready,
    sql_target,
)
from tests.processes import start_service, stop_process

pytestmark = pytest.mark.integration

# long enough for the newcomer to start and join (seconds on a loaded host), and for the group to
# give up on the busy first executor 2 s later, while the commands it started still run
SLEEP_S = 20
ACTIONS = 12  # on one table: their grants are made at once (sql_roles.lock_privilege_statements)
STATEMENT = f"INSERT INTO rebalance_marks (note) SELECT 'moved' FROM pg_sleep({SLEEP_S})"


@pytest.fixture(scope="module")
def first(settings, services, sql_target: SqlTarget):
    with sql_target.admin() as conn:
        conn.execute("CREATE TABLE rebalance_marks (id serial PRIMARY KEY, note text NOT NULL)")
    overrides = {
        "KEYTURN_SQL_TARGET_URL": sql_target.url,
        "KEYTURN_SQL_STATEMENT_TIMEOUT_S": "120",
        # the policy's dry run of each statement (pg_sleep for SLEEP_S) gives up for the planner's
        # estimate; its other steps (connect, grants, role, EXPLAIN) share the limit, and at 0.2 s
        # a loaded CI host ran out of it, left previews unavailable, and so actions needing approval
        "KEYTURN_IMPACT_PREVIEW_TIMEOUT_S": "2",
        # the group stops waiting for the busy first executor after 2 s and moves its partitions,
        # running commands and all (by default it waits 60 s, longer than most commands run)
        "KEYTURN_WORKER_REBALANCE_TIMEOUT_S": "2",
    }
    with ExecutorUnderTest(settings, services, overrides) as running:
        yield running


def test_an_order_arriving_while_a_long_command_runs_is_executed_at_once(
    settings, first: ExecutorUnderTest, sql_target: SqlTarget
) -> None:
    agent = Agent(settings, "agent:reporter", ("human:alice",))
    long_id = agent.submit_ok("sql.query", "postgres://staging/shop", {"statement": STATEMENT.replace("moved", "long")})
    assert eventually(lambda: statement_running(sql_target, role_name_for(long_id)), timeout=60), "it never ran"

    quick_id = agent.submit_ok("sql.query", "postgres://staging/shop", {"statement": "SELECT 1 AS one"})
    quick = agent.wait(quick_id, timeout=SLEEP_S / 2)
    assert quick["state"] == "succeeded", quick
    assert statement_running(sql_target, role_name_for(long_id)), "the quick one waited for the long one"
    assert agent.wait(long_id, timeout=120)["state"] == "succeeded"
    with sql_target.admin() as conn:
        conn.execute("DELETE FROM rebalance_marks")


def test_orders_moved_by_a_rebalance_while_their_commands_run_are_waited_for_and_run_once(
    settings, first: ExecutorUnderTest, sql_target: SqlTarget
) -> None:
    agent = Agent(settings, "agent:reporter", ("human:alice",))
    item = {"action": "sql.query", "resource": "postgres://staging/shop", "parameters": {"statement": STATEMENT}}
    submitted = agent.http.post("/v1/actions:batch", json={"items": [item | {"reason": "rebalance"}] * ACTIONS})
    assert submitted.status_code == 200, submitted.text
    action_ids = [result["action_id"] for result in submitted.json()["results"]]
    assert len(set(action_ids)) == ACTIONS
    roles = [role_name_for(action_id) for action_id in action_ids]
    # the policy may decide them in more than one batch: the first executor is busy with the first
    assert eventually(lambda: any(statement_running(sql_target, role) for role in roles), timeout=60), (
        "no command ever ran"
    )

    # a second executor joins the group while the first runs commands
    second_log = first.log_path.with_name("executor-joining.log")
    offset = second_log.stat().st_size if second_log.exists() else 0
    second = start_service("executor", env=first.env, log_path=second_log, cwd=REPO_ROOT)
    try:
        _wait_ready(second, second_log, offset)
        views = {action_id: agent.wait(action_id, timeout=120) for action_id in action_ids}
        assert {view["state"] for view in views.values()} == {"succeeded"}, views

        # the newcomer was handed orders whose commands were still running, and waited for them
        joined = second_log.read_bytes()[offset:].decode(errors="replace")
        waited = {action_id for action_id in action_ids if f"{action_id} is still running at" in joined}
        assert waited, f"no running order moved to the newcomer; see {second_log}"

        # each write happened once and to its end, sent to the target once, as its own role
        with sql_target.admin() as conn:
            assert conn.execute("SELECT count(*) FROM rebalance_marks").fetchone()[0] == ACTIONS
        sent = [
            line
            for line in sql_target.log_path.read_text().splitlines()
            if re.search(r"LOG:  (statement|execute [^:]*): ", line)
            and STATEMENT in line
            and "app=keyturn-command " in line
        ]
        assert len(sent) == ACTIONS, sent
        assert not set(roles) & set(sql_target.temporary_roles())  # every credential dropped after its command

        # the ledger holds one run per action, none interrupted
        with psycopg.connect(settings.database_url) as conn:
            ledger = conn.execute(
                f'SELECT action_id, executor, outcome FROM "{schema_name(settings.namespace)}".executions '
                "WHERE action_id = ANY(%s)",
                (action_ids,),
            ).fetchall()
        assert {row[2] for row in ledger} == {"succeeded"} and len(ledger) == ACTIONS

        # whoever answered, every answer on the topic is the one recorded outcome
        topics = Topics(settings.namespace, settings.partitions)
        answers = [
            e
            for e, _ in read_topic(settings, topics.executed)
            if isinstance(e, ActionExecuted) and e.action_id in views
        ]
        assert {e.action_id for e in answers} == set(action_ids)
        assert {e.outcome.value for e in answers} == {"succeeded"}
    finally:
        stop_process(second, 30)
