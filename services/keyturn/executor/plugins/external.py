"""Actions Keyturn does not perform itself.

``ExternalPlugin``: the catalog marks the action ``execution: external``. Nothing is run; the
requester gets a signed approval receipt (``keyturn.receipts``) that the system performing the
action verifies offline, and the action ends ``approved_external`` — never ``succeeded``.

``NoExecutor``: neither a plugin nor the catalog covers the action. It ends ``failed`` with the
reason; nothing ran.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from keyturn.executor.plugins.base import Command, ExecutionFailed
from keyturn.receipts import ReceiptSigner


class ExternalPlugin:
    name = "external"
    external = True  # the runner ends the action approved_external and keeps the receipt unmasked
    # signing has no effect outside Keyturn, and a receipt leaves the executor only once its outcome
    # is recorded: a run interrupted before that is run again, never left outcome_unknown
    repeatable = True

    def __init__(self, signer: ReceiptSigner, *, default_ttl_s: float = 900.0) -> None:
        self.signer = signer
        self.default_ttl_s = default_ttl_s  # an action allowed outright has no approval window

    async def execute(self, command: Command) -> Any:
        now = datetime.now(UTC)
        expires_at = command.execute_before or now + timedelta(seconds=self.default_ttl_s)
        if expires_at <= now:
            raise ExecutionFailed(f"the execution window closed at {expires_at.isoformat()}; no receipt was issued")
        receipt = self.signer.issue(
            action_id=command.action_id,
            action=command.action,
            resource=command.resource,
            payload_digest=command.payload_digest,
            requester=command.requester.id if command.requester else "",
            acting_for=command.requester.chain if command.requester else (),
            approvers=command.approvers,
            decision=command.decision,
            policy_revision=command.policy_revision,
            decision_id=command.decision_id,
            issued_at=now,
            expires_at=expires_at,
        )
        return {
            "performed_by": "external",
            "note": "Keyturn did not perform this action: the system that does verifies this receipt "
            "(`keyturn receipt verify`) and uses it once",
            "receipt": receipt,
        }


class NoExecutor:
    name = "none"
    repeatable = True  # it runs nothing

    def __init__(self, why: str) -> None:
        self.why = why

    async def execute(self, command: Command) -> Any:
        raise ExecutionFailed(f"not run: {self.why}")
