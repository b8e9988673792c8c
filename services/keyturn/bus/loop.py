"""The one consumption loop every service runs.

A *source* hands out batches of messages and commits a batch once told it was handled
(``KafkaSource``, a plain consumer; ``follow_in_group`` runs one as a member of a group).
A *stage* says what a service does with them. The loop, written once here, keeps every
delivery guarantee:

- **at least once**: a batch is committed only after every message of it was handled,
  dead-lettered or (not its owner's) skipped; a crash before that redelivers the batch;
- **skipped before decoding**: a record whose headers say the stage has no part in it
  (``wants``, from ``bus.headers``) is not decoded at all; one without headers is;
- **per-key order**: messages of one key (one action) are handled one after another, in the
  order they came; different keys of a batch run concurrently (their round trips overlap);
  a stage that handles the whole batch at once (``handle_batch``) gets it in arrival order;
  a stage that handles a batch together when it can (``handle_many``: one query, one
  statement, one produce for the batch) falls back to ``handle`` per event, in per-key order,
  when the batch fails for good, so each failing event is dead-lettered and ended alone;
- **a transient fault is waited out** (``keyturn.faults.until_done``): a database or broker
  restart delays the batch, never skips it;
- **undecodable input is dead-lettered once**, by its topic's owner
  (``Topics.dead_letter_owner``); other readers skip it;
- **a non-transient handler failure still ends the action**: the event is dead-lettered as
  this service's record (``by_service``), then the stage's ``on_failure`` publishes the
  terminal event its stage allows (docs/architecture.md, "When a handler fails").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

from keyturn.bus.codec import UndecodableMessage, registry
from keyturn.bus.publisher import Publisher
from keyturn.bus.topics import carry_offsets
from keyturn.faults import reported_while_stuck, until_done

log = logging.getLogger(__name__)


class Message(Protocol):
    """A consumed record, as both transports give it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class Source(Protocol):
    def batches(self) -> AsyncIterator[Sequence[Message]]:
        """Batches of messages, in partition order, for as long as the service runs."""
        ...

    async def handled(self, batch: Sequence[Message]) -> None:
        """Called once every message of ``batch`` was dealt with: commit its offsets."""
        ...


class Refused(UndecodableMessage):
    """Input a stage refuses, with what the dead letter may say about it (never its bytes)."""

    def __init__(
        self, error_type: str, reason: str, *, principal: str | None = None, problems: Sequence[str] = ()
    ) -> None:
        super().__init__(error_type, reason)
        self.principal = principal
        self.problems = tuple(problems)


Handler = Callable[[Any, Any], Awaitable[None]]
BatchHandler = Callable[[list[tuple[Any, Any]]], Awaitable[None]]
FailureHook = Callable[[Any, Any, Exception], Awaitable[None]]


def decode_event(message: Message, accept: tuple[type, ...]) -> Any:
    """The event a message holds; ``UndecodableMessage`` when it is not one of ``accept``."""
    event = registry().decode_event(message.value or b"")  # no value: refused as truncated
    if not isinstance(event, accept):
        raise UndecodableMessage("unexpected_type", f"{type(event).__name__} does not belong on {message.topic}")
    return event


@dataclass
class Stage:
    """What one service does with what it consumes.

    ``handle(event, message)`` per event (per-key order, keys concurrent), or
    ``handle_batch([(event, message), ...])`` for the whole batch in arrival order (the audit
    chain, the intake's status table). ``handle_many`` (with ``handle``) takes the batch's
    events together, in arrival order; when it fails for good, the batch is handled again per
    event by ``handle``, so it must be idempotent per event (every stage's is). ``decode`` may
    raise ``UndecodableMessage`` (or ``Refused``); the default decodes an event of an
    ``accept``ed type. ``wants(message)`` False skips a record before it is decoded.
    ``on_failure`` runs after a non-transient failure of ``handle`` was dead-lettered, to end
    the action.
    """

    publisher: Publisher
    accept: tuple[type, ...] = ()
    handle: Handler | None = None
    handle_batch: BatchHandler | None = None
    decode: Callable[[Message], Any] | None = None
    on_failure: FailureHook | None = None
    handle_many: BatchHandler | None = None
    wants: Callable[[Message], bool] | None = None

    def __post_init__(self) -> None:
        if (self.handle is None) == (self.handle_batch is None):
            raise ValueError(
                "a stage handles events one by one or in batches: give exactly one of handle, handle_batch"
            )
        if self.handle_many is not None and self.handle is None:
            raise ValueError("handle_many falls back to handle: give handle too")

    @property
    def service(self) -> str:
        return self.publisher.service


OVERLAP_AFTER_S = 0.5


async def run(source: Source, stage: Stage, *, in_flight: int = 1, overlap_after_s: float = OVERLAP_AFTER_S) -> None:
    """Consume ``source`` with ``stage`` until cancelled (see the module docstring).

    With ``in_flight`` > 1, a batch still in hand after
    ``overlap_after_s`` no longer holds up the next: the executor's commands can run for
    minutes, and one of them must not hold up every other action. Batches that take
    milliseconds go one after another as before, so what arrives meanwhile makes the next batch
    (taken at once, the batches were smaller and cost 8 % more CPU per action in the flood). A
    batch holding a key (an action) that a batch still in hand holds waits for it, so one
    action's events stay in order; each batch is acknowledged once handled, and the offsets
    committed stop at the oldest one not yet handled (``KafkaSource``'s queue per partition),
    so a crash redelivers it and everything after."""
    if in_flight <= 1:
        async for batch in source.batches():
            await handle_batch(batch, stage)
            await source.handled(batch)
        return
    if not isinstance(source, KafkaSource):
        raise ValueError("only a Kafka source commits batches handled out of order")
    await _Overlapping(source, stage, in_flight, overlap_after_s).run()


class _Overlapping:
    """``run`` with up to ``limit`` batches in hand at once."""

    def __init__(self, source: Source, stage: Stage, limit: int, overlap_after_s: float) -> None:
        self.source = source
        self.stage = stage
        self.slots = asyncio.Semaphore(limit)
        self.overlap_after_s = overlap_after_s
        self.holding: dict[Any, asyncio.Task[None]] = {}  # key -> the last batch in hand that holds it
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        try:
            async for batch in self.source.batches():
                await self.slots.acquire()
                self._raise_failures()
                keys = {message.key for message in batch}
                before = {task for key in keys if (task := self.holding.get(key)) is not None and not task.done()}
                task = asyncio.create_task(self._handle(batch, before))
                self.tasks.add(task)
                task.add_done_callback(self._forget)
                for key in keys:
                    self.holding[key] = task
                await asyncio.wait({task}, timeout=self.overlap_after_s)  # most batches end well within
        finally:
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _handle(self, batch: Sequence[Message], before: set[asyncio.Task[None]]) -> None:
        try:
            if before:  # the same action in an earlier batch still in hand: after it
                await asyncio.wait(before)
            await handle_batch(batch, self.stage)
            await self.source.handled(batch)
        finally:
            self.slots.release()

    def _forget(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            return  # kept: ``_raise_failures`` raises it in the loop
        self.tasks.discard(task)
        for key in [key for key, holder in self.holding.items() if holder is task]:
            del self.holding[key]

    def _raise_failures(self) -> None:
        """A batch's handling never raises (``handle_batch`` dead-letters); if one did, stop as
        ``run`` would have: its events stay unacknowledged and come again."""
        for task in self.tasks:
            if task.done() and not task.cancelled() and (error := task.exception()) is not None:
                raise error


async def handle_batch(batch: Sequence[Message], stage: Stage) -> None:
    """Decode, dead-letter and handle one batch; returns once it may be committed. One still in
    hand after ``STUCK_AFTER_S`` says so, and where it waits (``reported_while_stuck``)."""
    first = batch[0] if batch else None
    where = f" from {first.topic}:{first.partition}:{first.offset}" if first is not None else ""
    await reported_while_stuck(f"{stage.service}: a batch of {len(batch)}{where}", _handle_batch(batch, stage))


async def _handle_batch(batch: Sequence[Message], stage: Stage) -> None:
    decoded: list[tuple[Any, Any]] = []
    wants = stage.wants
    for message in batch:
        if wants is not None and not wants(message):
            continue
        event = await _decoded(message, stage)
        if event is not None:
            decoded.append((event, message))
    if stage.handle_batch is not None:
        if decoded:
            handle = stage.handle_batch
            await until_done(lambda: handle(decoded), f"{stage.service}: handling a batch of {len(decoded)}")
        return
    if stage.handle_many is not None and decoded:
        many = stage.handle_many
        try:
            await until_done(lambda: many(decoded), f"{stage.service}: handling a batch of {len(decoded)}")
            return
        except Exception:  # each event again on its own: the failing ones are dead-lettered and ended alone
            log.exception("%s could not handle a batch of %d; handling each on its own", stage.service, len(decoded))
    by_key: dict[Any, list[tuple[Any, Any]]] = {}
    for event, message in decoded:
        by_key.setdefault(message.key, []).append((event, message))
    await asyncio.gather(*(_in_order(group, stage) for group in by_key.values()))


#: A record at least this large is decoded in a worker thread: a stage's decoder may validate and
#: mask what it reads (the intake's submissions), which for a large record crafted to be costly
#: (thousands of phone-number-like values) takes seconds the loop's heartbeats and requests need.
DECODE_IN_THREAD_BYTES = 16 * 1024


async def _decoded(message: Message, stage: Stage) -> Any | None:
    def decode() -> Any:
        return stage.decode(message) if stage.decode is not None else decode_event(message, stage.accept)

    async def decoded() -> Any:
        if len(message.value or b"") >= DECODE_IN_THREAD_BYTES:
            return await asyncio.to_thread(decode)
        return decode()

    try:  # a decoder that needs a server (the intake's token keys) waits it out like a handler
        return await until_done(
            decoded, f"{stage.service}: reading {message.topic}:{message.partition}:{message.offset}"
        )
    except UndecodableMessage as error:
        if stage.publisher.topics.dead_letter_owner(message.topic) != stage.service:
            log.warning(
                "skipping undecodable %s:%s:%s (its owner dead-letters it): %s",
                message.topic,
                message.partition,
                message.offset,
                error.reason,
            )
            return None
        await dead_letter(stage.publisher, message, error)
        return None


async def _in_order(events: list[tuple[Any, Any]], stage: Stage) -> None:
    assert stage.handle is not None
    handle = stage.handle
    for event, message in events:
        where = f"{message.topic}:{message.partition}:{message.offset}"
        try:
            await until_done(partial(handle, event, message), f"{stage.service}: handling {where}")
        except Refused as refused:  # the stage's own verdict on the input: its refusal, not a failure
            await dead_letter(stage.publisher, message, refused)
        except Exception as exc:
            log.exception("%s could not handle %s", stage.service, where)
            failure = UndecodableMessage("handler_failed", f"{stage.service} failed on it: {type(exc).__name__}: {exc}")
            await dead_letter(stage.publisher, message, failure, by_service=True)
            if stage.on_failure is not None:
                await _end_action(stage.on_failure, event, message, exc, stage.service, where)


async def _end_action(hook: FailureHook, event: Any, message: Any, exc: Exception, service: str, where: str) -> None:
    """The stage's terminal event for a failed one; waits out transient faults, logs anything else."""
    try:
        await until_done(lambda: hook(event, message, exc), f"{service}: ending the action of {where}")
    except Exception:
        log.exception("%s could not end the action of %s after its failure; it stays dead-lettered", service, where)


def tally(outcomes: Iterable[str]) -> str:
    """``allowed 55, denied 6, needs_approval 3``: a batch's outcomes, for the one log line a
    stage writes per batch (a line per action cost more than handling it; each action's outcome
    is on its topic and in the audit)."""
    return ", ".join(f"{outcome} {count}" for outcome, count in sorted(Counter(outcomes).items()))


async def dead_letter(
    publisher: Publisher, message: Message, error: UndecodableMessage, *, by_service: bool = False
) -> None:
    """Quarantine ``message`` with ``error``'s reason, waiting out a broker outage."""
    principal = error.principal if isinstance(error, Refused) else None
    problems = error.problems if isinstance(error, Refused) else ()
    await until_done(
        lambda: publisher.dead_letter(
            source_topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            key=bytes(message.key) if message.key is not None else None,
            payload=bytes(message.value or b""),
            error=error,
            by_service=by_service,
            principal=principal,
            problems=problems,
        ),
        f"{publisher.service}: dead-lettering {message.topic}:{message.partition}:{message.offset}",
    )


FETCH_MIN_BYTES = 64 * 1024


def held_fetches(wait_ms: int) -> dict[str, int]:
    """Consumer options for a follower that can wait ``wait_ms`` for its next batch: the broker
    holds each fetch until ``FETCH_MIN_BYTES`` are there or ``wait_ms`` passed, instead of
    answering it at once with the one message that arrived. With the defaults (1 byte), a
    consumer under load made a fetch round trip per message or two: a fifth of the intake's
    and the audit's CPU, and the broker's share of it besides. While nothing comes, a
    ``KafkaSource`` asks for a long poll instead (``FetchHolding``)."""
    return {"fetch_min_bytes": FETCH_MIN_BYTES, "fetch_max_wait_ms": wait_ms}


LONG_POLL_MS = 500
"""How long the broker holds a quiet follower's fetch (Kafka's own default fetch wait); the
first record to arrive answers it at once."""


class FetchHolding:
    """A consumer made with ``held_fetches``, switched between two ways of fetching.

    - *Held* while records come: the broker answers a fetch at ``FETCH_MIN_BYTES`` or after the
      follower's wait, so a batch is one fetch rather than one per record or two.
    - *Long poll* once a held fetch or two came back empty: the broker answers at the first
      record, or after ``LONG_POLL_MS`` (the held wait, if longer).

    A follower at rest used to send a held fetch every wait: 50 a second at 20 ms, each a
    request and an answer naming every partition it follows. That was 5–7 % of a core in the
    intake and in the approval service each, with nothing arriving, and a third of the idle
    broker's CPU besides. Its first record after a quiet spell also waited out a hold; now it
    is handed on at once.

    aiokafka reads both settings from its fetcher each time it builds a fetch
    (``Fetcher._get_actions_per_node``), and offers no public way to change them on a running
    consumer, so they are set there. ``tests/unit/test_fetch_holding.py`` checks that aiokafka
    still reads them there. A consumer made without held fetches is left as it is, and so is
    one that is not aiokafka's (the tests' in-memory consumers)."""

    def __init__(self, consumer: Any) -> None:
        self.consumer = consumer
        self.quiet = False  # a consumer starts as it was made
        self._as_made: tuple[Any, int, int] | None = None  # its fetcher, min bytes and wait ms
        self._looked = False

    def _held(self) -> tuple[Any, int, int] | None:
        """The started consumer's fetcher, min bytes and wait as made, when made with held
        fetches; else None."""
        if not self._looked:
            fetcher = getattr(self.consumer, "_fetcher", None)
            if fetcher is None:
                return None  # not started, or not aiokafka's
            self._looked = True
            min_bytes = getattr(fetcher, "_fetch_min_bytes", None)
            wait_ms = getattr(fetcher, "_fetch_max_wait_ms", None)
            if isinstance(min_bytes, int) and isinstance(wait_ms, int) and min_bytes > 1:
                self._as_made = (fetcher, min_bytes, wait_ms)
        return self._as_made

    def patience_ms(self, wait_ms: int) -> int:
        """How long to wait for records before going quiet: two held fetches and a margin, never
        more than ``wait_ms`` (what the follower waits at most)."""
        held = self._held()
        return wait_ms if self.quiet or held is None else min(wait_ms, 2 * held[2] + 10)

    def nothing_came(self) -> None:
        """Ask for a long poll: the next fetch is answered at the first record."""
        if not self.quiet and (held := self._held()) is not None:
            fetcher, _, wait_ms = held
            fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms = 1, max(LONG_POLL_MS, wait_ms)
            self.quiet = True

    def records_came(self) -> None:
        """Ask for held fetches again, as the consumer was made."""
        if self.quiet and (held := self._held()) is not None:
            fetcher, min_bytes, wait_ms = held
            fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms = min_bytes, wait_ms
            self.quiet = False


def group_member(session_timeout_s: float, rebalance_timeout_s: float | None = None) -> dict[str, int]:
    """Consumer options for a member of a consumer group, as the stream workers have them
    (``bus.worker.make_app``): a killed member's partitions move on after its session (three
    missed heartbeats), and a restarted broker's topics are seen within 10 s, where a member that
    joined while they were not yet listed would otherwise wait for its next metadata refresh.
    ``rebalance_timeout_s``: how long the group waits for this member to rejoin (it finishes
    the batches in hand first, ``KafkaSource.give_up``); its session by default."""
    options = {
        "session_timeout_ms": int(session_timeout_s * 1000),
        "heartbeat_interval_ms": int(session_timeout_s * 1000 / 3),
        "metadata_max_age_ms": 10_000,
    }
    if rebalance_timeout_s is not None:
        options["rebalance_timeout_ms"] = int(rebalance_timeout_s * 1000)
    return options


@dataclass
class _Handed:
    """A batch's part of one partition: where the partition resumes once the batch is handled."""

    next_offset: int
    done: bool = False


class _KafkaBatch(list):
    """A batch as ``KafkaSource`` hands it out: its records, and its place in each partition's queue."""

    marks: list[tuple[tuple[str, int], _Handed]]


class Pace:
    """Records handed out over the last ``span_s`` seconds, per second: what a window of
    gathering may expect to bring."""

    def __init__(self, span_s: float = 1.0) -> None:
        self.span_s = span_s
        self._seen: deque[tuple[float, int]] = deque()
        self._count = 0

    def add(self, now: float, count: int) -> None:
        if count:
            self._seen.append((now, count))
            self._count += count

    def per_second(self, now: float) -> float:
        while self._seen and self._seen[0][0] <= now - self.span_s:
            self._count -= self._seen.popleft()[1]
        return self._count / self.span_s


# a batch waits out its window only when the pace of the last second brings at least this many
# more records within it: a trickle (an agent at a human pace) is handed on at once, where it
# waited the whole window for nothing (at 10 actions/s the policy's 20 ms were more than half of
# request→decided, bench/README.md, sixteenth round); from 50/s on (a 20 ms window) every batch
# gathers as before, so a flood's batches and CPU per action are unchanged
GATHER_WHEN_EXPECTED = 1.0


def _records(got: dict[Any, list[Any]]) -> list[Any]:
    """The records of one ``getmany`` answer (a list per partition), in one list."""
    return [message for messages in got.values() for message in messages]


class KafkaSource:
    """A started consumer (auto-commit off) in batches; commits each batch once handled.

    Batches may be handled out of order (``run``'s ``in_flight``): each partition keeps its
    batches in the order they were handed out, and a commit reaches no further than the oldest
    one not yet handled, so a crash redelivers it and everything after. A rebalance that takes
    a partition (``give_up``, from the consumer's rebalance listener) drops its queue once the
    batches in hand had their time: one still in hand commits nothing there, and the
    partition's next owner reads it again.

    ``after_commit`` gets the next offset per (topic, partition) that the commit covered.
    """

    def __init__(
        self,
        consumer: Any,
        *,
        max_records: int = 500,
        wait_ms: int = 1000,
        gather_ms: int = 0,
        commit_every_s: float = 0.0,
        after_commit: Callable[[dict[tuple[str, int], int]], None] | None = None,
    ) -> None:
        self.consumer = consumer
        self.max_records = max_records
        self.wait_ms = wait_ms
        self.gather_ms = gather_ms
        self.commit_every_s = commit_every_s
        self.after_commit = after_commit
        self._open: dict[tuple[str, int], deque[_Handed]] = {}
        self._committing = asyncio.Lock()
        self._progress = asyncio.Event()
        self._due: dict[tuple[str, int], int] = {}  # handled, not yet committed
        self._committed_at = 0.0
        self._later: asyncio.TimerHandle | None = None
        self._flushes: set[asyncio.Task[None]] = set()
        self._pace = Pace()
        self._fetching = FetchHolding(consumer)

    async def batches(self) -> AsyncIterator[Sequence[Message]]:
        """Whatever arrived, as soon as anything did; with ``gather_ms``, what arrives within
        that long after the first message too (up to ``max_records``): a follower whose reader
        can wait a moment (a status, a console page) then writes one statement where it wrote
        several, and the events of one action often land in the same batch. The window is
        waited only at a pace that fills it (``GATHER_WHEN_EXPECTED``)."""
        while True:
            waiting_ms = self._fetching.patience_ms(self.wait_ms)
            batch = _records(await self.consumer.getmany(timeout_ms=waiting_ms, max_records=self.max_records))
            if not batch:
                self._fetching.nothing_came()
                continue
            self._fetching.records_came()
            now = time.monotonic()
            self._pace.add(now, len(batch))
            if self.gather_ms and self._pace.per_second(now) * self.gather_ms / 1000 >= GATHER_WHEN_EXPECTED:
                until = now + self.gather_ms / 1000
                while len(batch) < self.max_records and (left := until - time.monotonic()) > 0:
                    more = _records(
                        await self.consumer.getmany(
                            timeout_ms=max(1, int(left * 1000)), max_records=self.max_records - len(batch)
                        )
                    )
                    self._pace.add(time.monotonic(), len(more))
                    batch += more
            yield self._handing_out(batch)

    def _handing_out(self, records: list[Any]) -> _KafkaBatch:
        batch = _KafkaBatch(records)
        batch.marks = []
        for partition, next_offset in next_offsets(records).items():
            mark = _Handed(next_offset)
            self._open.setdefault(partition, deque()).append(mark)
            batch.marks.append((partition, mark))
        return batch

    async def give_up(self, partitions: Iterable[TopicPartition], patience_s: float) -> None:
        """Partitions a rebalance takes: their batches still in hand get up to ``patience_s`` to
        be handled and committed (each commits itself once handled); what is left then commits
        nothing, and the partitions' next owner reads it again."""
        taken = [(tp.topic, tp.partition) for tp in partitions]
        deadline = time.monotonic() + patience_s
        while any(self._open.get(partition) for partition in taken) and (left_s := deadline - time.monotonic()) > 0:
            self._progress.clear()
            try:
                await asyncio.wait_for(self._progress.wait(), left_s)
            except TimeoutError:
                break
        if left := sum(len(self._open.get(partition) or ()) for partition in taken):
            log.warning("a rebalance took %d batch(es) still in hand; their records are read again", left)
        for partition in taken:
            self._open.pop(partition, None)
        await self.flush()  # what was handled, while the partitions are still this member's

    def _resumable(self, batch: Sequence[Message]) -> dict[tuple[str, int], int]:
        """Where each of the batch's partitions may resume now that it was handled: past the
        batches handled in a row from the oldest still queued (none, while an older one is in
        hand). A batch that did not come from ``batches`` commits its own offsets."""
        marks = getattr(batch, "marks", None)
        if marks is None:
            return next_offsets(batch)
        for _, mark in marks:
            mark.done = True
        resumable: dict[tuple[str, int], int] = {}
        for partition, _ in marks:
            queue = self._open.get(partition)
            while queue and queue[0].done:
                resumable[partition] = queue.popleft().next_offset
        return resumable

    async def handled(self, batch: Sequence[Message]) -> None:
        """Commit where the batch's partitions may resume, or, with ``commit_every_s``, once that
        long has passed since the last commit (a timer commits what is left): a commit is a
        request and a record on the broker, and a batch of a stream worker under a trickle is a
        few records. What is handled but not yet committed is read again after a crash."""
        async with self._committing:  # one at a time: a later commit never lands before an earlier
            self._due.update(self._resumable(batch))
            if time.monotonic() - self._committed_at >= self.commit_every_s:
                await self._commit_due()
            elif self._due and self._later is None:
                self._later = asyncio.get_running_loop().call_later(self.commit_every_s, self._flush_later)
        self._progress.set()  # a rebalance may be waiting for it (``give_up``)

    async def flush(self) -> None:
        """Commit what was handled and is not committed yet."""
        async with self._committing:
            await self._commit_due()

    async def close(self) -> None:
        """A stopping member: commit what is due, and no timer after."""
        if self._later is not None:
            self._later.cancel()
            self._later = None
        await self.flush()

    def _flush_later(self) -> None:
        self._later = None
        task = asyncio.ensure_future(self.flush())
        self._flushes.add(task)
        task.add_done_callback(self._flushed)

    def _flushed(self, task: asyncio.Task[None]) -> None:
        self._flushes.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            # the next batch's commit covers these offsets; without one they are read again
            log.warning("a timed commit failed: %s: %s", type(error).__name__, error)

    async def _commit_due(self) -> None:
        due, self._due = self._due, {}
        self._committed_at = time.monotonic()
        await self._commit(due)

    async def _commit(self, handed: dict[tuple[str, int], int]) -> None:
        if not handed:
            return
        try:
            # only the partitions the batch came from: a bare commit() writes an offset for every
            # assigned partition (96 for the audit), each one a record the broker appends
            await self.consumer.commit({TopicPartition(t, p): offset for (t, p), offset in handed.items()})
        except (CommitFailedError, IllegalStateError) as lost:
            # a rebalance took the batch's partitions while it was handled: their next owner reads
            # the batch again (every stage is idempotent per event), and this consumer rejoins on
            # its next fetch. Raising would restart the whole consumer, and its leaving the group
            # would rebalance the others again.
            log.warning(
                "a rebalance took %d partition(s) before their commit; their records are read again: %s",
                len(handed),
                lost,
            )
            return
        if self.after_commit is not None:
            self.after_commit(handed)


def next_offsets(batch: Iterable[Message]) -> dict[tuple[str, int], int]:
    """The offset to resume from, per (topic, partition) the batch holds records of."""
    offsets: dict[tuple[str, int], int] = {}
    for m in batch:
        key = (m.topic, m.partition)
        offsets[key] = max(offsets.get(key, 0), m.offset + 1)
    return offsets


REJOIN_MARGIN_S = 2.0  # what a member keeps of the group's rebalance wait for rejoining itself
GROUP_COMMIT_EVERY_S = 1.0  # a group member's commits, at most (what the stream framework did)
CARRY_TIMEOUT_S = 60.0  # taking over an old group's offsets; past it the caller starts over (supervised)
_carried: set[str] = set()  # groups that took over their old group's offsets in this process


JOINED = "consuming"  # logged "<group>: consuming N partition(s)" each time a member is assigned its share


class _HandingOver(ConsumerRebalanceListener):
    """A member's rebalance listener: partitions taken from it finish what is in hand first."""

    def __init__(self, group: str, source: KafkaSource, patience_s: float) -> None:
        self.group = group
        self.source = source
        self.patience_s = patience_s

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.source.give_up(revoked, self.patience_s)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("%s: %s %d partition(s)", self.group, JOINED, len(assigned))


async def follow_in_group(
    bootstrap: str,
    group: str,
    topics: Sequence[str],
    stage: Stage,
    *,
    session_timeout_s: float,
    rebalance_timeout_s: float | None = None,
    carried_from: str | None = None,
    max_records: int = 500,
    gather_ms: int = 0,
    fetch_wait_ms: int | None = None,
    in_flight: int = 1,
) -> None:
    """Consume ``topics`` with ``stage`` as a member of ``group`` (a plain consumer through the
    one loop, ``run``), until cancelled.

    ``carried_from``: the group these topics were consumed in before; a group with no offsets
    yet starts where that one stopped (``bus.topics.carry_offsets``), once per process.
    ``gather_ms``: what arrives that long after a batch's first record joins it;
    ``fetch_wait_ms``: the broker holds a fetch that long for more (``held_fetches``), for a
    follower that can wait. A rebalance waits for the batches in hand up to what the group's
    wait for this member (``rebalance_timeout_s``) leaves once the member learnt of it and
    before it must rejoin, then moves their partitions.
    """
    if carried_from is not None and group not in _carried:
        carrying = carry_offsets(bootstrap, carried_from, group, tuple(topics))
        if carried := await asyncio.wait_for(carrying, CARRY_TIMEOUT_S):
            log.info("%s took over the offsets of %d partition(s) from %s", group, carried, carried_from)
        _carried.add(group)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **group_member(session_timeout_s, rebalance_timeout_s),
        **(held_fetches(fetch_wait_ms) if fetch_wait_ms else {}),
    )
    source = KafkaSource(
        consumer, max_records=max_records, wait_ms=1000, gather_ms=gather_ms, commit_every_s=GROUP_COMMIT_EVERY_S
    )
    # the group waits ``rebalance_timeout_s`` from the rebalance's start; a member learns of it at
    # its next heartbeat (a third of the session later at most) and must rejoin within the rest,
    # or it is dropped and its rejoining starts another rebalance
    heartbeat_s = session_timeout_s / 3
    patience_s = max(0.0, (rebalance_timeout_s or session_timeout_s) - heartbeat_s - REJOIN_MARGIN_S)
    try:
        await consumer.start()
        consumer.subscribe(list(topics), listener=_HandingOver(group, source, patience_s))
        await run(source, stage, in_flight=in_flight)
    finally:
        try:
            await source.close()
        except Exception as exc:  # the broker away: what was handled since the last commit is read again
            log.warning("%s: the last commit failed: %s: %s", group, type(exc).__name__, exc)
        await consumer.stop()
