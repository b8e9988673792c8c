"""How many submissions one caller may make over HTTP: a limit per principal, answered 429.

``KEYTURN_SUBMISSION_LIMIT`` holds the limits in the ``limits`` library's notation, one or more
joined by ``;`` (``6000/minute``, ``100/second;6000/minute``); empty, there is none. Every item of
a batch counts, and a batch is taken whole or refused whole, so a retry of the same batch (same
idempotency keys) is never half accepted. A batch larger than a limit allows at all is refused
for what it is (``Oversized``), not told to come back later.

Counted per principal (the token's subject: an agent acting for a person is counted as the
agent) and per intake process, in the process's memory: N intake processes behind one port let
a caller N times the limit. Submissions on the topic are not counted here; the intake's consumer
paces them. The windows are ``limits``' sliding window counters: constant work and memory per
caller and limit, where a moving window would keep one timestamp per submission.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import SlidingWindowCounterRateLimiter


@dataclass(frozen=True)
class Throttled:
    """A refusal: which limit, when to try again, and whether the caller's refusals start here."""

    limit: str
    retry_after_s: int
    first: bool  # the first refusal since this caller was last let through: the one recorded


@dataclass(frozen=True)
class Oversized:
    """A batch larger than a limit allows at all: it would never be taken."""

    limit: str


class SubmissionThrottle:
    """The submissions each principal may still make (``take``)."""

    def __init__(self, spec: str) -> None:
        """``spec``: ``KEYTURN_SUBMISSION_LIMIT`` (ValueError when ``limits`` cannot read it)."""
        self.limits: list[RateLimitItem] = parse_many(spec) if spec.strip() else []
        self._limiter = SlidingWindowCounterRateLimiter(MemoryStorage())
        self._refused: set[str] = set()  # callers refused since they were last let through

    def take(self, principal: str, count: int = 1) -> Throttled | Oversized | None:
        """Count ``count`` submissions of ``principal`` and return None, or why they are refused
        (then nothing is counted)."""
        for limit in self.limits:
            if count > limit.amount:
                return Oversized(str(limit))
        for limit in self.limits:  # each tried first: a refusal by one counts nothing against another
            if not self._limiter.test(limit, principal, cost=count):
                reset_at = self._limiter.get_window_stats(limit, principal).reset_time
                first = principal not in self._refused
                self._refused.add(principal)
                return Throttled(str(limit), max(1, math.ceil(reset_at - time.time())), first)
        for limit in self.limits:
            self._limiter.hit(limit, principal, cost=count)
        self._refused.discard(principal)
        return None
