"""The document the policy service sends OPA agrees with the schema OPA type-checks the policy against."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import jsonschema_rs
import pytest

from keyturn.config import REPO_ROOT
from keyturn.core.environments import environment_of
from keyturn.core.events import ActionRequested, Digest, ImpactPreview
from keyturn.core.principal import Principal, PrincipalKind
from keyturn.policy.decisions import decided_from_answer, policy_input, provenance_for

SCHEMA = json.loads((REPO_ROOT / "policies.rego" / "schemas" / "decision" / "decision_input.json").read_text())
NOW = datetime(2026, 11, 30, 9, 30, tzinfo=UTC)


def request(**changes) -> ActionRequested:
    base = dict(
        event_id="requested:x",
        action_id="6c0a1f9e-8a3f-4a7e-9a55-2b8f0d6e7a10",
        action="db.export",
        resource="postgres://production/analytics/customers",
        parameters_json='{"row_count": 10, "destination": "s3://corp-exports"}',
        reason="quarterly report",
        requester=Principal("agent:reporter", PrincipalKind.AGENT, ("human:alice",)),
        payload_digest=Digest("ab" * 32),
        requested_at=NOW,
    )
    return ActionRequested(**{**base, **changes})


PREVIEW = ImpactPreview(Digest("ab" * 32), "computed", "export", NOW, rows=10, method="exact", tables=("public.c",))


@pytest.mark.parametrize(
    "impact", [None, PREVIEW, ImpactPreview(Digest("ab" * 32), "unavailable", "export", NOW, detail="down")]
)
def test_the_policy_input_with_an_impact_preview_validates_against_the_schema(impact) -> None:
    document = policy_input(request(), impact)
    assert [e.message for e in jsonschema_rs.validator_for(SCHEMA).iter_errors(document)] == []
    if impact is PREVIEW:
        assert document["impact"] == {
            "status": "computed",
            "operation": "export",
            "rows": 10,
            "method": "exact",
            "tables": ["public.c"],
        }


@pytest.mark.parametrize("chain", [(), ("human:alice",), ("human:alice", "human:bob")])
def test_the_policy_input_validates_against_the_rego_input_schema(chain) -> None:
    document = policy_input(request(requester=Principal("agent:reporter", PrincipalKind.AGENT, chain)))
    validator = jsonschema_rs.validator_for(SCHEMA)
    errors = [e.message for e in validator.iter_errors(document)]
    assert errors == []


def test_the_schema_declares_exactly_the_fields_the_service_sends() -> None:
    assert set(policy_input(request())) == set(SCHEMA["properties"]) - {"impact"}
    assert set(policy_input(request(), PREVIEW)) == set(SCHEMA["properties"])
    assert SCHEMA.get("additionalProperties") is False, "a field the policy doesn't know must fail the strict check"


@pytest.mark.parametrize(
    ("resource", "environment"),
    [
        ("postgres://production/analytics/orders", "production"),
        ("postgres://prod-db.internal/orders", "unknown"),
        ("vault://staging/payments/key", "staging"),
        ("https://api.dev.example.internal/v1", "development"),
        ("s3://exports/2026", "unknown"),
        ("s3://staging/x%2Fprod/report.csv", "production"),  # an escaped slash hides no segment
    ],
)
def test_environment_comes_from_the_resource(resource: str, environment: str) -> None:
    assert environment_of(resource) == environment


@pytest.mark.parametrize(
    "answer",
    [
        None,
        {},
        {"decision": {}},
        {"decision": {"outcome": "maybe"}},
        {"decision": {"outcome": "needs_approval", "approvals": {"groups": []}}},
    ],
)
def test_an_undefined_or_malformed_answer_is_a_denial_that_says_why(answer) -> None:
    document = policy_input(request())
    decided = decided_from_answer(request(), answer, provenance_for(document, "rev", None, NOW), NOW)
    assert decided.outcome.value == "denied"
    assert decided.reasons and "malformed" in decided.reasons[0]
