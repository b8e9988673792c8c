"""Two executors, one ledger, a real SQL command that takes seconds: its order reaches a second
executor while the first still runs it (a rebalance moved its partition). The second waits for
the first's outcome instead of cleaning up under the running command: the statement runs once,
to the end, and both answer with the one recorded outcome.

Real PostgreSQL for the ledger and the SQL target, the shipped SQL plugin; the two executors are
in one process here, as which partitions a joining worker takes is the group's choice."""

from __future__ import annotations

import asyncio
import time
import uuid

import psycopg
import pytest

from keyturn.bus.codec import registry
from keyturn.core.events import ExecutionOutcome
from keyturn.core.execution import ExecutionOrder
from keyturn.db import open_pool, schema_name
from keyturn.executor import ledger as ledger_module
from keyturn.executor.ledger import ExecutionLedger
from keyturn.executor.plugins import PluginRegistry
from keyturn.executor.plugins.sql import SqlPlugin
from keyturn.executor.plugins.sql_roles import role_name_for
from keyturn.executor.results import ResultShaper
from keyturn.executor.runner import Executor
from keyturn.masking.protect import parameter_opener
from tests.fakes.service_ports import fake_publisher
from tests.unit.service_events import KEYRING, allowed

pytestmark = pytest.mark.integration

LEASE_S = 1.0  # renewed every third of a second while the command runs; the command runs 2.5 s
STATEMENT = "SELECT pg_sleep(2.5) AS slept"


class Unmasked:
    """The result masker (tested on its own) left out: the result here is one empty cell."""

    def mask_text(self, text: str):
        return text, []

    def mask(self, parameters, fields):
        return type("Masked", (), {"parameters": parameters})()


def executor(pool, name: str, plugin: SqlPlugin) -> Executor:
    publisher, _ = fake_publisher("executor")
    return Executor(
        ExecutionLedger(pool, name, lease_s=LEASE_S),
        PluginRegistry({"read": plugin}),
        parameter_opener(KEYRING),
        publisher.encode,
        ResultShaper(10, masker=Unmasked()),
        timeout_s=30,
    )


def test_an_order_another_live_executor_is_running_waits_for_it_and_the_command_runs_once_to_the_end(
    settings,
) -> None:
    minted: list[str] = []
    plugin = SqlPlugin(settings.database_url, credential_observer=minted.append, serves=settings.sql_target_serves)
    action_id = f"lease-{uuid.uuid4().hex[:12]}"
    order = ExecutionOrder(allowed(action_id, parameters={"statement": STATEMENT}))

    async def scenario():
        pool = await open_pool(
            settings.database_url, ledger_module.DDL, schema=schema_name(f"kt{uuid.uuid4().hex[:8]}")
        )
        try:
            first, second = executor(pool, "executor-1", plugin), executor(pool, "executor-2", plugin)
            running = asyncio.create_task(first.execute(order))
            for _ in range(200):  # until it started, its command on its way
                if await first.ledger.get(action_id) is not None:
                    break
                await asyncio.sleep(0.05)
            asked = time.monotonic()
            redelivered = await second.execute(order)
            waited = time.monotonic() - asked
            return await running, redelivered, waited, await first.ledger.get(action_id)
        finally:
            await pool.close()

    ran, redelivered, waited, entry = asyncio.run(scenario())
    assert ran[0] is ExecutionOutcome.SUCCEEDED, registry().decode_event(ran[1])
    assert redelivered == ran  # the running executor's outcome, republished as recorded
    assert waited > 2 * LEASE_S  # it waited past two leases: the running executor renewed its own
    assert len(minted) == 1  # one credential, one run: the second executor never ran the command
    assert entry.executor == "executor-1" and entry.outcome == "succeeded" and not entry.held
    result = registry().decode_event(ran[1])
    assert '"slept"' in result.result_json  # the statement ran to its end: nobody cut it short
    assert role_name_for(action_id) not in _temporary_roles(settings.database_url)


def _temporary_roles(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE 'keyturn\\_cmd\\_%'")]
