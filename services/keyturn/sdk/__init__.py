"""Keyturn's Python SDK: what an agent needs to put its privileged actions through Keyturn.

    from keyturn.sdk import Keyturn, Denied

    kt = Keyturn("http://127.0.0.1:8080", token=AGENT_TOKEN)
    try:
        done = kt.run("sql.query", "postgres://staging/app", {"statement": "SELECT 1"}, reason="health check")
        print(done.result)
    except Denied as refused:
        print(refused.reasons)

Needs only httpx: importing it loads none of the services' dependencies (Kafka, PostgreSQL,
masking models). ``keyturn.sdk.topic`` (high-volume submission over Kafka) needs the
``aiokafka`` and ``fastavro`` extras; ``keyturn.sdk.adapters`` the agent framework's own
package. ``keyturn.sdk.receipts`` (checking a signed approval receipt: ``verify_receipt``,
``keys_from``, ``UsedReceipts``, ``ReceiptInvalid``, also importable from ``keyturn.sdk``
itself) needs ``cryptography``, the ``receipts`` extra; it is loaded on first use, so the
client works without it. See docs/sdk.md.
"""

from typing import TYPE_CHECKING, Any

from keyturn.sdk.client import AsyncKeyturn, Keyturn, configure
from keyturn.sdk.errors import (
    ActionError,
    ApprovalRefused,
    ApprovalSpent,
    AuthenticationFailed,
    Denied,
    ExecutionFailed,
    Expired,
    IdempotencyConflict,
    InvalidRequest,
    KeyturnError,
    NotFound,
    OutcomeUnknown,
    ReceiptExpired,
    RequestError,
    Unavailable,
    UnexpectedState,
    WaitTimeout,
)
from keyturn.sdk.guard import current_action, guard
from keyturn.sdk.models import Action, Submitted

if TYPE_CHECKING:
    from keyturn.sdk.receipts import ReceiptInvalid, ReceiptReused, UsedReceipts, keys_from, verify_receipt

_RECEIPTS = frozenset({"ReceiptInvalid", "ReceiptReused", "UsedReceipts", "keys_from", "verify_receipt"})


def __getattr__(name: str) -> Any:
    """The receipt verifier, imported on first use (it needs ``cryptography``, the ``receipts`` extra)."""
    if name in _RECEIPTS:
        try:
            from keyturn.sdk import receipts
        except ModuleNotFoundError as exc:
            raise ImportError(
                f"keyturn.sdk.{name} needs {exc.name}: install the receipts extra (pip install 'keyturn-sdk[receipts]')"
            ) from exc
        return getattr(receipts, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Action",
    "ActionError",
    "ApprovalRefused",
    "ApprovalSpent",
    "AsyncKeyturn",
    "AuthenticationFailed",
    "Denied",
    "ExecutionFailed",
    "Expired",
    "IdempotencyConflict",
    "InvalidRequest",
    "Keyturn",
    "KeyturnError",
    "NotFound",
    "OutcomeUnknown",
    "ReceiptExpired",
    "ReceiptInvalid",
    "ReceiptReused",
    "RequestError",
    "Submitted",
    "Unavailable",
    "UnexpectedState",
    "UsedReceipts",
    "WaitTimeout",
    "configure",
    "current_action",
    "guard",
    "keys_from",
    "verify_receipt",
]
