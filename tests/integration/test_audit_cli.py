"""`keyturn audit` and `keyturn policy simulate` over a real audit topic, as an auditor uses them."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import shutil
import threading
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from keyturn.audit.stream import read_audit_log
from keyturn.bus.topics import Topics
from keyturn.config import REPO_ROOT
from keyturn.core.audit.canonical import record_hash
from keyturn.core.audit.record import AuditRecord
from tests.conftest import free_port
from tests.integration.conftest import Agent, eventually, keyturn_cli, mint

pytestmark = pytest.mark.integration

REQUESTER = "agent:audit-cli"


@dataclass
class Story:
    """Actions of one agent, all finished and audited, and an export of the audit after them."""

    reads: list[str]
    delete: str
    approved: str
    denied: str
    since: str
    until: str
    export: Path
    lines: list[str] = field(default_factory=list)

    @property
    def actions(self) -> set[str]:
        return {*self.reads, self.delete, self.approved, self.denied}


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def audit_log(settings) -> list[AuditRecord]:
    return asyncio.run(read_audit_log(settings.kafka_bootstrap, Topics(settings.namespace, settings.partitions).audit))


def cli(settings, *args: str):
    return keyturn_cli(settings, *args)


@pytest.fixture(scope="module")
def story(services, settings, tmp_path_factory) -> Story:
    agent = Agent(settings, REQUESTER, ("human:erin",))
    since = now_iso()
    reads = [agent.submit_ok("read.table", f"postgres://staging/analytics/r{n}", {"row_count": n}) for n in range(3)]
    delete = agent.submit_ok("secrets.delete", "vault://production/payments/api-key")
    approved = agent.submit_ok(
        "iam.role.grant", "iam://staging/roles/analyst", {"principal": "human:bob", "role": "analyst"}
    )
    denied = agent.submit_ok(
        "iam.role.grant", "iam://staging/roles/writer", {"principal": "human:bob", "role": "writer"}
    )
    for action_id in (approved, denied):
        assert agent.wait_for_state(action_id, "needs_approval")["state"] == "needs_approval"
    refused = keyturn_cli(settings, "approve", approved, token=mint(settings, "human:erin"))
    assert refused.returncode != 0  # erin is who the agent acts for: a refused self-approval
    assert (
        keyturn_cli(
            settings, "approve", approved, "--reason", "ticket 7", token=mint(settings, "human:carol")
        ).returncode
        == 0
    )
    assert (
        keyturn_cli(
            settings, "deny", denied, "--reason", "not this sprint", token=mint(settings, "human:dave")
        ).returncode
        == 0
    )
    expected = {**{r: 3 for r in reads}, delete: 2, approved: 6, denied: 4}

    def audited():
        counts = Counter(r.action_id for r in audit_log(settings))
        return all(counts[a] >= n for a, n in expected.items())

    assert eventually(audited, timeout=60), "the story did not reach the audit"
    until = now_iso()
    services.stop("audit")  # a clean stop signs a final checkpoint: the export ends verified
    services.start("audit")
    export = tmp_path_factory.mktemp("audit") / "audit.jsonl"
    exported = cli(settings, "audit", "export", "--format", "jsonl", "--output", str(export))
    assert exported.returncode == 0, exported.stderr
    found = Story(reads, delete, approved, denied, since, until, export)
    found.lines = export.read_text().splitlines()
    return found


def sequence_of(story: Story, action_id: str, event_type: str) -> int:
    for line in story.lines:
        record = json.loads(line)
        if record["action_id"] == action_id and record["event_type"] == event_type:
            return record["sequence"]
    raise AssertionError(f"no {event_type} for {action_id}")


def line_index(story: Story, sequence: int) -> int:
    return next(i for i, line in enumerate(story.lines) if json.loads(line)["sequence"] == sequence)


def verify_copy(settings, tmp_path, lines: list[str], *extra: str):
    copy = tmp_path / "tampered.jsonl"
    copy.write_text("\n".join(lines) + "\n")
    return cli(settings, "audit", "verify", "--export", str(copy), *extra)


# --- verify ---------------------------------------------------------------------------------


def test_the_topic_and_its_export_verify(settings, story) -> None:
    topic = cli(settings, "audit", "verify")
    assert topic.returncode == 0, topic.stderr
    assert "audit chain intact" in topic.stdout
    assert json.loads(story.lines[-1])["event_type"] == "Checkpoint"
    exported = cli(settings, "audit", "verify", "--export", str(story.export), "--require-checkpoint-at-end")
    assert exported.returncode == 0, exported.stderr
    assert f"{len(story.lines)} records" in exported.stdout


def test_an_auditor_verifies_an_export_with_only_the_public_key(settings, story, tmp_path) -> None:
    key = tmp_path / "audit-checkpoint.pub.pem"
    assert cli(settings, "audit", "public-key", "--output", str(key)).returncode == 0
    assert key.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    trusted = cli(settings, "audit", "verify", "--export", str(story.export), "--public-key", str(key))
    assert trusted.returncode == 0, trusted.stderr
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from keyturn.audit.keys import write_public_key

    stranger = tmp_path / "stranger.pub.pem"
    write_public_key(Ed25519PrivateKey.generate().public_key(), stranger)
    untrusted = cli(settings, "audit", "verify", "--export", str(story.export), "--public-key", str(stranger))
    assert untrusted.returncode == 1
    assert "unknown_checkpoint_key at sequence" in untrusted.stderr


def test_an_edited_record_is_named(settings, story, tmp_path) -> None:
    lines = list(story.lines)
    # carol's accepted vote (erin's refused one comes first; other actions' records may sit between)
    index = next(
        i
        for i, line in enumerate(lines)
        if (r := json.loads(line))["action_id"] == story.approved
        and r["event_type"] == "VoteRecorded"
        and "human:carol" in r["payload_json"]
    )
    record = json.loads(lines[index])
    sequence = record["sequence"]
    record["payload_json"] = record["payload_json"].replace("human:carol", "human:mallory")
    lines[index] = json.dumps(record)
    result = verify_copy(settings, tmp_path, lines)
    assert result.returncode == 1
    assert f"edited at sequence {sequence}" in result.stderr


def test_a_dropped_record_is_named(settings, story, tmp_path) -> None:
    sequence = sequence_of(story, story.delete, "ActionDecided")
    lines = [line for i, line in enumerate(story.lines) if i != line_index(story, sequence)]
    result = verify_copy(settings, tmp_path, lines)
    assert result.returncode == 1
    assert f"dropped at sequence {sequence}" in result.stderr
    assert f"record {sequence} is missing" in result.stderr


def test_reordered_records_are_named(settings, story, tmp_path) -> None:
    first = line_index(story, sequence_of(story, story.denied, "ActionRequested"))
    lines = list(story.lines)
    lines[first], lines[first + 1] = lines[first + 1], lines[first]
    result = verify_copy(settings, tmp_path, lines)
    assert result.returncode == 1
    assert f"reordered at sequence {json.loads(story.lines[first])['sequence']}" in result.stderr


def test_a_truncated_export_is_caught_when_a_final_checkpoint_is_required(settings, story, tmp_path) -> None:
    lines = story.lines[:-3]
    last_checkpoint = max(
        (json.loads(line)["sequence"] for line in lines if '"event_type":"Checkpoint"' in line), default=None
    )
    plain = verify_copy(settings, tmp_path, lines)
    assert plain.returncode == 0  # without the promise of a final checkpoint a cut tail looks complete
    assert "not yet signed" in plain.stdout
    strict = verify_copy(settings, tmp_path, lines, "--require-checkpoint-at-end")
    assert strict.returncode == 1
    if last_checkpoint is None:
        assert "unverified_tail at index 0: none of the" in strict.stderr
    else:
        assert f"unverified_tail at sequence {last_checkpoint + 1}" in strict.stderr
        assert "may have been cut off" in strict.stderr


def test_a_forged_checkpoint_is_named(settings, story, tmp_path) -> None:
    lines = list(story.lines)
    record = AuditRecord.from_dict(json.loads(lines[-1]))
    assert record.is_checkpoint
    signature = record.checkpoint.signature
    forged_signature = ("0" if signature[0] != "0" else "1") + signature[1:]
    forged = replace(record, checkpoint=replace(record.checkpoint, signature=forged_signature))
    forged = replace(forged, hash=record_hash(forged))  # a forger recomputes the hash; only the key can sign
    lines[-1] = json.dumps(forged.to_dict())
    result = verify_copy(settings, tmp_path, lines)
    assert result.returncode == 1
    assert f"forged_checkpoint at sequence {record.sequence}" in result.stderr


def test_a_line_that_is_not_a_record_is_named(settings, story, tmp_path) -> None:
    lines = list(story.lines)
    lines[2] = lines[2][:-5]
    result = verify_copy(settings, tmp_path, lines)
    assert result.returncode == 1
    assert "line 3" in result.stderr


# --- export and replay ----------------------------------------------------------------------


def test_csv_and_parquet_exports_hold_every_record(settings, story, tmp_path) -> None:
    import pyarrow.parquet as pq

    exported = cli(settings, "audit", "export", "--format", "csv")
    assert exported.returncode == 0, exported.stderr
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert len(rows) >= len(story.lines)
    assert [int(r["sequence"]) for r in rows[: len(story.lines)]] == list(range(len(story.lines)))

    parquet = tmp_path / "audit.parquet"
    written = cli(settings, "audit", "export", "--format", "parquet", "--output", str(parquet))
    assert written.returncode == 0, written.stderr
    table = pq.read_table(parquet)
    assert table.num_rows >= len(story.lines)
    assert table.column("hash").to_pylist()[: len(story.lines)] == [json.loads(line)["hash"] for line in story.lines]

    refused = cli(settings, "audit", "export", "--format", "parquet")
    assert refused.returncode == 2
    assert "--output" in refused.stderr


def replayed(settings, *filters: str) -> list[dict]:
    result = cli(settings, "audit", "replay", "--format", "jsonl", *filters)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_replay_by_requester_returns_every_record_of_their_actions(settings, story) -> None:
    records = replayed(settings, "--requester", REQUESTER)
    assert {r["action_id"] for r in records} == story.actions
    assert Counter(r["action_id"] for r in records)[story.approved] == 6  # votes included
    assert [r["sequence"] for r in records] == sorted(r["sequence"] for r in records)
    assert {r["action_id"] for r in replayed(settings, "--requester", "human:erin")} >= story.actions


def test_replay_by_approver_action_type_and_outcome(settings, story) -> None:
    mine = ("--requester", REQUESTER)
    assert {r["action_id"] for r in replayed(settings, *mine, "--approver", "human:dave")} == {story.denied}
    assert {r["action_id"] for r in replayed(settings, *mine, "--approver", "human:erin")} == {story.approved}
    assert {r["action_id"] for r in replayed(settings, *mine, "--action-type", "read.*")} == set(story.reads)
    assert {r["action_id"] for r in replayed(settings, *mine, "--outcome", "denied")} == {story.delete, story.denied}
    assert {r["action_id"] for r in replayed(settings, *mine, "--outcome", "approved", "--outcome", "allowed")} == {
        story.approved,
        *story.reads,
    }


def test_replay_by_action_and_time_range(settings, story) -> None:
    everything = replayed(settings, "--action-id", story.approved)
    assert next(r["event_type"] for r in everything) == "ActionRequested"
    decided_at = next(r["occurred_at"] for r in everything if r["event_type"] == "ActionDecided")
    since = datetime.fromtimestamp(decided_at / 1000, UTC).isoformat()
    later = replayed(settings, "--action-id", story.approved, "--since", since)
    assert next(r["event_type"] for r in later) == "ActionDecided"
    assert replayed(settings, "--action-id", story.approved, "--until", story.since) == []


def test_replay_writes_a_table_csv_and_parquet(settings, story, tmp_path) -> None:
    table = cli(settings, "audit", "replay", "--action-id", story.approved)
    assert table.returncode == 0, table.stderr
    assert "ApprovalResolved" in table.stdout.replace("\n", "") or "Approval" in table.stdout
    assert "6 records" in table.stderr
    out = tmp_path / "replay.csv"
    assert (
        cli(settings, "audit", "replay", "--action-id", story.delete, "--format", "csv", "-o", str(out)).returncode == 0
    )
    assert [row["event_type"] for row in csv.DictReader(out.open())] == ["ActionRequested", "ActionDecided"]
    parquet = tmp_path / "replay.parquet"
    assert (
        cli(settings, "audit", "replay", "--requester", REQUESTER, "--format", "parquet", "-o", str(parquet)).returncode
        == 0
    )
    import pyarrow.parquet as pq

    assert set(pq.read_table(parquet).column("action_id").to_pylist()) == story.actions


def test_replay_refuses_unknown_outcomes_and_times(settings, story) -> None:
    bad_outcome = cli(settings, "audit", "replay", "--outcome", "finished")
    assert bad_outcome.returncode == 2 and "unknown outcome finished" in bad_outcome.stderr
    bad_time = cli(settings, "audit", "replay", "--since", "yesterday-ish")
    assert bad_time.returncode == 2 and "not a time" in bad_time.stderr


def test_replay_from_an_export_matches_the_topic(settings, story) -> None:
    from_file = replayed(settings, "--requester", REQUESTER, "--export", str(story.export))
    assert from_file == replayed(settings, "--requester", REQUESTER)


# --- timeline and stats ---------------------------------------------------------------------


def test_the_timeline_shows_who_when_why_and_the_policy_revision(settings, story) -> None:
    result = cli(settings, "audit", "timeline", story.approved, "--json")
    assert result.returncode == 0, result.stderr
    steps = [json.loads(line) for line in result.stdout.splitlines()]
    assert [s["event_type"] for s in steps] == [
        "ActionRequested",
        "ActionDecided",
        "VoteRecorded",
        "VoteRecorded",
        "ApprovalResolved",
        "ActionExecuted",
    ]
    assert steps[0]["who"] == f"{REQUESTER} for human:erin"
    assert steps[1]["policy_revision"].startswith("sha256:")
    assert steps[2]["who"] == "human:erin" and "refused" in steps[2]["what"] and "vote_refused" in steps[2]["flags"]
    assert steps[3]["who"] == "human:carol" and steps[3]["why"] == "ticket 7"
    assert "approved" in steps[4]["what"]
    shown = cli(settings, "audit", "timeline", story.approved)
    assert shown.returncode == 0 and "human:carol" in shown.stdout
    missing = cli(settings, "audit", "timeline", "00000000-0000-0000-0000-000000000000")
    assert missing.returncode == 1 and "no audit records" in missing.stderr


def stats(settings, story, *extra: str) -> dict:
    result = cli(settings, "audit", "stats", "--json", "--since", story.since, "--until", story.until, *extra)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_stats_give_time_to_decision_rates_and_rubber_stamps(settings, story) -> None:
    numbers = stats(settings, story, "--rubber-stamp-seconds", "600")
    security = {g["group"]: g for g in numbers["time_to_decision"]}["security"]
    assert security["decided"] == 2 and security["approved"] == 1 and security["denied"] == 1
    assert 0 < security["p50_s"] <= security["p90_s"] <= security["p99_s"] <= security["max_s"]
    approvers = {a["approver"]: a for a in numbers["approvers"]}
    assert approvers["human:carol"]["approve"] == 1 and approvers["human:carol"]["approve_rate"] == 1.0
    assert approvers["human:dave"]["deny"] == 1 and approvers["human:dave"]["deny_rate"] == 1.0
    assert approvers["human:erin"]["refused"] == 1
    assert [(s["approver"], s["action_id"]) for s in numbers["rubber_stamps"]] == [("human:carol", story.approved)]
    assert stats(settings, story, "--rubber-stamp-seconds", "0")["rubber_stamps"] == []
    table = cli(settings, "audit", "stats", "--since", story.since, "--until", story.until)
    assert table.returncode == 0 and "security" in table.stdout and "human:carol" in table.stdout


# --- policy simulate ------------------------------------------------------------------------


def candidate_policy(tmp_path: Path) -> Path:
    """policies.rego with one rule changed: every read needs data-owners' approval."""
    candidate = tmp_path / "candidate"
    shutil.copytree(REPO_ROOT / "policies.rego", candidate)
    reads = candidate / "keyturn" / "catalog" / "reads" / "reads.rego"
    source = reads.read_text()
    changed = re.sub(
        r"large_read_in_production if \{.*?\n\}",
        "large_read_in_production if covers_action",
        source,
        count=1,
        flags=re.S,
    )
    assert changed != source
    reads.write_text(changed)
    return candidate


def test_simulate_lists_the_decisions_a_candidate_policy_would_change(settings, story, tmp_path) -> None:
    candidate = candidate_policy(tmp_path)
    result = cli(
        settings,
        "policy",
        "simulate",
        "--policy",
        str(candidate),
        "--since",
        story.since,
        "--until",
        story.until,
        "--json",
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert {c["action_id"] for c in report["changes"]} == set(story.reads)
    for change in report["changes"]:
        assert change["recorded"] == {"outcome": "allowed", "groups": []}
        assert change["candidate"]["outcome"] == "needs_approval"
        assert change["candidate"]["groups"] == [["data-owners", 1]]
    assert report["by_action"]["read.table"] == {
        "evaluated": 3,
        "changed": 3,
        "transitions": {"allowed -> needs_approval": 3},
    }
    assert report["by_action"]["iam.role.grant"] == {"evaluated": 2, "changed": 0, "transitions": {}}
    assert report["by_action"]["secrets.delete"] == {"evaluated": 1, "changed": 0, "transitions": {}}
    assert report["evaluated"] == 6 and report["changed"] == 3

    shown = cli(
        settings, "policy", "simulate", "--policy", str(candidate), "--since", story.since, "--until", story.until
    )
    assert shown.returncode == 0, shown.stderr
    assert "3 of 6 decisions would change" in shown.stdout
    unchanged = cli(
        settings,
        "policy",
        "simulate",
        "--policy",
        str(REPO_ROOT / "policies.rego"),
        "--since",
        story.since,
        "--until",
        story.until,
        "--json",
    )
    assert json.loads(unchanged.stdout)["changed"] == 0


def test_simulate_reports_a_candidate_opa_refuses(settings, story, tmp_path) -> None:
    candidate = candidate_policy(tmp_path)
    (candidate / "keyturn" / "catalog" / "reads" / "reads.rego").write_text(
        "package keyturn.catalog.reads\n\nthis is not rego\n"
    )
    result = cli(settings, "policy", "simulate", "--policy", str(candidate), "--since", story.since)
    assert result.returncode == 1
    assert "OPA refused the policy" in result.stderr and "reads.rego" in result.stderr


# --- ship to a SIEM webhook -----------------------------------------------------------------


class Siem:
    """A local webhook receiver that answers the first ``failures`` requests with ``status``."""

    def __init__(self, failures: int = 0, status: int = 503) -> None:
        self.failures, self.status = failures, status
        self.requests: list[tuple[int, dict[str, str], list[dict]]] = []
        siem = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                answer = siem.status if len(siem.requests) < siem.failures else 200
                siem.requests.append(
                    (answer, dict(self.headers), [json.loads(line) for line in body.splitlines() if line])
                )
                self.send_response(answer)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ingest"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stored(self) -> list[dict]:
        """Records the SIEM kept: acknowledged requests, deduplicated by record hash."""
        seen, kept = set(), []
        for answer, _, records in self.requests:
            for record in records if answer == 200 else ():
                if record["hash"] not in seen:
                    seen.add(record["hash"])
                    kept.append(record)
        return kept

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def siem():
    receivers: list[Siem] = []

    def start(**kwargs) -> Siem:
        receivers.append(Siem(**kwargs))
        return receivers[-1]

    yield start
    for receiver in receivers:
        receiver.close()


def ship(settings, url: str, state: Path, *extra: str):
    return cli(settings, "audit", "ship", "--webhook", url, "--state", str(state), "--backoff", "0.05", *extra)


def test_shipping_retries_failures_and_continues_after_a_restart(settings, story, siem, tmp_path) -> None:
    receiver = siem(failures=2)
    state = tmp_path / "ship.json"
    first = ship(settings, receiver.url, state, "--batch-size", "40")
    assert first.returncode == 0, first.stderr
    topic = audit_log(settings)
    assert [r["hash"] for r in receiver.stored()] == [r.hash for r in topic]  # everything, in order, once
    failed = [headers for answer, headers, _ in receiver.requests if answer != 200]
    assert len(failed) == 2
    delivered = [(headers, records) for answer, headers, records in receiver.requests if answer == 200]
    assert all(headers["Idempotency-Key"] == delivered[0][0]["Idempotency-Key"] for headers in failed)  # the same batch
    assert len(delivered) == -(-len(topic) // 40)
    assert delivered[0][0]["Content-Type"] == "application/x-ndjson"
    assert json.loads(state.read_text())["last_sequence"] == topic[-1].sequence

    agent = Agent(settings, REQUESTER, ("human:erin",))
    later = agent.submit_ok("read.table", "postgres://staging/analytics/after-ship")
    assert eventually(lambda: sum(r.action_id == later for r in audit_log(settings)) == 3, timeout=60)
    before = len(receiver.requests)
    second = ship(settings, receiver.url, state)
    assert second.returncode == 0, second.stderr
    resent = [record for _, _, records in receiver.requests[before:] for record in records]
    assert resent and resent[0]["sequence"] == topic[-1].sequence + 1  # nothing shipped twice
    assert resent[0]["prev_hash"] == topic[-1].hash
    assert later in {r["action_id"] for r in resent}


def test_shipping_gives_up_after_bounded_retries_and_keeps_its_position(settings, story, siem, tmp_path) -> None:
    receiver = siem(failures=100)
    state = tmp_path / "ship.json"
    result = ship(settings, receiver.url, state, "--retries", "2")
    assert result.returncode == 1
    stderr = " ".join(result.stderr.split())  # the console wraps long lines at the terminal width
    assert "after 3 attempts" in stderr and "HTTP 503" in stderr
    assert len(receiver.requests) == 3
    assert not state.exists()  # nothing acknowledged, nothing recorded as shipped


def test_shipping_stops_at_once_when_the_siem_refuses(settings, story, siem, tmp_path) -> None:
    receiver = siem(failures=100, status=401)
    result = ship(settings, receiver.url, tmp_path / "ship.json")
    assert result.returncode == 1
    assert "refused records 0-" in result.stderr and "HTTP 401" in result.stderr
    assert len(receiver.requests) == 1
