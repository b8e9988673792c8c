"""Time of ``keyturn report`` beside ``keyturn audit verify`` over the same audit topic.

    KEYTURN_KAFKA_BOOTSTRAP=127.0.0.1:9092 python bench/audit_report.py [--actions 100000] [--json out.json]

Writes a scratch namespace's audit topic the way the audit worker does (the real chain, a signed
checkpoint every 100 records, transactions of 500 records) with a month of varied actions:
reads allowed and run (some fail), denials with the rules that fired, grants approved (some within
seconds), denied or left to expire, refused self-approvals, break-glass uses. Then runs, as a user
would (a fresh process each, start-up included), ``keyturn audit verify`` and ``keyturn report``
over the whole month, HTML and PDF, and deletes its topics. The target: the report over 100,000
actions in under a minute.

``against(settings)`` times the same two commands over an existing namespace (``make bench``'s
own stream, see bench/run.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "services"))
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat  # noqa: E402

from bench.audit import CheckpointedHistory, drop_topics, fill  # noqa: E402
from keyturn.config import Settings  # noqa: E402
from tests.processes import settings_env  # noqa: E402
from tests.unit.audit_history import SIGNER, T0  # noqa: E402

TARGET_S = 60.0
SPREAD_S = 25.0  # seconds between two requests: 100,000 actions span 29 days


def build(actions: int) -> list:
    """A month of varied actions, chained and checkpointed like the audit worker does."""
    history = CheckpointedHistory()
    approvers = ("human:carol", "human:dave", "human:erin", "human:frank")
    for n in range(actions):
        start = n * SPREAD_S
        requester = f"agent:bench-{n % 40}"
        revision = "sha256:rev1" if n < actions // 2 else "sha256:rev2"
        kind = n % 10
        if kind < 5:
            request = history.request(f"read-{n}", "read.table", start, requester=requester)
            history.decide(request, "allowed", start + 0.05, revision=revision)
            history.execute(request, "failed" if n % 97 == 0 else "succeeded", start + 0.1)
            continue
        if kind == 5:
            request = history.request(f"delete-{n}", "secrets.delete", start, requester=requester)
            history.decide(request, "denied", start + 0.05, revision=revision, rules=(f"deny.rule_{n % 7}",))
            continue
        if kind == 6 and n % 50 == 6:
            request = history.request(f"glass-{n}", "iam.role.grant", start, requester=requester)
            history.decide(request, "allowed", start + 0.05, revision=revision, break_glass=True)
            history.execute(request, "succeeded", start + 0.1)
            continue
        request = history.request(f"grant-{n}", "iam.role.grant", start, requester=requester)
        groups = (("security", 1),) if n % 3 else (("security", 1), ("platform", 1))
        decision = history.decide(request, "needs_approval", start + 0.05, groups=groups, revision=revision)
        if n % 9 == 0:
            history.vote(decision, "human:alice", "approve", start + 0.5, accepted=False)
        if n % 23 == 0:
            history.resolve(decision, "expired", start + 3600)
            continue
        approve = n % 4 != 0
        answered = start + (4 if n % 11 == 0 else 30 + n % 600)
        vote = history.vote(decision, approvers[n % len(approvers)], "approve" if approve else "deny", answered)
        history.resolve(decision, "approved" if approve else "denied", answered, (vote,))
        if approve:
            history.execute(request, "succeeded", answered + 0.2)
    history.records.append(history.chain.checkpoint(history.records[-1].recorded_at))
    return history.records


def _run(command: list[str], env: dict[str, str]) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    """Wall seconds, CPU seconds (user + system of the child) and the result of one command.

    The CPU time is what the command costs; on a shared machine the wall time also counts the
    time other processes held the cores."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, result


def against(
    settings: Settings, *, public_key: Path | None = None, since: str = "3650d", until: str | None = None
) -> dict[str, Any]:
    """``keyturn audit verify`` and ``keyturn report`` (HTML, then PDF) over the namespace's audit topic."""
    env = settings_env(settings, {"COLUMNS": "400"})
    keys = ["--public-key", str(public_key)] if public_key else []
    period = ["--since", since, *(["--until", until] if until else [])]
    cli = [sys.executable, "-m", "keyturn.cli"]
    results: dict[str, Any] = {}
    verify_s, verify_cpu, verified = _run([*cli, "audit", "verify", *keys], env)
    records = re.search(r"intact[^:]*: ([\d,]+) records", verified.stdout + verified.stderr)
    results["verify"] = {
        "ok": verified.returncode == 0,
        "seconds": round(verify_s, 2),
        "cpu_seconds": round(verify_cpu, 2),
        "records": int(records.group(1).replace(",", "")) if records else None,
        "output": (verified.stdout + verified.stderr).strip()[-500:],
    }
    with tempfile.TemporaryDirectory(prefix="keyturn-report-bench-") as scratch:
        for form in ("html", "pdf"):
            out = Path(scratch) / f"report.{form}"
            seconds, cpu, made = _run([*cli, "report", *period, "--format", form, "--out", str(out), *keys], env)
            text = made.stdout + made.stderr
            actions = re.search(r"wrote \S+: ([\d,]+) actions", text)
            results[f"report_{form}"] = {
                "ok": made.returncode == 0 and out.exists(),
                "seconds": round(seconds, 2),
                "cpu_seconds": round(cpu, 2),
                "actions": int(actions.group(1).replace(",", "")) if actions else None,
                "bytes": out.stat().st_size if out.exists() else 0,
                "output": text.strip()[-500:],
            }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--actions", type=int, default=100_000)
    parser.add_argument("--json", type=Path)
    options = parser.parse_args()
    settings = replace(Settings.from_env(), namespace=f"bench{secrets.token_hex(3)}", partitions=1)
    started = time.perf_counter()
    records = build(options.actions)
    print(f"built {len(records):,} records for {options.actions:,} actions in {time.perf_counter() - started:.0f} s")
    asyncio.run(fill(settings, records))
    print(f"wrote them to {settings.namespace}.audit")
    since = (T0 - timedelta(days=1)).strftime("%Y-%m-%dT%H:%MZ")
    until = (T0 + timedelta(seconds=options.actions * SPREAD_S, days=1)).strftime("%Y-%m-%dT%H:%MZ")
    try:
        with tempfile.TemporaryDirectory(prefix="keyturn-report-key-") as keys:
            pem = Path(keys) / "audit.pub.pem"
            pem.write_bytes(SIGNER.public_key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
            results = against(settings, public_key=pem, since=since, until=until)
    finally:
        asyncio.run(drop_topics(settings))
    results["actions"], results["records"] = options.actions, len(records)
    for name in ("verify", "report_html", "report_pdf"):
        line = results[name]
        print(
            f"{name:<12} {line['seconds']:>7.1f} s wall {line['cpu_seconds']:>7.1f} s CPU  "
            f"{'ok' if line['ok'] else 'FAILED: ' + line['output']}"
        )
    html = results["report_html"]
    met = html["ok"] and html["seconds"] < TARGET_S and html["actions"] == options.actions
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(
        f"{'MET' if met else 'MISSED'}: report over {html['actions']} actions in {html['seconds']} s "
        f"(target < {TARGET_S:g} s)"
    )
    if options.json:
        options.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
