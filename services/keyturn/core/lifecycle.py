"""The lifecycle of one action: which event moves it to which state, and which states end it.

requested → allowed | denied | needs_approval;  needs_approval → approved | denied | expired;
allowed | approved → succeeded | failed | outcome_unknown. Exactly one terminal state per action.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from keyturn.core.events import ActionDecided, ActionExecuted, ActionRequested, ApprovalResolved


class ActionState(str, Enum):
    REQUESTED = "requested"
    ALLOWED = "allowed"
    NEEDS_APPROVAL = "needs_approval"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    OUTCOME_UNKNOWN = "outcome_unknown"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset(
    {ActionState.DENIED, ActionState.EXPIRED, ActionState.SUCCEEDED, ActionState.FAILED, ActionState.OUTCOME_UNKNOWN}
)

_ALLOWED_FROM: dict[ActionState, frozenset[ActionState]] = {
    ActionState.REQUESTED: frozenset(),
    ActionState.ALLOWED: frozenset({ActionState.REQUESTED}),
    ActionState.NEEDS_APPROVAL: frozenset({ActionState.REQUESTED}),
    ActionState.APPROVED: frozenset({ActionState.NEEDS_APPROVAL}),
    ActionState.DENIED: frozenset({ActionState.REQUESTED, ActionState.NEEDS_APPROVAL}),
    ActionState.EXPIRED: frozenset({ActionState.NEEDS_APPROVAL}),
    ActionState.SUCCEEDED: frozenset({ActionState.ALLOWED, ActionState.APPROVED}),
    ActionState.FAILED: frozenset({ActionState.ALLOWED, ActionState.APPROVED}),
    ActionState.OUTCOME_UNKNOWN: frozenset({ActionState.ALLOWED, ActionState.APPROVED}),
}


class IllegalTransition(ValueError):
    """An event that cannot follow the action's current state (duplicate or out of order)."""


def state_after(event: Any) -> ActionState:
    """The state an action is in right after ``event``."""
    if isinstance(event, ActionRequested):
        return ActionState.REQUESTED
    if isinstance(event, (ActionDecided, ApprovalResolved, ActionExecuted)):
        return ActionState(event.outcome.value)
    raise TypeError(f"{type(event).__name__} is not a lifecycle event")


def advance(current: ActionState | None, event: Any) -> ActionState:
    """The next state, or ``IllegalTransition`` when ``event`` cannot follow ``current``.

    Events of later stages may arrive before earlier ones are seen by a reader that joins
    mid-stream (``current`` is None), so the first event seen is always accepted.
    """
    target = state_after(event)
    if current is None:
        return target
    if current.is_terminal:
        raise IllegalTransition(f"action is already {current.value}; {type(event).__name__} ({target.value}) ignored")
    if current not in _ALLOWED_FROM[target]:
        raise IllegalTransition(f"{current.value} cannot become {target.value}")
    return target
