"""Which failures are waited out (a server restart) and which are not (a bug), and the waiting."""

import asyncio
import contextlib

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


def test_until_done_tries_again_when_a_library_cancels_what_it_awaited_but_stops_when_asked_to():
    """A client cancels a request's future when its connection closes (no one cancelled the
    task): that is a failure to wait out. A cancel of the task itself is a stop."""
    calls = []

    async def work():
        calls.append(1)
        request = asyncio.get_running_loop().create_future()
        if len(calls) < 3:
            asyncio.get_running_loop().call_soon(request.cancel)  # the connection closed under it
        else:
            request.set_result("answered")
        return await request

    assert asyncio.run(until_done(work, "test work", first_wait_s=0.01)) == "answered"
    assert len(calls) == 3

    async def stopped_while_waiting():
        async def never():
            await asyncio.Event().wait()

        task = asyncio.create_task(until_done(never, "test work"))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(stopped_while_waiting())


class _Actor:
    """Awaits a coroutine the way a faust agent awaits its actor: through ``__await__``, which
    hides the coroutine from the chain of awaits followed from the task's root."""

    def __init__(self, coro):
        self.coro = coro

    def __await__(self):
        return self.coro.__await__()


def test_a_batch_stuck_past_its_time_says_where_it_waits_without_a_value(caplog):
    """A wait that neither ends nor fails is reported each period with where the batch waits,
    down to the innermost await, in code locations only (no value the tasks hold), even when
    its task reaches it through an awaitable that hides the coroutine (a faust agent's)."""

    async def scenario():
        never = asyncio.Event()
        secret = "hunter2-do-not-log"

        async def ledger_call():
            await never.wait()
            return secret

        async def batch():
            return await reported_while_stuck(
                "executor: a batch of 52 from decided:3:17",
                until_done(ledger_call, f"recording {secret}"),
                after_s=0.05,
            )

        async def agent():
            await _Actor(batch())

        stuck = asyncio.create_task(agent())
        await asyncio.sleep(0.13)
        stuck.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stuck

    with caplog.at_level("WARNING", logger="keyturn.faults"):
        asyncio.run(scenario())
    reports = [r.getMessage() for r in caplog.records if "still in hand" in r.getMessage()]
    assert len(reports) == 2  # one per period while it lasted, none once it ended
    assert reports[0].startswith("executor: a batch of 52 from decided:3:17 is still in hand after")
    # the batch's own chain: this project's retry, then the innermost wait (a lock)
    where_it_waits = reports[0].split("; where it waits: ")[1].split("; where this process waits: ")[0]
    assert where_it_waits.startswith("keyturn/faults.py:") and " until_done > asyncio/locks.py:" in where_it_waits
    assert where_it_waits.endswith(" wait")
    assert all("hunter2" not in r for r in reports)


def test_a_batch_that_ends_in_time_is_not_reported_and_gives_its_result(caplog):
    async def scenario():
        async def quick():
            await asyncio.sleep(0.01)
            return "decided 3"

        result = await reported_while_stuck("audit: a batch of 3", quick(), after_s=0.2)
        await asyncio.sleep(0.3)  # the watch was stopped with the batch
        return result

    with caplog.at_level("WARNING", logger="keyturn.faults"):
        assert asyncio.run(scenario()) == "decided 3"
    assert not [r for r in caplog.records if "still in hand" in r.getMessage()]
