"""What can go wrong, as exceptions an agent can catch by kind.

Two families share the base ``KeyturnError``:

- **the request did not get through** (the intake answered with a Problem body, or not at all):
  ``Unavailable`` (503, or no answer after the retries; ``retry_after`` says when to try
  again), ``AuthenticationFailed`` (401), ``NotFound`` (404), ``InvalidRequest`` (400, 413,
  422, 431; ``problems`` name each field and rule), ``IdempotencyConflict`` (409);
- **the action ended without the result the agent asked for** (``ActionError``, carrying the
  ``Action``): ``Denied`` by the policy (``reasons``), ``ApprovalRefused`` by the approvers
  (a ``Denied`` too), ``Expired`` unanswered (``ReceiptExpired``: approved, but the receipt's window closed before a
  guarded body ran), ``ExecutionFailed`` (nothing took effect),
  ``OutcomeUnknown`` (it may have taken effect: do not repeat it blindly), ``UnexpectedState``
  (a state this SDK does not know: never taken for success), and ``WaitTimeout`` (not over
  yet when the caller's patience ran out).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from keyturn.sdk.models import Action


class KeyturnError(Exception):
    """Base of every error the SDK raises."""


class RequestError(KeyturnError):
    """The intake refused or could not take the request; ``problem`` is its Problem body (RFC 9457 or the
    intake's ``{error, detail, problems}``), ``status`` its HTTP status (0 when no answer came)."""

    def __init__(
        self,
        detail: str,
        *,
        status: int = 0,
        problem: dict[str, Any] | None = None,
        problems: list[str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.problem = problem or {}
        self.problems = problems or []

    @property
    def error(self) -> str | None:
        """The Problem's code (``error``, or RFC 9457's ``type``), when it has one."""
        value = self.problem.get("error") or self.problem.get("type")
        return str(value) if value else None


class Unavailable(RequestError):
    """Keyturn did not answer, or answered 502/503/504, after the retries; safe to try again later
    (with the same idempotency key). ``retry_after`` is the server's Retry-After in seconds, if any."""

    def __init__(self, detail: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.retry_after = retry_after


class AuthenticationFailed(RequestError):
    """401: the token is missing, expired or not accepted."""


class NotFound(RequestError):
    """404: no such action visible to this principal."""


class InvalidRequest(RequestError):
    """400, 413, 422 or 431: the request itself is wrong; ``problems`` say where. Retrying cannot help.
    Status 0: the SDK would not send it (a token no header may carry)."""


class IdempotencyConflict(RequestError):
    """409: this idempotency key was already used by this principal for a different request."""


class ActionError(KeyturnError):
    """The action ended (or stood) where the caller did not get its result; ``action`` is its last status."""

    def __init__(self, message: str, action: Action) -> None:
        super().__init__(message)
        self.action = action

    @property
    def action_id(self) -> str:
        return self.action.action_id

    @property
    def reasons(self) -> list[str]:
        """The policy's, the approvers' or the executor's reasons, masked."""
        return list(self.action.reasons)


class Denied(ActionError):
    """The action was denied: by the policy (``reasons`` are the policy's) or, as ``ApprovalRefused``, by people."""


class ApprovalRefused(Denied):
    """An approver refused the action (``reasons`` hold the approval's summary)."""


class Expired(ActionError):
    """Nobody answered the approval in time."""


class ReceiptExpired(Expired):
    """The action was approved for the caller to perform, but its receipt's window had closed (or it
    carried no readable expiry) when the guarded body was about to run: the system that performs it
    would refuse the receipt, so the body does not run. Ask for a new action to do it now."""


class ApprovalSpent(ActionError):
    """A repeated guarded call (its idempotency key found an old action) found the action already
    approved: the call that was approved may have run the body, and an approval is performed at
    most once, so the body does not run again. Submit with a new key to perform it again."""


class ExecutionFailed(ActionError):
    """The executor ran the action and it did not take effect; ``error`` says why (masked)."""

    @property
    def error(self) -> str | None:
        return self.action.error


class OutcomeUnknown(ActionError):
    """The action may or may not have taken effect (the executor stopped mid-run); Keyturn will not run it
    again, and neither should the agent without finding out first."""


class UnexpectedState(ActionError):
    """A state this SDK does not know. It is never taken for success; upgrade the SDK or check the action."""


class WaitTimeout(ActionError, TimeoutError):
    """The action was not over when the wait's timeout passed; ``action`` is where it stood. Waiting again
    (``wait(action_id)``) is safe: it never submits anything."""
