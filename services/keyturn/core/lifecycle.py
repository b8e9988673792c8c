"""The lifecycle of one action: which event moves it to which state, and which states end it.

requested → allowed | denied | needs_approval;  needs_approval → approved | denied | expired;
allowed | approved → succeeded | failed | outcome_unknown | approved_external. Exactly one terminal state per
action. ``approved_external`` ends an action the catalog marks ``execution: external``: cleared, not run by
Keyturn, handed to the system that performs it with a signed approval receipt (never ``succeeded``).
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
    APPROVED_EXTERNAL = "approved_external"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset(
    {
        ActionState.DENIED,
        ActionState.EXPIRED,
        ActionState.SUCCEEDED,
        ActionState.FAILED,
        ActionState.OUTCOME_UNKNOWN,
        ActionState.APPROVED_EXTERNAL,
    }
)

# How far along the lifecycle each state is. Events of one action travel on different topics,
# so a reader may see a later stage before an earlier one; the state never moves backwards.
STAGE: dict[ActionState, int] = {
    ActionState.REQUESTED: 0,
    ActionState.ALLOWED: 1,
    ActionState.NEEDS_APPROVAL: 1,
    ActionState.APPROVED: 2,
    ActionState.EXPIRED: 2,
    ActionState.DENIED: 2,
    ActionState.SUCCEEDED: 3,
    ActionState.FAILED: 3,
    ActionState.OUTCOME_UNKNOWN: 3,
    ActionState.APPROVED_EXTERNAL: 3,
}


class IllegalTransition(ValueError):
    """An event that contradicts the action's state (e.g. executed after denied)."""


def state_after(event: Any) -> ActionState:
    """The state an action is in right after ``event``."""
    if isinstance(event, ActionRequested):
        return ActionState.REQUESTED
    if isinstance(event, (ActionDecided, ApprovalResolved, ActionExecuted)):
        return ActionState(event.outcome.value)
    raise TypeError(f"{type(event).__name__} is not a lifecycle event")


def advance(current: ActionState | None, event: Any) -> ActionState:
    """The state after ``event``: later stages move it on, late-arriving earlier stages leave it.

    Raises ``IllegalTransition`` for a contradiction: anything later than a terminal state, or a
    second, different terminal state.
    """
    target = state_after(event)
    if current is None:
        return target
    if current.is_terminal and target is not current and (target.is_terminal or STAGE[target] > STAGE[current]):
        raise IllegalTransition(
            f"action is already {current.value}; {type(event).__name__} ({target.value}) contradicts it"
        )
    return target if STAGE[target] > STAGE[current] else current
