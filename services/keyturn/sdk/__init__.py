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
package. See docs/sdk.md.
"""

from keyturn.sdk.client import AsyncKeyturn, Keyturn, configure
from keyturn.sdk.errors import (
    ActionError,
    ApprovalRefused,
    AuthenticationFailed,
    Denied,
    ExecutionFailed,
    Expired,
    IdempotencyConflict,
    InvalidRequest,
    KeyturnError,
    NotFound,
    OutcomeUnknown,
    RequestError,
    Unavailable,
    UnexpectedState,
    WaitTimeout,
)
from keyturn.sdk.guard import current_action, guard
from keyturn.sdk.models import Action, Submitted

__all__ = [
    "Action",
    "ActionError",
    "ApprovalRefused",
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
    "RequestError",
    "Submitted",
    "Unavailable",
    "UnexpectedState",
    "WaitTimeout",
    "configure",
    "current_action",
    "guard",
]
