"""A SQL write whose COMMIT lost its answer is read back from the target, not left unknown.

Between the plugin and a real PostgreSQL runs a relay that passes everything through, except
on the command role's own session: there it either forwards the COMMIT and never relays the
answer (the write committed; the client cannot know), or drops the connection instead of
forwarding it (the server rolls the transaction back). Either way the plugin sees a connection
broken while committing, and must say what the target shows: committed, the command
succeeded; rolled back, it failed and nothing changed. After an executor's death the same
reading comes from the transaction id the run noted in the ledger (``settle``).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from psycopg.conninfo import make_conninfo

from keyturn.executor.plugins.base import Command, ExecutionFailed, OutcomeUnknown
from keyturn.executor.plugins.sql import SqlPlugin
from tests.integration.test_executor_support import SqlTarget, sql_target  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration

STAGING = "postgres://staging/shop"
STARTUP = b"\x00\x03\x00\x00"  # protocol 3.0, after the startup message's length


@pytest.fixture(scope="module")
def marks(sql_target: SqlTarget) -> SqlTarget:
    with sql_target.admin() as conn:
        conn.execute("CREATE TABLE lost_answers (id serial PRIMARY KEY, note text NOT NULL)")
    return sql_target


def rows_noted(target: SqlTarget, note: str) -> int:
    with target.admin() as conn:
        return conn.execute("SELECT count(*) FROM lost_answers WHERE note = %s", (note,)).fetchone()[0]


@contextlib.asynccontextmanager
async def relay(port: int, commit: str) -> AsyncIterator[int]:
    """A TCP relay to ``127.0.0.1:port``; on a command role's session (its startup names a
    ``keyturn_cmd_`` role), the message carrying COMMIT is ``"forwarded"`` with the answer never
    relayed, or ``"dropped"`` with the connection. Yields the relay's port."""

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cut: asyncio.Event, watch: bool) -> None:
        command = False
        try:
            while not cut.is_set() and (chunk := await reader.read(65536)):
                if chunk[4:8] == STARTUP:  # the startup message names the session's user
                    command = b"keyturn_cmd_" in chunk
                if watch and command and b"COMMIT" in chunk:
                    if commit == "forwarded":
                        writer.write(chunk)
                        await writer.drain()
                    cut.set()
                    return
                if cut.is_set():
                    return
                writer.write(chunk)
                await writer.drain()
        except ConnectionError:
            pass

    async def serve(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", port)
        cut = asyncio.Event()
        upstream = asyncio.create_task(pump(client_reader, server_writer, cut, watch=True))
        downstream = asyncio.create_task(pump(server_reader, client_writer, cut, watch=False))
        cutting = asyncio.create_task(cut.wait())
        await asyncio.wait({upstream, downstream, cutting}, return_when=asyncio.FIRST_COMPLETED)
        cutting.cancel()
        if cut.is_set():
            client_writer.close()  # the client hears nothing more: not the COMMIT's answer
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.5)  # a forwarded COMMIT is read and done before the server sees the end
        for task in (upstream, downstream):
            task.cancel()
        for writer in (client_writer, server_writer):
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


def command_for(statement: str, noted: list[dict[str, Any]], *, keeps: bool = True) -> Command:
    async def keep(progress: dict[str, Any]) -> bool:
        noted.append(progress)
        return keeps

    return Command(str(uuid.uuid4()), "sql.query", STAGING, {"statement": statement}, 300, keep_note=keep)


def run_through_relay(target: SqlTarget, commit: str, command: Command) -> tuple[SqlPlugin, Any]:
    async def go() -> Any:
        async with relay(target.port, commit) as port:
            plugin = SqlPlugin(make_conninfo(target.url, port=port))
            plugin.settle_s, plugin.settle_every_s = 5.0, 0.1
            try:
                return plugin, await plugin.execute(command)
            except (ExecutionFailed, OutcomeUnknown) as exc:
                return plugin, exc

    return asyncio.run(go())


def settle(target: SqlTarget, command: Command, noted: dict[str, Any] | None) -> Any:
    plugin = SqlPlugin(target.url)
    plugin.settle_s, plugin.settle_every_s = 5.0, 0.1
    again = Command(command.action_id, command.action, command.resource, command.parameters, 300, noted=noted)
    try:
        return asyncio.run(plugin.settle(again))
    except (ExecutionFailed, OutcomeUnknown) as exc:
        return exc


def test_a_commit_whose_answer_was_lost_is_read_back_as_committed(marks: SqlTarget) -> None:
    note = f"committed-{uuid.uuid4().hex[:8]}"
    noted: list[dict[str, Any]] = []
    command = command_for(f"INSERT INTO lost_answers (note) VALUES ('{note}')", noted)
    _, result = run_through_relay(marks, "forwarded", command)
    assert isinstance(result, dict), result  # succeeded, not outcome_unknown
    assert result["row_count"] == 1
    xid = noted[0]["transaction"]
    assert "broke while committing" in result["committed"] and f"transaction {xid} committed" in result["committed"]
    assert rows_noted(marks, note) == 1
    # after an executor's death, the transaction it noted says the same
    settled = settle(marks, command, noted[0])
    where = SqlPlugin(marks.url).target.name
    assert settled == {"in_effect": f"its transaction committed on {where}", "transaction": xid}
    assert marks.temporary_roles() == []


def test_a_commit_that_never_reached_the_server_is_read_back_as_rolled_back(marks: SqlTarget) -> None:
    note = f"dropped-{uuid.uuid4().hex[:8]}"
    noted: list[dict[str, Any]] = []
    command = command_for(f"INSERT INTO lost_answers (note) VALUES ('{note}')", noted)
    _, failed = run_through_relay(marks, "dropped", command)
    assert isinstance(failed, ExecutionFailed), failed
    assert "broke while committing" in str(failed) and "rolled the transaction back: nothing was changed" in str(failed)
    assert rows_noted(marks, note) == 0
    settled = settle(marks, command, noted[0])
    assert isinstance(settled, ExecutionFailed) and "was rolled back: nothing was changed" in str(settled)
    assert marks.temporary_roles() == []


def test_a_write_whose_note_is_refused_is_rolled_back(marks: SqlTarget) -> None:
    """The ledger refused the note (another executor holds the start): nothing is committed."""
    note = f"refused-{uuid.uuid4().hex[:8]}"
    noted: list[dict[str, Any]] = []
    command = command_for(f"INSERT INTO lost_answers (note) VALUES ('{note}')", noted, keeps=False)
    with pytest.raises(ExecutionFailed, match="another executor holds this command's start"):
        asyncio.run(SqlPlugin(marks.url).execute(command))
    assert len(noted) == 1 and rows_noted(marks, note) == 0


def test_a_run_that_noted_no_transaction_changed_nothing_and_one_from_an_older_build_stays_unknown(
    marks: SqlTarget,
) -> None:
    command = command_for("INSERT INTO lost_answers (note) VALUES ('never')", [])
    never = settle(marks, command, {})
    assert isinstance(never, ExecutionFailed) and "never reached its COMMIT" in str(never)
    older = settle(marks, command, None)
    assert isinstance(older, OutcomeUnknown) and "kept no note" in str(older)
