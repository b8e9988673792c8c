"""Which events the chain has already recorded: the ``SeenEvents`` protocol and a bounded window.

Pure: no I/O.
"""

from __future__ import annotations

import collections
from typing import Protocol


class SeenEvents(Protocol):
    """Where the chain remembers which event ids it has recorded (a set works)."""

    def __contains__(self, event_id: object) -> bool: ...

    def add(self, event_id: str) -> None: ...


class RecentEventIds:
    """The ids of the last ``limit`` events recorded: a :class:`SeenEvents` of bounded size.

    A set of every id ever recorded grows with the whole history (about 120 bytes per event,
    for as long as the worker runs). A repeated event never comes from far back: the audit
    worker's own redelivery reaches back only to its last committed source offsets (faust
    commits every second or 100 events), and a service that republishes an event (the policy's
    stored decision, the executor's ledger) does so when its own input is redelivered, within
    its consumer group's session timeout. So remembering the most recent ids is enough, and
    memory stays flat however long the chain gets. Ids are forgotten oldest first, in the
    order they were added.

    Size it well beyond the furthest redelivery: an event redelivered from beyond the window is
    recorded again, and adding it pushes out the oldest id, which is the next one a replay in
    the original order brings, so from there the whole replay would be recorded twice
    (``verify`` reports each as ``duplicate_event``).
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        self.limit = limit
        self._ids: set[str] = set()
        self._order: collections.deque[str] = collections.deque()

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, event_id: str) -> None:
        if event_id in self._ids:
            return
        self._ids.add(event_id)
        self._order.append(event_id)
        if len(self._order) > self.limit:
            self._ids.discard(self._order.popleft())
