"""A restarted audit writer drops redeliveries without reading or remembering the whole history."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from keyturn.audit.app import audit_writer, checkpoint_key_path
from keyturn.audit.keys import load_signer
from keyturn.audit.stream import read_audit_log, read_audit_tail
from keyturn.bus.topics import Topics, ensure_topics
from tests.integration.conftest import keyturn_cli
from tests.processes import own_namespace
from tests.unit.audit_history import History

pytestmark = pytest.mark.integration

WINDOW = 150  # records; the redelivery below reaches back 100 events (and their checkpoints)


def test_a_restarted_writer_drops_redeliveries_in_its_window_and_keeps_its_memory_bounded(settings) -> None:
    # A namespace of its own: the session's audit worker shares no transactional id with this one.
    settings = own_namespace(settings, "dw")
    asyncio.run(ensure_topics(settings.kafka_bootstrap, Topics(settings.namespace, settings.partitions)))
    topic = Topics(settings.namespace, settings.partitions).requested
    history = History()
    events = [(history.request(f"act-{n:04d}", "read.table", n), topic) for n in range(450)]

    async def scenario() -> tuple[int, int, list]:
        signer = load_signer(checkpoint_key_path(settings))
        first = audit_writer(settings, signer, dedupe_window=WINDOW)
        await first.start()
        for start in range(0, 400, 50):
            await first.record(events[start : start + 50])
        remembered_before = first.remembered_event_ids
        await first.close()

        second = audit_writer(settings, signer, dedupe_window=WINDOW)
        await second.start()
        # The last two batches come again (their offsets were never committed), then new ones.
        written = 0
        for start in range(300, 450, 50):
            written += await second.record(events[start : start + 50])
        remembered_after = second.remembered_event_ids
        await second.close()
        tail = await read_audit_tail(
            settings.kafka_bootstrap, Topics(settings.namespace, settings.partitions).audit, WINDOW
        )
        return remembered_before, remembered_after, written, tail

    remembered_before, remembered_after, written, tail = asyncio.run(scenario())

    records = asyncio.run(
        read_audit_log(settings.kafka_bootstrap, Topics(settings.namespace, settings.partitions).audit)
    )
    events_recorded = Counter(r.event_id for r in records if not r.is_checkpoint)
    assert set(events_recorded) == {event.event_id for event, _ in events}
    assert max(events_recorded.values()) == 1, "a redelivered event was recorded twice"
    assert written == 50  # only the 50 events it had not seen
    assert (remembered_before, remembered_after) == (WINDOW, WINDOW)
    # Resuming read only the end of the topic, not the ~460 records behind it.
    assert WINDOW <= len(tail) < len(records) * 0.7
    assert tail[-1] == records[-1]
    verified = keyturn_cli(settings, "audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
