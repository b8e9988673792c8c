"""`keyturn audit tail`: the last N records in either format, and one line, not a traceback, for a
namespace that has no audit topic (no broker: the topic reader is replaced)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from keyturn.audit import cli, stream
from tests.unit.audit_history import History


def records(count: int) -> list:
    history = History()
    for n in range(count):
        history.request(f"a-{n}", "read.table", start=n)
        history.checkpoint(start=n)  # every transaction ends with one: not shown unless asked
    return history.records


@pytest.fixture
def topic(monkeypatch):
    def use(found: list | Exception) -> None:
        async def follow_audit(bootstrap: str, topic: str, *, follow: bool = False):
            if isinstance(found, Exception):
                raise found
            for record in found:
                yield record

        monkeypatch.setattr(stream, "follow_audit", follow_audit)

    return use


def test_the_last_records_are_the_last_n_in_json_as_in_the_table(topic) -> None:
    written = records(6)
    topic(written)
    as_json = CliRunner().invoke(cli.app, ["tail", "--json", "--limit", "2"])
    assert as_json.exit_code == 0, as_json.output
    sequences = [json.loads(line)["sequence"] for line in as_json.output.splitlines()]
    assert sequences == [r.sequence for r in written][-2:]  # JSON keeps every record
    table = CliRunner().invoke(cli.app, ["tail", "--limit", "2"])
    assert table.exit_code == 0 and "Checkpoint" not in table.output, table.output
    assert "a-5" in table.output and "a-4" in table.output and "a-3" not in table.output


def test_a_namespace_without_an_audit_topic_is_one_line(topic) -> None:
    topic(stream.AuditTopicMissing("there is no audit topic nowhere.audit on this broker"))
    answer = CliRunner().invoke(cli.app, ["tail"])
    assert answer.exit_code == 1 and "there is no audit topic" in answer.output
    assert "Traceback" not in answer.output
