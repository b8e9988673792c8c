"""Runs one cleared order at most once and describes what happened as an ``ActionExecuted``.

The order of things is the guarantee:

1. ``ledger.start`` (committed) — a second start of the same action is impossible;
2. the checks of ``core.execution.refusal_reason``, on the clear parameters;
3. the plugin, once, under a time limit (for an action the catalog marks external, the
   ``external`` plugin signs a receipt and the action ends ``approved_external``; for one no
   plugin covers, ``NoExecutor`` ends it ``failed``: nothing ends ``succeeded`` without running);
4. ``ledger.finish`` with the encoded outcome, which is then published (and republished
   as is on any redelivery).

Redelivered after 1 but before 4 (the executor died), the action is not run again: the
plugin's ``abandon`` cleans up what the dead run may have left, and the action ends
``outcome_unknown`` with that evidence. A ``repeatable`` plugin's (a receipt's: nothing outside
Keyturn happens, and nothing of the dead run left its executor) is run again instead. While
the start's lease is renewed (the executor that started it is alive, still running it: its
partition moved in a rebalance), the order waits for that executor's outcome instead, which it
then republishes.

A batch keeps the same order of things for all of its orders at once (``execute_many``): one
committed ledger statement starts them all, the plugins run concurrently, one statement
records every outcome, and the events are sent together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol

from keyturn.bus.headers import Headers, executed_headers
from keyturn.bus.loop import tally
from keyturn.bus.warrants import Warrants, dead_letter_unwarranted
from keyturn.core.canonical import canonical_json
from keyturn.core.environments import environment_of
from keyturn.core.events import ActionDecided, ActionExecuted, ApprovalResolved, ExecutionOutcome, VoteChoice
from keyturn.core.execution import ExecutionOrder, order_from, refusal_reason
from keyturn.executor.ledger import LedgerEntry
from keyturn.executor.plugins import Command, ExecutionFailed, OutcomeUnknown, Plugin, PluginRegistry
from keyturn.executor.results import ResultShaper
from keyturn.faults import until_done
from keyturn.masking.protect import hidden_values, without_anywhere, without_hidden
from keyturn.secret_store import (
    SecretNotFound,
    SecretStore,
    is_reference,
    redact,
    references_in,
    resolve_references,
)

log = logging.getLogger(__name__)
# a batch's outcomes are recorded together as they come in: what finished within this long of the
# last record is one statement (a batch whose commands all end sooner still makes one)
FINISH_WINDOW_S = 0.1


async def _services_reading(resource: str) -> str:
    """The environment as the policy service names it alone (tests without a policy engine)."""
    return environment_of(resource)


def _turn(plugin: Any, command: Command) -> contextlib.AbstractAsyncContextManager[Any]:
    """The plugin's turn for ``command`` (``Plugin.turns_for``), or nothing to wait for."""
    turns_for = getattr(plugin, "turns_for", None)
    return turns_for(command) if turns_for is not None else contextlib.nullcontext()


class Ledger(Protocol):
    """The execution ledger (``executor.ledger.ExecutionLedger``): a start is committed at most
    once per action, ever; the first outcome recorded stays."""

    executor: str
    lease_s: float  # how long a start or a renewal vouches that its executor is running it

    async def start(
        self, action_id: str, at: datetime, *, payload_digest: str = "", plugin: str = ""
    ) -> LedgerEntry | None: ...

    async def finish(self, action_id: str, outcome: str, executed_event: bytes, at: datetime) -> bool: ...

    async def get(self, action_id: str) -> LedgerEntry | None: ...

    async def start_many(self, starts: list[tuple[str, str, str]], at: datetime) -> dict[str, LedgerEntry]: ...

    async def finish_many(self, finishes: list[tuple[str, str, bytes, datetime]]) -> set[str]: ...

    async def renew(self, action_ids: list[str]) -> None: ...

    async def note(self, action_id: str, progress: dict[str, Any]) -> bool: ...


Done = tuple[ExecutionOrder, ExecutionOutcome, bytes]


class Executor:
    def __init__(
        self,
        ledger: Ledger,
        plugins: PluginRegistry,
        open_parameters: Callable[[Any], dict[str, Any]],
        encode: Callable[[ActionExecuted], bytes],
        results: ResultShaper,
        *,
        timeout_s: float = 120.0,
        secrets: SecretStore | None = None,
        environment_of: Callable[[str], Awaitable[str]] | None = None,
    ) -> None:
        self.secrets = secrets  # resolves {"secret": name} references in the parameters, here only
        # the environment the policy decides a resource is in (``PolicyEnvironments``); a plugin that
        # runs on a target of one environment refuses a command decided for another
        self.environment_of = environment_of or _services_reading
        self.ledger = ledger
        self.plugins = plugins
        self.open_parameters = open_parameters  # (request) -> clear parameters; refuses tampered seals
        self.encode = encode
        self.results = results
        self.timeout_s = timeout_s

    async def execute(self, order: ExecutionOrder) -> tuple[ExecutionOutcome, bytes]:
        """Run ``order`` at most once; (its outcome, the encoded ``ActionExecuted`` to publish)."""
        now = datetime.now(UTC)
        await self.plugins.refresh_modes_if_stale()
        plugin = self.plugins.plugin_for(order.decision.request.action)
        earlier = await until_done(
            lambda: self.ledger.start(
                order.action_id, now, payload_digest=str(order.payload_digest), plugin=plugin.name
            ),
            f"starting {order.action_id} in the ledger",
        )
        async with self._holding([order.action_id] if self._ours_to_run(earlier, now) else []):
            done = await self._after_start(order, plugin, earlier, now)
        return done if isinstance(done, tuple) else await self._finish(order, done)

    def _ours_to_run(self, entry: LedgerEntry | None, now: datetime) -> bool:
        """This call started it: no earlier entry, or our own start of ``now``, committed before
        the connection broke (nothing ran yet)."""
        return entry is None or (entry.executor, entry.started_at) == (self.ledger.executor, now)

    async def _after_start(
        self, order: ExecutionOrder, plugin: Plugin, entry: LedgerEntry | None, now: datetime
    ) -> ActionExecuted | tuple[ExecutionOutcome, bytes]:
        """Run ``order`` if this call started it; else the outcome recorded (awaited while another
        executor runs it), or ``outcome_unknown`` for a run that was interrupted."""
        if self._ours_to_run(entry, now):
            return await self._run(order, plugin, now)
        assert entry is not None
        entry = await self._released(entry)
        if entry.finished:
            return _recorded(entry)
        if getattr(plugin, "repeatable", False) and entry.payload_digest in ("", str(order.payload_digest)):
            # nothing of the interrupted run left its executor (an outcome is published only once
            # recorded), and running it again has no effect outside Keyturn: a receipt is signed again
            # rather than the action left outcome_unknown (the first finish recorded stands)
            log.warning(
                "action %s started at %s by %s and never finished; %s runs it again (it has no outside effect)",
                order.action_id,
                entry.started_at.isoformat(),
                entry.executor,
                plugin.name,
            )
            return await self._run(order, plugin, entry.started_at)
        return await self._interrupted(order, plugin, entry)

    async def _released(self, entry: LedgerEntry) -> LedgerEntry:
        """``entry`` once nobody holds it: finished, or its starter's lease lapsed. While another
        executor renews its lease it is still running the action, and its outcome is awaited."""
        poll_s = min(1.0, self.ledger.lease_s / 4)

        def running_elsewhere(e: LedgerEntry) -> bool:
            # one executor hands a batch's orders over only after it is done with them, so its own
            # unfinished start (an attempt that failed) is running nowhere: not waited for
            return e.held and not e.finished and e.executor != self.ledger.executor

        if running_elsewhere(entry):
            log.info(
                "%s is still running at %s (its lease is renewed): waiting for its outcome",
                entry.action_id,
                entry.executor,
            )
        while running_elsewhere(entry):
            await asyncio.sleep(poll_s)
            later = await until_done(partial(self.ledger.get, entry.action_id), f"reading {entry.action_id}'s lease")
            if later is None:
                raise RuntimeError(f"the ledger lost the start of {entry.action_id}")
            entry = later
        return entry

    @contextlib.asynccontextmanager
    async def _holding(self, action_ids: list[str]) -> AsyncIterator[None]:
        """Renew the leases of ``action_ids`` (started by this executor) while the block runs."""

        done = asyncio.Event()

        async def renew() -> None:
            while action_ids:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), self.ledger.lease_s / 3)
                    return
                try:
                    await self.ledger.renew(action_ids)
                except Exception as exc:  # a database blip: the next beat tries again, well within the lease
                    log.warning("renewing the leases of %d running order(s) failed: %r", len(action_ids), exc)

        # told to stop rather than cancelled: a batch once waited minutes here for a beat that
        # slept on as if its cancel never came; a renewal under way ends within the ledger's patience
        beat = asyncio.create_task(renew())
        try:
            yield
        finally:
            done.set()
            try:
                await beat
            finally:
                beat.cancel()  # the batch itself cancelled meanwhile (a shutdown): its beat goes too

    async def execute_many(self, orders: list[ExecutionOrder]) -> tuple[list[Done], list[BaseException]]:
        """Run every order (distinct actions) at most once: (what each ended with, the failures
        of those that could not be handled, which the caller hands to ``end_failed``'s path).

        The starts are one committed statement before any plugin runs; the outcomes of what
        finished within ``FINISH_WINDOW_S`` are one statement, and those of slower commands
        another each window, so a crash mid-batch leaves only unfinished orders unrecorded."""
        now = datetime.now(UTC)
        await self.plugins.refresh_modes_if_stale()
        plugins = {order.action_id: self.plugins.plugin_for(order.decision.request.action) for order in orders}
        starts = [(o.action_id, str(o.payload_digest), plugins[o.action_id].name) for o in orders]
        earlier = await until_done(
            lambda: self.ledger.start_many(starts, now), f"starting {len(orders)} order(s) in the ledger"
        )

        ours = [o.action_id for o in orders if self._ours_to_run(earlier.get(o.action_id), now)]
        results: dict[str, Any] = {}
        encoded: dict[str, bytes] = {}
        recorded: set[str] = set()
        running: dict[asyncio.Future[Any], ExecutionOrder] = {
            asyncio.ensure_future(self._after_start(o, plugins[o.action_id], earlier.get(o.action_id), now)): o
            for o in orders
        }
        pending: set[asyncio.Future[Any]] = set(running)
        try:
            async with self._holding(ours):
                while pending:
                    finished, pending = await asyncio.wait(pending, timeout=FINISH_WINDOW_S)
                    ran: list[tuple[str, ActionExecuted]] = []
                    for task in finished:
                        action_id = running[task].action_id
                        results[action_id] = task.exception() or task.result()
                        if isinstance(results[action_id], ActionExecuted):
                            ran.append((action_id, results[action_id]))
                    if ran:  # the plugins have run: their outcomes are kept until the ledger takes them
                        recorded |= await self._record(ran, encoded)
        finally:
            for task in pending:
                task.cancel()
        done: list[Done] = []
        failures: list[BaseException] = []
        for order in orders:
            result = results[order.action_id]
            if isinstance(result, BaseException):
                failures.append(result)
            elif isinstance(result, ActionExecuted):
                if order.action_id in recorded:
                    done.append((order, result.outcome, encoded[order.action_id]))
                else:  # another executor recorded first; its word stands
                    entry = await until_done(
                        partial(self.ledger.get, order.action_id), f"reading the outcome of {order.action_id}"
                    )
                    if entry is None:
                        raise RuntimeError(f"the ledger refused the outcome of {order.action_id} but holds none")
                    done.append((order, *_recorded(entry)))
            else:
                done.append((order, *result))
        return done, failures

    async def _record(self, ran: list[tuple[str, ActionExecuted]], encoded: dict[str, bytes]) -> set[str]:
        """One statement for the outcomes of ``ran`` (their encodings go to ``encoded``); the ids recorded."""
        for action_id, executed in ran:
            encoded[action_id] = self.encode(executed)
        finished_at = datetime.now(UTC)
        finishes = [(i, executed.outcome.value, encoded[i], finished_at) for i, executed in ran]
        return set(
            await until_done(
                lambda: self.ledger.finish_many(finishes), f"recording the outcomes of {len(finishes)} order(s)"
            )
        )

    async def end_failed(self, order: ExecutionOrder, exc: Exception) -> tuple[ExecutionOutcome, bytes]:
        """End an order whose handling failed (the executor's own fault, not the plugin's), never running it.

        A start this call commits means nothing ran: ``failed``. A start found unfinished may be
        the failed attempt's own, after which the plugin may have run: ``outcome_unknown``
        (at most once: the action is not run again). A finished one keeps its recorded outcome.
        """
        now = datetime.now(UTC)
        try:
            plugin = self.plugins.plugin_for(order.decision.request.action).name
        except Exception:
            plugin = "none"
        earlier = await self.ledger.start(order.action_id, now, payload_digest=str(order.payload_digest), plugin=plugin)
        if earlier is not None:
            earlier = await self._released(earlier)
        if earlier is not None and earlier.finished:
            return _recorded(earlier)
        # an exception's text can quote the order it failed on: masked before a topic carries it
        fault = self.results.mask_text(f"the executor failed on this order ({type(exc).__name__}: {exc})")
        if earlier is None:
            executed = self._executed(
                order, plugin, ExecutionOutcome.FAILED, now, error=f"executor_error: {fault}; it was not run"
            )
        else:
            executed = self._executed(
                order,
                earlier.plugin or plugin,
                ExecutionOutcome.OUTCOME_UNKNOWN,
                earlier.started_at,
                error=f"executor_error: {fault} after it started at {earlier.started_at.isoformat()}; "
                "it may have had effects and is not run again: check the target before asking again",
            )
        return await self._finish(order, executed)

    async def _finish(self, order: ExecutionOrder, executed: ActionExecuted) -> tuple[ExecutionOutcome, bytes]:
        encoded = self.encode(executed)
        finished_at = datetime.now(UTC)
        # the plugin has run: its outcome is kept until the ledger takes it (never "unknown" for a database restart)
        if not await until_done(
            lambda: self.ledger.finish(order.action_id, executed.outcome.value, encoded, finished_at),
            f"recording the outcome of {order.action_id}",
        ):
            recorded = await until_done(
                lambda: self.ledger.get(order.action_id), f"reading the outcome of {order.action_id}"
            )  # another executor recorded first; its word stands
            if recorded is None:
                raise RuntimeError(f"the ledger refused the outcome of {order.action_id} but holds none")
            return _recorded(recorded)
        return executed.outcome, encoded

    async def _run(self, order: ExecutionOrder, plugin: Plugin, started_at: datetime) -> ActionExecuted:
        request = order.decision.request

        def outcome(kind: ExecutionOutcome, *, error: str | None = None, result: Any = None) -> ActionExecuted:
            return self._executed(order, plugin.name, kind, started_at, error=error, result=result)

        try:
            parameters = self.open_parameters(request)
        except Exception as exc:  # a seal that does not open is a refusal, never a crash
            return outcome(
                ExecutionOutcome.FAILED,
                error=self.results.mask_text(
                    f"refused before execution: the parameters do not open ({type(exc).__name__}: {exc})"
                ),
            )
        clear = parameters

        def failure(text: str) -> str:
            """A failure's text without a secret used, a value the masked copy hides, or recognisable data."""
            unhidden = without_hidden(redact(text, used), clear, request.parameters, order.decision.mask)
            return self.results.mask_text(unhidden)

        refusal = refusal_reason(order, started_at, parameters)
        if refusal is not None:
            return outcome(ExecutionOutcome.FAILED, error=f"refused before execution: {refusal}")
        used: dict[str, str] = {}  # secrets the references resolved to: the plugin alone sees them
        secret_fields = {key: value["secret"] for key, value in parameters.items() if is_reference(value)}
        if references_in(parameters):
            if self.secrets is None:
                return outcome(
                    ExecutionOutcome.FAILED,
                    error="refused before execution: the parameters refer to secrets and this executor has no "
                    "secret store",
                )
            try:
                parameters, used = await resolve_references(parameters, self.secrets)
            except SecretNotFound as exc:
                # the name is the agent's: masked, as every error is, in case a value was pasted as a name
                refused = self.results.mask_text(f"refused before execution: {exc}")
                return outcome(ExecutionOutcome.FAILED, error=refused)
        resolution = order.resolution
        command = _command_of(
            order,
            parameters,
            payload_digest=str(order.payload_digest),
            approvers=tuple(v.approver.id for v in resolution.votes if v.choice is VoteChoice.APPROVE)
            if resolution is not None
            else (),
            decision="approved" if resolution is not None else "allowed",
            policy_revision=order.decision.provenance.policy_revision,
            decision_id=order.decision.provenance.decision_id,
            execute_before=order.execute_before(),
            mask=tuple(order.decision.mask),
            impact=order.decision.impact,
            secret_fields=secret_fields,
            keep_note=partial(self.ledger.note, order.action_id),
        )
        if (check := getattr(plugin, "environment_refusal", None)) is not None:
            environment = await until_done(
                partial(self.environment_of, command.resource), f"asking the policy where {order.action_id} runs"
            )
            if (elsewhere := check(command, environment)) is not None:
                return outcome(ExecutionOutcome.FAILED, error=f"refused before execution: {elsewhere}")
        try:
            # asyncio.timeout, not wait_for: the command runs in this order's task, not in one more
            async with _turn(plugin, command), asyncio.timeout(self.timeout_s):
                result = redact(await plugin.execute(command), used)
        except ExecutionFailed as exc:
            return outcome(ExecutionOutcome.FAILED, error=failure(str(exc)))
        except OutcomeUnknown as exc:
            return outcome(ExecutionOutcome.OUTCOME_UNKNOWN, error=failure(str(exc)))
        except TimeoutError:
            return outcome(
                ExecutionOutcome.OUTCOME_UNKNOWN,
                error=f"{plugin.name} did not finish within {self.timeout_s:g}s and was stopped; it may have had "
                f"effects",
            )
        except Exception as exc:  # a plugin bug is a failed action, never a crash loop that re-runs it
            # a traceback's source lines and chained messages could quote a clear value: the redacted
            # message, and where it was raised
            error = failure(f"{plugin.name} plugin error: {type(exc).__name__}: {exc}")
            log.error("%s, on %s, at %s", error, order.action_id, _places(exc))
            return outcome(ExecutionOutcome.FAILED, error=error)
        if getattr(plugin, "external", False):
            # nothing ran: the result is the signed receipt Keyturn built from the decision (no parameter
            # in it), kept as signed; masking would break the signature
            return outcome(ExecutionOutcome.APPROVED_EXTERNAL, result=result)
        # masking a result is CPU work kept off the event loop; a result of None has nothing to mask
        shaped = None if result is None else await asyncio.to_thread(self._shaped, result, clear, order)
        return outcome(ExecutionOutcome.SUCCEEDED, result=shaped)

    def _shaped(self, result: Any, clear: dict[str, Any], order: ExecutionOrder) -> Any:
        """A result as it travels: without a value the masked parameters hide (a tool that echoes
        the key it was given, a row that quotes the address the query named), then masked and
        capped (``ResultShaper``), as a failure's text is."""
        mask = tuple(order.decision.mask)
        hidden = hidden_values(clear, order.decision.request.parameters, mask)
        return self.results.shape(without_anywhere(result, hidden), mask)

    async def _interrupted(self, order: ExecutionOrder, plugin: Plugin, earlier: LedgerEntry) -> ActionExecuted:
        """The action started before and never finished: clean up, say what is known, do not run it."""
        evidence: dict[str, Any] = {
            "started_at": earlier.started_at.isoformat(),
            "started_by": earlier.executor,
            "plugin": earlier.plugin or plugin.name,
        }
        if earlier.payload_digest and earlier.payload_digest != str(order.payload_digest):
            evidence["started_with_payload_digest"] = earlier.payload_digest
        abandon = getattr(plugin, "abandon", None)
        # the secret references, resolved for the cleanup, and the read-back after it (a command that
        # ran where a reference names is read back there)
        references: dict[str, Any] = {}
        secret_fields: dict[str, str] = {}
        used: dict[str, str] = {}
        if abandon is not None:
            try:
                # the secret references, resolved as the run resolved them: a command that ran where a
                # reference names (a SQL target in a secret) is cleaned up there, not on the plugin's
                # own target. The rest of the parameters is not needed to clean up, and not given.
                references, secret_fields, used = await until_done(
                    partial(self._references, order), f"resolving the references of {order.action_id} to clean up"
                )  # a database blip is waited out: giving up here would leave the role where no sweep looks
                if secret_fields:  # the secret is read now: rotated since the crash, it points elsewhere
                    evidence["cleanup_target"] = "its secret reference, resolved again for the cleanup"
                command = _command_of(order, references, secret_fields=secret_fields, noted=earlier.progress)
                async with _turn(plugin, command), asyncio.timeout(self.timeout_s):
                    evidence["cleanup"] = redact(await abandon(command), used)
            except Exception as exc:
                # its text could quote a secret used (a connection string): redacted, then masked
                error = self.results.mask_text(redact(f"{type(exc).__name__}: {exc}", used))
                log.error("cleanup after interrupted %s failed: %s", order.action_id, error)
                evidence["cleanup"] = {"error": error}
        interrupted = (
            f"started at {earlier.started_at.isoformat()} by {earlier.executor} and never finished "
            "(the executor stopped mid-way); not run again"
        )
        cleanup = evidence.get("cleanup")
        settle = getattr(plugin, "settle", None)
        if settle is not None and isinstance(cleanup, dict) and "error" not in cleanup:
            # the dead run's sessions are ended and its role dropped: the target's state is final, and
            # a plugin that can read it back says whether the command took effect
            settled = await self._settled(
                order, plugin, settle, earlier, interrupted, evidence, references, secret_fields, used
            )
            if settled is not None:
                return settled
        error = f"{interrupted}: check the target before asking again"
        log.warning("action %s was interrupted; ending it outcome_unknown: %s", order.action_id, evidence)
        return self._executed(
            order,
            plugin.name,
            ExecutionOutcome.OUTCOME_UNKNOWN,
            earlier.started_at,
            error=error,
            result={"evidence": evidence},
        )

    async def _settled(
        self,
        order: ExecutionOrder,
        plugin: Plugin,
        settle: Callable[[Command], Awaitable[Any]],
        earlier: LedgerEntry,
        interrupted: str,
        evidence: dict[str, Any],
        references: dict[str, Any],
        secret_fields: dict[str, str],
        used: dict[str, str],
    ) -> ActionExecuted | None:
        """An interrupted run's outcome read back by the plugin's ``settle``: ``succeeded`` when
        the change is in effect, ``failed`` when nothing changed; None when it cannot tell. Its
        secret references are those the cleanup resolved, and its words are redacted of them."""
        try:
            parameters = {**self.open_parameters(order.decision.request), **references}
            command = _command_of(
                order,
                parameters,
                payload_digest=str(order.payload_digest),
                secret_fields=secret_fields,
                noted=earlier.progress,
            )
            async with _turn(plugin, command), asyncio.timeout(self.timeout_s):
                result = redact(await settle(command), used)
        except ExecutionFailed as exc:
            return self._executed(
                order,
                plugin.name,
                ExecutionOutcome.FAILED,
                earlier.started_at,
                error=self.results.mask_text(redact(f"{interrupted}; read back from the target: {exc}", used)),
                result={"evidence": evidence},
            )
        except Exception as exc:  # OutcomeUnknown, the target away: it stays unknown, with why
            evidence["read_back"] = {"error": self.results.mask_text(redact(f"{type(exc).__name__}: {exc}", used))}
            return None
        shaped = await asyncio.to_thread(
            self.results.shape, {**result, "interrupted": interrupted, "evidence": evidence}, tuple(order.decision.mask)
        )
        log.warning("action %s was interrupted; the target shows it in effect: %s", order.action_id, evidence)
        return self._executed(order, plugin.name, ExecutionOutcome.SUCCEEDED, earlier.started_at, result=shaped)

    async def _references(self, order: ExecutionOrder) -> tuple[dict[str, Any], dict[str, str], dict[str, str]]:
        """(the order's parameters that are secret references, resolved; their secret names by
        field; the secrets used by name). Nothing when its parameters do not open: then the run
        was refused before any plugin ran."""
        try:
            parameters = self.open_parameters(order.decision.request)
        except Exception:
            return {}, {}, {}
        fields = {key: value for key, value in parameters.items() if is_reference(value)}
        if not fields or self.secrets is None:
            return {}, {}, {}
        resolved, used = await resolve_references(fields, self.secrets)
        return resolved, {key: value["secret"] for key, value in fields.items()}, used

    def _executed(
        self,
        order: ExecutionOrder,
        plugin: str,
        outcome: ExecutionOutcome,
        started_at: datetime,
        *,
        error: str | None = None,
        result: Any = None,
    ) -> ActionExecuted:
        return ActionExecuted(
            event_id=f"executed:{order.action_id}",
            action_id=order.action_id,
            outcome=outcome,
            plugin=plugin,
            payload_digest=order.payload_digest,
            started_at=started_at,
            finished_at=datetime.now(UTC),
            result_json=canonical_json(result) if result is not None else None,
            error=error,
            executor=self.ledger.executor,
        )


class ExecutorStage:
    """``execute`` per cleared order (the loop's handler) and ``on_failure`` (its terminal event)."""

    def __init__(self, executor: Executor, publisher: Any, warrants: Warrants) -> None:
        self.executor = executor
        self.publisher = publisher
        self.warrants = warrants

    async def _orders(self, batch: list[tuple[ActionDecided | ApprovalResolved, Any]]) -> list[ExecutionOrder]:
        """The orders of ``batch`` whose records carry the warrant of the service that makes them
        (``bus.warrants``); one without is dead-lettered and runs nothing, nor is its action ended:
        whoever wrote it may not decide for it, either way."""
        orders = [(order, message) for event, message in batch if (order := order_from(event)) is not None]
        kept, refused = self.warrants.sorted(orders)
        for order, message, why in refused:
            approval = order.resolution is not None
            kind, sender = ("an approval", "approval") if approval else ("an allowed decision", "policy")
            await dead_letter_unwarranted(
                self.publisher,
                message,
                "unwarranted_order",
                f"{kind} for {order.action_id} with {why}: not sent by Keyturn's {sender} service, so nothing was run",
            )
        return [order for order, _ in kept]

    async def execute(self, event: ActionDecided | ApprovalResolved, message: Any = None) -> None:
        orders = await self._orders([(event, message)])
        if not orders:
            return
        [order] = orders
        outcome, encoded = await self.executor.execute(order)
        log.info("executed %s: %s", order.action_id, outcome.value)
        await self.publisher.publish_encoded(
            self.publisher.topics.executed, order.action_id, encoded, _executed_headers(order, outcome)
        )

    async def execute_batch(self, batch: list[tuple[ActionDecided | ApprovalResolved, Any]]) -> None:
        """Run a batch's cleared orders together (``Executor.execute_many``), send every outcome,
        and wait for all of them to be acknowledged. An order that could not be handled raises
        after the others were sent: the loop then takes the batch again one event at a time
        (the ones sent republish their recorded outcome; the failed one ends as ``execute``
        or ``on_failure`` decides, never run twice)."""
        orders = list({o.action_id: o for o in await self._orders(batch)}.values())
        if not orders:
            return
        done, failures = await self.executor.execute_many(orders)
        if done:  # one line per batch; each outcome is on the executed and audit topics
            log.info("executed %d: %s", len(done), tally(outcome.value for _, outcome, _ in done))
        for order, outcome, _ in done:
            log.debug("executed %s: %s", order.action_id, outcome.value)
        topic = self.publisher.topics.executed
        await until_done(
            lambda: self.publisher.publish_all(
                [(topic, order.action_id, value, _executed_headers(order, outcome)) for order, outcome, value in done]
            ),
            f"sending {len(done)} outcome(s)",
        )
        if failures:
            raise failures[0]

    async def on_failure(self, event: ActionDecided | ApprovalResolved, message: Any, exc: Exception) -> None:
        """End a cleared order ``failed`` (nothing ran) or ``outcome_unknown`` (it may have); others are not
        ours to end, nor is an order without its warrant (``execute`` dead-lettered it)."""
        order = order_from(event)
        if order is None or self.warrants.problem(message) is not None:
            return
        outcome, encoded = await self.executor.end_failed(order, exc)
        log.warning("ended %s %s after the executor failed on it", order.action_id, outcome.value)
        await self.publisher.publish_encoded(
            self.publisher.topics.executed, order.action_id, encoded, _executed_headers(order, outcome)
        )


def _executed_headers(order: ExecutionOrder, outcome: ExecutionOutcome) -> Headers:
    """The headers of an outcome (``outcome``: the one the event sent with them says, as the
    ledger records the two together): its type and outcome, and whether its requester asked for
    a webhook (the approval service reads only those), which only the order knows."""
    return executed_headers(outcome, callback=bool(order.decision.request.callback_url))


def _command_of(order: ExecutionOrder, parameters: dict[str, Any], **more: Any) -> Command:
    """The command ``order`` carries, with ``parameters`` (the clear ones, or only what a cleanup needs)."""
    request = order.decision.request
    return Command(
        order.action_id,
        request.action,
        request.resource,
        parameters,
        order.decision.credential_ttl_s,
        request.requester,
        **more,
    )


def _recorded(entry: LedgerEntry) -> tuple[ExecutionOutcome, bytes]:
    """The outcome a finished ledger entry holds, and the event that told it."""
    if entry.outcome is None or entry.executed_event is None:
        raise RuntimeError(f"the ledger entry of {entry.action_id} is finished without an outcome")
    return ExecutionOutcome(entry.outcome), entry.executed_event


def _places(exc: BaseException) -> str:
    """Where ``exc`` was raised, frame by frame (file, line, function: no values, unlike a full traceback)."""
    return " < ".join(f"{f.filename}:{f.lineno} {f.name}" for f in reversed(traceback.extract_tb(exc.__traceback__)))
