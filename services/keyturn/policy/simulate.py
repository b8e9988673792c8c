"""What a candidate policy would have decided: replay recorded decisions through it in OPA.

Every ``ActionDecided`` in the audit carries ``provenance.input_json``, the exact document OPA
was asked about, and the outcome it gave. The simulation starts a private OPA on the candidate
policy directory, asks it the same questions at ``data.keyturn.decision.decision``, and lists
every decision whose outcome or approver groups would change, with counts by action type.
Nothing is written anywhere: the candidate never meets the live system.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from keyturn.audit.replay import payload_of
from keyturn.config import REPO_ROOT
from keyturn.core.audit.payload import MalformedPayload
from keyturn.core.audit.record import AuditRecord
from keyturn.core.canonical import from_millis
from keyturn.policy.opa import OpaClient, PolicyAnswerInvalid, PolicyUnavailable

DECISION_PATH = "keyturn/decision/decision"

Groups = tuple[tuple[str, int], ...]


class OpaNotFound(FileNotFoundError):
    """No ``opa`` binary to run the candidate policy with."""


class CandidatePolicyInvalid(RuntimeError):
    """OPA would not load the candidate policy; the message carries OPA's own words."""


@dataclass(frozen=True)
class RecordedDecision:
    """One decision as the audit recorded it, with the exact OPA input behind it."""

    sequence: int
    action_id: str
    action: str
    requester: str | None
    decided_at: int
    outcome: str
    groups: Groups
    policy_revision: str | None
    input: dict[str, Any]


def groups_of(approvals: Any) -> Groups:
    """Approver groups, sorted, from a recorded requirement (``min_approvals``) or OPA's (``min``)."""
    if not isinstance(approvals, dict):
        return ()
    found = []
    for group in approvals.get("groups") or ():
        minimum = group.get("min_approvals", group.get("min", 1))
        found.append((str(group.get("name")), int(minimum)))
    return tuple(sorted(found))


@dataclass
class Replayable:
    """Recorded decisions in a time range, and how many had no input to replay."""

    decisions: list[RecordedDecision] = field(default_factory=list)
    without_input: int = 0
    malformed: list[int] = field(default_factory=list)
    """Sequences of decision records whose payload or recorded input could not be read."""


def recorded_decisions(
    records: Iterable[AuditRecord], *, since: int | None = None, until: int | None = None
) -> Replayable:
    """The ``ActionDecided`` records decided in [since, until) (UTC milliseconds)."""
    found = Replayable()
    for record in records:
        if record.event_type != "ActionDecided" or record.action_id is None:
            continue
        if (since is not None and record.occurred_at < since) or (until is not None and record.occurred_at >= until):
            continue
        try:
            payload = payload_of(record)
        except MalformedPayload:
            found.malformed.append(record.sequence)
            continue
        provenance = payload.get("provenance") or {}
        if not provenance.get("input_json"):
            found.without_input += 1
            continue
        try:
            recorded_input = json.loads(provenance["input_json"])
        except ValueError:
            recorded_input = None
        if not isinstance(recorded_input, dict):
            found.malformed.append(record.sequence)
            continue
        request = payload.get("request") or {}
        found.decisions.append(
            RecordedDecision(
                sequence=record.sequence,
                action_id=record.action_id,
                action=str(request.get("action")),
                requester=(request.get("requester") or {}).get("id"),
                decided_at=record.occurred_at,
                outcome=str(payload.get("outcome")),
                groups=groups_of(payload.get("approvals")),
                policy_revision=provenance.get("policy_revision"),
                input=recorded_input,
            )
        )
    return found


@dataclass(frozen=True)
class ChangedDecision:
    """A recorded decision the candidate policy would decide differently."""

    recorded: RecordedDecision
    outcome: str
    groups: Groups
    reasons: tuple[str, ...]
    rules: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        recorded = self.recorded
        return {
            "sequence": recorded.sequence,
            "action_id": recorded.action_id,
            "action": recorded.action,
            "requester": recorded.requester,
            "decided_at": from_millis(recorded.decided_at).isoformat(),
            "recorded_policy_revision": recorded.policy_revision,
            "recorded": {"outcome": recorded.outcome, "groups": [list(g) for g in recorded.groups]},
            "candidate": {
                "outcome": self.outcome,
                "groups": [list(g) for g in self.groups],
                "reasons": list(self.reasons),
                "rules": list(self.rules),
            },
        }


def compare(recorded: RecordedDecision, candidate: Any) -> ChangedDecision | None:
    """The change, if the candidate's decision document differs in outcome or approver groups."""
    if not isinstance(candidate, dict) or "outcome" not in candidate:
        return ChangedDecision(recorded, "undefined", (), ("the candidate policy returned no decision",), ())
    outcome = str(candidate["outcome"])
    groups = groups_of(candidate.get("approvals")) if outcome == "needs_approval" else ()
    if outcome == recorded.outcome and groups == recorded.groups:
        return None
    return ChangedDecision(
        recorded,
        outcome,
        groups,
        tuple(str(r) for r in candidate.get("reasons") or ()),
        tuple(str(r) for r in candidate.get("rules") or ()),
    )


@dataclass
class ActionTypeCounts:
    evaluated: int = 0
    changed: int = 0
    transitions: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {
            "evaluated": self.evaluated,
            "changed": self.changed,
            "transitions": dict(sorted(self.transitions.items())),
        }


@dataclass
class SimulationReport:
    """What the candidate would change."""

    candidate_revision: str
    evaluated: int = 0
    without_input: int = 0
    malformed: list[int] = field(default_factory=list)
    changes: list[ChangedDecision] = field(default_factory=list)
    by_action: dict[str, ActionTypeCounts] = field(default_factory=dict)

    def add(self, recorded: RecordedDecision, change: ChangedDecision | None) -> None:
        self.evaluated += 1
        counts = self.by_action.setdefault(recorded.action, ActionTypeCounts())
        counts.evaluated += 1
        if change is not None:
            self.changes.append(change)
            counts.changed += 1
            counts.transitions[f"{recorded.outcome} -> {change.outcome}"] += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidate_revision": self.candidate_revision,
            "evaluated": self.evaluated,
            "without_input": self.without_input,
            "malformed_records": list(self.malformed),
            "changed": len(self.changes),
            "by_action": {name: self.by_action[name].to_dict() for name in sorted(self.by_action)},
            "changes": [change.to_dict() for change in sorted(self.changes, key=lambda c: c.recorded.sequence)],
        }


async def simulate(decisions: Replayable, opa_url: str, *, concurrency: int = 8) -> SimulationReport:
    """Ask the OPA at ``opa_url`` about every recorded decision and collect the differences."""
    opa = OpaClient(opa_url, timeout_s=10.0, retries=2)
    try:
        report = SimulationReport(
            await opa.policy_revision(), without_input=decisions.without_input, malformed=decisions.malformed
        )
        limit = asyncio.Semaphore(concurrency)

        async def evaluate(recorded: RecordedDecision) -> tuple[RecordedDecision, Any]:
            async with limit:
                try:
                    return recorded, (await opa.query(DECISION_PATH, recorded.input)).result
                except PolicyAnswerInvalid:
                    return recorded, None

        for recorded, answer in await asyncio.gather(*(evaluate(d) for d in decisions.decisions)):
            report.add(recorded, compare(recorded, answer))
        return report
    finally:
        await opa.close()


def find_opa() -> str:
    """``opa`` on PATH, else the one ``make`` builds into ``.cache/bin``."""
    found = shutil.which("opa") or (
        str(REPO_ROOT / ".cache" / "bin" / "opa") if (REPO_ROOT / ".cache" / "bin" / "opa").exists() else None
    )
    if found is None:
        raise OpaNotFound("no opa binary: put one on PATH, or run `make stack-up` to build .cache/bin/opa")
    return found


class CandidateOpa:
    """A private OPA serving a candidate policy directory on a free loopback port.

    ``with CandidateOpa(path) as url:`` starts it, waits until it answers, and stops it after.
    """

    def __init__(self, policy_dir: Path, *, opa: str | None = None, ready_timeout_s: float = 30.0) -> None:
        if not policy_dir.is_dir():
            raise CandidatePolicyInvalid(f"{policy_dir} is not a directory of Rego policies")
        self.policy_dir = policy_dir
        self.opa = opa or find_opa()
        self.ready_timeout_s = ready_timeout_s
        self._process: subprocess.Popen | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - the server's log, kept open while it runs

    def __enter__(self) -> str:
        port = _free_port()
        self._process = subprocess.Popen(
            [
                self.opa,
                "run",
                "--server",
                "--addr",
                f"127.0.0.1:{port}",
                "--log-level",
                "error",
                "--ignore",
                "*_test.rego",
                str(self.policy_dir),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._log.seek(0)
                message = self._log.read().decode(errors="replace").strip()
                raise CandidatePolicyInvalid(f"OPA refused the policy in {self.policy_dir}:\n{message}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.__exit__()
        raise PolicyUnavailable(f"OPA on {self.policy_dir} did not answer within {self.ready_timeout_s:.0f}s")

    def __exit__(self, *exc_info: Any) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
        self._process = None
        self._log.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
