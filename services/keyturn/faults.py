"""Which failures pass by themselves, waiting them out, and background work that outlives them.

A PostgreSQL restart, a broker restart or a dropped connection is *transient*: the same work
succeeds once the server is back, so the work is retried in place — an event is never skipped
or acknowledged before it was handled. Anything else is a fault of the work itself (a bug, a
refused statement) and retrying it would only stall everything queued behind it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

log = logging.getLogger(__name__)

T = TypeVar("T")

# What a database restart or outage raises: a connection the restart killed (AdminShutdown and
# friends are OperationalErrors), a pool with no live connection to hand out (PoolTimeout), a
# connection already closed under us (InterfaceError). All pass once the database is back.
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (psycopg.OperationalError, psycopg.InterfaceError)


class Unavailable(Exception):
    """A dependency did not answer within the caller's patience; the same work succeeds later."""


def is_transient(exc: BaseException) -> bool:
    """True for failures that go away when a server comes back (database, broker, network)."""
    if isinstance(exc, (Unavailable, *DATABASE_UNAVAILABLE)):
        return True
    if isinstance(exc, (KafkaConnectionError, KafkaTimeoutError)):
        return True
    if isinstance(exc, KafkaError):
        return bool(getattr(exc, "retriable", False))
    return isinstance(exc, (ConnectionError, TimeoutError, asyncio.TimeoutError))


def stray_cancel(exc: BaseException) -> bool:
    """A ``CancelledError`` nobody asked the current task for: a library cancelled a future the
    task awaited, as the Kafka client does to a request whose connection closed under it. That
    is a transient failure, not a stop: taken for one, the audit service, starting while the
    broker restarted, shut itself down in a fault drill. A cancel the task was asked for (a
    shutdown, an ``asyncio.timeout``) is counted by ``Task.cancelling`` and stays a cancel."""
    task = asyncio.current_task()
    return isinstance(exc, asyncio.CancelledError) and task is not None and task.cancelling() == 0


async def until_done(
    work: Callable[[], Awaitable[T]],
    what: str,
    *,
    first_wait_s: float = 0.2,
    max_wait_s: float = 5.0,
    give_up_after_s: float | None = None,
) -> T:
    """``await work()``, again after a growing pause while it fails transiently; other errors raise.
    With ``give_up_after_s``, the transient failure raises too once that long has passed."""
    loop = asyncio.get_running_loop()
    give_up = None if give_up_after_s is None else loop.time() + give_up_after_s
    wait = first_wait_s
    while True:
        try:
            return await work()
        except BaseException as exc:  # a stray cancel is a BaseException; every other one raises
            if not (is_transient(exc) or stray_cancel(exc)) or (give_up is not None and loop.time() >= give_up):
                raise
            why = str(exc) or "cancelled under it"
            log.warning("%s failed (%s: %s); trying again in %.1fs", what, type(exc).__name__, why, wait)
        await asyncio.sleep(wait if give_up is None else max(0.0, min(wait, give_up - loop.time())))
        wait = min(wait * 2, max_wait_s)


async def supervised(
    name: str, work: Callable[[], Awaitable[None]], *, first_delay_s: float = 0.5, max_delay_s: float = 15.0
) -> None:
    """Run ``work`` for as long as the service runs: whatever it raises is logged and it starts again.

    A background loop that dies takes a part of the service with it (the intake's status
    follower, its submissions consumer) while HTTP keeps answering, so nobody notices;
    restarting it is always better. The
    delay grows while it keeps failing, and resets once it ran for a minute.
    """
    loop = asyncio.get_running_loop()
    delay = first_delay_s
    while True:
        started = loop.time()
        try:
            await work()
            log.error("%s stopped on its own; starting it again in %.1fs", name, delay)
        except asyncio.CancelledError as exc:
            if not stray_cancel(exc):
                raise
            log.warning("%s was cancelled under it (a connection closing); starting it again in %.1fs", name, delay)
        except Exception:
            log.exception("%s failed; starting it again in %.1fs", name, delay)
        if loop.time() - started > 60:
            delay = first_delay_s
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_delay_s)


STUCK_AFTER_S = 30.0
"""How long a batch may stay in a service's hands before ``reported_while_stuck`` says where it waits."""


async def reported_while_stuck(what: str, work: Coroutine[Any, Any, T], *, after_s: float = STUCK_AFTER_S) -> T:
    """``await work``; while it has run longer than ``after_s``, log a warning each ``after_s``
    naming ``what`` and where it waits, and where this process's other tasks wait (``waiting_places``).

    Every wait of the services is meant to end: a transient fault is retried and logged each
    time, a command has its timeout. A wait that logs nothing (a batch that neither finishes
    nor fails) stalls everything queued behind it, silently; this makes it say where it is.
    The chain is followed from ``work`` itself: from its task's root it can break at an
    awaitable that hides the coroutine it wraps (a faust agent awaits its actor that way)."""
    loop = asyncio.get_running_loop()
    started = loop.time()

    def report() -> None:  # a timer, not a task: every batch of every stage pays for it
        log.warning(
            "%s is still in hand after %.0fs; where it waits: %s; where this process waits: %s",
            what,
            loop.time() - started,
            " > ".join(_place(f) for f in _ours(_await_chain(work))) or "(not in its code)",
            waiting_places(),
        )
        timer[0] = loop.call_later(after_s, report)

    timer = [loop.call_later(after_s, report)]
    try:
        return await work
    finally:
        timer[0].cancel()


def waiting_places() -> str:
    """Where the running tasks are suspended: each task's chain of awaits through this project's
    code, and the innermost place it waits in whatever code (``dir/file:line function > …``),
    each distinct chain once with the number of tasks on it. Code locations only, never a
    value: safe to log whatever the tasks hold."""
    chains: Counter[str] = Counter()
    for task in asyncio.all_tasks():
        if task is asyncio.current_task() or task.done():
            continue
        if ours := _ours(_await_chain(task.get_coro())):
            chains[" > ".join(_place(f) for f in ours)] += 1
    return "; ".join(f"{count}x {chain}" for chain, count in chains.most_common()) or "(no task in its code)"


_OURS = str(Path(__file__).parent)


def _ours(frames: list[Any]) -> list[Any]:
    """The frames of this project's code in a chain, and its innermost frame whatever its code;
    nothing when no frame is ours."""
    ours = [f for f in frames if _OURS in f.f_code.co_filename]
    if ours and frames[-1] is not ours[-1]:
        ours.append(frames[-1])
    return ours


def _place(frame: Any) -> str:
    path = Path(frame.f_code.co_filename)
    return f"{path.parent.name}/{path.name}:{frame.f_lineno} {frame.f_code.co_name}"


def _await_chain(awaitable: Any) -> list[Any]:
    """The frames of each coroutine, generator or async generator ``awaitable`` awaits, outermost first.

    ``Task.get_stack`` gives a suspended coroutine's outermost frame only; the chain below it
    is followed through ``cr_await`` (and its generator and async-generator counterparts)."""
    frames: list[Any] = []
    while awaitable is not None and len(frames) < 64:
        frame = next((f for a in ("cr_frame", "gi_frame", "ag_frame") if (f := getattr(awaitable, a, None))), None)
        if frame is None:
            break
        frames.append(frame)
        awaitable = next(
            (n for a in ("cr_await", "gi_yieldfrom", "ag_await") if (n := getattr(awaitable, a, None)) is not None),
            None,
        )
    return frames
