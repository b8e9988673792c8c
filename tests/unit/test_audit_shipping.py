"""Shipping state: resumable, tied to one sink, and refusing a history that does not continue."""

from __future__ import annotations

import json

import pytest

from keyturn.audit.shipping import (
    ShippingStateMismatch,
    ShipState,
    _check_continues,
    batch_body,
    batch_idempotency_key,
)
from tests.unit.audit_history import story

RECORDS = story().records


def test_state_round_trips_and_is_replaced_atomically(tmp_path):
    path = tmp_path / "ship.json"
    assert ShipState.load(path, "https://siem.example/in") == ShipState("https://siem.example/in")
    state = ShipState("https://siem.example/in", 41, "ab" * 32, 57)
    state.save(path)
    assert ShipState.load(path, "https://siem.example/in") == state
    assert [p.name for p in tmp_path.iterdir()] == ["ship.json"]


def test_a_state_file_of_another_sink_is_refused(tmp_path):
    path = tmp_path / "ship.json"
    ShipState("https://one.example/in", 3, "ab" * 32, 4).save(path)
    with pytest.raises(ShippingStateMismatch, match=r"one\.example"):
        ShipState.load(path, "https://two.example/in")


def test_a_damaged_state_file_is_refused_with_advice(tmp_path):
    path = tmp_path / "ship.json"
    path.write_text("{not json")
    with pytest.raises(ShippingStateMismatch, match="move it away"):
        ShipState.load(path, "https://one.example/in")


def test_shipping_continues_only_from_the_record_after_the_last_shipped():
    first, second, third = RECORDS[:3]
    _check_continues(ShipState("s"), first)
    _check_continues(ShipState("s", first.sequence, first.hash, 1), second)
    with pytest.raises(ShippingStateMismatch, match="does not follow record 0"):
        _check_continues(ShipState("s", first.sequence, first.hash, 1), third)
    with pytest.raises(ShippingStateMismatch, match="rewritten"):
        _check_continues(ShipState("s", first.sequence, "cd" * 32, 1), second)


def test_a_batch_is_json_lines_of_whole_records_with_a_stable_key():
    body = batch_body(RECORDS[:3])
    lines = body.decode().splitlines()
    assert [json.loads(line)["hash"] for line in lines] == [r.hash for r in RECORDS[:3]]
    assert batch_idempotency_key(RECORDS[:3]) == batch_idempotency_key(list(RECORDS[:3]))
    assert batch_idempotency_key(RECORDS[:3]) != batch_idempotency_key(RECORDS[:4])
