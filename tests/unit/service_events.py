"""Events and sealed requests the service-layer unit tests share."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from keyturn.bus.warrants import Warrants
from keyturn.core.canonical import canonical_json
from keyturn.core.events import (
    ActionDecided,
    ActionRequested,
    DecisionOutcome,
    Digest,
    Provenance,
    payload_digest,
)
from keyturn.core.principal import Principal, PrincipalKind
from keyturn.masking.sealing import Keyring, seal_parameters

NOW = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)
REPORTER = Principal("agent:reporter", PrincipalKind.AGENT, ("human:alice",))
KEYRING = Keyring.generate("seal-unit")
# the warrants the policy and approval services send orders with, as the executor checks them
WARRANTS = Warrants(KEYRING, ("unit.actions.decided", "unit.actions.resolved"))
PARAMETERS: dict[str, Any] = {"statement": "SELECT 1", "max_rows": 10}


def requested(
    action_id: str = "a1",
    *,
    action: str = "read.table",
    resource: str = "postgres://staging/analytics/orders",
    parameters: dict[str, Any] = PARAMETERS,
    at: datetime = NOW,
) -> ActionRequested:
    digest = payload_digest(action, resource, parameters)
    return ActionRequested(
        event_id=f"requested:{action_id}",
        action_id=action_id,
        action=action,
        resource=resource,
        parameters_json=canonical_json(parameters),
        reason="a report",
        requester=REPORTER,
        payload_digest=digest,
        requested_at=at,
        sealed_parameters=seal_parameters(parameters, action_id=action_id, payload_digest=str(digest), keyring=KEYRING),
    )


def allowed(action_id: str = "a1", **kwargs: Any) -> ActionDecided:
    return ActionDecided(
        event_id=f"decided:{action_id}",
        action_id=action_id,
        outcome=DecisionOutcome.ALLOWED,
        provenance=Provenance("rev", "dec", Digest("0" * 64), NOW),
        decided_at=datetime.now(UTC),
        request=requested(action_id, **kwargs),
        credential_ttl_s=60,
    )
