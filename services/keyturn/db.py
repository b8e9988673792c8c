"""PostgreSQL access shared by the services that keep state there (each in its own tables).

Tables live in a schema named after the namespace, so test runs and deployments never mix.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator

import psycopg
from psycopg import AsyncConnection, sql
from psycopg_pool import AsyncConnectionPool

from keyturn.faults import Unavailable

log = logging.getLogger(__name__)

ROOM_FOR_UPDATES = "fillfactor = 60"
"""Storage for a table whose rows are updated after they are written (an action's status, the
ledger's outcome, the history's action line), as ``{room_for_updates}`` in a DDL: pages are
filled to 60 %, so an update can put the row's new version on the same page and, changing no
indexed column, skips every index (a HOT update). Filled to 100 %, PostgreSQL's default, a page
has no room once its rows are written: 1-7 % of these updates were HOT in a flood, 41-75 % at
60 %, and PostgreSQL spent about 0.06 CPU-ms less per action (bench/README.md, eleventh round).
Tables only ever inserted into keep the default."""


POOL_WAIT_S = 5.0
"""How long a caller waits for a pooled connection before ``PoolTimeout`` (``open_pool``)."""


OWN_SCHEMA_COMMENT = "keyturn: the gateway's own state, never an action's target"
"""What ``open_pool`` says of every schema Keyturn keeps its tables in, and what the SQL target's
lock schema says (``executor.plugins.sql_roles.LOCK_SCHEMA``). The SQL plugins refuse any
relation in a schema that says so (``executor.plugins.sql._resolve``): where the SQL target is
the database Keyturn runs on (the development default), an approved statement could otherwise
read the secrets, rewrite the approvals or forge the execution ledger; and a command granted on
the lock table could hold every other command's privilege statements up."""


def schema_name(namespace: str) -> str:
    """The SQL schema for this namespace (``keyturn`` by default)."""
    return re.sub(r"[^a-z0-9_]", "_", namespace.lower())


async def open_pool(url: str, ddl: str, *, schema: str, max_size: int = 8) -> AsyncConnectionPool:
    """An open pool on ``url`` whose connections use ``schema`` (``schema_name(namespace)``),
    after applying ``ddl`` once.

    ``ddl`` is idempotent (``CREATE … IF NOT EXISTS``) and may use ``{schema}`` and
    ``{room_for_updates}`` (``ROOM_FOR_UPDATES``).
    """
    pool = AsyncConnectionPool(
        url,
        min_size=1,
        max_size=max_size,
        kwargs={"options": f"-c search_path={schema}", "autocommit": True},
        # The pool doubles its wait between reconnection attempts without a cap (1, 2, 4, 8 s…),
        # so after a long outage it stayed down about as long again once PostgreSQL was back.
        # Giving up an attempt after 5 s restarts the schedule at 1 s on the next demand.
        reconnect_timeout=5.0,
        # ...but only a new demand: a caller already queued for a connection when an attempt
        # gave up was served by nothing until its own wait ended. At the default 30 s, a long
        # drill's policy held a batch 25 s after PostgreSQL was back; its retry then got a
        # connection at once. Every caller retries a PoolTimeout (it is transient), so a short
        # wait makes that new demand within seconds.
        timeout=POOL_WAIT_S,
        open=False,
    )
    await pool.open(wait=True, timeout=30)
    async with pool.connection() as conn:
        # one lock per schema: several services migrating at start must not race
        await conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (schema,))
        try:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            await conn.execute(ddl.format(schema=f'"{schema}"', room_for_updates=ROOM_FOR_UPDATES))
            try:
                mark = sql.SQL("COMMENT ON SCHEMA {} IS {}")
                await conn.execute(mark.format(sql.Identifier(schema), sql.Literal(OWN_SCHEMA_COMMENT)))
            except psycopg.errors.InsufficientPrivilege:  # a schema someone else made for Keyturn
                log.warning(
                    "schema %s is not Keyturn's to mark as its own: its owner should run %s",
                    schema,
                    f"COMMENT ON SCHEMA {schema} IS '{OWN_SCHEMA_COMMENT}'",
                )
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (schema,))
    return pool


@contextlib.asynccontextmanager
async def answering_within(pool: AsyncConnectionPool, seconds: float, what: str) -> AsyncIterator[AsyncConnection]:
    """A connection of ``pool`` for a block that must be done within ``seconds`` (the wait for the
    connection included), or raise ``Unavailable`` (transient: ``until_done`` tries again).

    A restart makes every statement on the old connections fail, and the pool's wait for a
    connection ends at its timeout; but a statement that simply gets no answer waits forever,
    and all that is queued behind it with it, saying nothing. The statements this bounds are
    safe to send again (each is one autocommit statement whose repeat is recognised); psycopg
    cancels an interrupted query on the server and gives up on it after 5 s."""
    try:
        async with asyncio.timeout(seconds), pool.connection() as conn:
            yield conn
    except TimeoutError:
        raise Unavailable(f"{what} did not answer within {seconds:g}s") from None
