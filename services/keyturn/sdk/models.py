"""What the intake answers, as plain objects: a submission's receipt and an action's status."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from keyturn.sdk import errors

# The states of the intake's status answer (``GET /v1/actions/{id}``) the SDK gives a meaning to; any
# other state is running while the answer says it is not terminal, and ``UnexpectedState`` once it is.
SUCCEEDED = "succeeded"
# Approved, and performed by the caller, not by Keyturn's executor: the terminal state of an action
# whose catalog family has no executor. Its status carries a signed receipt for the system that
# performs it, in ``result.receipt`` (the external executor's result).
APPROVED_EXTERNAL = "approved_external"
# The executor plugin that performs nothing and reports ``performed: false`` (actions without an
# executor on a stack that does not end them ``approved_external``).
NOOP_PLUGIN = "noop"
_KNOWN_FIELDS = frozenset(
    {"action_id", "action", "resource", "requester", "state", "terminal", "reasons", "result", "payload_digest"}
)


def receipt_expiry(receipt: Any) -> datetime | None:
    """When a receipt's approval window closes (its ``claims.expires_at``, with a time zone); None when
    it names no valid one. Read without checking the signature (``verify_receipt`` checks that, and
    reads the expiry here too), so the client knows a receipt is spent without the receipts extra."""
    claims = receipt.get("claims") if isinstance(receipt, Mapping) else None
    if not isinstance(claims, Mapping) or not isinstance(claims.get("expires_at"), str):
        return None
    try:
        moment = datetime.fromisoformat(claims["expires_at"].replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


@dataclass(frozen=True)
class Submitted:
    """The intake's answer to a submission: the action's id and state; ``created`` is false when the
    idempotency key named an action that already existed (a retry, or a repeated call). ``found``
    says more: the action existed before this submission was sent (a repeated call, not a retry
    of this one after a lost answer, which may have made it)."""

    action_id: str
    state: str
    created: bool
    idempotency_key: str
    found: bool = False


@dataclass(frozen=True)
class Action:
    """An action's status as the intake shows it to its requester (parameters and results masked).

    ``extra`` keeps every field this SDK version does not name, so nothing the server adds is lost;
    ``raw`` is the whole answer.
    """

    action_id: str
    state: str
    terminal: bool
    action: str = ""
    resource: str = ""
    requester: str = ""
    reasons: tuple[str, ...] = ()
    result: Any = None
    payload_digest: str = ""
    history: tuple[dict[str, Any], ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, body: Any) -> Action:
        if not isinstance(body, dict) or not body.get("action_id") or not isinstance(body.get("state"), str):
            raise errors.RequestError("Keyturn answered with something that is not an action's status")
        return cls(
            action_id=str(body.get("action_id", "")),
            state=str(body.get("state", "")),
            terminal=bool(body.get("terminal", False)),
            action=str(body.get("action") or ""),
            resource=str(body.get("resource") or ""),
            requester=str(body.get("requester") or ""),
            reasons=tuple(str(r) for r in body.get("reasons") or ()),
            result=body.get("result"),
            payload_digest=str(body.get("payload_digest") or ""),
            history=tuple(h for h in body.get("history") or () if isinstance(h, dict)),
            extra={k: v for k, v in body.items() if k not in _KNOWN_FIELDS and k != "history"},
            raw=dict(body),
        )

    @property
    def receipt(self) -> Any:
        """The signed approval receipt of an action performed outside Keyturn: the external executor's
        result holds it (``result.receipt``, as ``GET /v1/actions/{id}`` serves it); None for any other."""
        return self.result.get("receipt") if isinstance(self.result, dict) else None

    @property
    def approver_groups(self) -> list[str]:
        """The groups whose members must approve (empty unless the policy asked for approval)."""
        for entry in self.history:
            if entry.get("event") == "ActionDecided" and entry.get("approver_groups"):
                return [str(g) for g in entry["approver_groups"]]
        return []

    @property
    def expires_at(self) -> str | None:
        """When an open approval expires (RFC 3339), when the server says."""
        for entry in self.history:
            if entry.get("event") == "ActionDecided" and entry.get("expires_at"):
                return str(entry["expires_at"])
        return None

    @property
    def error(self) -> str | None:
        """The executor's error (masked), when it ran and failed."""
        entry = self._executed()
        return str(entry["error"]) if entry and entry.get("error") else None

    @property
    def plugin(self) -> str | None:
        """The executor plugin that ran the action, if one did."""
        entry = self._executed()
        return str(entry["plugin"]) if entry and entry.get("plugin") else None

    @property
    def refused_by_people(self) -> bool:
        """Whether the denial came from approvers (an ``ApprovalResolved`` in the history), not the policy."""
        return any(entry.get("event") == "ApprovalResolved" for entry in self.history)

    @property
    def performed_by_keyturn(self) -> bool:
        """Whether Keyturn's executor performed the action (it succeeded with a plugin that does something)."""
        return self.state == SUCCEEDED and self.plugin != NOOP_PLUGIN

    @property
    def left_to_the_caller(self) -> bool:
        """Whether the action was approved for the caller to perform: ``approved_external``, or succeeded
        through the executor's no-op plugin (a stack with no executor for its family)."""
        return self.state == APPROVED_EXTERNAL or (self.state == SUCCEEDED and self.plugin == NOOP_PLUGIN)

    def _executed(self) -> dict[str, Any] | None:
        return next((e for e in reversed(self.history) if e.get("event") == "ActionExecuted"), None)

    def raise_for_outcome(self) -> Action:
        """Return this action if it ended approved (``succeeded`` or ``approved_external``); otherwise raise
        the exception its state means. A state still running raises ``WaitTimeout``; one this SDK does not
        know raises ``UnexpectedState``, never passes for success."""
        state = self.state
        if state in (SUCCEEDED, APPROVED_EXTERNAL):
            return self
        why = "; ".join(self.reasons) or "no reason given"
        if state == "denied":
            if self.refused_by_people:
                raise errors.ApprovalRefused(f"{self.action} {self.action_id} was refused by an approver: {why}", self)
            raise errors.Denied(f"{self.action} {self.action_id} was denied by the policy: {why}", self)
        if state == "expired":
            raise errors.Expired(f"{self.action} {self.action_id} expired before anyone approved it: {why}", self)
        if state == "failed":
            raise errors.ExecutionFailed(f"{self.action} {self.action_id} failed: {self.error or why}", self)
        if state == "outcome_unknown":
            raise errors.OutcomeUnknown(
                f"{self.action} {self.action_id} may or may not have taken effect: {self.error or why}", self
            )
        if not self.terminal:  # a state this SDK does not know is still running too, as long as it is not over
            raise errors.WaitTimeout(f"{self.action} {self.action_id} is still {state}", self)
        raise errors.UnexpectedState(
            f"{self.action} {self.action_id} is in state {state!r}, which this SDK does not know; "
            "it is not taken for success",
            self,
        )
