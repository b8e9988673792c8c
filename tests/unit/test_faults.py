"""Which failures are waited out (a server restart) and which are not (a bug), and the waiting."""

import asyncio

import psycopg
import pytest
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError, NotLeaderForPartitionError
from psycopg_pool import PoolTimeout

from keyturn.faults import is_transient, reported_while_stuck, until_done


@pytest.mark.parametrize(
    "exc",
    [
        psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
        psycopg.OperationalError("the connection is closed"),
        PoolTimeout("couldn't get a connection after 30.00 sec"),
        KafkaConnectionError("Connection at 127.0.0.1:9092 closed"),
        NotLeaderForPartitionError(),
        ConnectionResetError(),
        TimeoutError(),
    ],
)
def test_server_restarts_are_transient(exc):
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        psycopg.errors.UniqueViolation("duplicate key"),
        psycopg.errors.UndefinedTable("relation does not exist"),
        MessageSizeTooLargeError(),
        KeyError("action_id"),
        ValueError("bad value"),
    ],
)
def test_faults_of_the_work_are_not(exc):
    assert not is_transient(exc)


def test_until_done_waits_out_a_restart_and_returns_the_result():
    calls = []

    async def work():
        calls.append(1)
        if len(calls) < 3:
            raise psycopg.errors.AdminShutdown("restarting")
        return "done"

    assert asyncio.run(until_done(work, "test work", first_wait_s=0.01)) == "done"
    assert len(calls) == 3


def test_until_done_raises_a_bug_at_once():
    calls = []

    async def work():
        calls.append(1)
        raise KeyError("action_id")

    with pytest.raises(KeyError):
        asyncio.run(until_done(work, "test work", first_wait_s=0.01))
    assert len(calls) == 1


def test_a_batch_stuck_past_its_time_says_where_it_waits_without_a_value(caplog):
    """A wait that neither ends nor fails is reported each period with where the tasks wait,
    down to the innermost await, in code locations only (no value the tasks hold)."""

    async def scenario():
        never = asyncio.Event()
        secret = "hunter2-do-not-log"

        async def ledger_call():
            await never.wait()
            return secret

        stuck = asyncio.create_task(until_done(ledger_call, f"recording {secret}"))
        async with reported_while_stuck("executor: a batch of 52 from decided:3:17", after_s=0.05):
            await asyncio.sleep(0.13)
        stuck.cancel()

    with caplog.at_level("WARNING", logger="keyturn.faults"):
        asyncio.run(scenario())
    reports = [r.getMessage() for r in caplog.records if "still in hand" in r.getMessage()]
    assert len(reports) == 2  # one per period while it lasted, none once it ended
    assert reports[0].startswith("executor: a batch of 52 from decided:3:17 is still in hand after")
    # the stuck task's chain through this project's code (its retry), then the innermost wait (a lock)
    assert "1x keyturn/faults.py:" in reports[0]
    assert " until_done > asyncio/locks.py:" in reports[0] and reports[0].endswith(" wait")
    assert all("hunter2" not in r for r in reports)


def test_a_batch_that_ends_in_time_is_not_reported(caplog):
    async def scenario():
        async with reported_while_stuck("audit: a batch of 3", after_s=0.2):
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)  # the watch was stopped with the block

    with caplog.at_level("WARNING", logger="keyturn.faults"):
        asyncio.run(scenario())
    assert not [r for r in caplog.records if "still in hand" in r.getMessage()]
