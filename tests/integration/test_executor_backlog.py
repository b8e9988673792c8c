"""A backlog of SQL commands at once: every one runs, none is refused for want of a connection.

After an outage, or when people answer many approvals together, the executor has hundreds of
orders in hand. Each SQL command holds up to two connections (the executor's own, its role's
login); run all at once, they exhausted PostgreSQL's 100 and the target refused them ("sorry, too
many clients already"): the long fault drill ended 281 grants ``failed`` that way. The commands
of one executor on one target take turns (``KEYTURN_SQL_COMMANDS_AT_ONCE``).

Real PostgreSQL (the session's, 100 connections) for the ledger and the target; the shipped
``iam`` plugin; the executor's own runner.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import psycopg
import pytest

from keyturn.core.events import ExecutionOutcome
from keyturn.core.execution import ExecutionOrder
from keyturn.db import open_pool, schema_name
from keyturn.executor import ledger as ledger_module
from keyturn.executor.ledger import ExecutionLedger
from keyturn.executor.plugins import PluginRegistry
from keyturn.executor.plugins.iam import IamPlugin
from keyturn.executor.plugins.sql_roles import role_name_for
from keyturn.executor.results import ResultShaper
from keyturn.executor.runner import Executor
from keyturn.masking.protect import parameter_opener
from tests.fakes.service_ports import fake_publisher
from tests.integration.test_executor_lease import Unmasked
from tests.unit.service_events import KEYRING, allowed

pytestmark = pytest.mark.integration

ORDERS = 150  # 300 connections at once, three times what the server takes


def test_a_backlog_of_grants_runs_every_one_within_the_targets_connections(settings) -> None:
    suffix = uuid.uuid4().hex[:8]
    role, principal = f"backlog_role_{suffix}", f"backlog_user_{suffix}"
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} NOLOGIN")
        conn.execute(f"CREATE ROLE {principal} NOLOGIN")
    orders = [
        ExecutionOrder(
            allowed(
                str(uuid.uuid4()),
                action="iam.role.grant",
                resource=f"iam://staging/roles/{role}",
                parameters={"role": role, "principal": principal},
            )
        )
        for _ in range(ORDERS)
    ]

    async def scenario() -> list[ExecutionOutcome]:
        pool = await open_pool(
            settings.database_url, ledger_module.DDL, schema=schema_name(f"kt{uuid.uuid4().hex[:8]}")
        )
        publisher, _ = fake_publisher("executor")
        executor = Executor(
            ExecutionLedger(pool, "executor-1"),
            PluginRegistry({"iam": IamPlugin(settings.database_url, serves=settings.sql_target_serves)}),
            parameter_opener(KEYRING),
            publisher.encode,
            ResultShaper(10, masker=Unmasked()),
            timeout_s=120,
        )
        try:
            done, failures = await executor.execute_many(orders)
        finally:
            await pool.close()
        assert not failures, failures
        return [outcome for _, outcome, _ in done]

    try:
        outcomes = asyncio.run(scenario())
        assert Counter(o.value for o in outcomes) == {"succeeded": ORDERS}
        with psycopg.connect(settings.database_url) as conn:
            assert conn.execute("SELECT pg_has_role(%s, %s, 'MEMBER')", (principal, role)).fetchone()[0]
            roles = [role_name_for(order.action_id) for order in orders]
            left = conn.execute("SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s)", (roles,)).fetchone()[0]
        assert left == 0, "every command's role dropped after it"
    finally:
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            conn.execute(f"DROP ROLE IF EXISTS {principal}")
            conn.execute(f"DROP ROLE IF EXISTS {role}")
