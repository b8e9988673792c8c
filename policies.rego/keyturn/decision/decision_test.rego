package keyturn.decision_test

import data.keyturn.combination
import data.keyturn.decision
import data.keyturn.fixtures_test as fixtures

production_db := "postgres://prod/analytics"

grant(role) := fixtures.action_request("iam.role.grant", "iam://prod/roles", "production", {"role": role})

# The starter behaviours the integration tests rely on.

test_read_is_allowed_in_staging_and_production[environment] if {
	some environment, resource in {
		"staging": "postgres://staging/analytics/customers",
		"production": "postgres://prod/analytics/customers",
	}
	d := decision.decision with input as fixtures.action_request("read.table", resource, environment, {"row_count": 25})
	d.outcome == "allowed"
	d.approvals == {}
}

test_role_grant_needs_one_approver_from_security if {
	d := decision.decision with input as grant("analyst")
	d.outcome == "needs_approval"
	d.approvals.groups == [{"name": "security", "min": 1}]
	d.approvals.require_all == true
	d.approvals.pending_ttl_s == 3600
	d.approvals.execution_window_s == 900
	d.approvals.escalation_group == null
	d.approvals.reminder_fractions == [0.5, 0.8]
}

test_secret_deletion_is_denied if {
	req := fixtures.action_request("secrets.delete", "secret://prod/payments/db", "production", {})
	d := decision.decision with input as req
	d.outcome == "denied"
	d.approvals == {}
}

test_unknown_action_is_denied if {
	d := decision.decision with input as fixtures.action_request("unknown.thing", "x://somewhere", "staging", {})
	d.outcome == "denied"
	d.reasons == ["unknown action: unknown.thing is not in the Keyturn catalog"]
	d.rules == ["combination.action_is_unknown"]
}

# Shape and fail-closed behaviour.

test_every_decision_has_every_field[name] if {
	some name, req in {
		"allowed": fixtures.action_request("read.table", production_db, "production", {}),
		"needs approval": grant("analyst"),
		"denied": fixtures.action_request("unknown.thing", "x://y", "staging", {}),
		"malformed": {"action": 7},
	}
	d := decision.decision with input as req
	object.keys(d) == {
		"outcome", "reasons", "approvals", "credential_ttl_s", "mask",
		"break_glass", "rules", "denials", "impact_tolerance",
	}
	count(d.reasons) > 0
	count(d.rules) > 0
}

test_missing_input_is_denied_with_a_reason if {
	decision.decision.outcome == "denied"
	"malformed input: input must be a JSON object" in decision.decision.reasons
}

test_malformed_input_is_denied_without_consulting_the_catalog if {
	req := object.union(grant("analyst"), {"action_id": "not-a-uuid", "requester": {"kind": "robot"}})
	d := decision.decision with input as req
	d.outcome == "denied"
	d.reasons == [
		"malformed input: action_id must be a UUID string",
		"malformed input: requester.kind must be one of agent, human, service",
	]
	d.rules == ["combination.input_is_malformed"]
}

test_default_decision_is_a_denial if {
	d := decision.decision with combination.reasons as "not a set"
	d.outcome == "denied"
	d.rules == ["decision.default_denial"]
}

test_without_policy_data_every_decision_is_the_default_denial if {
	req := fixtures.action_request("read.table", production_db, "production", {})
	d := decision.decision with input as req with data.keyturn.timing as {}
	d.outcome == "denied"
	d.rules == ["decision.default_denial"]
}
