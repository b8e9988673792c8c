"""A service's database comes back after an outage longer than one reconnection attempt: a
caller that was waiting for a connection gets one within seconds, not at the end of a long
wait (``db.open_pool``, ``POOL_WAIT_S``).

The pool gives up a reconnection attempt after 5 s and starts another only on a new demand;
a caller already queued was served by nothing until its own wait ended (30 s by default).
A long fault drill's policy worker held a batch 25 s after PostgreSQL was back that way.
Real here: a private PostgreSQL (``PrivateServers``) stopped and started again."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time

import pytest

from keyturn.config import REPO_ROOT
from keyturn.db import open_pool
from keyturn.faults import until_done
from tests.processes import PrivateServers

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

DOWN_S = 9.0  # longer than a reconnection attempt (5 s): the pool gives one up while the caller waits


def test_a_caller_waiting_through_a_long_outage_is_served_soon_after_the_database_is_back() -> None:
    servers = PrivateServers(REPO_ROOT / ".run" / f"pool-outage-{secrets.token_hex(3)}")
    back: dict[str, float] = {}

    def outage() -> None:
        servers.stop("postgres")
        time.sleep(DOWN_S)
        servers.start("postgres")  # returns once it accepts connections
        back["at"] = time.monotonic()

    async def scenario() -> float:
        pool = await open_pool(servers.database_url, "SELECT 1", schema="pool_outage")
        try:
            async with pool.connection() as conn:
                await conn.execute("SELECT 1")
            stopper = threading.Thread(target=outage)
            stopper.start()
            await asyncio.sleep(2.0)  # the database is down now

            async def query() -> None:
                async with pool.connection() as conn:
                    await conn.execute("SELECT 1")

            await until_done(query, "a query through the outage")
            answered = time.monotonic()
            await asyncio.to_thread(stopper.join)
            return answered - back["at"]
        finally:
            await pool.close()

    servers.start("postgres")
    try:
        after_back = asyncio.run(scenario())
    finally:
        servers.down(remove=True)
    # served by the caller's next attempt: its wait plus the retry's pause, within seconds
    assert after_back < 8, f"answered {after_back:.1f}s after the database was back"
