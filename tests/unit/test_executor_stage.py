"""The executor with a fake ledger, plugins and broker: at most once, refusals before anything
runs, a timeout ends outcome_unknown, an interrupted run is never run again, and an order the
executor itself fails on still ends (failed, or outcome_unknown once it may have started)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from keyturn.bus import loop
from keyturn.bus.codec import registry
from keyturn.bus.loop import Stage, run
from keyturn.core.events import ActionDecided, ApprovalResolved, DeadLetter, DecisionOutcome, ExecutionOutcome
from keyturn.core.execution import ExecutionOrder
from keyturn.executor.plugins import Command, ExecutionFailed, OutcomeUnknown, PluginRegistry
from keyturn.executor.plugins.external import ExternalPlugin
from keyturn.executor.results import ResultShaper
from keyturn.executor.runner import Executor, ExecutorStage
from keyturn.faults import Unavailable, until_done
from keyturn.masking.protect import parameter_opener
from keyturn.receipts import ReceiptSigner
from tests.fakes.service_ports import FakeLedger, ListSource, MemorySecrets, Record, fake_publisher
from tests.unit.service_events import KEYRING, PARAMETERS, WARRANTS, allowed


class PlainText:
    """Stands in for the masker (tested on its own): text and results pass unchanged."""

    def mask_text(self, text: str):
        return text, []

    def mask(self, parameters, fields=()):
        return type("Masked", (), {"parameters": parameters})()


class Recording:
    name = "recording"

    def __init__(self, *, hang: bool = False) -> None:
        self.runs: list[Command] = []
        self.hang = hang
        self.abandoned: list[str] = []
        self.abandon_commands: list[Command] = []
        self.abandon_raises: Exception | None = None

    async def execute(self, command: Command):
        self.runs.append(command)
        if self.hang:
            await asyncio.sleep(10)
        return {"rows": 1}

    async def abandon(self, command: Command):
        self.abandoned.append(command.action_id)
        self.abandon_commands.append(command)
        if self.abandon_raises is not None:
            raise self.abandon_raises
        return {"revoked": True, "where": command.parameters.get("connection_string", "own target")}


def executor_with(
    plugin: Recording, ledger: FakeLedger | None = None, *, timeout_s: float = 5.0, secrets: MemorySecrets | None = None
) -> tuple[Executor, FakeLedger]:
    ledger = ledger or FakeLedger()
    publisher, _ = fake_publisher("executor")
    shaper = ResultShaper(100, masker=PlainText())
    return Executor(
        ledger,
        PluginRegistry({"read": plugin}),
        parameter_opener(KEYRING),
        publisher.encode,
        shaper,
        timeout_s=timeout_s,
        secrets=secrets,
    ), ledger


def decoded(encoded: bytes):
    return registry().decode_event(encoded)


async def test_an_allowed_order_runs_once_and_a_redelivery_republishes_its_outcome() -> None:
    plugin = Recording()
    executor, ledger = executor_with(plugin)
    order = ExecutionOrder(allowed("a1"))
    first = await executor.execute(order)
    again = await executor.execute(order)
    assert first[0] is ExecutionOutcome.SUCCEEDED
    assert again == first
    assert [c.parameters for c in plugin.runs] == [PARAMETERS]  # the clear parameters, opened from the seal
    assert ledger.entries["a1"].outcome == "succeeded"


async def test_parameters_that_do_not_match_the_approved_digest_are_refused_before_anything_runs() -> None:
    plugin = Recording()
    executor, _ = executor_with(plugin)
    decision = allowed("a1")
    other = allowed("a1", parameters={"statement": "DROP TABLE orders"})
    tampered = dataclasses.replace(
        decision, request=dataclasses.replace(decision.request, sealed_parameters=other.request.sealed_parameters)
    )
    outcome, encoded = await executor.execute(ExecutionOrder(tampered))
    assert outcome is ExecutionOutcome.FAILED
    assert decoded(encoded).error.startswith("refused before execution")
    assert plugin.runs == []


async def test_a_plugin_past_its_time_limit_ends_outcome_unknown() -> None:
    plugin = Recording(hang=True)
    executor, _ = executor_with(plugin, timeout_s=0.01)
    outcome, encoded = await executor.execute(ExecutionOrder(allowed("a1")))
    assert outcome is ExecutionOutcome.OUTCOME_UNKNOWN
    assert "did not finish within" in decoded(encoded).error


async def test_an_order_started_by_an_executor_that_died_is_never_run_again() -> None:
    plugin = Recording()
    ledger = FakeLedger()
    await ledger.start("a1", datetime(2026, 12, 4, 8, 0, tzinfo=UTC), plugin="recording")  # then it crashed
    executor, _ = executor_with(plugin, ledger)
    outcome, encoded = await executor.execute(ExecutionOrder(allowed("a1")))
    assert outcome is ExecutionOutcome.OUTCOME_UNKNOWN
    assert plugin.runs == [] and plugin.abandoned == ["a1"]
    assert "never finished" in decoded(encoded).error


def another_executor(ledger: FakeLedger, name: str = "executor-2") -> FakeLedger:
    """A second executor's view of the same ledger (a partition that moved between them)."""
    other = FakeLedger(name, lease_s=ledger.lease_s)
    other.entries, other.lease_until = ledger.entries, ledger.lease_until
    return other


# A live executor's lease in the two tests where one runs past it: long enough that a busy test
# machine stalling the loop (a collection, another worker's imports) never lapses a renewal due
# every lease/3 (at 0.4 s one lapsed in a fresh-clone run), and the command outlasts it by half.
LIVE_LEASE_S, LIVE_RUN_S = 1.2, 1.8


class Slow(Recording):
    """A plugin whose command takes ``seconds``."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    async def execute(self, command: Command):
        self.runs.append(command)
        await asyncio.sleep(self.seconds)
        return {"rows": 1}


async def test_an_order_another_live_executor_is_still_running_waits_for_its_outcome_and_is_not_cleaned_up() -> None:
    # a rebalance moved the partition while the executor that started the action still runs it
    plugin = Recording()
    ledger = FakeLedger("executor-1", lease_s=LIVE_LEASE_S)
    other = another_executor(ledger)
    order = ExecutionOrder(allowed("a1"))
    running, _ = executor_with(Slow(LIVE_RUN_S), other)  # renews its lease every lease/3 while it runs
    first = asyncio.create_task(running.execute(order))
    await asyncio.sleep(0.05)
    executor, _ = executor_with(plugin, ledger)
    redelivered = await executor.execute(order)  # it waits well past the first lease
    assert redelivered == await first  # the running executor's outcome, republished as it recorded it
    assert redelivered[0] is ExecutionOutcome.SUCCEEDED
    assert plugin.runs == [] and plugin.abandoned == []  # never run twice, its credential never revoked mid-run
    assert other.renewals, "the running executor renewed its lease"


async def test_a_batch_with_an_order_another_live_executor_runs_waits_for_that_outcome_and_runs_the_rest() -> None:
    plugin = Recording()
    ledger = FakeLedger("executor-1", lease_s=LIVE_LEASE_S)
    other = another_executor(ledger)
    running, _ = executor_with(Slow(LIVE_RUN_S), other)
    first = asyncio.create_task(running.execute(ExecutionOrder(allowed("a1"))))
    await asyncio.sleep(0.05)
    executor, _ = executor_with(plugin, ledger)
    done, failures = await executor.execute_many([ExecutionOrder(allowed("a1")), ExecutionOrder(allowed("a2"))])
    assert failures == []
    outcomes = {order.action_id: (outcome, encoded) for order, outcome, encoded in done}
    assert outcomes["a1"] == await first
    assert outcomes["a2"][0] is ExecutionOutcome.SUCCEEDED
    assert [c.action_id for c in plugin.runs] == ["a2"] and plugin.abandoned == []


async def test_an_order_whose_starter_stopped_renewing_its_lease_ends_outcome_unknown_once_the_lease_lapses() -> None:
    plugin = Recording()
    ledger = FakeLedger("executor-1", lease_s=0.3)
    await another_executor(ledger).start("a1", datetime.now(UTC), plugin="recording")  # then it hung or died
    executor, _ = executor_with(plugin, ledger)
    assert (await ledger.get("a1")).held
    outcome, encoded = await executor.execute(ExecutionOrder(allowed("a1")))
    assert outcome is ExecutionOutcome.OUTCOME_UNKNOWN and "never finished" in decoded(encoded).error
    assert plugin.runs == [] and plugin.abandoned == ["a1"]
    assert not (await ledger.get("a1")).held


class Receipts(ExternalPlugin):
    """The shipped receipt plugin, counting its runs."""

    def __init__(self) -> None:
        super().__init__(ReceiptSigner(Ed25519PrivateKey.generate()))
        self.runs: list[str] = []

    async def execute(self, command: Command):
        self.runs.append(command.action_id)
        return await super().execute(command)


async def test_a_receipt_whose_signing_was_interrupted_is_signed_again_not_left_unknown() -> None:
    """A kill between a batch's start and its outcomes ended 55 receipts outcome_unknown in the long
    drill. Nothing of a receipt leaves the executor before its outcome is recorded, and signing has
    no effect outside Keyturn: the order is run again and ends with one receipt."""
    plugin = Receipts()
    ledger = FakeLedger("executor-1", lease_s=0.3)
    await another_executor(ledger).start("a1", datetime.now(UTC), plugin="external")  # then it was killed
    executor = Executor(
        ledger,
        PluginRegistry({"read": plugin}),
        parameter_opener(KEYRING),
        fake_publisher("executor")[0].encode,
        ResultShaper(100, masker=PlainText()),
    )
    outcome, encoded = await executor.execute(ExecutionOrder(allowed("a1")))
    assert outcome is ExecutionOutcome.APPROVED_EXTERNAL
    receipt = json.loads(decoded(encoded).result_json)["receipt"]
    assert receipt["claims"]["action_id"] == "a1" and receipt["signature"]["value"]
    assert plugin.runs == ["a1"] and ledger.entries["a1"].outcome == "approved_external"
    assert await executor.execute(ExecutionOrder(allowed("a1"))) == (outcome, encoded)  # and only once
    assert plugin.runs == ["a1"]


class Settling(Recording):
    """A plugin that can read an interrupted run's outcome back from its target."""

    def __init__(self, in_effect: bool | None) -> None:
        super().__init__()
        self.in_effect = in_effect  # None: the target cannot say
        self.settled: list[dict] = []

    async def settle(self, command: Command):
        self.settled.append(command.parameters)
        if self.in_effect is None:
            raise OutcomeUnknown("the target did not answer")
        if not self.in_effect:
            raise ExecutionFailed("GRANT x TO y is not in effect: nothing was changed")
        return {"in_effect": "GRANT x TO y", "performed": "not known"}


async def interrupted_with(plugin: Recording):
    ledger = FakeLedger("executor-1", lease_s=0.3)
    await another_executor(ledger).start("a1", datetime.now(UTC), plugin="recording")  # then it was killed
    executor, _ = executor_with(plugin, ledger)
    outcome, encoded = await executor.execute(ExecutionOrder(allowed("a1")))
    return outcome, decoded(encoded), ledger


async def test_an_interrupted_run_the_target_shows_in_effect_ends_succeeded_with_the_evidence() -> None:
    plugin = Settling(in_effect=True)
    outcome, executed, ledger = await interrupted_with(plugin)
    assert outcome is ExecutionOutcome.SUCCEEDED and ledger.entries["a1"].outcome == "succeeded"
    result = json.loads(executed.result_json)
    assert result["in_effect"] == "GRANT x TO y" and "never finished" in result["interrupted"]
    assert result["evidence"]["cleanup"] == {"revoked": True, "where": "own target"}
    assert plugin.runs == [] and plugin.abandoned == ["a1"], "read back after the cleanup, never run again"
    assert plugin.settled == [PARAMETERS], "the clear parameters, to know what to read"


async def test_an_interrupted_run_the_target_shows_not_in_effect_ends_failed() -> None:
    plugin = Settling(in_effect=False)
    outcome, executed, _ = await interrupted_with(plugin)
    assert outcome is ExecutionOutcome.FAILED and plugin.runs == []
    assert "never finished" in executed.error and "nothing was changed" in executed.error


async def test_an_interrupted_run_stays_unknown_when_the_target_cannot_say_or_the_cleanup_failed() -> None:
    plugin = Settling(in_effect=None)
    outcome, executed, _ = await interrupted_with(plugin)
    assert outcome is ExecutionOutcome.OUTCOME_UNKNOWN
    assert "the target did not answer" in json.loads(executed.result_json)["evidence"]["read_back"]["error"]

    plugin = Settling(in_effect=True)
    plugin.abandon_raises = RuntimeError("the target refused the cleanup")
    outcome, _, _ = await interrupted_with(plugin)
    assert outcome is ExecutionOutcome.OUTCOME_UNKNOWN
    assert plugin.settled == [], "a session of the dead run may still be open: nothing is read as final"


class Noting(Settling):
    """A plugin that notes, before its change, what a read-back would need (a SQL write's
    transaction id), and reads back with what was noted."""

    def __init__(self) -> None:
        super().__init__(in_effect=True)
        self.noted: list[dict | None] = []
        self.settle_commands: list[Command] = []

    async def execute(self, command: Command):
        await command.note({"transaction": "7"})
        return {"rows": 1}

    async def settle(self, command: Command):
        self.noted.append(command.noted)
        self.settle_commands.append(command)
        if command.secret_fields:
            raise ExecutionFailed(f"rolled back on {command.parameters['connection_string']}: nothing was changed")
        return await super().settle(command)


async def test_what_a_run_notes_is_kept_with_its_start_and_given_to_the_read_back_after_a_crash() -> None:
    plugin = Noting()
    executor, ledger = executor_with(plugin)
    outcome, _ = await executor.execute(ExecutionOrder(allowed("a1")))
    assert outcome is ExecutionOutcome.SUCCEEDED and ledger.entries["a1"].progress == {"transaction": "7"}

    # a run that noted its transaction and died: the read-back gets the note
    ledger = FakeLedger("executor-1", lease_s=0.3)
    dead = another_executor(ledger)
    await dead.start("a2", datetime.now(UTC), plugin="recording")
    assert await dead.note("a2", {"transaction": "9"})
    assert not await ledger.note("a2", {"transaction": "10"}), "only the executor holding the start notes"
    executor, _ = executor_with(plugin, ledger)
    outcome, _ = await executor.execute(ExecutionOrder(allowed("a2")))
    assert outcome is ExecutionOutcome.SUCCEEDED and plugin.noted == [{"transaction": "9"}]

    # one started by a build that kept no notes: the read-back is told so (None), not handed an empty note
    ledger = FakeLedger("executor-1", lease_s=0.3)
    await another_executor(ledger).start("a3", datetime.now(UTC), plugin="recording")
    ledger.entries["a3"] = dataclasses.replace(ledger.entries["a3"], progress=None)
    executor, _ = executor_with(plugin, ledger)
    await executor.execute(ExecutionOrder(allowed("a3")))
    assert plugin.noted[-1] is None


async def test_a_run_whose_note_cannot_be_kept_fails_before_it_changes_anything() -> None:
    class Away(FakeLedger):
        async def note(self, action_id, progress):
            raise OSError("the ledger's database restarts")

    plugin = Noting()
    executor, ledger = executor_with(plugin, Away())
    outcome, encoded = await executor.execute(ExecutionOrder(allowed("a1")))
    assert outcome is ExecutionOutcome.FAILED and ledger.entries["a1"].outcome == "failed"
    assert "the ledger could not be written (OSError); nothing was changed" in decoded(encoded).error


LEDGER_URL = "postgresql://ledger_owner:pw-7Qx2-not-to-be-seen@db.internal/ledger"


async def interrupted(plugin: Recording, secrets: MemorySecrets, secret: str = "ledger-db"):
    """(outcome, ActionExecuted) of an order on the target in ``secret``, redelivered after the
    executor that started it died mid-command."""
    ledger = FakeLedger()
    await ledger.start("a1", datetime(2026, 12, 4, 8, 0, tzinfo=UTC), plugin="recording")  # then it crashed
    executor, _ = executor_with(plugin, ledger, secrets=secrets)
    parameters = {"statement": "SELECT 1", "connection_string": {"secret": secret}}
    outcome, encoded = await executor.execute(ExecutionOrder(allowed("a1", parameters=parameters)))
    return outcome, decoded(encoded)


async def test_an_interrupted_command_on_a_target_in_a_secret_is_cleaned_up_there_and_the_secret_stays_unsaid() -> None:
    plugin = Recording()
    outcome, executed = await interrupted(plugin, MemorySecrets({"ledger-db": LEDGER_URL}))
    assert outcome is ExecutionOutcome.OUTCOME_UNKNOWN and plugin.runs == []
    (command,) = plugin.abandon_commands
    # the reference resolved as the run resolved it, and nothing else of the parameters
    assert command.parameters == {"connection_string": LEDGER_URL}
    assert command.secret_fields == {"connection_string": "ledger-db"}
    assert "pw-7Qx2" not in executed.result_json and "db.internal" not in executed.result_json
    assert '"where":"<SECRET:ledger-db>"' in executed.result_json
    assert "resolved again for the cleanup" in executed.result_json  # the evidence says where it looked


async def test_a_secret_store_outage_during_the_cleanup_is_waited_out_not_given_up() -> None:
    class Flaky(MemorySecrets):
        failures = 2

        async def get(self, name: str) -> str:
            if self.failures:
                self.failures -= 1
                raise Unavailable("the database restarts")
            return await super().get(name)

    plugin = Recording()
    outcome, _ = await interrupted(plugin, Flaky({"ledger-db": LEDGER_URL}))
    assert outcome is ExecutionOutcome.OUTCOME_UNKNOWN
    assert [c.parameters for c in plugin.abandon_commands] == [{"connection_string": LEDGER_URL}]


async def test_a_cleanup_that_fails_on_a_target_in_a_secret_says_so_without_the_secret() -> None:
    plugin = Recording()
    plugin.abandon_raises = RuntimeError(f"could not reach {LEDGER_URL}")
    outcome, executed = await interrupted(plugin, MemorySecrets({"ledger-db": LEDGER_URL}))
    assert outcome is ExecutionOutcome.OUTCOME_UNKNOWN
    assert "could not reach <SECRET:ledger-db>" in executed.result_json
    assert "pw-7Qx2" not in executed.result_json


async def test_an_interrupted_command_whose_secret_is_gone_says_the_cleanup_failed_and_is_not_run() -> None:
    plugin = Recording()
    outcome, executed = await interrupted(plugin, MemorySecrets({}), secret="gone")
    assert outcome is ExecutionOutcome.OUTCOME_UNKNOWN and plugin.runs == [] and plugin.abandon_commands == []
    assert "no secret named 'gone'" in executed.result_json


async def test_an_order_the_executor_fails_on_before_starting_ends_failed_and_never_runs(monkeypatch) -> None:
    monkeypatch.setattr(loop, "until_done", functools.partial(until_done, first_wait_s=0.001))
    plugin = Recording()
    executor, _ledger = executor_with(plugin)
    publisher, send = fake_publisher("executor")
    stage = ExecutorStage(executor, publisher, WARRANTS)

    async def fails_before_the_ledger(order):
        raise RuntimeError("a bug before the start")

    monkeypatch.setattr(executor, "execute", fails_before_the_ledger)
    decision = allowed("a1")
    source = ListSource([[warranted(Record("unit.actions.decided", 0, 3, b"a1", registry().encode_event(decision)))]])
    await run(
        source, Stage(publisher, (ActionDecided, ApprovalResolved), handle=stage.execute, on_failure=stage.on_failure)
    )
    [executed] = send.events("unit.actions.executed")
    assert executed.outcome is ExecutionOutcome.FAILED and "executor_error" in executed.error
    assert [e.error_type for e in send.events("unit.dlq") if isinstance(e, DeadLetter)] == ["handler_failed"]
    assert plugin.runs == []
    monkeypatch.undo()
    assert (await executor.execute(ExecutionOrder(decision)))[
        0
    ] is ExecutionOutcome.FAILED  # redelivered: the outcome stands
    assert plugin.runs == []


async def test_an_order_the_executor_fails_on_after_starting_ends_outcome_unknown() -> None:
    plugin = Recording()
    executor, ledger = executor_with(plugin)
    order = ExecutionOrder(allowed("a1"))
    await ledger.start("a1", datetime.now(UTC), plugin="recording")  # the failed attempt had started it
    outcome, encoded = await executor.end_failed(order, RuntimeError("lost while recording"))
    assert outcome is ExecutionOutcome.OUTCOME_UNKNOWN
    assert "may have had effects" in decoded(encoded).error
    assert plugin.runs == []


async def test_decisions_that_are_not_cleared_orders_are_not_the_executors_to_end() -> None:
    executor, ledger = executor_with(Recording())
    publisher, send = fake_publisher("executor")
    stage = ExecutorStage(executor, publisher, WARRANTS)
    denied = dataclasses.replace(allowed("a1"), outcome=DecisionOutcome.DENIED)
    await stage.execute(denied)
    await stage.on_failure(denied, None, RuntimeError("irrelevant"))
    assert send.acked == [] and ledger.entries == {}


async def test_a_failure_after_the_outcome_was_recorded_republishes_that_outcome() -> None:
    executor, _ = executor_with(Recording())
    order = ExecutionOrder(allowed("a1"))
    recorded = await executor.execute(order)
    assert await executor.end_failed(order, RuntimeError("publishing failed")) == recorded


class Counting(FakeLedger):
    """Counts the ledger statements a batch costs."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    async def start_many(self, starts, at):
        self.calls.append("start_many")
        return await super().start_many(starts, at)

    async def finish_many(self, finishes):
        self.calls.append("finish_many")
        return await super().finish_many(finishes)


def decided_records(*decisions, offset: int = 0) -> list[Record]:
    return [
        warranted(Record("unit.actions.decided", 0, offset + n, d.action_id.encode(), registry().encode_event(d)))
        for n, d in enumerate(decisions)
    ]


def warranted(record: Record) -> Record:
    """``record`` as the policy or approval service sends it: with its warrant (``bus.warrants``)."""
    headers = WARRANTS.signed(record.topic, record.key or b"", record.value or b"", list(record.headers))
    return dataclasses.replace(record, headers=headers)


async def test_an_order_written_to_the_topic_by_anyone_else_runs_nothing_and_ends_nothing() -> None:
    """Allowed decisions and approvals run only with the warrant of the service that makes them:
    one written by another producer, or edited, or carrying another record's warrant, is
    dead-lettered, and its action neither runs nor ends (the approval it forged stays open)."""
    plugin = Recording()
    executor, ledger = executor_with(plugin)
    publisher, send = fake_publisher("executor")
    stage = ExecutorStage(executor, publisher, WARRANTS)
    [a3, a4, genuine] = decided_records(allowed("a3"), allowed("a4"), allowed("a9"), offset=3)
    forged = [
        Record("unit.actions.decided", 0, 1, b"a1", registry().encode_event(allowed("a1"))),  # no warrant
        dataclasses.replace(genuine, offset=2, key=b"a2", value=registry().encode_event(allowed("a2"))),  # a9's
        dataclasses.replace(a3, value=registry().encode_event(dataclasses.replace(allowed("a3"), reasons=("edited",)))),
        dataclasses.replace(a4, headers=[("keyturn-warrant", b"seal-unit:AAAA")]),  # made up
    ]
    await run(ListSource([[*forged, genuine]]), batch_stage(stage, publisher))
    assert [c.action_id for c in plugin.runs] == ["a9"]
    assert [e.action_id for e in send.events("unit.actions.executed")] == ["a9"]
    letters = [e for e in send.events("unit.dlq") if isinstance(e, DeadLetter)]
    assert [(letter.offset, letter.error_type) for letter in letters] == [
        (n, "unwarranted_order") for n in (1, 2, 3, 4)
    ]
    assert "nothing was run" in letters[0].reason and set(ledger.entries) == {"a9"}
    await stage.on_failure(allowed("a1"), forged[0], RuntimeError("irrelevant"))
    assert set(ledger.entries) == {"a9"} and len(send.events("unit.actions.executed")) == 1


def batch_stage(stage: ExecutorStage, publisher) -> Stage:
    return Stage(
        publisher,
        (ActionDecided, ApprovalResolved),
        handle=stage.execute,
        on_failure=stage.on_failure,
        handle_many=stage.execute_batch,
    )


async def test_a_batch_starts_and_finishes_in_one_statement_each_and_runs_each_order_at_most_once() -> None:
    plugin = Recording()
    ledger = Counting()
    await ledger.start("a3", datetime(2026, 12, 4, 8, 0, tzinfo=UTC), plugin="recording")  # its executor died
    executor, _ = executor_with(plugin, ledger)
    await executor.execute(ExecutionOrder(allowed("a4")))  # finished before
    plugin.runs.clear()
    ledger.calls.clear()
    publisher, send = fake_publisher("executor")
    stage = ExecutorStage(executor, publisher, WARRANTS)
    denied = dataclasses.replace(allowed("a5"), outcome=DecisionOutcome.DENIED)
    batch = decided_records(allowed("a1"), allowed("a2"), allowed("a3"), allowed("a4"), denied, allowed("a1"))
    source = ListSource([batch])
    await run(source, batch_stage(stage, publisher))
    assert ledger.calls == ["start_many", "finish_many"]
    assert sorted(c.action_id for c in plugin.runs) == ["a1", "a2"]
    outcomes = {e.action_id: e.outcome for e in send.events("unit.actions.executed")}
    assert outcomes == {
        "a1": ExecutionOutcome.SUCCEEDED,
        "a2": ExecutionOutcome.SUCCEEDED,
        "a3": ExecutionOutcome.OUTCOME_UNKNOWN,
        "a4": ExecutionOutcome.SUCCEEDED,
    }
    first = list(send.acked)
    await run(ListSource([batch]), batch_stage(stage, publisher))  # the whole batch redelivered
    assert sorted(c.action_id for c in plugin.runs) == ["a1", "a2"]  # nothing ran again
    assert send.acked[len(first) :] == first  # the same outcomes, republished


async def test_an_order_a_batch_fails_on_ends_alone_and_the_others_are_not_run_again(monkeypatch) -> None:
    monkeypatch.setattr(loop, "until_done", functools.partial(until_done, first_wait_s=0.001))
    plugin = Recording()
    executor, ledger = executor_with(plugin)
    publisher, send = fake_publisher("executor")
    stage = ExecutorStage(executor, publisher, WARRANTS)
    run_one = executor._run

    async def fails_on_a2(order, plugin_, started_at):
        if order.action_id == "a2":
            raise RuntimeError("a bug after the start")
        return await run_one(order, plugin_, started_at)

    monkeypatch.setattr(executor, "_run", fails_on_a2)
    source = ListSource([decided_records(allowed("a1"), allowed("a2"), allowed("a3"))])
    await run(source, batch_stage(stage, publisher))
    outcomes = {}
    for e in send.events("unit.actions.executed"):
        outcomes.setdefault(e.action_id, set()).add(e.outcome)
    assert outcomes == {
        "a1": {ExecutionOutcome.SUCCEEDED},
        "a2": {ExecutionOutcome.OUTCOME_UNKNOWN},  # started, then the executor failed: at most once
        "a3": {ExecutionOutcome.SUCCEEDED},
    }
    assert sorted(c.action_id for c in plugin.runs) == ["a1", "a3"]
    assert ledger.entries["a2"].outcome == "outcome_unknown"
    assert len(source.committed) == 1


class Quoting(Recording):
    """A plugin whose failure quotes the parameters, as a database error quotes a literal."""

    def __init__(self, error: type[Exception]) -> None:
        super().__init__()
        self.error = error

    async def execute(self, command: Command):
        raise self.error(
            f'invalid input syntax: "{command.parameters["password"]}" near "{command.parameters["ticket"]}"'
        )


async def test_a_failure_never_quotes_a_value_the_masked_parameters_hide(caplog) -> None:
    from keyturn.core.canonical import canonical_json
    from keyturn.executor.plugins import ExecutionFailed
    from keyturn.masking.protect import mask_parameters

    clear = {"statement": "SELECT 1", "password": "correct-horse-battery", "ticket": "T-99812"}
    for error in (ExecutionFailed, ValueError):  # a refusal the plugin chose, and a plugin bug
        executor, _ = executor_with(Quoting(error))
        decision = allowed(f"q-{error.__name__}", parameters=clear)
        masked = canonical_json(mask_parameters(clear))  # what the intake put on the topic
        decision = dataclasses.replace(
            decision,
            request=dataclasses.replace(decision.request, parameters_json=masked),
            mask=("parameters.ticket",),  # the policy's own word on a field the masking shows
        )
        outcome, encoded = await executor.execute(ExecutionOrder(decision))
        error_text = decoded(encoded).error
        assert outcome is ExecutionOutcome.FAILED
        assert "correct-horse-battery" not in error_text and "T-99812" not in error_text, error_text
        assert '"<SECRET>" near "<MASKED>"' in error_text  # what the masked copy shows, and the policy's word
    assert "correct-horse-battery" not in caplog.text and "T-99812" not in caplog.text
    assert "plugin error: ValueError" in caplog.text and "test_executor_stage.py" in caplog.text  # where it broke


class Echoing(Recording):
    """A tool that answers with what it was given, as careless tools do (``stored key …``)."""

    async def execute(self, command: Command):
        return {
            "content": [{"type": "text", "text": f"stored key {command.parameters['api_key']}"}],
            "structuredContent": {command.parameters["note"]: ["saved", command.parameters["note"]]},
        }


async def test_a_result_never_carries_a_value_the_masked_parameters_hide() -> None:
    from keyturn.core.canonical import canonical_json
    from keyturn.masking.protect import mask_parameters

    clear = {"api_key": "kv7Q2mLx9Rw4tB8n-plain", "note": "the-vault-combination-3141"}
    executor, _ = executor_with(Echoing())
    decision = allowed("echo", parameters=clear)
    decision = dataclasses.replace(
        decision,
        request=dataclasses.replace(decision.request, parameters_json=canonical_json(mask_parameters(clear))),
        mask=("parameters.note",),  # registered secret by the operator: no recogniser would see it
    )
    outcome, encoded = await executor.execute(ExecutionOrder(decision))
    result = decoded(encoded).result_json
    assert outcome is ExecutionOutcome.SUCCEEDED
    assert "kv7Q2mLx9Rw4tB8n-plain" not in result and "the-vault-combination-3141" not in result, result
    assert "stored key <SECRET>" in result and '"<MASKED>"' in result


def test_what_a_failure_may_not_quote_is_each_value_the_masked_copy_hides_never_a_secrets_name() -> None:
    from keyturn.masking.protect import hidden_values, mask_parameters, without

    clear = {
        "statement": "SELECT 1",
        "password": "correct-horse-battery",
        "headers": {"Authorization": "Bearer kt-3f9a1c"},
        "connection_string": {"secret": "ledger-db"},  # a reference: its name is what errors name
        "ticket": "T-99812",
        "n": 7,
    }
    hidden = hidden_values(clear, mask_parameters(clear), ("parameters.ticket",))
    assert hidden == {"correct-horse-battery": "<SECRET>", "Bearer kt-3f9a1c": "<SECRET>", "T-99812": "<MASKED>"}
    text = "secret 'ledger-db' holds no DSN; near 'T-99812', password correct-horse-battery; 7 rows"
    assert without(text, hidden) == "secret 'ledger-db' holds no DSN; near '<MASKED>', password <SECRET>; 7 rows"


def test_a_short_hidden_value_is_taken_out_where_a_message_quotes_it() -> None:
    from keyturn.masking.protect import without_hidden

    clear = {"statement": "UPDATE cards SET pin = $1", "pin": "831"}
    text = 'invalid input syntax for type integer: "831"; 831 rows of 1831 checked'
    assert without_hidden(text, clear, clear, ("parameters.pin",)) == (
        'invalid input syntax for type integer: "<MASKED>"; 831 rows of 1831 checked'  # quoted: gone; counts stay
    )


class SlowFor(Recording):
    """Commands of the actions in ``slow`` take a second; the others are done at once."""

    def __init__(self, *slow: str) -> None:
        super().__init__()
        self.slow = set(slow)

    async def execute(self, command: Command):
        self.runs.append(command)
        if command.action_id in self.slow:
            await asyncio.sleep(1.0)
        return {"rows": 1}


async def test_a_crash_while_a_batchs_slow_command_runs_leaves_the_finished_ones_recorded() -> None:
    """Recorded only after the whole batch, a kill there ended every order of it outcome_unknown:
    the long drill lost a batch of 54 that way, receipts signed in microseconds among them."""
    executor, ledger = executor_with(SlowFor("slow"), FakeLedger(lease_s=0.3))
    orders = [ExecutionOrder(allowed(action_id)) for action_id in ("q1", "q2", "slow")]
    batch = asyncio.create_task(executor.execute_many(orders))
    await asyncio.sleep(0.4)
    batch.cancel()  # the process dies with the slow command running
    with contextlib.suppress(asyncio.CancelledError):
        await batch
    assert {i: e.outcome for i, e in ledger.entries.items()} == {"q1": "succeeded", "q2": "succeeded", "slow": None}

    # after a restart, the redelivered batch republishes the two and only the slow one is interrupted
    again, _ = executor_with(Recording(), another_executor(ledger))
    done, failures = await again.execute_many(orders)
    assert failures == []
    assert {order.action_id: outcome for order, outcome, _ in done} == {
        "q1": ExecutionOutcome.SUCCEEDED,
        "q2": ExecutionOutcome.SUCCEEDED,
        "slow": ExecutionOutcome.OUTCOME_UNKNOWN,
    }


class Queued(Recording):
    """Two of its commands at a time (``turns_for``); records how many ran at once."""

    def __init__(self) -> None:
        super().__init__()
        self.turns = asyncio.Semaphore(2)
        self.now = self.most = 0

    def turns_for(self, command: Command) -> asyncio.Semaphore:
        return self.turns

    async def execute(self, command: Command):
        self.now += 1
        self.most = max(self.most, self.now)
        await asyncio.sleep(0.05)
        self.now -= 1
        return await super().execute(command)


async def test_a_plugins_commands_take_turns_and_each_still_runs_once() -> None:
    plugin = Queued()
    executor, _ = executor_with(plugin, timeout_s=0.12)  # a command's time limit starts with its turn
    done, failures = await executor.execute_many([ExecutionOrder(allowed(f"a{i}")) for i in range(6)])
    assert failures == [] and {outcome for _, outcome, _ in done} == {ExecutionOutcome.SUCCEEDED}
    assert plugin.most == 2 and len(plugin.runs) == 6


async def test_an_interrupted_command_on_a_target_in_a_secret_is_read_back_there_and_the_secret_stays_unsaid() -> None:
    plugin = Noting()
    outcome, executed = await interrupted(plugin, MemorySecrets({"ledger-db": LEDGER_URL}))
    assert outcome is ExecutionOutcome.FAILED and plugin.runs == []
    (command,) = plugin.settle_commands
    assert command.parameters["connection_string"] == LEDGER_URL  # where the run ran, not the reference
    assert command.secret_fields == {"connection_string": "ledger-db"}
    assert "rolled back on <SECRET:ledger-db>" in executed.error
    assert "pw-7Qx2" not in executed.error + executed.result_json


async def test_a_command_decided_for_another_environment_than_its_target_serves_is_refused_before_it_runs() -> None:
    from keyturn.executor.plugins.sql import SqlPlugin

    staging = SqlPlugin("postgresql://keyturn@127.0.0.1:5433/keyturn", serves=frozenset({"staging"}))
    command = Command("a1", "sql.query", "postgres://db-stg.example/x", {"statement": "DELETE FROM t"}, 60)
    assert staging.environment_refusal(command, "staging") is None
    for elsewhere in ("production", "development", "unknown"):
        why = staging.environment_refusal(command, elsewhere)
        assert why is not None and "serves staging" in why and "nothing was run" in why, elsewhere
    # an environment nobody could name is decided as production is, so a production target runs it
    production = SqlPlugin("postgresql://keyturn@127.0.0.1:5433/keyturn")
    assert production.environment_refusal(command, "unknown") is None
    assert "serves production" in (production.environment_refusal(command, "staging") or "")

    asked: list[str] = []

    async def policy_says(resource: str) -> str:  # the executor asks the policy's rule, never its own
        asked.append(resource)
        return "production"

    class Placed(Recording):
        def environment_refusal(self, command: Command, environment: str) -> str | None:
            return staging.environment_refusal(command, environment)

    plugin = Placed()
    executor, _ = executor_with(plugin)
    executor.environment_of = policy_says
    # the service alone reads this resource as staging; the policy's patterns say production
    outcome, encoded = await executor.execute(ExecutionOrder(allowed("a1", resource="postgres://staging/x")))
    assert outcome is ExecutionOutcome.FAILED and plugin.runs == [] and asked == ["postgres://staging/x"]
    assert "refused before execution" in decoded(encoded).error and "serves staging" in decoded(encoded).error


async def test_the_environment_is_the_policys_answer_kept_a_while_and_an_outage_is_waited_out() -> None:
    from keyturn.core.environments import ENVIRONMENT_PATH
    from keyturn.executor.environments import PolicyEnvironments
    from keyturn.policy.opa import OpaAnswer, PolicyUnavailable

    class Opa:
        def __init__(self) -> None:
            self.asked: list[tuple[str, dict]] = []
            self.down = False

        async def query(self, path: str, document: dict) -> OpaAnswer:
            if self.down:
                raise PolicyUnavailable("connection refused")
            self.asked.append((path, document))
            return OpaAnswer("staging" if "db-stg" in document["resource"] else "nonsense", "d1", "rev")

    now = [0.0]
    opa = Opa()
    environments = PolicyEnvironments(opa, fresh_s=30, clock=lambda: now[0])
    assert await environments("postgres://db-stg.example/x") == "staging"
    assert opa.asked == [(ENVIRONMENT_PATH, {"resource": "postgres://db-stg.example/x", "environment": "unknown"})]
    assert await environments("postgres://db-stg.example/x") == "staging" and len(opa.asked) == 1  # kept
    assert await environments("postgres://other/x") == "unknown"  # an answer that is no environment
    now[0], opa.down = 31.0, True
    with pytest.raises(Unavailable):  # until_done waits it out: nothing runs before the policy says where
        await environments("postgres://db-stg.example/x")


def test_the_sql_target_serves_production_unless_told_and_the_development_database_staging() -> None:
    import pytest

    from keyturn.config import Settings

    assert Settings(sql_target_url="postgresql://db.example/x").sql_target_serves == {"production"}
    assert Settings().sql_target_serves == {"staging"}
    assert Settings(sql_target_environments="staging, production").sql_target_serves == {"staging", "production"}
    with pytest.raises(ValueError, match="comma list"):
        _ = Settings(sql_target_environments="prod").sql_target_serves
