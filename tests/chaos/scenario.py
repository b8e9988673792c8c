"""A fault drill under load: kill and restart every service in turn, restart the broker, stop
OPA, stop PostgreSQL — while an agent keeps submitting and an approver keeps answering — then
prove nothing was lost, doubled or left hanging.

Everything runs on servers of the drill's own (``PrivateServers``: its own KEYTURN_RUN and
ports), so the shared development servers and other test runs never see a fault.
``make test`` runs ``SHORT`` (tests/chaos/test_short_chaos.py); ``make chaos`` runs ``LONG``.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.load import APPROVAL, Agent
from keyturn.config import REPO_ROOT, Settings
from keyturn.core.lifecycle import ActionState
from tests.chaos.invariants import Lifecycle, read_lifecycle
from tests.processes import ARTIFACTS, SERVICES, PrivateServers, ServiceProcesses, settings_env


@dataclass(frozen=True)
class Drill:
    """How hard and how long each fault is."""

    rate: float  # submissions per second, throughout
    service_down_s: float  # a SIGKILLed service stays down this long before it is started again
    between_s: float  # load without faults between two faults
    broker_down_s: float
    opa_down_s: float
    postgres_down_s: float
    drain_timeout_s: float  # after the faults, every accepted action must be terminal within this
    approvals_within_s: float = 120.0  # after the load stops, the approver gets this long to answer
    status_within_s: float = 60.0  # the status API gets this long to show every terminal state
    policy_unavailable_after_s: float = 90.0  # longer than the OPA outage: requests wait, then resume
    min_actions: int = 0  # the load goes on after the faults until at least this many were submitted


SHORT = Drill(
    rate=8,
    service_down_s=0.5,
    between_s=1.5,
    broker_down_s=2,
    opa_down_s=6,
    postgres_down_s=2,
    drain_timeout_s=60,
    approvals_within_s=45,
    status_within_s=30,
)


def long_drill(environ: Mapping[str, str] = os.environ) -> Drill:
    """The long drill: by default at least 10,000 actions at 200/s through every fault;
    ``KEYTURN_CHAOS_RATE`` and ``KEYTURN_CHAOS_ACTIONS`` change the rate and the count
    (``make chaos CHAOS_RATE=… CHAOS_ACTIONS=…``). The drain gets longer with the count."""
    rate = float(environ.get("KEYTURN_CHAOS_RATE") or 200)
    actions = int(environ.get("KEYTURN_CHAOS_ACTIONS") or 10_000)
    return Drill(
        rate=rate,
        service_down_s=5,
        between_s=10,
        broker_down_s=10,
        opa_down_s=30,
        postgres_down_s=10,
        drain_timeout_s=420 + actions / 50,
        approvals_within_s=120 + actions / 100,
        min_actions=actions,
    )


LONG = long_drill()


@dataclass
class DrillReport:
    """What happened, for the assertion messages and the printed summary."""

    timeline: list[str] = field(default_factory=list)
    accepted: set[str] = field(default_factory=set)
    lifecycle: Lifecycle | None = None
    problems: list[str] = field(default_factory=list)
    status_mismatches: list[str] = field(default_factory=list)
    verify_output: str = ""
    verify_ok: bool = False
    client: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def mark(self, text: str) -> None:
        line = f"{time.monotonic() - self.started:6.1f}s {text}"
        self.timeline.append(line)
        print(line, flush=True)

    def summary(self) -> str:
        lines = [*self.timeline]
        if self.lifecycle is not None:
            lines.append(f"summary: {self.lifecycle.summary(self.accepted)}")
        lines.append(f"client: {self.client}")
        lines.append(f"audit verify: {'passed' if self.verify_ok else 'FAILED'}: {self.verify_output.strip()[-600:]}")
        kinds = Counter(re.sub(r"^[0-9a-f-]{36}: ", "", p).split(" (")[0].split(":")[0] for p in self.problems)
        lines.append(f"problems by kind: {dict(kinds)}")
        lines += [f"problem: {p}" for p in self.problems[:40]]
        lines += [f"status mismatch: {m}" for m in self.status_mismatches[:20]]
        return "\n".join(lines)


class BackgroundLoad:
    """An agent submitting at a fixed rate and an approver answering, on a thread of their own.
    Each submission is retried (same idempotency key) for up to a minute, as a careful agent would."""

    def __init__(self, settings: Settings, rate: float) -> None:
        self.settings = settings
        self.rate = rate
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="chaos-load", daemon=True)
        self.agent: Agent | None = None
        self.error: BaseException | None = None
        self.submitted = 0  # how many submissions were started so far

    def start(self) -> None:
        self._thread.start()

    def finish(self, approvals_within_s: float = 120) -> Agent:
        """Stop submitting; wait until every submission answered and every approval was given."""
        self._approvals_within_s = approvals_within_s
        self._stop.set()
        self._thread.join(approvals_within_s + 180)
        if self.error is not None:
            raise self.error
        assert self.agent is not None
        return self.agent

    async def _run(self) -> None:
        try:
            self.agent = agent = Agent(self.settings, connections=16, retry_for_s=60)
            agent.start_approvers(4)
            pending: set[asyncio.Task] = set()
            started, number = time.monotonic(), 0
            while not self._stop.is_set():
                delay = started + number / self.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(min(delay, 0.2))
                    continue
                task = asyncio.create_task(agent.submit(number))
                pending.add(task)
                task.add_done_callback(pending.discard)
                number += 1
                self.submitted = number
            agent.next_number = number
            await asyncio.gather(*pending)
            deadline = time.monotonic() + self._approvals_within_s
            want = agent.log.of_kind(APPROVAL) | agent.unclaimed_approvals
            while time.monotonic() < deadline and not want <= agent.log.answered:  # noqa: ASYNC110 - polls another task's log
                await asyncio.sleep(0.5)
            await agent.close()
        except BaseException as error:  # surfaced by finish()
            self.error = error


def drill_settings(servers: PrivateServers, drill: Drill) -> Settings:
    # the drill's agent is one caller at the drill's rate, retrying by the thousand under faults:
    # no limit per caller (KEYTURN_SUBMISSION_LIMIT), which would only slow the drill
    return servers.settings("chaos", policy_unavailable_after_s=drill.policy_unavailable_after_s, submission_limit="")


@contextmanager
def drill_stack(drill: Drill) -> Iterator[tuple[Settings, PrivateServers, ServiceProcesses]]:
    """Private servers plus the five services; everything stopped (and the servers' data
    removed) on the way out."""
    servers = PrivateServers(REPO_ROOT / ".run" / f"chaos-{secrets.token_hex(3)}")
    try:
        servers.up()
        settings = drill_settings(servers, drill)
        procs = ServiceProcesses(settings, log_dir=ARTIFACTS / "logs" / settings.namespace)
        try:
            procs.start_all()
            yield settings, servers, procs
        finally:
            procs.stop_all()
    finally:
        servers.down(remove=True)


def run_drill(drill: Drill, settings: Settings, servers: PrivateServers, procs: ServiceProcesses) -> DrillReport:
    """Faults under load, then the drain, the invariants and `keyturn audit verify`."""
    report = DrillReport()
    load = BackgroundLoad(settings, drill.rate)
    load.start()
    report.mark(f"load started: {drill.rate:g} submissions/s, mixed allowed / denied / needs approval")
    time.sleep(drill.between_s)
    for name in SERVICES:
        report.mark(f"SIGKILL {name} (pid {procs.pid(name)})")
        procs.stop(name, kill=True)
        time.sleep(drill.service_down_s)
        procs.start(name)
        report.mark(f"restarted {name} (pid {procs.pid(name)})")
        time.sleep(drill.between_s)
    procs.wait_ready()
    fault(report, servers, "kafka", drill.broker_down_s, drill.between_s)
    fault(report, servers, "opa", drill.opa_down_s, drill.between_s)
    fault(report, servers, "postgres", drill.postgres_down_s, drill.between_s)
    while load.submitted < drill.min_actions and load.error is None:
        time.sleep(1)
    agent = load.finish(drill.approvals_within_s)
    report.client = {
        "submitted": agent.next_number,
        "accepted": len(agent.log.accepted),
        "refused": dict(agent.log.refused),
        "retries": agent.log.retries,
        "votes": len(agent.log.votes),
        "vote_refusals": dict(agent.log.vote_refusals),
    }
    report.mark(f"load stopped: {report.client}")
    exited = procs.exited()
    if exited:
        report.problems.append(f"services exited on their own after the faults: {exited} (logs in {procs.log_dir})")
    drain(report, settings, agent, drill.drain_timeout_s)
    check_status_api(report, settings, agent, drill.status_within_s)
    verify_audit(report, settings)
    return report


def fault(report: DrillReport, servers: PrivateServers, server: str, down_s: float, between_s: float) -> None:
    """Stop one server (its own deploy script, as an operator would), wait, start it again."""
    report.mark(f"stopping {server}")
    servers.stop(server)
    report.mark(f"{server} stopped; down for {down_s:g}s")
    time.sleep(down_s)
    servers.start(server)
    report.mark(f"{server} started again")
    time.sleep(between_s)


def drain(report: DrillReport, settings: Settings, agent: Agent, timeout: float) -> None:
    """Wait until every accepted action is terminal and every event is audited (or time runs out);
    then record every broken invariant."""
    deadline = time.monotonic() + timeout
    while True:
        lifecycle = read_lifecycle(settings)
        # accepted = what the agent was told, plus anything the intake accepted whose answer was lost
        accepted = set(agent.log.accepted) | {a for a, f in lifecycle.actions.items() if f.requested_copies}
        problems = lifecycle.problems(accepted)
        if not problems or time.monotonic() > deadline:
            break
        time.sleep(3)
    report.lifecycle, report.accepted, report.problems = lifecycle, accepted, problems
    report.mark(f"drained: {lifecycle.summary(accepted)}; {len(problems)} problems")


def check_status_api(report: DrillReport, settings: Settings, agent: Agent, within_s: float = 60) -> None:
    """What the requester sees (GET /v1/actions/{id}) must be the one terminal state of the topics;
    the intake gets ``within_s`` to apply events it has not read yet."""
    assert report.lifecycle is not None
    facts = report.lifecycle.actions
    expected = {a: facts[a].terminal_state if a in facts else None for a in agent.log.accepted}
    headers = {"Authorization": agent.intake.headers["Authorization"]}
    waiting, seen = set(expected), {}
    why: Counter[str] = Counter()  # the first reason of each action that ended failed or outcome_unknown
    deadline = time.monotonic() + within_s
    with httpx.Client(base_url=settings.intake_url, headers=headers, timeout=30) as client:
        while waiting:
            for action_id in sorted(waiting):
                response = client.get(f"/v1/actions/{action_id}")
                body = response.json() if response.status_code == 200 else {}
                seen[action_id] = body.get("state") if body else f"HTTP {response.status_code}"
                if seen[action_id] == expected[action_id]:
                    waiting.discard(action_id)
                    if seen[action_id] in ("failed", "outcome_unknown"):
                        why[f"{seen[action_id]}: {(body.get('reasons') or ['no reason given'])[0][:120]}"] += 1
            if not waiting or time.monotonic() > deadline:
                break
            time.sleep(1)
    report.status_mismatches = [f"{a}: status API says {seen[a]}, topics say {expected[a]}" for a in sorted(waiting)]
    report.status_mismatches += [
        f"{a}: not terminal ({s})"
        for a, s in sorted(seen.items())
        if a not in waiting and (s is None or not ActionState(s).is_terminal)
    ]
    report.mark(f"status API checked for {len(expected)} actions: {len(report.status_mismatches)} mismatches")
    if why:  # expected under faults (a target down, a kill mid-command), but each says why
        report.mark("why: " + "; ".join(f"{count} × {reason}" for reason, count in why.most_common(6)))


def verify_audit(report: DrillReport, settings: Settings) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "keyturn.cli", "audit", "verify"],
        env=settings_env(settings),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    report.verify_ok = result.returncode == 0
    report.verify_output = re.sub(r"\s+\n", "\n", result.stdout + result.stderr)
    report.mark(f"keyturn audit verify: exit {result.returncode}: {report.verify_output.strip()[-300:]}")


def assert_survived(report: DrillReport) -> None:
    """What every drill asserts afterwards, printed first so a failure shows the whole timeline."""
    print(report.summary())
    assert report.accepted, "the load generator got nothing accepted:\n" + report.summary()
    assert not report.problems, "invariants broken:\n" + report.summary()
    assert not report.status_mismatches, "the status API disagrees with the topics:\n" + report.summary()
    assert report.verify_ok, "keyturn audit verify failed:\n" + report.summary()
