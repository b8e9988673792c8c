"""Seeded secrets go through the whole stack; afterwards no topic, log or audit record has them in clear."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from pathlib import Path

import httpx
import psycopg
import pytest

from keyturn.audit.stream import read_audit_log
from keyturn.bus.topics import Topics
from keyturn.config import REPO_ROOT
from tests.integration.conftest import Agent, eventually, keyturn_cli, mint, read_topic

pytestmark = pytest.mark.integration
CORPUS = json.loads((REPO_ROOT / "tests" / "unit" / "corpus" / "masking_corpus.json").read_text())


def _spellings(value: str) -> set[str]:
    """How a seeded value could appear in bytes: as written, and JSON-escaped."""
    escaped = json.dumps(value)[1:-1]
    return {value, escaped} | ({value.replace("\n", "\\n")} if "\n" in value else set())


def _seeded() -> dict[str, str]:
    values = {}
    for entity, items in CORPUS["sensitive"].items():
        for value in items:
            # PEM bodies: a whole key is too long to match reliably once wrapped; its base64 body lines are what leak
            for line in value.splitlines() if "PRIVATE KEY" in value else [value]:
                if len(line) >= 8 and "-----" not in line:
                    values[line] = entity
    return values


def test_seeded_pii_and_secrets_never_travel_in_clear(reporter: Agent, settings, services) -> None:
    documents = CORPUS["documents"]
    ids = [
        reporter.submit_ok(
            "read.table", "postgres://staging/analytics/customers", {"filter": doc["payload"]}, reason=f"corpus {i}"
        )
        for i, doc in enumerate(documents[:24])
    ]
    needs_approval = reporter.submit_ok(  # a large production read: data-owners approve
        "read.table", "postgres://prod/analytics/customers", {"note": documents[24]["payload"], "row_count": 200_000}
    )
    reporter.wait_for_state(needs_approval, "needs_approval")
    assert keyturn_cli(settings, "approve", needs_approval, token=mint(settings, "human:heidi")).returncode == 0
    for action_id in [*ids, needs_approval]:
        assert reporter.wait(action_id)["state"] == "approved_external"  # read.* is external: a receipt
    # the audit has caught up with every action before we scan it
    topics = Topics(settings.namespace, settings.partitions)
    assert eventually(lambda: _audited_executions(settings) >= len(ids) + 1, timeout=60)

    haystacks: dict[str, bytes] = {}
    for topic in (topics.submissions, *topics.lifecycle, topics.votes, topics.dlq, topics.audit):
        haystacks[topic] = b"\n".join(message.value or b"" for _, message in read_topic(settings, topic))
    for log in Path(services.log_dir).glob("*.log"):
        haystacks[str(log)] = log.read_bytes()
    opa_log = REPO_ROOT / ".run" / "opa" / "opa.log"
    if opa_log.exists():
        haystacks[str(opa_log)] = opa_log.read_bytes()

    seeded = _seeded()
    leaks = sorted(
        {
            (entity, where)
            for value, entity in seeded.items()
            for where, hay in haystacks.items()
            if any(s.encode() in hay for s in _spellings(value))
        }
    )
    found_anywhere = sum(
        1 for value in seeded if any(any(s.encode() in hay for s in _spellings(value)) for hay in haystacks.values())
    )
    recall = 1 - found_anywhere / len(seeded)
    print(
        f"\nseeded values: {len(seeded)}; found in clear: {found_anywhere}; recall of masking through the stack: "
        f"{recall:.3f}"
    )
    assert not leaks, f"seeded values in clear: {leaks[:10]}"
    assert len(haystacks[topics.audit]) > 0 and len(haystacks[topics.requested]) > 0


def _audited_executions(settings) -> int:
    return sum(
        1
        for r in asyncio.run(
            read_audit_log(settings.kafka_bootstrap, Topics(settings.namespace, settings.partitions).audit)
        )
        if r.event_type == "ActionExecuted"
    )


def test_parameters_are_masked_with_type_revealing_placeholders(reporter: Agent) -> None:
    action_id = reporter.submit_ok(  # a large production read: data-owners approve
        "read.table",
        "postgres://prod/analytics/customers",
        {"row_count": 200_000, "contact": "jane.doe@example.com", "card": "4111 1111 1111 1111"},
    )
    view = reporter.wait_for_state(action_id, "needs_approval")
    assert view["state"] == "needs_approval"
    approval = httpx.get(
        f"{reporter.settings.approval_url}/v1/approvals/{action_id}",
        headers={"Authorization": f"Bearer {mint(reporter.settings, 'human:heidi')}"},
    ).json()
    assert approval["parameters"]["contact"] == "<EMAIL_ADDRESS>"
    assert re.fullmatch(r"\*+1111", approval["parameters"]["card"])
    assert approval["parameters"]["row_count"] == 200_000


def test_secrets_in_names_and_paths_are_refused_and_written_nowhere_in_clear(
    reporter: Agent, settings, services
) -> None:
    # names travel in clear (topics, rows, the policy's input): a secret or a person's data in one
    # is refused at the door, and neither the refusal's record nor a log line repeats it
    aws, email, ssn = "AKIA6CYI2KVFDEKCVYOT", "canary-q1@example.com", "538-34-9455"
    refused = [
        reporter.submit("read.table", f"postgres://staging/analytics/{email}"),
        reporter.submit("read.table", "postgres://staging/analytics/orders", {aws: 1}),
        reporter.submit("read.table", "postgres://staging/analytics/orders", idempotency_key=f"k-{aws}"),
        reporter.submit("read.table", "postgres://staging/a/b", callback_url=f"https://h.example.com/cb?to={email}"),
        reporter.submit(f"read.{ssn}.x", "postgres://staging/a/b"),
        reporter.submit("read.table", "postgres://staging/a/b", {"contact": f"users/{email}"}, reason=f"x\u0000{ssn}"),
        reporter.http.get(f"/v1/actions/{email}/wait", params={"timeout": "abc"}),
    ]
    assert [r.status_code for r in refused] == [422] * 7, [r.text for r in refused]
    for answer in refused:
        assert not any(value in answer.text for value in (aws, email, ssn)), answer.text
    topics = Topics(settings.namespace, settings.partitions)
    letters = [message for _, message in read_topic(settings, topics.dlq)]
    assert len(letters) >= 7
    haystacks = {topics.dlq: b"\n".join((m.key or b"") + (m.value or b"") for m in letters)}
    for log in Path(services.log_dir).glob("*.log"):
        haystacks[str(log)] = log.read_bytes()
    database_log = REPO_ROOT / ".run" / "postgres" / "postgres.log"
    if database_log.exists():  # the project's own server (deploy/postgres.sh): a client's ERROR is not logged
        with psycopg.connect(settings.database_url, autocommit=True) as conn, contextlib.suppress(psycopg.Error):
            conn.execute(f"SELECT '{email}'::int")
        haystacks[str(database_log)] = database_log.read_bytes()
    leaks = [(value, where) for value in (aws, email, ssn) for where, hay in haystacks.items() if value.encode() in hay]
    assert not leaks, leaks
