"""The one-statement-per-batch SQL on a real PostgreSQL: the executor's ledger (a start is
committed once per action, ever; the first outcome stays) and the policy's decision record
(the first decision kept stands), each for a whole batch at once."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import psycopg
import pytest

from keyturn.db import open_pool, schema_name
from keyturn.executor import ledger as ledger_module
from keyturn.executor.ledger import ExecutionLedger
from keyturn.faults import Unavailable, until_done
from keyturn.policy import record as record_module
from keyturn.policy.record import DecisionRecord

pytestmark = pytest.mark.integration

AT = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)


def test_a_batch_of_starts_and_finishes_keeps_at_most_once_per_action(settings) -> None:
    async def scenario():
        schema = schema_name(f"kt{uuid.uuid4().hex[:8]}")
        pool = await open_pool(settings.database_url, ledger_module.DDL, schema=schema)
        other_pool = await open_pool(settings.database_url, ledger_module.DDL, schema=schema)
        try:
            mine, theirs = ExecutionLedger(pool, "executor-1"), ExecutionLedger(other_pool, "executor-2")
            await theirs.start("a3", AT, payload_digest="d3", plugin="sql")  # started elsewhere, never finished
            first = await mine.start_many([("a1", "d1", "sql"), ("a2", "d2", "http"), ("a3", "d3", "sql")], AT)
            again = await theirs.start_many([("a1", "d1", "sql"), ("a4", "d4", "noop")], AT)
            recorded = await mine.finish_many([("a1", "succeeded", b"e1", AT), ("a2", "failed", b"e2", AT)])
            late = await theirs.finish_many([("a1", "failed", b"other", AT), ("a4", "succeeded", b"e4", AT)])
            return first, again, recorded, late, await mine.get("a1"), await mine.get("a2")
        finally:
            await pool.close()
            await other_pool.close()

    first, again, recorded, late, a1, a2 = asyncio.run(scenario())
    assert set(first) == {"a3"} and first["a3"].executor == "executor-2" and not first["a3"].finished
    assert set(again) == {"a1"} and again["a1"].executor == "executor-1"  # a second start is impossible
    assert (a1.plugin, a1.payload_digest, a2.plugin) == ("sql", "d1", "http")
    assert recorded == {"a1", "a2"}
    assert late == {"a4"}  # the first outcome of a1 stays
    assert (a1.outcome, a1.executed_event) == ("succeeded", b"e1")


def test_a_start_holds_a_lease_on_the_databases_clock_that_only_its_executor_renews(settings) -> None:
    async def scenario():
        schema = schema_name(f"kt{uuid.uuid4().hex[:8]}")
        pool = await open_pool(settings.database_url, ledger_module.DDL, schema=schema)
        try:
            mine = ExecutionLedger(pool, "executor-1", lease_s=0.6)
            theirs = ExecutionLedger(pool, "executor-2", lease_s=0.6)
            # the executor's clock may be off: the lease runs on the database's
            await mine.start_many([("a1", "d1", "sql"), ("a2", "d2", "sql")], datetime(2020, 1, 1, tzinfo=UTC))
            seen = [await theirs.get("a1")]
            for _ in range(3):  # 0.9 s in all, past the first lease: renewed, a1 stays held
                await asyncio.sleep(0.3)
                await mine.renew(["a1"])
                await theirs.renew(["a2"])  # not theirs to renew: a2 lapses
            seen += [await theirs.get("a1"), await theirs.get("a2")]
            await mine.finish_many([("a1", "succeeded", b"e1", AT)])
            await asyncio.sleep(0.7)
            await mine.renew(["a1", "a2"])  # a finished action is not held again
            seen.append(await theirs.get("a1"))
            return seen
        finally:
            await pool.close()

    started, renewed, lapsed, finished = asyncio.run(scenario())
    assert started.held and not started.finished
    assert renewed.held
    assert not lapsed.held and not lapsed.finished  # its starter stopped renewing: an interrupted run
    assert finished.finished and not finished.held


def test_outcomes_recorded_by_an_attempt_given_up_on_are_recognised_when_the_call_is_repeated(settings) -> None:
    """A statement given up on (its patience ran out) may still have committed: the repeat of the
    same call finds its own outcomes, by their events, and says they are recorded."""

    async def scenario():
        pool = await open_pool(
            settings.database_url, ledger_module.DDL, schema=schema_name(f"kt{uuid.uuid4().hex[:8]}")
        )
        try:
            ledger = ExecutionLedger(pool, "executor-1")
            await ledger.start_many([("a1", "d1", "sql"), ("a2", "d2", "sql")], AT)
            finishes = [("a1", "succeeded", b"e1", AT), ("a2", "failed", b"e2", AT)]
            first = await ledger.finish_many(finishes)
            repeated = await ledger.finish_many(finishes)
            other = await ledger.finish_many([("a1", "failed", b"another run's event", AT)])
            return first, repeated, other, await ledger.get("a1")
        finally:
            await pool.close()

    first, repeated, other, a1 = asyncio.run(scenario())
    assert first == repeated == {"a1", "a2"}
    assert other == set(), "an outcome that is not the one recorded is not reported as recorded"
    assert (a1.outcome, a1.executed_event) == ("succeeded", b"e1")


def test_a_ledger_statement_that_gets_no_answer_is_given_up_and_tried_again(settings, caplog) -> None:
    """An outcome whose UPDATE waits on a row nobody releases (here another session's lock;
    after a restart, a connection that never answers) is given up after the ledger's patience
    as a transient fault, logged, and tried again until it is recorded; it never hangs its
    batch without a word."""

    async def scenario():
        schema = schema_name(f"kt{uuid.uuid4().hex[:8]}")
        pool = await open_pool(settings.database_url, ledger_module.DDL, schema=schema)
        try:
            ledger = ExecutionLedger(pool, "executor-1", patience_s=0.5)
            await ledger.start_many([("a1", "d1", "sql")], AT)
            blocker = await psycopg.AsyncConnection.connect(settings.database_url, options=f"-c search_path={schema}")
            await blocker.execute("SELECT 1 FROM executions WHERE action_id = 'a1' FOR UPDATE")  # held, not committed
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(Unavailable, match=r"the execution ledger did not answer within 0\.5s"):
                await ledger.finish_many([("a1", "succeeded", b"e1", AT)])
            given_up_after = loop.time() - started
            recording = asyncio.create_task(
                until_done(lambda: ledger.finish_many([("a1", "succeeded", b"e1", AT)]), "recording 1 outcome")
            )
            await asyncio.sleep(1.2)  # two more attempts given up meanwhile
            await blocker.rollback()
            await blocker.close()
            recorded = await asyncio.wait_for(recording, 10)
            return given_up_after, recorded, await ledger.get("a1")
        finally:
            await pool.close()

    with caplog.at_level("WARNING", logger="keyturn.faults"):
        given_up_after, recorded, a1 = asyncio.run(scenario())
    assert 0.5 <= given_up_after < 3
    retries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("recording 1 outcome failed")]
    assert retries and "Unavailable: the execution ledger did not answer within 0.5s" in retries[0]
    assert recorded == {"a1"} and (a1.outcome, a1.executed_event) == ("succeeded", b"e1")


def test_a_batch_of_decisions_is_read_and_kept_in_one_statement_each_and_the_first_stands(settings) -> None:
    async def scenario():
        pool = await open_pool(
            settings.database_url, record_module.DDL, schema=schema_name(f"kt{uuid.uuid4().hex[:8]}")
        )
        try:
            record = DecisionRecord(pool)
            await record.keep("a1", b"first-a1")
            before = await record.earlier_many(["a1", "a2", "a3"])
            standing = await record.keep_many({"a1": b"second-a1", "a2": b"a2", "a3": b"a3"})
            after = await record.earlier_many(["a1", "a2", "a3", "a4"])
            return before, standing, after, await record.keep_many({})
        finally:
            await pool.close()

    before, standing, after, nothing = asyncio.run(scenario())
    assert before == {"a1": b"first-a1"}
    assert standing == {"a1": b"first-a1", "a2": b"a2", "a3": b"a3"}
    assert after == standing
    assert nothing == {}


def test_tables_updated_after_their_rows_are_written_leave_room_on_each_page_also_when_created_before(
    settings,
) -> None:
    """An action's status, the ledger's outcome and the history's action line are updated in place
    (``db.ROOM_FOR_UPDATES``); a deployment whose tables an earlier build made gets the setting at
    its next start."""
    from keyturn.approval.history import HISTORY_DDL
    from keyturn.intake.store import DDL as INTAKE_DDL

    async def scenario():
        schema = schema_name(f"kt{uuid.uuid4().hex[:8]}")
        earlier = await open_pool(settings.database_url, "", schema=schema)
        async with earlier.connection() as conn:  # as an earlier build made it: no storage settings
            await conn.execute(
                f'CREATE TABLE "{schema}".executions (action_id text PRIMARY KEY, executor text NOT NULL, '
                "started_at timestamptz NOT NULL, finished_at timestamptz, outcome text, executed_event bytea)"
            )
        await earlier.close()
        pool = await open_pool(settings.database_url, ledger_module.DDL + INTAKE_DDL + HISTORY_DDL, schema=schema)
        try:
            async with pool.connection() as conn:
                rows = await conn.execute(
                    "SELECT c.relname, c.reloptions FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = %s AND c.relkind = 'r'",
                    (schema,),
                )
                return {name: options for name, options in await rows.fetchall()}
        finally:
            await pool.close()

    options = asyncio.run(scenario())
    for table in ("executions", "intake_actions", "approval_history_actions"):
        assert options[table] == ["fillfactor=60"], table
    assert options["approval_history_records"] is None  # only ever inserted into: PostgreSQL's default
