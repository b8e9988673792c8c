"""The audit chain drops repeated events with a window of recent ids whose size does not grow."""

from __future__ import annotations

import tracemalloc
from collections import Counter

import pytest

from keyturn.core.audit.chain import AuditChain
from keyturn.core.audit.dedupe import RecentEventIds
from keyturn.core.audit.verify import verify
from tests.unit.test_audit_chain import SIGNER, T0, VERIFIER, event, feed


def test_a_restarted_chain_drops_events_redelivered_within_its_window():
    window = 120
    before = AuditChain(SIGNER, checkpoint_every=50, seen=RecentEventIds(window))
    published = feed(before, range(1000))

    # A restarted writer knows only the tail of the topic, as the audit worker reads it.
    tail = published[-window:]
    after = AuditChain(SIGNER, checkpoint_every=50, seen=RecentEventIds(window)).resume(
        tail[-1], seen_event_ids=(r.event_id for r in tail)
    )
    published.append(after.checkpoint(T0 + 2_000_000))
    redelivered = feed(after, range(920, 1100))  # the consumer replays from an older offset
    published += redelivered
    published.append(after.checkpoint(T0 + 3_000_000))

    assert [r.event_id for r in redelivered if not r.is_checkpoint] == [event(n)["event_id"] for n in range(1000, 1100)]
    assert max(Counter(r.event_id for r in published).values()) == 1
    report = verify(published, VERIFIER, require_checkpoint_at_end=True)
    assert report.ok, report.summary()


def test_the_window_forgets_the_oldest_ids_first_and_keeps_its_size():
    seen = RecentEventIds(3)
    for event_id in ("a", "b", "c", "b", "d"):  # a repeat does not push anything out
        seen.add(event_id)
    assert len(seen) == 3
    assert "a" not in seen
    assert all(event_id in seen for event_id in ("b", "c", "d"))


def _bytes_held(seen, ids: int) -> int:
    tracemalloc.start()
    try:
        for n in range(ids):
            seen.add(f"decided:{n:036d}")
        return tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()


def test_memory_stays_flat_however_long_the_history_grows():
    limit = 5_000
    after_10k = _bytes_held(RecentEventIds(limit), 10_000)
    after_100k = _bytes_held(RecentEventIds(limit), 100_000)
    unbounded_10k = _bytes_held(set(), 10_000)
    unbounded_100k = _bytes_held(set(), 100_000)

    assert after_100k < after_10k * 1.25  # ten times the history, about the same memory
    assert unbounded_100k > unbounded_10k * 8  # what the chain did before: linear growth
    assert after_100k < unbounded_100k / 10


def test_a_window_must_hold_at_least_one_id():
    with pytest.raises(ValueError):
        RecentEventIds(0)
