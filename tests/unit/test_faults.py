"""Which failures are waited out (a server restart) and which are not (a bug), and the waiting."""

import asyncio

import psycopg
import pytest
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError, NotLeaderForPartitionError
from psycopg_pool import PoolTimeout

from keyturn.faults import is_transient, until_done


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
