"""A Kafka producer whose sender task stopped starts it again, instead of failing or hanging for good.

An aiokafka producer hands its batches to one background task, the sender, and nothing starts
that task again once it ends. It ends on an error it does not expect; aiokafka then keeps the
error, and every later send raises it at once, for good. It also ends quietly on a cancel that
a closing connection leaves in one of its requests (taken for its own stop), with that
request's batches never answered and the broker still marked busy; every later send then
waits forever. Either way the process looks healthy. A short drill on a slow machine met this
after a broker restart: the intake answered 500 to some requests and 202 to others whose
events never left it, for minutes, until the end of the drill.

Here, unless the producer is closing, a stopped sender is started again after a short pause
(growing to 5 s while it keeps stopping): nothing marked busy, the error forgotten, and the
batches it took but never had answered queued again (with their producer id and sequence, so
the broker drops a copy it already holds). An idempotent producer also takes a new producer id,
so the sequence numbers of later batches start again and a batch that failed leaves no gap the
broker would refuse as out of order (Kafka's own clients reset their producer id so). A
transactional producer is left stopped: its transaction failed, and its owner must fence and
start over (the audit writer does, ``AuditWriter.start_over``).

Installed once per process by ``keyturn.bus``, as ``bus.rebootstrap`` is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiokafka.errors import KafkaError
from aiokafka.producer.sender import Sender
from aiokafka.producer.transaction_manager import NO_PRODUCER_EPOCH, NO_PRODUCER_ID, PidAndEpoch

log = logging.getLogger(__name__)

_fail_all = Sender._fail_all
_close = Sender.close
FIRST_PAUSE_S = 0.1
LONGEST_PAUSE_S = 5.0


def sender_stopped(producer: Any) -> bool:
    """Whether ``producer``'s sender task has ended (a started, not closing, aiokafka producer)."""
    task = producer._sender.sender_task
    return task is not None and task.done()


def _stopped(self: Sender, task: asyncio.Task[None]) -> None:
    """aiokafka's handler (pending batches fail when the task died of an error), then the revival."""
    try:
        _fail_all(self, task)
    except AttributeError:  # it fails the batches, then trips on an idempotent producer's (transaction-less) manager
        pass
    if getattr(self, "_keyturn_closing", False) or task is not self._sender_task:
        return
    why = "cancelled" if task.cancelled() else repr(task.exception()) if task.exception() else "ended quietly"
    txn = self._txn_manager
    if txn is not None and txn.transactional_id is not None:
        log.error("a transactional Kafka producer's sender stopped (%s); its owner must start a new one", why)
        if not task.cancelled() and task.exception() is None:  # ended quietly: nothing failed, all would wait
            stopped = KafkaError(f"the transactional producer's sender stopped ({why})")
            self._message_accumulator.fail_all(stopped)
            with contextlib.suppress(AttributeError):  # (no transaction open: nothing more to fail)
                txn.fatal_error(stopped)
        return
    self._message_accumulator._exception = None  # else every later send raises the error the task died of
    pause = min(getattr(self, "_keyturn_pause", FIRST_PAUSE_S / 2) * 2, LONGEST_PAUSE_S)
    self._keyturn_pause = pause
    log.warning("the Kafka producer's sender stopped (%s); starting it again in %.1f s", why, pause)
    asyncio.get_running_loop().call_later(pause, _start_again, self)


def _start_again(self: Sender) -> None:
    if getattr(self, "_keyturn_closing", False):
        return
    txn = self._txn_manager
    if txn is not None:  # idempotent: a new producer id, and sequence numbers from 0 under it
        txn._pid_and_epoch = PidAndEpoch(NO_PRODUCER_ID, NO_PRODUCER_EPOCH)
        txn._pid_waiter = asyncio.get_running_loop().create_future()
        txn._sequence_numbers.clear()
    self._in_flight.clear()  # what the stopped task left marked busy
    self._muted_partitions.clear()
    queued = self._message_accumulator
    for batch in [b for b in queued._pending_batches if not b.future.done()]:
        queued.reenqueue(batch)  # drained by the stopped task, never answered: sent again (its id and sequence kept)
    self._sender_task = asyncio.get_running_loop().create_task(self._sender_routine())
    self._sender_task.add_done_callback(_steady_after(self))  # before the handler reads the pause
    self._sender_task.add_done_callback(self._fail_all)


def _steady_after(self: Sender) -> Any:
    """A sender that runs a while again earns back the short first pause."""
    started = asyncio.get_running_loop().time()

    def forget(task: asyncio.Task[None]) -> None:
        if asyncio.get_running_loop().time() - started > 60:
            self._keyturn_pause = FIRST_PAUSE_S / 2

    return forget


async def _closing(self: Sender) -> None:
    self._keyturn_closing = True
    await _close(self)


def install() -> None:
    """Give every aiokafka producer of this process the revival (idempotent)."""
    Sender._fail_all = _stopped
    Sender.close = _closing
