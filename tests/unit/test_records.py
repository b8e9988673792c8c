"""Event dataclasses to the dicts fastavro reads and writes, and back (``core.records``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from keyturn.core.events import VoteChoice
from keyturn.core.records import from_record, to_record


@dataclass(frozen=True)
class Node:
    """A record that holds records of its own type, as an Avro schema may name itself."""

    name: str
    choice: VoteChoice
    at: datetime
    parent: Node | None = None
    children: tuple[Node, ...] = ()


def test_a_record_holding_its_own_type_goes_there_and_back():
    at = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    leaf = Node("leaf", VoteChoice.DENY, at)
    tree = Node(
        "root",
        VoteChoice.APPROVE,
        at,
        parent=Node("above", VoteChoice.DENY, at),
        children=(leaf, Node("other", VoteChoice.APPROVE, at, children=(leaf,))),
    )
    record = to_record(tree)
    assert record["children"][1]["children"][0] == {
        "name": "leaf",
        "choice": "deny",
        "at": at,
        "parent": None,
        "children": [],
    }
    assert from_record(Node, record) == tree


def test_a_naive_instant_read_back_is_taken_as_utc():
    naive = to_record(Node("n", VoteChoice.APPROVE, datetime(2026, 3, 2, 9, 0, tzinfo=UTC))) | {
        "at": datetime(2026, 3, 2, 9, 0)
    }
    assert from_record(Node, naive).at == datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
