"""`python -m bench.flood`: one batched flood and where its CPU went, in about two minutes.

The inner loop of throughput work: `make bench` measures everything beside its baselines (about
15 minutes); this runs only its batched flood (``BENCH_BATCH_SIZE`` actions per
``POST /v1/actions:batch``, 4 in flight, the same mix and scripted approver) on a stack of its
own that stays up between runs (``.run/flood``, ports 39092 / 38181 / 35433), and prints:

- actions/s reaching a terminal state, and CPU-ms per action of every process (the load
  generator apart), from /proc, as ``make bench`` counts them;
- PostgreSQL's share: transactions and rows written per action by table, and how much of its
  CPU went to backends that ended during the flood (a new connection costs a backend);
- the approval API calls the scripted approver made, by answer;
- with ``FLOOD_PROFILE=1``, a py-spy profile of each service during the flood (the functions
  that hold the CPU, as ``make bench`` summarises them).

    FLOOD_ACTIONS=4000  FLOOD_PROFILE=1  FLOOD_PARTITIONS=8  FLOOD_DOWN=1 (stop the stack afterwards)
    FLOOD_EVENT_LOOP=asyncio  (the services' event loop; default uvloop)
    FLOOD_WORKER_GATHER_MS=20  (the stream workers' batch window; default the settings')
    FLOOD_ACCESS_LOG=1  (the HTTP servers' access log on, as before the sixth round)
    FLOOD_EXECUTOR_IN_FLIGHT=1  (the executor's batches in hand; default the settings')
    FLOOD_POST=32  (one POST per action instead, 32 in flight, as ``make bench``'s one-POST flood)
    FLOOD_IDLE_S=30  (first, after the warm-up: CPU-ms per second of every process at rest)
    FLOOD_OPEN=200  FLOOD_OPEN_S=15  (then an open loop at 200/s, one POST per action: request→decided
                     p50/p95/p99 and where it went: POST → ``requested`` record, → ``decided_at``,
                     → ``decided`` record, from the records' own timestamps)

One run is one sample on a noisy machine: compare builds by running each twice, back to back.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections import Counter
from datetime import datetime
from typing import Any

import aiohttp
import psycopg
from psycopg import sql

from bench import machine, profile
from bench.audit import drop_topics
from bench.baselines import percentiles
from bench.load import Agent
from bench.run import Drain
from keyturn.bus.codec import registry
from keyturn.bus.topics import Topics
from keyturn.config import REPO_ROOT, Settings
from keyturn.db import schema_name
from tests.chaos.invariants import read_all
from tests.processes import PrivateServers, ServiceProcesses

ACTIONS = int(os.environ.get("FLOOD_ACTIONS", 4000))
BATCH = int(os.environ.get("BENCH_BATCH_SIZE", 200))
POST_IN_FLIGHT = int(os.environ.get("FLOOD_POST", 0))  # 0: batched
OPEN_RATE = float(os.environ.get("FLOOD_OPEN", 0))  # 0: no open-loop probe
OPEN_SECONDS = float(os.environ.get("FLOOD_OPEN_S", 15))
IDLE_SECONDS = float(os.environ.get("FLOOD_IDLE_S", 0))  # 0: no at-rest measurement
SERVICES = ("intake", "policy", "executor", "audit", "approval")


def table_writes(url: str) -> tuple[int, dict[str, tuple[int, int, int]]]:
    """Transactions so far, and rows inserted / updated / deleted per table of every schema."""
    with psycopg.connect(url, autocommit=True) as conn:
        xacts = conn.execute("SELECT sum(xact_commit + xact_rollback) FROM pg_stat_database").fetchone()
        rows = conn.execute("SELECT schemaname, relname, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables")
        return int(xacts[0] if xacts else 0), {f"{s}.{r}": (i, u, d) for s, r, i, u, d in rows.fetchall()}


class Backends:
    """PostgreSQL's children, sampled during the flood: what the ones that ended had spent."""

    def __init__(self, postmaster: int) -> None:
        self.postmaster = postmaster
        self.seen: dict[int, float] = {}
        self.at_start = self.sample()
        self.postmaster_at_start = machine.cpu_seconds(postmaster)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def sample(self) -> dict[int, float]:
        return {pid: machine.cpu_seconds(pid) for pid in machine.children(self.postmaster)}

    def _follow(self) -> None:
        while not self._stop.is_set():
            self.seen.update(self.sample())
            time.sleep(0.05)

    def ended(self, spent_in_all: float) -> tuple[int, float]:
        """(backends that ended during the flood, CPU seconds they spent): what PostgreSQL spent in
        all (``spent_in_all``, its children reaped included) less what the live ones spent."""
        self._stop.set()
        self._thread.join()
        alive = self.sample()
        gone = [pid for pid in self.seen if pid not in alive]
        live = sum(cpu - self.at_start.get(pid, 0.0) for pid, cpu in alive.items())
        postmaster = machine.cpu_seconds(self.postmaster) - self.postmaster_at_start
        return len(gone), max(0.0, spent_in_all - live - postmaster)


def desk_calls(calls: Counter) -> aiohttp.TraceConfig:
    """A trace that counts the scripted approver's approval API calls by route and answer."""
    trace = aiohttp.TraceConfig()

    async def ended(_session: Any, _context: Any, params: Any) -> None:
        route = "vote" if params.url.path.endswith("/votes") else "show"
        calls[f"{params.method} {route} {params.response.status}"] += 1

    trace.on_request_end.append(ended)
    return trace


async def flood(servers: PrivateServers, settings: Settings, procs: ServiceProcesses, out: Any) -> bool:
    calls: Counter = Counter()
    agent = Agent(settings, connections=32, retry_for_s=10, desk_trace=desk_calls(calls))
    agent.start_approvers()
    probe: dict[str, float] = {}  # the open-loop probe's actions and when each was due
    slip: dict[str, float] = {}
    try:
        async with Drain(settings) as drain:
            await agent.closed_loop(300, 16)  # warm-up
            await drain.wait(agent, 300)
            pids = {name: (proc.pid, False) for name, proc in procs.procs.items()}
            for server, children in (("kafka", False), ("opa", False), ("postgres", True)):
                if (pid := servers.pid(server)) is not None:
                    pids[server] = (pid, children)
            meter = machine.CpuMeter(pids)
            if IDLE_SECONDS:
                await at_rest(meter, IDLE_SECONDS)
            xacts_before, tables_before = table_writes(settings.database_url)
            backends = Backends(pids["postgres"][0])
            calls.clear()
            samplers = (
                {name: profile.start(procs.pid(name), 20, out / f"{name}.txt") for name in SERVICES}
                if os.environ.get("FLOOD_PROFILE") == "1"
                else {}
            )
            before, started = meter.snapshot(), time.monotonic()
            if POST_IN_FLIGHT:
                ids, _ = await agent.closed_loop(ACTIONS, POST_IN_FLIGHT)
            else:
                ids, _ = await agent.batched(ACTIONS, BATCH, 4)
            drained = await drain.wait(agent, 600, step=0.05)
            seconds = time.monotonic() - started
            spent = machine.CpuMeter.spent(before, meter.snapshot())
            ended, ended_cpu = backends.ended(spent.get("postgres", 0.0))
            xacts_after, tables_after = table_writes(settings.database_url)
            for sampler in samplers.values():
                if sampler is not None:
                    sampler.wait()
            if drained and OPEN_RATE:
                sent_before = set(agent.log.accepted)
                _, slip = await agent.open_loop(OPEN_RATE, OPEN_SECONDS)
                await drain.wait(agent, 600, step=0.05)
                probe = {a: s.sent_at for a, s in agent.log.accepted.items() if a not in sent_before}
    finally:
        await agent.close()
    report(spent, ids, seconds, drained, xacts_before, xacts_after, tables_before, tables_after, ended, ended_cpu)
    print("approval API calls of the scripted approver:", dict(calls))
    for name in samplers:
        summary = profile.summarise(out / f"{name}.txt", top=12)
        print(f"{name}: {summary['samples']} busy samples")
        for frame, share in summary["own"]:
            print(f"   own {share:5.1%}  {frame}")
        for frame, share in summary["inclusive"][:10]:
            print(f"   inc {share:5.1%}  {frame}")
    if drained and OPEN_RATE:
        await where_latency_went(settings, probe)
        late = f"p99 {slip['p99_s'] * 1000:.1f} ms, max {slip['max_s'] * 1000:.1f} ms"
        print(f"  the generator's own schedule slipped (counted in every figure above): {late}")
    return drained


async def at_rest(meter: machine.CpuMeter, seconds: float) -> None:
    """What each process spends while nothing arrives, after the warm-up and before the flood:
    CPU-ms per second (a deployment is mostly at rest; fetch loops, timers, heartbeats)."""
    await asyncio.sleep(5)  # the warm-up's last batches and commits settle
    before = meter.snapshot()
    await asyncio.sleep(seconds)
    spent = machine.CpuMeter.spent(before, meter.snapshot())
    print(f"at rest for {seconds:.0f}s, CPU-ms per second:")
    for name, cpu in sorted(spent.items(), key=lambda item: -item[1]):
        print(f"  {name:18} {cpu * 1000 / seconds:7.1f}")
    print(f"  {'all':18} {sum(spent.values()) * 1000 / seconds:7.1f}")


async def where_latency_went(settings: Settings, sent: dict[str, float]) -> None:
    """request→decided of the open-loop probe, and its parts from the records' own timestamps."""
    topics = Topics(settings.namespace, settings.partitions)
    requested, decided = await asyncio.gather(
        read_all(settings, topics.requested, settings.partitions),
        read_all(settings, topics.decided, settings.partitions),
    )
    codec = registry()
    appended: dict[str, float] = {}  # action id -> the requested record's timestamp
    parts: dict[str, list[float]] = {
        "POST → requested record": [],
        "requested record → decided_at": [],
        "decided_at → decided record": [],
        "request → decided_at": [],
        "request → decided record": [],  # what make bench's target counts
    }
    for message in requested:
        _, record = codec.decode(message.value or b"")
        if record["action_id"] in sent:
            appended[record["action_id"]] = message.timestamp / 1000
    for message in decided:
        _, record = codec.decode(message.value or b"")
        action_id = record["action_id"]
        if action_id not in sent or action_id not in appended:
            continue
        at = record["decided_at"].timestamp()
        parts["POST → requested record"].append(appended[action_id] - sent[action_id])
        parts["requested record → decided_at"].append(at - appended[action_id])
        parts["decided_at → decided record"].append(message.timestamp / 1000 - at)
        parts["request → decided_at"].append(at - sent[action_id])
        parts["request → decided record"].append(message.timestamp / 1000 - sent[action_id])
    print(f"open loop at {OPEN_RATE:g}/s for {OPEN_SECONDS:g}s, one POST per action ({len(sent)} accepted):")
    for name, values in parts.items():
        q = percentiles(values)
        print(
            f"  {name:32} p50 {q['p50_ms']:6.1f}  p95 {q['p95_ms']:6.1f}"
            f"  p99 {q['p99_ms']:6.1f}  max {q['max_ms']:7.1f} ms"
        )


def report(
    spent: dict[str, float],
    ids: list[str],
    seconds: float,
    drained: bool,
    xacts_before: int,
    xacts_after: int,
    tables_before: dict[str, tuple[int, int, int]],
    tables_after: dict[str, tuple[int, int, int]],
    ended: int,
    ended_cpu: float,
) -> None:
    n = len(ids)
    if not drained:
        print(f"{n} actions submitted in {seconds:.1f}s did not all reach a terminal state: no figure is valid")
        return
    print(f"{n} actions in {seconds:.1f}s: {n / seconds:.1f}/s reached a terminal state")
    system = 0.0
    for name, cpu in sorted(spent.items(), key=lambda kv: -kv[1]):
        ms = cpu * 1000 / n
        system += ms if name != "load generator" else 0.0
        print(f"  {name:16} {ms:6.2f} CPU-ms per action")
    print(f"  {'system':16} {system:6.2f} CPU-ms per action (every process but the load generator)")
    print(
        f"PostgreSQL: {(xacts_after - xacts_before) / n:.2f} transactions per action; {ended} backends ended "
        f"during the flood, having spent {ended_cpu * 1000 / n:.2f} CPU-ms per action"
    )
    for table, after in sorted(tables_after.items()):
        was = tables_before.get(table, (0, 0, 0))
        ins, upd, dele = ((a - b) / n for a, b in zip(after, was, strict=True))
        if ins + upd + dele > 0.01:
            print(f"  {table.split('.', 1)[1]:32} inserted {ins:.2f}  updated {upd:.2f}  deleted {dele:.2f} per action")


def forget(settings: Settings) -> None:
    """Delete the flood's topics and drop its schema (best effort: a stack that stopped keeps them)."""
    try:
        asyncio.run(drop_topics(settings))
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema_name(settings.namespace)))
            )
    except Exception as exc:
        print(f"the flood's topics or schema were left behind: {type(exc).__name__}: {exc}")


def main() -> int:
    # OPA as production runs it (a bundle with a revision); FLOOD_OPA_WATCH=1 for development's
    # watched directory (a running OPA keeps its mode: stop it to switch)
    servers = PrivateServers(
        REPO_ROOT / ".run" / "flood",
        kafka_port=39092,
        opa_port=38181,
        pg_port=35433,
        opa_bundle=os.environ.get("FLOOD_OPA_WATCH") != "1",
    )
    servers.up()
    namespace = "fl" + datetime.now().strftime("%H%M%S")
    partitions = os.environ.get("FLOOD_PARTITIONS")  # the topics' partitions (default: the settings')
    extra: dict[str, Any] = {"partitions": int(partitions)} if partitions else {}
    if loop := os.environ.get("FLOOD_EVENT_LOOP"):  # uvloop (the default) or asyncio
        extra["event_loop"] = loop
    if gather := os.environ.get("FLOOD_WORKER_GATHER_MS"):  # the stream workers' batch window
        extra["worker_gather_ms"] = float(gather)
    if young := os.environ.get("FLOOD_GC_YOUNG"):  # the services' young-generation threshold (0: Python's)
        extra["gc_young_threshold"] = int(young)
    if in_flight := os.environ.get("FLOOD_EXECUTOR_IN_FLIGHT"):  # the executor's batches in hand
        extra["executor_batches_in_flight"] = int(in_flight)
    if os.environ.get("FLOOD_ACCESS_LOG") == "1":  # a log line per HTTP request (off by default)
        extra["access_log"] = 1
    # the load generator is one caller sending all the stack takes: no limit per caller (KEYTURN_SUBMISSION_LIMIT)
    settings = servers.settings(namespace, submission_limit="", **extra)
    out = REPO_ROOT / "bench" / "results" / "flood" / namespace
    procs = ServiceProcesses(settings, log_dir=out / "logs", preloaded=False)
    drained = False
    try:
        procs.start_all()
        drained = asyncio.run(flood(servers, settings, procs, out))
    finally:
        procs.stop_all()
        if os.environ.get("FLOOD_DOWN") == "1":
            servers.down(remove=True)
        elif drained:  # the kept broker would otherwise hold every earlier flood's partitions (16 per
            # topic), whose upkeep showed in the next flood's Kafka figure; a flood that failed keeps
            # its topics and schema to be looked at
            forget(settings)
    return 0 if drained else 1


if __name__ == "__main__":
    sys.exit(main())
