"""The load: an agent submitting a mix of actions over HTTP, and a scripted approver answering
the ones that need approval through the approval API — the same calls `keyturn approve` makes.

The mix (by submission number, so every run sends the same sequence): 85 % allowed reads
(noop executor), 10 % denied (`secrets.delete`), 5 % needing one approval from `security`
(`iam.role.grant`, approved by human:carol). What each kind submits is ``MIX``, the one place
to change it (for instance when reads get an executor of their own). Every submission carries an
idempotency key, so a retry after a refused connection or a 5xx can never create a second action.

Two ways to submit: one POST per action on keep-alive connections (``submit``), or up to
``batch`` actions per ``POST /v1/actions:batch`` (``submit_batch``). The client is aiohttp:
per request it costs a fraction of what httpx costs, and the generator's CPU is reported apart
from the system's anyway (``bench.machine.CpuMeter``: the bench process is the generator).

Submissions are timed by the wall clock (``time.time()``), the clock the services stamp their
events and their records with, so a latency is the ``decided`` record's timestamp (when the
decision was published) or an event's ``finished_at`` minus the moment the request left the
client.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, TopicPartition

from keyturn.bus.headers import OUTCOME
from keyturn.bus.topics import Topics
from keyturn.config import Settings
from keyturn.identity import issue_token, load_or_create_signing_key

ALLOWED, DENIED, APPROVAL = "allowed", "denied", "approval"
RETRY_STATUSES = {500, 502, 503, 504}


# The scripted approver asks half a second after the decision is on the topic (a person reads
# the message first), then twice as long each time the approval is not open yet. Asking from
# 0.1 s and backing off 1.5x made 7.4 asks per approval under the batched flood, and answering
# them (HTTP 425) was 42 % of the approval service's CPU (bench/README.md).
FIRST_ASK_S = 0.5


def mix_kind(number: int) -> str:
    """The kind of the ``number``-th submission: 17 allowed, 2 denied, 1 approval per 20."""
    slot = number % 20
    if slot == 7:
        return APPROVAL
    if slot in (3, 13):
        return DENIED
    return ALLOWED


# What each kind of submission is: the one place the mix's actions are chosen.
MIX: dict[str, Any] = {
    ALLOWED: lambda number: {
        "action": "read.table",
        "resource": "postgres://staging/analytics/orders",
        "parameters": {
            "columns": ["id", "created_at", "amount", "currency"],
            "limit": 100,
            "row_count": 100,
            "filter": {"region": random.Random(number).choice(["eu", "us", "apac"])},
        },
        "reason": "quarterly churn analysis (benchmark)",
    },
    DENIED: lambda number: {
        "action": "secrets.delete",
        "resource": "vault://staging/kv/bench",
        "parameters": {"name": f"bench/{number}"},
        "reason": "cleanup (benchmark)",
    },
    APPROVAL: lambda number: {
        "action": "iam.role.grant",
        "resource": "iam://staging/roles/analyst",
        "parameters": {"principal": "bob", "role": "analyst"},  # roles the bench creates on its SQL target
        "reason": "onboarding (benchmark)",
    },
}


def submission_body(number: int, run: str) -> dict[str, Any]:
    # letters around the run's random hex: "97720371-14" alone reads as a phone number, and a
    # name that may hold personal data is refused (about one run in forty had such a prefix)
    return {**MIX[mix_kind(number)](number), "idempotency_key": f"bench-{run}-n{number}"}


def mint(settings: Settings, subject: str, acts_for: tuple[str, ...] = ()) -> str:
    key = load_or_create_signing_key(settings.keys_dir)
    return issue_token(
        key,
        subject=subject,
        acts_for=acts_for,
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
        ttl=timedelta(hours=4),
    )


@dataclass
class Submitted:
    number: int
    kind: str
    sent_at: float  # wall clock, first attempt
    answered_at: float
    status: int


@dataclass
class LoadLog:
    """What the client saw: accepted actions, their send times, refusals, votes."""

    accepted: dict[str, Submitted] = field(default_factory=dict)
    refused: Counter = field(default_factory=Counter)  # status or exception name -> count
    retries: int = 0
    votes: dict[str, float] = field(default_factory=dict)  # action id -> wall clock the vote was sent
    vote_refusals: Counter = field(default_factory=Counter)
    answered: set[str] = field(default_factory=set)  # approvals the approver is done with (voted or refused)

    def of_kind(self, kind: str, ids: set[str] | None = None) -> set[str]:
        return {a for a, s in self.accepted.items() if s.kind == kind and (ids is None or a in ids)}


class Agent:
    """The benchmark's agent and its approver, over HTTP/1.1 keep-alive pools."""

    def __init__(
        self,
        settings: Settings,
        *,
        connections: int = 64,
        retry_for_s: float = 0.0,
        desk_trace: aiohttp.TraceConfig | None = None,
    ) -> None:
        self.desk_trace = desk_trace  # hears every approval API call the scripted approver makes
        self.settings = settings
        self.run = uuid.uuid4().hex[:8]
        self.retry_for_s = retry_for_s  # > 0: keep retrying a submission (same key) this long
        self.connections = connections
        self._agent_auth = {"Authorization": f"Bearer {mint(settings, 'agent:bench', ('human:alice',))}"}
        self._approver_auth = {"Authorization": f"Bearer {mint(settings, 'human:carol')}"}
        self._intake: aiohttp.ClientSession | None = None
        self._desk: aiohttp.ClientSession | None = None
        self.log = LoadLog()
        self.next_number = 0
        # (not before, action id, next wait): the earliest due first
        self._to_approve: asyncio.PriorityQueue[tuple[float, str, float]] = asyncio.PriorityQueue()
        self._approvers: list[asyncio.Task] = []
        self._decided: set[str] = set()  # action ids seen on the decided topic
        self._undecided_approvals: set[str] = set()  # needs-approval actions whose decision is not seen yet
        self._asking: set[str] = set()  # approvals an approver task is asking about right now
        # needs-approval decisions of actions the agent never heard back about (the approver answers them too)
        self.unclaimed_approvals: set[str] = set()

    @property
    def intake(self) -> aiohttp.ClientSession:
        """Sessions are made on first use, inside the event loop that uses them."""
        if self._intake is None:
            self._intake = aiohttp.ClientSession(
                base_url=self.settings.intake_url,
                connector=aiohttp.TCPConnector(limit=self.connections, keepalive_timeout=60),
                timeout=aiohttp.ClientTimeout(total=60),
                headers=self._agent_auth,
            )
        return self._intake

    @property
    def desk(self) -> aiohttp.ClientSession:
        if self._desk is None:
            self._desk = aiohttp.ClientSession(
                base_url=self.settings.approval_url,
                connector=aiohttp.TCPConnector(limit=16),
                timeout=aiohttp.ClientTimeout(total=60),
                headers=self._approver_auth,
                trace_configs=[self.desk_trace] if self.desk_trace is not None else None,
            )
        return self._desk

    async def close(self) -> None:
        for task in self._approvers:
            task.cancel()
        await asyncio.gather(*self._approvers, return_exceptions=True)
        for session in (self._intake, self._desk):
            if session is not None:
                await session.close()

    # --- submitting -------------------------------------------------------------------------

    def _accepted(self, action_id: str, number: int, sent_at: float, status: int) -> None:
        kind = mix_kind(number)
        self.log.accepted[action_id] = Submitted(number, kind, sent_at, time.time(), status)
        if kind == APPROVAL and action_id not in self.unclaimed_approvals:  # not queued already from the topic
            if action_id in self._decided:
                self._to_approve.put_nowait((time.monotonic() + FIRST_ASK_S, action_id, FIRST_ASK_S))
            else:
                self._undecided_approvals.add(action_id)
                # a slow fallback, should the decision be missed on the topic (a broker restart)
                self._to_approve.put_nowait((time.monotonic() + 5.0, action_id, 5.0))

    async def _post(self, path: str, body: dict[str, Any]) -> tuple[int | str, Any]:
        """(status, parsed body or None); the exception's name instead of a status when none came."""
        try:
            async with self.intake.post(path, json=body) as response:
                payload = await response.json() if response.status in (200, 202) else None
                return response.status, payload
        except (aiohttp.ClientError, TimeoutError) as exc:
            return type(exc).__name__, None

    async def submit(self, number: int, *, scheduled_at: float | None = None) -> str | None:
        """Submit the ``number``-th action; its id when accepted (202/200), else None. Its latency
        counts from ``scheduled_at`` (wall clock) when given, else from now."""
        body = submission_body(number, self.run)
        sent_at = time.time() if scheduled_at is None else min(scheduled_at, time.time())
        give_up = time.monotonic() + self.retry_for_s
        while True:
            status, answer = await self._post("/v1/actions", body)
            if answer is not None and status in (200, 202):
                action_id = answer["action_id"]
                self._accepted(action_id, number, sent_at, int(status))
                return action_id
            if time.monotonic() < give_up and (isinstance(status, str) or status in RETRY_STATUSES):
                self.log.retries += 1
                await asyncio.sleep(0.25)
                continue
            self.log.refused[str(status)] += 1
            return None

    async def submit_batch(self, numbers: list[int]) -> list[str]:
        """Submit the ``numbers``-th actions in one ``POST /v1/actions:batch``; the accepted ids."""
        body = {"items": [submission_body(n, self.run) for n in numbers]}
        sent_at = time.time()
        give_up = time.monotonic() + self.retry_for_s
        while True:
            status, answer = await self._post("/v1/actions:batch", body)
            if answer is not None and status == 200:
                accepted = []
                for number, result in zip(numbers, answer["results"], strict=True):
                    if result["status"] in (200, 202):
                        self._accepted(result["action_id"], number, sent_at, result["status"])
                        accepted.append(result["action_id"])
                    else:
                        self.log.refused[f"item {result['status']}"] += 1
                return accepted
            if time.monotonic() < give_up and (isinstance(status, str) or status in RETRY_STATUSES):
                self.log.retries += 1
                await asyncio.sleep(0.25)
                continue
            self.log.refused[f"batch {status}"] += len(numbers)
            return []

    async def batched(self, count: int, batch: int, in_flight: int) -> tuple[list[str], float]:
        """Submit ``count`` actions ``batch`` per request, ``in_flight`` requests at a time;
        (accepted ids, seconds taken)."""
        first, self.next_number = self.next_number, self.next_number + count
        chunks = iter([list(range(n, min(n + batch, first + count))) for n in range(first, first + count, batch)])
        accepted: list[str] = []

        async def worker() -> None:
            for numbers in chunks:
                accepted.extend(await self.submit_batch(numbers))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        return accepted, time.perf_counter() - started

    async def closed_loop(self, count: int, concurrency: int) -> tuple[list[str], float]:
        """Submit ``count`` actions with ``concurrency`` in flight; (accepted ids, seconds taken)."""
        first, self.next_number = self.next_number, self.next_number + count
        numbers = iter(range(first, first + count))
        accepted: list[str] = []

        async def worker() -> None:
            for number in numbers:
                action_id = await self.submit(number)
                if action_id:
                    accepted.append(action_id)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return accepted, time.perf_counter() - started

    async def open_loop(
        self, rate: float, seconds: float, *, max_in_flight: int = 2000
    ) -> tuple[list[str], dict[str, float]]:
        """Submit at ``rate`` per second for ``seconds``, whatever the answers' pace (open loop).

        Returns the accepted ids and how far the schedule slipped. Each action's latency starts
        at its scheduled send time, not at the moment the generator got round to it, so a
        generator (or a connection pool) falling behind adds to the measured latency instead of
        hiding it (no coordinated omission); the slip is reported too.
        """
        count = int(rate * seconds)
        first, self.next_number = self.next_number, self.next_number + count
        in_flight = asyncio.Semaphore(max_in_flight)
        accepted: list[str] = []
        slips: list[float] = []

        async def one(number: int, scheduled: float) -> None:
            try:
                action_id = await self.submit(number, scheduled_at=scheduled)
                if action_id:
                    accepted.append(action_id)
            finally:
                in_flight.release()

        tasks = []
        start, wall_start = time.monotonic(), time.time()
        for i in range(count):
            due = start + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await in_flight.acquire()
            slips.append(time.monotonic() - due)
            tasks.append(asyncio.create_task(one(first + i, wall_start + i / rate)))
        await asyncio.gather(*tasks)
        slips.sort()
        return accepted, {
            "max_s": slips[-1] if slips else 0.0,
            "p99_s": slips[int(len(slips) * 0.99) - 1] if slips else 0.0,
        }

    async def hammer(self, path: str, seconds: float, concurrency: int) -> float:
        """GET ``path`` on the intake as fast as ``concurrency`` clients can: answers 200 per second."""
        stop = time.monotonic() + seconds
        done = 0

        async def worker() -> None:
            nonlocal done
            while time.monotonic() < stop:
                async with self.intake.get(path) as response:
                    await response.read()
                    if response.status == 200:
                        done += 1
                    else:  # counted apart: a busy intake may answer its health check 503
                        self.log.refused[f"{path} {response.status}"] += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.perf_counter() - started)

    # --- approving --------------------------------------------------------------------------

    def start_approvers(self, count: int = 8) -> None:
        """Start the scripted approver: it answers every needs-approval action once the decided
        topic shows its decision (the message's key; nothing is decoded), so it does not poll
        the desk for approvals that are not open yet."""
        self._approvers = [asyncio.create_task(self._approve_forever()) for _ in range(count)]
        self._approvers.append(asyncio.create_task(self._watch_decisions()))

    async def _watch_decisions(self) -> None:
        """Follow the decided topic for as long as the agent runs; a broker away is waited out
        (the fallback asks meanwhile)."""
        first = True
        while True:
            try:
                await self._follow_decided(from_end=first)
            except Exception as exc:  # a broker restart (chaos drills): follow again from where it was
                self.log.vote_refusals[f"decided watcher {type(exc).__name__}"] += 1
                first = False
                await asyncio.sleep(1.0)

    async def _follow_decided(self, *, from_end: bool) -> None:
        topic = Topics(self.settings.namespace, self.settings.partitions).decided
        consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            partitions = [TopicPartition(topic, p) for p in range(self.settings.partitions)]
            consumer.assign(partitions)
            if from_end:
                await consumer.seek_to_end(*partitions)
            else:  # after a failure: everything again (keys only; the decided set makes it idempotent)
                await consumer.seek_to_beginning(*partitions)
            while True:
                for messages in (await consumer.getmany(timeout_ms=500, max_records=5000)).values():
                    for message in messages:
                        action_id = (message.key or b"").decode(errors="replace")
                        self._decided.add(action_id)
                        if action_id in self._undecided_approvals:
                            self._undecided_approvals.discard(action_id)
                            self._to_approve.put_nowait((time.monotonic() + FIRST_ASK_S, action_id, FIRST_ASK_S))
                        elif (
                            dict(message.headers or ()).get(OUTCOME) == b"needs_approval"
                            and action_id not in self.log.accepted
                            and action_id not in self.unclaimed_approvals
                        ):
                            # accepted by the intake, but its answer never reached this agent (it
                            # gave up under a fault): an approver hears of every pending approval
                            self.unclaimed_approvals.add(action_id)
                            self._to_approve.put_nowait((time.monotonic() + FIRST_ASK_S, action_id, FIRST_ASK_S))
        finally:
            await consumer.stop()

    async def _approve_forever(self) -> None:
        while True:
            not_before, action_id, backoff = await self._to_approve.get()
            if action_id in self.log.answered:
                continue
            wait = not_before - time.monotonic()
            if wait > 0:  # not due: look again shortly, leaving earlier-due ones to the others
                await asyncio.sleep(min(wait, 0.2))
                self._to_approve.put_nowait((not_before, action_id, backoff))
                continue
            if action_id in self._asking:
                # another approver task is asking right now (the fallback and the topic): look again
                # shortly. Dropping this ask left the approval to the fallback's next one, up to 10 s
                # later, and that one late vote set the batched flood's end (bench/README.md)
                self._to_approve.put_nowait((time.monotonic() + 0.2, action_id, backoff))
                continue
            # decided but not at the desk yet (or the desk is away): ask again later, less often
            # each time, so a backlog of pending approvals does not turn into a load of its own
            backoff = min(backoff * 2, 10.0)
            self._asking.add(action_id)
            try:
                if not await self._approve(action_id):
                    self._to_approve.put_nowait((time.monotonic() + backoff, action_id, backoff))
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.log.vote_refusals[type(exc).__name__] += 1
                self._to_approve.put_nowait((time.monotonic() + backoff, action_id, backoff))
            finally:
                self._asking.discard(action_id)

    async def _approve(self, action_id: str) -> bool:
        async with self.desk.get(f"/v1/approvals/{action_id}") as shown:
            if shown.status in (404, 425, 500, 502, 503):  # 425: the approval has not opened yet
                return False
            if shown.status != 200:
                self.log.vote_refusals[f"show {shown.status}"] += 1
                self.log.answered.add(action_id)
                return True
            digest = (await shown.json())["payload_digest"]
        sent_at = time.time()
        vote = {"choice": "approve", "payload_digest": digest, "channel": "cli", "reason": "benchmark approver"}
        async with self.desk.post(f"/v1/approvals/{action_id}/votes", json=vote) as answer:
            status = answer.status
            await answer.read()
        if status == 200:
            self.log.votes[action_id] = sent_at
            self.log.answered.add(action_id)
            return True
        if status in (425, 500, 502, 503):
            return False
        self.log.vote_refusals[f"vote {status}"] += 1
        self.log.answered.add(action_id)
        return True

    def pending_approvals(self) -> int:
        return self._to_approve.qsize()
