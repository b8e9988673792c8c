"""Background work of the intake that must outlive any one failure."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


async def supervised(name: str, work: Callable[[], Awaitable[None]], *, first_delay_s: float = 0.5, max_delay_s: float = 15.0) -> None:
    """Run ``work`` for as long as the intake runs: whatever it raises is logged and it starts again.

    A background loop that dies takes a part of the intake with it (status, the submissions
    topic) while HTTP keeps answering, so nobody notices; restarting it is always better. The
    delay grows while it keeps failing, and resets once it ran for a minute.
    """
    loop = asyncio.get_running_loop()
    delay = first_delay_s
    while True:
        started = loop.time()
        try:
            await work()
            log.error("%s stopped on its own; starting it again in %.1fs", name, delay)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed; starting it again in %.1fs", name, delay)
        if loop.time() - started > 60:
            delay = first_delay_s
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_delay_s)
