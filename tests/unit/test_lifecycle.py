"""The lifecycle as a requester sees it: one state per action, only ever moving forward."""

from __future__ import annotations

import pytest

from keyturn.core.events import (
    ActionDecided,
    ActionExecuted,
    ApprovalResolved,
    DecisionOutcome,
    ExecutionOutcome,
    ResolutionOutcome,
)
from keyturn.core.lifecycle import ActionState, IllegalTransition, advance


def event(cls, outcome):
    """A lifecycle event carrying only the outcome that ``advance`` reads."""

    def init(self, value):
        object.__setattr__(self, "outcome", value)

    return type(cls.__name__, (cls,), {"__init__": init})(outcome)


DECIDED_ALLOWED = event(ActionDecided, DecisionOutcome.ALLOWED)
DECIDED_DENIED = event(ActionDecided, DecisionOutcome.DENIED)
NEEDS_APPROVAL = event(ActionDecided, DecisionOutcome.NEEDS_APPROVAL)
APPROVED = event(ApprovalResolved, ResolutionOutcome.APPROVED)
EXPIRED = event(ApprovalResolved, ResolutionOutcome.EXPIRED)
SUCCEEDED = event(ActionExecuted, ExecutionOutcome.SUCCEEDED)
FAILED = event(ActionExecuted, ExecutionOutcome.FAILED)


def test_the_happy_path_moves_forward() -> None:
    state = ActionState.REQUESTED
    for step, expected in [(NEEDS_APPROVAL, "needs_approval"), (APPROVED, "approved"), (SUCCEEDED, "succeeded")]:
        state = advance(state, step)
        assert state.value == expected
    assert state.is_terminal


def test_an_execution_seen_before_its_decision_is_not_lost() -> None:
    # executed and decided travel on different topics; the reader may see the later one first
    state = advance(ActionState.REQUESTED, SUCCEEDED)
    assert state is ActionState.SUCCEEDED
    assert advance(state, DECIDED_ALLOWED) is ActionState.SUCCEEDED


def test_expired_is_terminal_and_never_becomes_denied_or_executed() -> None:
    state = advance(ActionState.NEEDS_APPROVAL, EXPIRED)
    assert state is ActionState.EXPIRED and state.is_terminal
    with pytest.raises(IllegalTransition):
        advance(state, SUCCEEDED)


def test_two_different_terminal_states_contradict() -> None:
    with pytest.raises(IllegalTransition):
        advance(ActionState.DENIED, SUCCEEDED)
    with pytest.raises(IllegalTransition):
        advance(ActionState.SUCCEEDED, FAILED)


def test_a_redelivered_event_changes_nothing() -> None:
    assert advance(ActionState.SUCCEEDED, SUCCEEDED) is ActionState.SUCCEEDED
    assert advance(ActionState.DENIED, DECIDED_DENIED) is ActionState.DENIED
