"""The executor's side of the impact preview: a write may not touch more rows than approved.

One small function every SQL-backed executor calls inside its transaction, after the statement
ran and before it commits (the sql plugin for ``sql.query`` writes; the deletion executor the
same way): when the real count exceeds the preview's bound (``max_rows``: the previewed rows
plus the policy's tolerance), it raises ``ImpactExceeded`` and the transaction rolls back, so
the action ends ``failed`` naming both counts and nothing changed.
"""

from __future__ import annotations

from keyturn.core.events import Digest, ImpactPreview
from keyturn.core.impact import exceeds
from keyturn.executor.plugins.base import ExecutionFailed


class ImpactExceeded(ExecutionFailed):
    """The statement touched more rows than the approved preview allows; it was rolled back."""

    def __init__(self, message: str, *, previewed: int | None, real: int, allowed: int | None) -> None:
        super().__init__(message)
        self.previewed, self.real, self.allowed = previewed, real, allowed


def enforce_impact(impact: ImpactPreview | None, payload_digest: Digest | str | None, real_rows: int) -> None:
    """Raise ``ImpactExceeded`` when ``real_rows`` goes past what the approved preview allows.

    No preview (an action that is not SQL-backed, or a decision from before previews) bounds
    nothing. A preview computed for another payload bounds everything: it is refused.
    """
    if impact is None:
        return
    if payload_digest is not None and str(impact.payload_digest) != str(payload_digest):
        raise ImpactExceeded(
            "the impact preview was computed for another payload than the one approved; rolled back, nothing changed",
            previewed=impact.rows,
            real=real_rows,
            allowed=impact.max_rows,
        )
    reason = exceeds(impact, real_rows)
    if reason is not None:
        raise ImpactExceeded(reason, previewed=impact.rows, real=real_rows, allowed=impact.max_rows)
