"""The console history's tables over the real PostgreSQL: whatever text the audit carries is kept.

The history is a projection of records other services wrote. A string PostgreSQL cannot hold (a
NUL, a lone surrogate) in one of them must not stop it: the follower would retry that batch for
ever and the console's History would stand still for everyone.
"""

from __future__ import annotations

import asyncio
import secrets

import psycopg
import pytest

from keyturn.approval.history import HISTORY_DDL, ActionChange, HistoryRow
from keyturn.approval.history_store import PgHistoryStore
from keyturn.db import open_pool

pytestmark = pytest.mark.integration


def test_text_no_row_can_hold_is_kept_replaced_and_the_batch_is_stored(settings) -> None:
    schema = f"history_{secrets.token_hex(4)}"

    async def store_one() -> None:
        pool = await open_pool(settings.database_url, HISTORY_DDL, schema=schema)
        try:
            await PgHistoryStore(pool).store(
                [HistoryRow(1, "a-1", "VoteRecorded", "human:car\x00ol", 1_700_000_000_000, '{"x":"\ud800"}', ())],
                [ActionChange("a-1", 1_700_000_000_000, "iam.role.grant", "agent:rep\x00", ("human:al\x00ice",))],
                keep_after=None,
            )
        finally:
            await pool.close()

    asyncio.run(store_one())
    with psycopg.connect(settings.database_url, autocommit=True, options=f"-c search_path={schema}") as conn:
        actor, payload = conn.execute("SELECT actor, payload_json FROM approval_history_records").fetchone()
        requester, acting_for = conn.execute("SELECT requester, acting_for FROM approval_history_actions").fetchone()
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    assert (actor, payload) == ("human:car\ufffdol", '{"x":"\ufffd"}')
    assert (requester, acting_for) == ("agent:rep\ufffd", ["human:al\ufffdice"])
