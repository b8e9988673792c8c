"""The throughput targets (issue 14), each beside its baseline from the same run, and the cost
model that turns CPU per action per process into a prediction for N cores.

Pure functions over what ``bench.run`` measured, so the verdicts are unit-tested.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from keyturn.bus.topics import Topics
from keyturn.config import Settings

GENERATOR = "load generator"
SERVERS = ("kafka", "opa", "postgres")
# a process that cannot be multiplied: the audit chain is one sequence, written by one writer
SINGLE_WRITER = ("audit",)
# stages whose workers share a consumer group over the keyed topics: at most one per partition
PARTITIONED = ("policy", "executor", "approval")
CPU_TARGET_MS = 2.0
BATCH_TARGET = 1000.0
POST_TARGET = 400.0
P99_TARGETS_MS = {200.0: 100.0, 500.0: 250.0}
AUDIT_CATCH_UP_S = 5.0  # the audit keeps up when it is done this soon after the pipeline


@dataclass(frozen=True)
class Target:
    """One target of the issue: what was measured, beside a baseline of the same run."""

    name: str
    value: float
    unit: str
    goal: str
    met: bool
    baseline: float | None
    baseline_name: str
    baseline_unit: str = ""  # when it differs from the value's

    def row(self) -> str:
        verdict = "met" if self.met else "MISSED"
        unit = self.baseline_unit or self.unit
        base = "–" if self.baseline is None or math.isnan(self.baseline) else f"{self.baseline:,.1f} {unit}"
        return (
            f"| {self.name} | {self.value:,.1f} {self.unit} | {self.goal} | {verdict} | {base} ({self.baseline_name}) |"
        )


def per_action_ms(cpu_seconds: dict[str, float], actions: int) -> dict[str, float]:
    """CPU milliseconds per action of each process (the generator included, named apart)."""
    if actions <= 0:
        return {}
    return {name: round(seconds * 1000 / actions, 3) for name, seconds in cpu_seconds.items()}


def system_ms(per_action: dict[str, float]) -> float:
    """CPU per action over every process except the load generator."""
    return sum(ms for name, ms in per_action.items() if name != GENERATOR)


def targets(measured: dict[str, Any]) -> list[Target]:
    """The five targets from ``measured`` (keys as ``bench.run`` fills them; a missing one is NaN → missed)."""
    nan = float("nan")
    batch = measured.get("batched_per_second", nan)
    post = measured.get("post_per_second", nan)
    cpu_batch = measured.get("batched_cpu_ms", nan)
    cpu_post = measured.get("post_cpu_ms", nan)
    found = [
        Target(
            "end to end, agents submitting in batches (POST /v1/actions:batch)",
            batch,
            "/s",
            f"≥ {BATCH_TARGET:,.0f}/s",
            batch >= BATCH_TARGET,
            post,
            "one POST per action, same run",
        ),
        Target(
            "end to end, one POST per action on keep-alive connections",
            post,
            "/s",
            f"≥ {POST_TARGET:,.0f}/s",
            post >= POST_TARGET,
            measured.get("healthz_per_second", nan),
            "GET /healthz, same client",
        ),
        Target(
            "CPU per action, every process but the load generator (batched)",
            cpu_batch,
            "ms",
            f"≤ {CPU_TARGET_MS:g} ms",
            cpu_batch <= CPU_TARGET_MS,
            cpu_post,
            "same, one POST per action",
        ),
    ]
    for rate, goal in P99_TARGETS_MS.items():
        p99 = measured.get("p99_decided_ms", {}).get(rate, nan)
        found.append(
            Target(
                f"p99 request→decided at {rate:g}/s (open loop)",
                p99,
                "ms",
                f"< {goal:g} ms",
                p99 < goal,
                measured.get("p99_chain_ms", {}).get(rate, nan),
                f"raw Kafka chain, 2 hops, p99 at {rate:g} msg/s",
            )
        )
    lag = measured.get("audit", {})
    catch_up = lag.get("catch_up_s", nan)
    found.append(
        Target(
            "audit writer: seconds behind the pipeline at the top rate (batched)",
            catch_up,
            "s",
            f"≤ {AUDIT_CATCH_UP_S:g} s, and audited/s ≥ 95 % of events/s",
            catch_up <= AUDIT_CATCH_UP_S
            and lag.get("audited_per_second", 0) >= 0.95 * lag.get("events_per_second", nan),
            lag.get("events_per_second", nan),
            f"events the pipeline produced; audited {lag.get('audited_per_second', nan):,.0f}/s, "
            f"largest lag {lag.get('max_lag_events', nan):,.0f} events",
            "/s",
        )
    )
    return found


@dataclass(frozen=True)
class CostModel:
    """Throughput predicted from CPU per action per process.

    Every stage but the audit runs as many workers as there are partitions, so with enough
    cores it is the machine's CPU that caps it: N × 1000 / (ms per action over all processes).
    The audit is one hash chain, written by one process: it caps at 1000 / its own ms per action
    whatever the cores. A stage in a consumer group runs at most one worker per partition, each
    one process: it caps at partitions × 1000 / its ms per action. The load generator is not
    counted (it runs elsewhere in a deployment).
    """

    per_action_ms: dict[str, float]
    partitions: int = Settings.partitions  # the deployment default, unless the run says otherwise

    @property
    def total_ms(self) -> float:
        return system_ms(self.per_action_ms)

    @property
    def single_writer_cap(self) -> float:
        ms = sum(self.per_action_ms.get(name, 0.0) for name in SINGLE_WRITER)
        return 1000 / ms if ms > 0 else math.inf

    def partition_cap(self) -> tuple[float, str]:
        """(actions/s, stage): the partitioned stage that its workers, one per partition, cap first."""
        stages = [(name, ms) for name in PARTITIONED if (ms := self.per_action_ms.get(name, 0.0)) > 0]
        if not stages:
            return math.inf, ""
        name, ms = max(stages, key=lambda stage: stage[1])
        return self.partitions * 1000 / ms, f"the {name} stage's {self.partitions} workers (one per partition)"

    def predicted(self, cores: int) -> tuple[float, str]:
        """(actions/s on ``cores`` cores, the stage that caps it)."""
        by_cpu = cores * 1000 / self.total_ms if self.total_ms > 0 else math.inf
        caps = [
            (by_cpu, "CPU of all processes together"),
            (self.single_writer_cap, "the audit writer (one chain, one process)"),
            self.partition_cap(),
        ]
        return min(caps, key=lambda cap: cap[0])

    def lines(self, cores: tuple[int, ...] = (2, 4, 8, 16, 32)) -> list[str]:
        parts = ", ".join(f"{name} {ms:.2f}" for name, ms in sorted(self.per_action_ms.items(), key=lambda kv: -kv[1]))
        out = [f"cost model, CPU-ms per action: {parts} (system {self.total_ms:.2f}, generator apart)"]
        for n in cores:
            rate, cap = self.predicted(n)
            out.append(f"  {n:>2} cores: ≈ {rate:,.0f} actions/s, capped by {cap}")
        return out


@dataclass
class AuditLag:
    """How far the audit writer trails the pipeline, sampled from end offsets (costs nothing).

    events = messages added to the audited topics since ``start``; audited = records added to
    the audit topic (its checkpoints, one per 100 records, count too: the lag is under-stated
    by about 1 %). ``catch_up_s``: from the moment the pipeline drained to the moment the audit
    had as many records as there were events.
    """

    bootstrap: str
    topics: Topics
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (time, events, audited)

    async def __aenter__(self) -> AuditLag:
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await self.consumer.start()
        self.base = await self._counts()
        self.started = time.monotonic()
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.consumer.stop()

    async def _counts(self) -> tuple[int, int]:
        parts = [TopicPartition(t, p) for t in self.topics.audited for p in range(self.topics.partitions)]
        audit = TopicPartition(self.topics.audit, 0)
        ends = await self.consumer.end_offsets([*parts, audit])
        return sum(ends[p] for p in parts), ends[audit]

    async def _sample(self) -> None:
        while True:
            events, audited = await self._counts()
            self.samples.append((time.monotonic(), events - self.base[0], audited - self.base[1]))
            await asyncio.sleep(0.5)

    async def caught_up(self, drained_at: float, timeout: float = 300) -> dict[str, float]:
        """Wait until the audit holds a record for every event; the figures."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            events, audited = await self._counts()
            if audited - self.base[1] >= events - self.base[0]:
                break
            await asyncio.sleep(0.1)
        done = time.monotonic()
        events, audited = events - self.base[0], audited - self.base[1]
        span = max(done - self.started, 1e-9)
        lags = [e - a for _, e, a in self.samples]
        return {
            "events": events,
            "audited": audited,
            "events_per_second": events / max(drained_at - self.started, 1e-9),
            "audited_per_second": audited / span,
            "max_lag_events": float(max(lags, default=0)),
            "catch_up_s": max(done - drained_at, 0.0) if audited >= events else math.inf,
        }
