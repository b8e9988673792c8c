"""Which failures pass by themselves, and waiting them out.

A PostgreSQL restart, a broker restart or a dropped connection is *transient*: the same work
succeeds once the server is back, so the work is retried in place — an event is never skipped
or acknowledged before it was handled. Anything else is a fault of the work itself (a bug, a
refused statement) and retrying it would only stall everything queued behind it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import psycopg
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

log = logging.getLogger(__name__)

T = TypeVar("T")

# What a database restart or outage raises: a connection the restart killed (AdminShutdown and
# friends are OperationalErrors), a pool with no live connection to hand out (PoolTimeout), a
# connection already closed under us (InterfaceError). All pass once the database is back.
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (psycopg.OperationalError, psycopg.InterfaceError)


def is_transient(exc: BaseException) -> bool:
    """True for failures that go away when a server comes back (database, broker, network)."""
    if isinstance(exc, DATABASE_UNAVAILABLE):
        return True
    if isinstance(exc, (KafkaConnectionError, KafkaTimeoutError)):
        return True
    if isinstance(exc, KafkaError):
        return bool(getattr(exc, "retriable", False))
    return isinstance(exc, (ConnectionError, TimeoutError, asyncio.TimeoutError))


async def until_done(work: Callable[[], Awaitable[T]], what: str, *, first_wait_s: float = 0.2, max_wait_s: float = 5.0) -> T:
    """``await work()``, again after a growing pause while it fails transiently; other errors raise."""
    wait = first_wait_s
    while True:
        try:
            return await work()
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning("%s failed (%s: %s); trying again in %.1fs", what, type(exc).__name__, exc, wait)
        await asyncio.sleep(wait)
        wait = min(wait * 2, max_wait_s)
