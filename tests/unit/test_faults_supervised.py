"""Background loops (the intake's status follower, submissions consumer, outbox) come back after any failure."""

from __future__ import annotations

import asyncio
import logging

import pytest

from keyturn.faults import supervised


async def test_a_loop_that_fails_or_returns_is_logged_and_started_again(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[int] = []
    resumed = asyncio.Event()

    async def work() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            raise RuntimeError("connection to the broker lost")
        if len(runs) == 2:
            return
        resumed.set()
        await asyncio.Event().wait()

    with caplog.at_level(logging.INFO, logger="keyturn.faults"):
        task = asyncio.create_task(supervised("status follower", work, first_delay_s=0.01))
        await asyncio.wait_for(resumed.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    assert len(runs) == 3
    messages = [r.getMessage() for r in caplog.records]
    assert any("status follower failed" in m for m in messages)
    assert any("connection to the broker lost" in (r.exc_text or "") for r in caplog.records)
    assert any("status follower stopped on its own" in m for m in messages)


async def test_cancelling_stops_it_for_good() -> None:
    started = asyncio.Event()

    async def work() -> None:
        started.set()
        await asyncio.sleep(3600)

    task = asyncio.create_task(supervised("outbox sweep", work))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
