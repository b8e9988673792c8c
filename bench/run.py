"""`make bench`: the whole system under a mixed load, every figure beside a baseline from the same run.

Starts a Kafka + OPA + PostgreSQL of its own (deploy/*.sh with KEYTURN_RUN=.run/bench and ports
of its own) and the five services in a fresh namespace, then:

1. warm-up; baselines: raw OPA decisions (httpx, Keyturn's client, opa-python-client), a raw
   aiokafka chain of the same three hops (throughput and latency at each open-loop rate), the
   intake's /healthz under the same HTTP client, masking (bench/masking.py);
2. open loops, one POST per action, at BENCH_LOW_RATE (10/s) and at each of BENCH_RATES (200/s
   and 500/s): request→decided (the decision's record published), request→terminal,
   approve→executed from the events' and records' own timestamps; every send has its
   scheduled time, so a slow answer cannot hide the queue (no coordinated omission);
3. batched flood: BENCH_BATCH_ACTIONS actions, BENCH_BATCH_SIZE per POST /v1/actions:batch,
   BENCH_BATCH_IN_FLIGHT requests at a time: end-to-end throughput, CPU per action of every
   process (the load generator apart), the audit writer's lag (``bench.targets.AuditLag``);
4. one-POST flood: BENCH_ACTIONS actions in chunks of BENCH_CHUNK, BENCH_CONCURRENCY keep-alive
   connections: end-to-end and intake throughput, CPU per process, resident memory of each service
   after each chunk;
5. a profiled batched chunk (py-spy on every service), not counted in the figures;
6. scale-out: a second policy and a second executor worker, the same chunk again; then, for
   the policy and the executor in turn, a backlog drained by one worker and by two;
7. every action checked on the topics (one terminal state, none decided or executed twice, the
   audit complete), and `keyturn audit verify` timed against a raw read of the audit topic, and
   `keyturn report` (HTML and PDF) over the same topic (bench/audit_report.py);
8. the issue-14 targets, each beside its baseline from the same run (``bench.targets``), and the
   cost model: CPU-ms per action per process → predicted actions/s on N cores and what caps it.

Prints the table, writes bench/results/<stamp>.json and .png, stops everything.

    BENCH_QUICK=1          about a minute: shorter phases, smaller chunks, no profile
    BENCH_ACTIONS=100000   the full memory figure (about 100k actions through the flood)
    BENCH_RATES=200,500, BENCH_BATCH_ACTIONS, BENCH_BATCH_SIZE=200, BENCH_BATCH_IN_FLIGHT=4,
    BENCH_OPEN_S, BENCH_CHUNK, BENCH_CONCURRENCY, BENCH_SCALE_OUT=0, BENCH_PROFILE_S,
    BENCH_KEEP=1 (keep .run/bench), BENCH_KAFKA_PORT / BENCH_OPA_PORT / BENCH_PG_PORT
"""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from rich.console import Console

from bench import audit_report, baselines, machine, profile, targets
from bench.load import ALLOWED, APPROVAL, DENIED, Agent
from bench.report import Figure, print_table, write_chart, write_json
from keyturn.bus.topics import Topics
from keyturn.config import REPO_ROOT, Settings
from tests.chaos.invariants import Lifecycle, read_lifecycle_async
from tests.processes import PrivateServers, ServiceProcesses, settings_env

console = Console(width=170)
RESULTS = REPO_ROOT / "bench" / "results"
MIB = 1024 * 1024
BACKLOG_ACTIONS = 3000  # per backlog drain: long enough that start-up is a small part of it


def _env(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


@dataclass(frozen=True)
class Plan:
    """How long and how hard; BENCH_QUICK=1 shrinks everything to about a minute."""

    quick: bool = os.environ.get("BENCH_QUICK") == "1"
    rates: tuple[float, ...] = tuple(float(r) for r in os.environ.get("BENCH_RATES", "200,500").split(","))
    open_seconds: float = _env("BENCH_OPEN_S", 10 if os.environ.get("BENCH_QUICK") == "1" else 20)
    actions: int = int(_env("BENCH_ACTIONS", 2000 if os.environ.get("BENCH_QUICK") == "1" else 6000))
    chunk: int = int(_env("BENCH_CHUNK", 1000 if os.environ.get("BENCH_QUICK") == "1" else 2000))
    concurrency: int = int(_env("BENCH_CONCURRENCY", 32))
    batch_actions: int = int(_env("BENCH_BATCH_ACTIONS", 4000 if os.environ.get("BENCH_QUICK") == "1" else 10000))
    batch_size: int = int(_env("BENCH_BATCH_SIZE", 200))  # items per POST /v1/actions:batch
    batch_in_flight: int = int(_env("BENCH_BATCH_IN_FLIGHT", 4))
    # batched actions after the first 300, before anything is measured: a fresh broker's JVM compiles
    # its hot paths over the first thousands of requests, and p99 at 200/s on a fresh stack halved with
    # 4,000 (bench/README.md): without them the open loop measured the compiler, not steady state
    warm_actions: int = int(_env("BENCH_WARM_ACTIONS", 6000 if os.environ.get("BENCH_QUICK") == "1" else 10000))
    low_rate: float = _env("BENCH_LOW_RATE", 10)  # a rate the stack sustains here: latency without queueing
    baseline_seconds: float = 2 if os.environ.get("BENCH_QUICK") == "1" else 5
    scale_out: bool = os.environ.get("BENCH_SCALE_OUT", "1") != "0"
    profile_seconds: float = _env("BENCH_PROFILE_S", 0 if os.environ.get("BENCH_QUICK") == "1" else 15)
    drain_timeout: float = 600


@dataclass
class Phase:
    name: str
    ids: list[str] = field(default_factory=list)
    submit_seconds: float = 0.0
    drained: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


class Drain:
    """Waits until the pipeline caught up: as many decisions and executions on the topics as the
    accepted actions call for (cheap: end offsets only; the topics are read once, at the end)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topics = Topics(settings.namespace, settings.partitions)

    async def __aenter__(self) -> Drain:
        self.consumer = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap, enable_auto_commit=False)
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.consumer.stop()

    async def count(self, topic: str, partitions: int | None = None) -> int:
        """Messages on ``topic`` (end offsets of its partitions: the lifecycle topics' count by default)."""
        parts = [TopicPartition(topic, p) for p in range(partitions or self.settings.partitions)]
        return sum((await self.consumer.end_offsets(parts)).values())

    async def wait(self, agent: Agent, timeout: float, step: float = 0.25) -> bool:
        accepted = agent.log.accepted.values()
        want_decided = len(accepted)
        want_executed = sum(1 for s in accepted if s.kind in (ALLOWED, APPROVAL))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (
                await self.count(self.topics.decided) >= want_decided
                and await self.count(self.topics.executed) >= want_executed
            ):
                return True
            await asyncio.sleep(step)
        console.print(f"[red]pipeline did not drain within {timeout:.0f}s[/red]")
        return False

    async def reach(self, topic: str, count: int, timeout: float) -> bool:
        """Wait until ``topic`` holds ``count`` messages in all."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if await self.count(topic) >= count:
                return True
            await asyncio.sleep(0.25)
        return False

    async def settle(
        self, topic: str, *, partitions: int | None = None, quiet_s: float = 3.0, timeout: float = 300
    ) -> int:
        """Wait until ``topic`` stops growing for ``quiet_s``; its message count."""
        last, since = -1, time.monotonic()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = await self.count(topic, partitions)
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                return now
            await asyncio.sleep(0.25)
        return last


class Bench:
    def __init__(
        self, plan: Plan, settings: Settings, procs: ServiceProcesses, servers: PrivateServers, stamp: str
    ) -> None:
        self.plan = plan
        self.settings = settings
        self.procs = procs
        self.servers = servers
        self.stamp = stamp
        self.phases: dict[str, Phase] = {}
        self.memory: list[dict[str, Any]] = []
        self.details: dict[str, Any] = {}

    def note(self, text: str) -> None:
        console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {text}")

    def memory_point(self, agent: Agent, label: str) -> None:
        rss = {name: round(v / MIB, 1) for name, v in self.procs.rss().items()}
        self.memory.append({"actions": agent.next_number, "label": label, "rss_mib": rss})

    async def run(self) -> Lifecycle:
        plan = self.plan
        # a lost answer (a keep-alive connection the server closed) is retried: the idempotency key
        # makes a retry return the same action, never a second one
        agent = Agent(self.settings, connections=plan.concurrency, retry_for_s=10)
        agent.start_approvers()
        try:
            async with Drain(self.settings) as drain:
                await self._phases(agent, drain)
                self.note("waiting for the audit to catch up")
                self.details["audit_end_offset"] = await drain.settle(
                    Topics(self.settings.namespace, self.settings.partitions).audit, partitions=1
                )
        finally:
            await agent.close()
        self.agent = agent
        self.note("reading every topic back")
        started = time.perf_counter()
        lifecycle = await read_lifecycle_async(self.settings)
        self.details["topic_read_seconds"] = round(time.perf_counter() - started, 1)
        return lifecycle

    async def _phases(self, agent: Agent, drain: Drain) -> None:
        plan = self.plan
        self.note(f"warm-up: 300 actions, then {plan.warm_actions} batched")
        ids, secs = await agent.closed_loop(300, 16)
        self.phases["warm-up"] = Phase("warm-up", ids, secs, await drain.wait(agent, plan.drain_timeout))
        if plan.warm_actions:
            ids, secs = await agent.batched(plan.warm_actions, plan.batch_size, plan.batch_in_flight)
            self.phases["warm-up batched"] = Phase(
                "warm-up batched", ids, secs, await drain.wait(agent, plan.drain_timeout)
            )
        self.memory_point(agent, "after warm-up")

        self.note("baselines: raw OPA decisions")
        self.details["opa"] = await baselines.opa_decisions(self.settings.opa_url, plan.baseline_seconds)
        self.note("baselines: raw aiokafka chain (3 hops)")
        async with baselines.KafkaChain(self.settings.kafka_bootstrap, self.settings.partitions) as chain:
            self.details["kafka_chain_throughput"] = await chain.throughput(plan.chunk)
            self.details["kafka_chain_latency"] = {
                rate: await chain.latency(rate, min(plan.open_seconds, 20)) for rate in plan.rates
            }
            self.details["kafka_chain_latency_low"] = await chain.latency(plan.low_rate, 15)
        self.note("baselines: intake GET /healthz with the same client")
        self.details["healthz_rps"] = await agent.hammer("/healthz", plan.baseline_seconds, plan.concurrency)
        self.note("masking: bench/masking.py")
        self.details["masking"] = await asyncio.to_thread(_masking, plan.baseline_seconds, self.stamp)

        self.note(f"open loop: {plan.low_rate:g} actions/s for 15s (a rate this stack sustains)")
        ids, slip = await agent.open_loop(plan.low_rate, 15)
        self.phases["open-low"] = Phase(
            "open-low", ids, 15, await drain.wait(agent, plan.drain_timeout), {"schedule_slip": slip}
        )
        for rate in plan.rates:
            self.note(f"open loop: {rate:.0f} actions/s for {plan.open_seconds:.0f}s, one POST each")
            ids, slip = await agent.open_loop(rate, plan.open_seconds)
            self.phases[f"open-{rate:g}"] = Phase(
                f"open-{rate:g}",
                ids,
                plan.open_seconds,
                await drain.wait(agent, plan.drain_timeout),
                {"schedule_slip": slip},
            )
        self.memory_point(agent, "after open loop")

        self.note(
            f"batched flood: {plan.batch_actions} actions, {plan.batch_size} per POST /v1/actions:batch, "
            f"{plan.batch_in_flight} in flight"
        )
        topics = Topics(self.settings.namespace, self.settings.partitions)
        meter = machine.CpuMeter(self._pids())
        async with targets.AuditLag(self.settings.kafka_bootstrap, topics) as lag:
            before = meter.snapshot()
            ids, secs = await agent.batched(plan.batch_actions, plan.batch_size, plan.batch_in_flight)
            drained = await drain.wait(agent, plan.drain_timeout, step=0.05)
            drained_at = time.monotonic()
            self.details["cpu_batched"] = machine.CpuMeter.spent(before, meter.snapshot())
            self.details["audit_lag"] = await lag.caught_up(drained_at)
        self.phases["batched"] = Phase("batched", ids, secs, drained)
        self.details["batched_actions"] = len(ids)
        self.memory_point(agent, "after batched flood")

        meter = machine.CpuMeter(self._pids())
        before = meter.snapshot()
        flood_ids: list[str] = []
        for number in range(max(1, plan.actions // plan.chunk)):
            self.note(f"flood chunk {number + 1}: {plan.chunk} actions, {plan.concurrency} in flight")
            ids, secs = await agent.closed_loop(plan.chunk, plan.concurrency)
            drained = await drain.wait(agent, plan.drain_timeout)
            self.phases[f"flood-{number + 1}"] = Phase(f"flood-{number + 1}", ids, secs, drained)
            flood_ids += ids
            self.memory_point(agent, f"after flood chunk {number + 1}")
        self.details["cpu_flood"] = machine.CpuMeter.spent(before, meter.snapshot())
        self.details["flood_actions"] = len(flood_ids)

        if plan.profile_seconds > 0 and profile.py_spy():
            await self._profiled_chunk(agent, drain)

        if plan.scale_out:
            self.note("scale-out: a second policy and a second executor worker")
            self.procs.start("policy-2", "policy")
            self.procs.start("executor-2", "executor")
            ids, secs = await agent.closed_loop(500, 16)  # lets the groups rebalance
            self.phases["scale-out warm-up"] = Phase(
                "scale-out warm-up", ids, secs, await drain.wait(agent, plan.drain_timeout)
            )
            meter = machine.CpuMeter(self._pids())
            before = meter.snapshot()
            for number in range(1):
                self.note(f"scale-out chunk {number + 1}: {plan.chunk} actions")
                ids, secs = await agent.closed_loop(plan.chunk, plan.concurrency)
                self.phases[f"scaled-{number + 1}"] = Phase(
                    f"scaled-{number + 1}", ids, secs, await drain.wait(agent, plan.drain_timeout)
                )
            self.details["cpu_scaled"] = machine.CpuMeter.spent(before, meter.snapshot())
            self.memory_point(agent, "after scale-out")  # the last memory point: the backlog drains restart workers
            await self._backlog_drains(agent, drain)

    async def _backlog_drains(self, agent: Agent, drain: Drain) -> None:
        """Each of the policy and executor stages draining a backlog alone, with one worker, then two.

        In the closed-loop flood every process shares the two cores, so a worker more cannot add
        throughput once they are busy. Here the backlog is submitted while the stage has no
        worker; then the intake, the approval service and the other stage stop, the stage's
        workers start, and they drain it with the cores to themselves (the audit, OPA, Kafka and
        PostgreSQL keep running). The pace is read from the events' own timestamps over the
        steady part of the drain (``_steady_pace``): start-up and the group's rebalance as the
        second worker joins are not counted. Then everything starts again and catches up.
        """
        size = BACKLOG_ACTIONS
        topics = Topics(self.settings.namespace, self.settings.partitions)
        for name in ("policy-2", "executor-2"):
            if name in self.procs.procs:
                self.procs.stop(name)
        for stage, other, output in (("policy", "executor", topics.decided), ("executor", "policy", topics.executed)):
            for workers in (1, 2):
                for name in (stage, f"{stage}-2"):
                    if name in self.procs.procs:
                        self.procs.stop(name)
                self.note(
                    f"backlog drain: {size} actions queued for the {stage}, then {workers} {stage} worker(s) alone"
                )
                ids, secs = await agent.closed_loop(size, self.plan.concurrency)
                expected = sum(1 for a in ids if stage == "policy" or agent.log.accepted[a].kind == ALLOWED)
                await drain.settle(
                    topics.decided, quiet_s=2.0
                )  # the policy has decided what it could (executor backlog)
                for name in ("intake", "approval", other):
                    self.procs.stop(name)
                before = await drain.count(output)
                names = [stage] + ([f"{stage}-2"] if workers == 2 else [])
                for name in names:
                    self.procs.start(name, stage)
                await drain.reach(output, before + expected, self.plan.drain_timeout)
                for name in ("intake", "approval", other):
                    self.procs.start(name)
                self.procs.wait_ready()
                self.phases[f"backlog-{stage}-{workers}"] = Phase(
                    f"backlog-{stage}-{workers}", ids, secs, await drain.wait(agent, self.plan.drain_timeout)
                )

    async def _profiled_chunk(self, agent: Agent, drain: Drain) -> None:
        size = max(self.plan.chunk // 2, int(self.plan.profile_seconds * 60))
        self.note(
            f"profiled chunk: {size} actions in batches, py-spy on every service for {self.plan.profile_seconds:.0f}s"
        )
        out = RESULTS / "profiles" / self.stamp
        samplers = {
            name: profile.start(self.procs.pid(name), self.plan.profile_seconds, out / f"{name}.txt")
            for name in ("intake", "policy", "executor", "audit", "approval")
        }
        ids, secs = await agent.batched(size, self.plan.batch_size, self.plan.batch_in_flight)
        await drain.wait(agent, self.plan.drain_timeout)
        for _name, sampler in samplers.items():
            if sampler is not None:
                await asyncio.to_thread(sampler.wait)
        self.phases["profiled"] = Phase("profiled", ids, secs)
        self.details["profiles"] = {name: profile.summarise(out / f"{name}.txt") for name in samplers}
        self.details["profile_dir"] = str(out)

    def _pids(self) -> dict[str, tuple[int, bool]]:
        pids = {name: (proc.pid, False) for name, proc in self.procs.procs.items()}
        for server, children in (("kafka", False), ("opa", False), ("postgres", True)):
            pid = self.servers.pid(server)
            if pid:
                pids[server] = (pid, children)
        return pids


# --- figures --------------------------------------------------------------------------------


def _ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _throughput(lifecycle: Lifecycle, ids: list[str], sent: dict[str, float]) -> dict[str, float]:
    """Actions reaching a terminal state per second, from the first send to the last terminal event;
    and each stage's own pace (decisions/s, executions/s) over its own span."""
    terminal = [
        _ts(lifecycle.actions[a].terminal_at)
        for a in ids
        if a in lifecycle.actions and lifecycle.actions[a].terminal_at
    ]
    decided = [
        _ts(lifecycle.actions[a].decided_at) for a in ids if a in lifecycle.actions and lifecycle.actions[a].decided_at
    ]
    executed = [
        _ts(lifecycle.actions[a].finished_at)
        for a in ids
        if a in lifecycle.actions and lifecycle.actions[a].finished_at
    ]
    first = min(sent[a] for a in ids)
    span = (max(terminal) - first) if terminal else float("nan")

    def pace(stamps: list[float]) -> float:
        return (
            len(stamps) / (max(stamps) - min(stamps)) if len(stamps) > 1 and max(stamps) > min(stamps) else float("nan")
        )

    return {
        "actions": len(ids),
        "terminal": len(terminal),
        "seconds": round(span, 2),
        "per_second": len(terminal) / span if terminal else float("nan"),
        "decided_per_second": pace(decided),
        "executed_per_second": pace(executed),
    }


def _steady_pace(lifecycle: Lifecycle, ids: list[str], stamp: str) -> float:
    """Events per second between the 25th and the 95th percentile of their timestamps: the steady
    part of a drain, without the workers' start-up and first rebalance or the last stragglers
    (actions waiting for an approval)."""
    stamps = sorted(
        _ts(getattr(lifecycle.actions[a], stamp))
        for a in ids
        if a in lifecycle.actions and getattr(lifecycle.actions[a], stamp)
    )
    if len(stamps) < 20:
        return float("nan")
    low, high = int(len(stamps) * 0.25), int(len(stamps) * 0.95)
    span = stamps[high] - stamps[low]
    return (high - low) / span if span > 0 else float("nan")


def _latency_figures(
    lifecycle: Lifecycle, bench: Bench, phase: str, rate: float, chain: dict[str, Any], *, target: bool
) -> tuple[dict[str, Any], list[Figure]]:
    """request→decided, request→terminal and approve→executed of one open-loop phase, from the
    events' own timestamps, beside the raw chain's hops at the same rate."""
    agent = bench.agent
    sent = {a: s.sent_at for a, s in agent.log.accepted.items()}
    ids = bench.phases[phase].ids
    facts = lifecycle.actions
    # decided: when the decision was published (its record's own timestamp), not the decided_at
    # it carries, which the policy stamps when OPA answers, before it records the decision and
    # sends it (bench/README.md, sixteenth round); that stamp is reported beside it
    to_decided = [facts[a].decision_sent_at - sent[a] for a in ids if a in facts and facts[a].decision_sent_at]
    to_stamp = [_ts(facts[a].decided_at) - sent[a] for a in ids if a in facts and facts[a].decided_at]
    to_terminal = [
        _ts(facts[a].terminal_at) - sent[a]
        for a in ids
        if a in facts and facts[a].terminal_at and agent.log.accepted[a].kind != APPROVAL
    ]
    votes = agent.log.votes
    approve_to_executed = [
        _ts(facts[a].finished_at) - votes[a] for a in ids if a in votes and a in facts and facts[a].finished_at
    ]
    measured = {
        "request_to_decided": baselines.percentiles(to_decided),
        "request_to_decided_at": baselines.percentiles(to_stamp),
        "request_to_terminal": baselines.percentiles(to_terminal),
        "approve_to_executed": baselines.percentiles(approve_to_executed),
    }
    pairs = [
        ("request→decided", "request_to_decided", "two_hops", "raw chain, 2 hops"),
        ("request→decided_at stamp", "request_to_decided_at", "one_hop", "raw chain, 1 hop (producer→relay)"),
        ("request→terminal (allowed & denied)", "request_to_terminal", "two_hops", "raw chain, 2 hops"),
        ("approve→executed", "approve_to_executed", "hop_between_relays", "raw chain, relay→relay hop"),
    ]
    figures = []
    for label, key, base_key, base_name in pairs:
        for q in ("p50", "p95", "p99"):
            goal, met = "", None
            if target and key == "request_to_decided" and q == "p99" and rate in targets.P99_TARGETS_MS:
                limit = targets.P99_TARGETS_MS[rate]
                goal, met = f"< {limit:g} ms at {rate:g}/s", measured[key]["p99_ms"] < limit
            figures.append(
                Figure(
                    f"{label} {q} @ {rate:g}/s",
                    measured[key][f"{q}_ms"],
                    "ms",
                    chain[base_key][f"{q}_ms"],
                    f"{base_name} {q} @ {rate:g} msg/s",
                    "latency",
                    goal,
                    met,
                )
            )
    return measured, figures


def build_figures(bench: Bench, lifecycle: Lifecycle) -> tuple[list[Figure], dict[str, Any]]:
    details = bench.details
    sent = {a: s.sent_at for a, s in bench.agent.log.accepted.items()}
    floods = [p for n, p in bench.phases.items() if n.startswith("flood-")]
    scaled = [p for n, p in bench.phases.items() if n.startswith("scaled-")]
    flood_rates = [_throughput(lifecycle, p.ids, sent) for p in floods if p.ids]
    scaled_rates = [_throughput(lifecycle, p.ids, sent) for p in scaled if p.ids]
    intake_rates = [len(p.ids) / p.submit_seconds for p in floods if p.submit_seconds]

    def combined(rates: list[dict[str, float]]) -> float:
        seconds = sum(r["seconds"] for r in rates)
        return sum(r["terminal"] for r in rates) / seconds if seconds else float("nan")

    e2e = combined(flood_rates)
    chain = details["kafka_chain_throughput"]["per_second"]
    figures = []
    if "batched" in bench.phases and bench.phases["batched"].ids:
        batched = _throughput(lifecycle, bench.phases["batched"].ids, sent)["per_second"]
        figures.append(
            Figure(
                f"end-to-end throughput, batches of {bench.plan.batch_size} (POST /v1/actions:batch), 1 worker each",
                batched,
                "/s",
                chain,
                "raw aiokafka chain, 3 hops, msgs/s",
                target=f"≥ {targets.BATCH_TARGET:,.0f}/s sustained",
                met=batched >= targets.BATCH_TARGET,
            )
        )
    figures.append(
        Figure(
            "end-to-end throughput, one POST per action (keep-alive), 1 worker each",
            e2e,
            "/s",
            chain,
            "raw aiokafka chain, 3 hops, msgs/s",
            target=f"≥ {targets.POST_TARGET:,.0f}/s sustained",
            met=e2e >= targets.POST_TARGET,
        )
    )
    if scaled_rates:
        scaled_e2e = combined(scaled_rates)
        figures.append(
            Figure(
                "end-to-end throughput, 2 policy + 2 executor workers",
                scaled_e2e,
                "/s",
                e2e,
                "same, 1 worker each (this run)",
            )
        )
    backlog: dict[str, dict[int, float]] = {}
    for stage, stamp in (("policy", "decided_at"), ("executor", "finished_at")):
        paces = {
            n: _steady_pace(lifecycle, bench.phases[f"backlog-{stage}-{n}"].ids, stamp)
            for n in (1, 2)
            if f"backlog-{stage}-{n}" in bench.phases
        }
        if len(paces) == 2:
            backlog[stage] = paces
            figures.append(
                Figure(
                    f"{stage} stage draining a backlog of {BACKLOG_ACTIONS:,}, 2 workers",
                    paces[2],
                    "/s",
                    paces[1],
                    "same backlog, 1 worker (this run)",
                    target="rises with workers",
                    met=paces[2] > paces[1],
                )
            )
    opa = details["opa"]
    figures += [
        Figure(
            "policy stage: decisions/s during the flood",
            statistics.median(r["decided_per_second"] for r in flood_rates),
            "/s",
            opa["raw_httpx_c1"]["per_second"],
            "raw OPA, httpx, 1 at a time",
        ),
        Figure(
            "executor stage: executions/s during the flood",
            statistics.median(r["executed_per_second"] for r in flood_rates),
            "/s",
            chain,
            "raw aiokafka chain msgs/s",
        ),
        Figure(
            "intake requests/s (POST /v1/actions, accepted)",
            statistics.median(intake_rates),
            "/s",
            details["healthz_rps"],
            "GET /healthz, same client and pool",
        ),
        Figure(
            "OPA decisions/s via Keyturn PolicyDecider, 1 at a time",
            opa["keyturn_decider_c1"]["per_second"],
            "/s",
            opa["raw_httpx_c1"]["per_second"],
            "raw httpx POST, 1 at a time",
        ),
        Figure(
            "OPA decisions/s via Keyturn OpaClient.query, 16 in flight",
            opa["keyturn_opaclient_c16"]["per_second"],
            "/s",
            opa["raw_httpx_c16"]["per_second"],
            "raw httpx POST, 16 in flight",
        ),
        Figure(
            "OPA decisions/s via Keyturn PolicyDecider, 16 in flight",
            opa["keyturn_decider_c16"]["per_second"],
            "/s",
            opa["raw_httpx_c16"]["per_second"],
            "raw httpx POST, 16 in flight",
        ),
    ]
    if "opa_python_client_c1" in opa:
        figures += [
            Figure(
                "OPA decisions/s via opa-python-client 3.0, 1 at a time",
                opa["opa_python_client_c1"]["per_second"],
                "/s",
                opa["raw_httpx_again_c1"]["per_second"],
                "raw httpx POST, 1 at a time (interleaved with it)",
            ),
            Figure(
                "OPA decisions/s via opa-python-client 3.0, 16 in flight",
                opa["opa_python_client_c16"]["per_second"],
                "/s",
                opa["raw_httpx_again_c16"]["per_second"],
                "raw httpx POST, 16 in flight (interleaved with it)",
            ),
        ]
    masking = details.get("masking") or {}
    if masking.get("modes"):
        figures.append(
            Figure(
                "masking payloads/s (fast path, 1 core)",
                masking["modes"]["fast_path"]["payloads_per_second"],
                "/s",
                masking["modes"]["always_presidio"]["payloads_per_second"],
                "always-Presidio masking",
            )
        )
    verify = details.get("audit_verify", {})
    if verify.get("records_per_second"):
        figures.append(
            Figure(
                "audit verify records/s (keyturn audit verify)",
                verify["records_per_second"],
                "/s",
                verify.get("raw_read_per_second"),
                "raw read_committed read of the audit topic",
            )
        )
    latencies: dict[str, Any] = {}
    for rate in bench.plan.rates:
        measured, latency_figures = _latency_figures(
            lifecycle, bench, f"open-{rate:g}", rate, details["kafka_chain_latency"][rate], target=True
        )
        latencies[f"{rate:g}/s"] = measured
        figures += latency_figures
    measured_low, low_figures = _latency_figures(
        lifecycle, bench, "open-low", bench.plan.low_rate, details["kafka_chain_latency_low"], target=False
    )
    figures += low_figures
    warm = bench.memory[0]["rss_mib"]
    last = bench.memory[-1]
    for name, mib in last["rss_mib"].items():
        figures.append(
            Figure(
                f"RSS {name} after {last['actions']:,} actions",
                mib,
                "MiB",
                warm.get(name),
                "same process after warm-up",
                "memory",
            )
        )
    flood_detail = {
        "flood": flood_rates,
        "scaled": scaled_rates,
        "backlog": backlog,
        "intake_per_chunk": intake_rates,
        "latencies": {**latencies, f"{bench.plan.low_rate:g}/s": measured_low},
        "post_per_second": e2e,
    }
    if "batched" in bench.phases:
        flood_detail["batched"] = _throughput(lifecycle, bench.phases["batched"].ids, sent)
    return figures, flood_detail


def memory_slopes(memory: list[dict[str, Any]]) -> dict[str, float]:
    """Least-squares RSS growth per 10,000 actions, from the first flood chunk on."""
    points = [p for p in memory if p["label"].startswith("after flood")]
    if len(points) < 2:
        points = memory[1:]
    slopes = {}
    for name in points[0]["rss_mib"] if points else ():
        xs = [p["actions"] for p in points if name in p["rss_mib"]]
        ys = [p["rss_mib"][name] for p in points if name in p["rss_mib"]]
        if len(xs) >= 2 and max(xs) > min(xs):
            mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
            slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=False)) / sum(
                (x - mean_x) ** 2 for x in xs
            )
            slopes[name] = round(slope * 10_000, 2)
    return slopes


def _masking(seconds: float, stamp: str) -> dict[str, Any]:
    """bench/masking.py (the masking engineer's benchmark), as a subprocess; its JSON report."""
    import json

    out = RESULTS / f"{stamp}-masking.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "bench" / "masking.py"), "--seconds", str(seconds), "--json", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0 or not out.exists():
        return {"error": (result.stdout + result.stderr)[-2000:]}
    return json.loads(out.read_text())


async def audit_verify(settings: Settings) -> dict[str, Any]:
    """`keyturn audit verify` as a user runs it, and a raw read of the same topic as its baseline."""
    env = settings_env(settings)
    started = time.perf_counter()
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "keyturn.cli", "audit", "verify"],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    wall = time.perf_counter() - started
    text = result.stdout + result.stderr
    records = re.search(r"intact[^:]*: ([\d,]+) records", text)
    rate = re.search(r"\(([\d,]+) records/s\)", text)
    topic = Topics(settings.namespace, settings.partitions).audit
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
        max_partition_fetch_bytes=16 * MIB,
        fetch_max_bytes=64 * MIB,
    )
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        end = (await consumer.end_offsets([partition]))[partition]
        count, t0 = 0, time.perf_counter()
        while await consumer.position(partition) < end:
            for batch in (await consumer.getmany(partition, timeout_ms=1000, max_records=10000)).values():
                count += len(batch)
        raw_seconds = time.perf_counter() - t0
    finally:
        await consumer.stop()
    return {
        "ok": result.returncode == 0,
        "output": text.strip()[-1500:],
        "records": int(records.group(1).replace(",", "")) if records else None,
        "records_per_second": float(rate.group(1).replace(",", "")) if rate else None,
        "wall_seconds_with_startup": round(wall, 2),
        "raw_read_records": count,
        "raw_read_per_second": count / raw_seconds if raw_seconds else None,
    }


def closing_note(
    figures: list[Figure], details: dict[str, Any], slopes: dict[str, float], problems: list[str]
) -> list[str]:
    """Plain lines: targets met or missed, where the CPU went, what the profiles show."""
    lines = []
    for f in figures:
        if f.met is not None:
            lines.append(f"{'MET   ' if f.met else 'MISSED'} {f.name}: {f.value:,.1f} {f.unit} (target {f.target})")
    for label, cpu_key, count_key in (
        ("batched flood", "cpu_batched", "batched_actions"),
        ("one-POST flood", "cpu_flood", "flood_actions"),
    ):
        cpu = details.get(cpu_key, {})
        actions = details.get(count_key) or 1
        if not cpu:
            continue
        per_action = targets.per_action_ms(cpu, actions)
        total = sum(per_action.values())
        system = targets.system_ms(per_action)
        lines.append(
            f"CPU-ms per action, {label}: {system:.2f} over the system + {per_action.get(targets.GENERATOR, 0):.2f} "
            "load generator — "
            + ", ".join(f"{k} {v:.2f}" for k, v in sorted(per_action.items(), key=lambda kv: -kv[1]))
        )
        lines.append(
            f"  so {os.cpu_count()} cores cap this build at about {os.cpu_count() * 1000 / total:,.0f} actions/s "
            f"with the generator on them, {os.cpu_count() * 1000 / system:,.0f}/s without"
        )
    audit = details.get("audit_lag")
    if audit:
        lines.append(
            f"audit writer during the batched flood: {audit['events']:,} events, largest lag "
            f"{audit['max_lag_events']:,.0f} events, done {audit['catch_up_s']:.1f} s after the pipeline "
            f"({audit['audited_per_second']:,.0f} records/s for {audit['events_per_second']:,.0f} events/s)"
        )
    for name, summary in (details.get("profiles") or {}).items():
        if summary.get("samples"):
            top = ", ".join(f"{frame} {share:.0%}" for frame, share in summary["own"][:4])
            lines.append(f"profile {name} ({summary['samples']} samples): {top}")
    if slopes:
        lines.append(
            "RSS growth per 10,000 actions (least squares over the flood): "
            + ", ".join(f"{k} {v:+.1f} MiB" for k, v in slopes.items())
        )
    kinds = {
        "decided more than once": sum(" decided " in p and " times: " in p for p in problems),
        "executed more than once": sum(" executed " in p and " times: " in p for p in problems),
        "more than one terminal fact": sum("terminal facts" in p for p in problems),
        "no terminal state": sum("no terminal state" in p for p in problems),
        "audit incomplete or doubled": sum("audit" in p for p in problems),
    }
    lines.append(
        "invariants over every action of the run: "
        + (
            "all hold"
            if not problems
            else f"{len(problems)} PROBLEMS: "
            + ", ".join(f"{n} {k}" for k, n in kinds.items() if n)
            + " (details in the JSON)"
        )
    )
    return lines


def target_inputs(bench: Bench, flood: dict[str, Any]) -> dict[str, Any]:
    """What ``bench.targets`` judges, from this run's figures."""
    details = bench.details
    batched_ms = targets.per_action_ms(details.get("cpu_batched", {}), details.get("batched_actions", 0))
    post_ms = targets.per_action_ms(details.get("cpu_flood", {}), details.get("flood_actions", 0))
    nan = float("nan")
    return {
        "batched_per_second": flood.get("batched", {}).get("per_second", nan),
        "post_per_second": flood.get("post_per_second", nan),
        "batched_cpu_ms": targets.system_ms(batched_ms) if batched_ms else nan,
        "post_cpu_ms": targets.system_ms(post_ms) if post_ms else nan,
        "batched_cpu_ms_per_process": batched_ms,
        "post_cpu_ms_per_process": post_ms,
        "healthz_per_second": details.get("healthz_rps", nan),
        "p99_decided_ms": {
            rate: flood["latencies"][f"{rate:g}/s"]["request_to_decided"]["p99_ms"] for rate in bench.plan.rates
        },
        "p99_chain_ms": {rate: details["kafka_chain_latency"][rate]["two_hops"]["p99_ms"] for rate in bench.plan.rates},
        "audit": details.get("audit_lag", {}),
    }


def main() -> int:
    plan = Plan()
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    info = machine.describe()
    console.print(
        f"[bold]Keyturn benchmark[/bold] {stamp}: {info['cores']} cores, {info['memory_gib']} GiB, "
        f"{info['cpu_model']}, "
        f"load average {info['load_average_at_start']}; plan {plan}"
    )
    servers = PrivateServers(
        REPO_ROOT / ".run" / "bench",
        kafka_port=int(_env("BENCH_KAFKA_PORT", 29092)),
        opa_port=int(_env("BENCH_OPA_PORT", 28181)),
        pg_port=int(_env("BENCH_PG_PORT", 25433)),
        # as production serves policy: a bundle whose revision comes with every answer (no module
        # re-read once a second for it, as development's watched directory needs)
        opa_bundle=os.environ.get("BENCH_OPA_WATCH") != "1",
    )
    servers.down(remove=True)  # a fresh broker and database every run
    servers.up()
    # the load generator is one caller sending all the stack takes: no limit per caller (KEYTURN_SUBMISSION_LIMIT)
    settings = servers.settings("bench", submission_limit="")
    procs = ServiceProcesses(settings, log_dir=RESULTS / "logs" / stamp, preloaded=False)
    bench = Bench(plan, settings, procs, servers, stamp)
    try:
        procs.start_all()
        lifecycle = asyncio.run(bench.run())
        bench.note("keyturn audit verify")
        bench.details["audit_verify"] = asyncio.run(audit_verify(settings))
        bench.note("keyturn report over the same audit (bench/audit_report.py)")
        bench.details["audit_report"] = audit_report.against(settings)
    finally:
        procs.stop_all()
        servers.down(remove=os.environ.get("BENCH_KEEP") != "1")

    accepted = set(bench.agent.log.accepted)
    problems = lifecycle.problems(accepted)
    figures, flood = build_figures(bench, lifecycle)
    slopes = memory_slopes(bench.memory)
    cpu = bench.details.get("cpu_flood", {})
    cpu_per_k = {k: round(v * 1000 / max(1, bench.details.get("flood_actions", 1)), 3) for k, v in cpu.items()}
    print_table(figures, info, console)
    inputs = target_inputs(bench, flood)
    verdicts = targets.targets(inputs)
    model = targets.CostModel(
        inputs["batched_cpu_ms_per_process"] or inputs["post_cpu_ms_per_process"], partitions=bench.settings.partitions
    )
    console.print("\n[bold]Issue 14 targets[/bold] (each beside its baseline from this run)")
    console.print("| target | measured | goal | verdict | baseline (same run) |\n|---|---:|---|---|---|")
    for target in verdicts:
        console.print(target.row(), highlight=False)
    for line in model.lines():
        console.print(line, highlight=False)
    note = closing_note(figures, bench.details, slopes, problems)
    for line in note:
        console.print(line, highlight=False)
    for problem in problems[:20]:
        console.print(f"[red]problem[/red] {problem}", highlight=False)

    log = bench.agent.log
    details = {
        "stamp": stamp,
        "machine": info,
        "plan": plan.__dict__,
        "namespace": settings.namespace,
        "phases": {
            n: {"actions": len(p.ids), "submit_seconds": round(p.submit_seconds, 2), "drained": p.drained, **p.extra}
            for n, p in bench.phases.items()
        },
        "accepted": len(accepted),
        "refused": dict(log.refused),
        "retries": log.retries,
        "mix": {k: len(log.of_kind(k)) for k in (ALLOWED, DENIED, APPROVAL)},
        "votes": len(log.votes),
        "vote_refusals": dict(log.vote_refusals),
        "throughput": flood,
        "memory": bench.memory,
        "memory_slope_mib_per_10k": slopes,
        "cpu_seconds_per_1k_actions": cpu_per_k,
        "lifecycle": lifecycle.summary(accepted),
        "problems": problems[:200],
        "closing_note": note,
        "targets": [t.__dict__ for t in verdicts],
        "target_inputs": inputs,
        "cost_model": model.lines(),
        **bench.details,
    }
    json_path = RESULTS / f"{stamp}.json"
    png_path = RESULTS / f"{stamp}.png"
    write_json(json_path, figures, details)
    drawn = write_chart(png_path, figures, bench.memory, cpu_per_k, info)
    console.print(
        f"wrote {json_path.relative_to(REPO_ROOT)}"
        + (f" and {png_path.relative_to(REPO_ROOT)}" if drawn else " (no matplotlib: no chart)")
    )
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
