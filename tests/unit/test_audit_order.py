"""The audit chains a batch in the order its events happened, whatever order the consumer
handed them over in (partition by partition)."""

from __future__ import annotations

from keyturn.audit.app import happened_order
from keyturn.bus.topics import Topics
from tests.fakes.service_ports import Record

TOPICS = Topics("unit", 4)


def record(topic: str, offset: int, timestamp: int, key: bytes = b"a1") -> Record:
    return Record(topic, 0, offset, key, b"", timestamp=timestamp)


def test_an_action_is_chained_request_first_however_its_events_arrived() -> None:
    decided = record(TOPICS.decided, 7, 1_000)
    requested = record(TOPICS.requested, 3, 1_000)  # the same millisecond: its step decides
    vote = record(TOPICS.votes, 1, 1_040)
    resolved = record(TOPICS.resolved, 1, 1_040)
    executed = record(TOPICS.executed, 9, 1_090)
    late_vote = record(TOPICS.votes, 2, 1_100)  # refused after the resolution: stays after it
    arrived = [
        (name, r)
        for name, r in (
            ("executed", executed),
            ("resolved", resolved),
            ("decided", decided),
            ("late", late_vote),
            ("vote", vote),
            ("requested", requested),
        )
    ]
    assert [name for name, _ in happened_order(arrived, TOPICS)] == [
        "requested",
        "decided",
        "vote",
        "resolved",
        "executed",
        "late",
    ]


def test_records_of_one_partition_keep_their_order() -> None:
    first, second = record(TOPICS.requested, 1, 500, b"x"), record(TOPICS.requested, 2, 500, b"y")
    assert [r.offset for _, r in happened_order([("1", first), ("2", second)], TOPICS)] == [1, 2]
