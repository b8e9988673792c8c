package keyturn.combination_test

import data.keyturn.decision
import data.keyturn.fixtures_test as fixtures

production_db := "postgres://prod/analytics"

grant(role) := fixtures.action_request("iam.role.grant", "iam://prod/roles", "production", {"role": role})

# Deny wins.

test_deny_wins_over_allow if {
	req := fixtures.action_request("cache.entry.delete", "cache://prod/sessions/abc", "production", {})
	d := decision.decision with input as req with data.keyturn.deletion.forbidden_actions as ["cache.entry.delete"]
	d.outcome == "denied"
	d.rules == ["deletion.allow_listed_deletion", "deletion.forbidden_deletion"]
	d.reasons == ["cache.entry.delete is on the list of deletions that are never done through Keyturn"]

	# the allowance fired too; only the rule that denied is a denial, with its own reason
	d.denials == [{
		"rule": "deletion.forbidden_deletion",
		"reason": "cache.entry.delete is on the list of deletions that are never done through Keyturn",
	}]
}

test_deny_wins_over_approval if {
	d := decision.decision with input as fixtures.action_request("secrets.delete", "secret://staging/x", "staging", {})
	d.outcome == "denied"
	"deletion.deletion_outside_production" in d.rules
	d.reasons == ["secrets.delete is never done through Keyturn: rotate or revoke the secret instead"]
	every denial in d.denials {
		denial.reason == "secrets.delete is never done through Keyturn: rotate or revoke the secret instead"
		denial.rule in d.rules
	}
	count(d.denials) > 0
	count(d.denials) < count(d.rules) # the approval rule the denial overrode is not one
}

test_only_a_denial_has_denials[name] if {
	some name, req in {
		"allowed": fixtures.action_request("read.table", "postgres://prod/analytics/customers", "production", {}),
		"needs approval": grant("analyst"),
	}
	d := decision.decision with input as req
	d.outcome != "denied"
	d.denials == []
}

test_an_action_nothing_allows_is_denied if {
	req := fixtures.action_request("read.table", production_db, "production", {})
	d := decision.decision with input as req with data.keyturn.catalog.reads.verdicts as set()
	d.outcome == "denied"
	d.reasons == ["no catalog rule allows read.table in this context"]
	d.denials == [{"rule": "combination.nothing_allows_the_action", "reason": "no catalog rule allows read.table in this context"}]
}

# Combining approval requests.

approve(rule, groups, require_all) := {
	"effect": "approve", "rule": rule, "reason": rule,
	"groups": groups, "require_all": require_all,
}

combination_cases := {
	"the largest minimum of a group wins": {
		"verdicts": {
			approve("a", [{"name": "security", "min": 1}], true),
			approve("b", [{"name": "security", "min": 2}, {"name": "platform", "min": 1}], true),
		},
		"groups": [{"name": "platform", "min": 1}, {"name": "security", "min": 2}],
		"require_all": true,
	},
	"one any-of request keeps any-of": {
		"verdicts": {approve("a", [{"name": "security", "min": 1}, {"name": "platform", "min": 1}], false)},
		"groups": [{"name": "platform", "min": 1}, {"name": "security", "min": 1}],
		"require_all": false,
	},
	"any-of next to all-of becomes all-of": {
		"verdicts": {
			approve("a", [{"name": "security", "min": 1}, {"name": "platform", "min": 1}], false),
			approve("b", [{"name": "db-owners", "min": 1}], true),
		},
		"groups": [{"name": "db-owners", "min": 1}, {"name": "platform", "min": 1}, {"name": "security", "min": 1}],
		"require_all": true,
	},
	"two different any-of requests become all-of": {
		"verdicts": {
			approve("a", [{"name": "security", "min": 1}, {"name": "platform", "min": 1}], false),
			approve("b", [{"name": "db-owners", "min": 1}], false),
		},
		"groups": [{"name": "db-owners", "min": 1}, {"name": "platform", "min": 1}, {"name": "security", "min": 1}],
		"require_all": true,
	},
}

test_approval_requests_combine[name] if {
	some name, tc in combination_cases
	d := decision.decision with input as grant("analyst") with data.keyturn.catalog.iam.verdicts as tc.verdicts
	d.outcome == "needs_approval"
	d.approvals.groups == tc.groups
	d.approvals.require_all == tc.require_all
}

# Time of day.

test_off_hours_approval_expires_sooner_and_escalates if {
	d := decision.decision with input as fixtures.off_hours(grant("analyst"))
	d.approvals.pending_ttl_s == 1800
	d.approvals.escalation_group == "security-oncall"
	"combination.outside_business_hours" in d.rules
	concat("", [
		"submitted outside business hours (Saturday 03:00 UTC): ",
		"the request expires after 1800 s and escalates to security-oncall",
	]) in d.reasons
}

test_off_hours_changes_nothing_that_needs_no_approval if {
	req := fixtures.off_hours(fixtures.action_request("read.table", production_db, "production", {}))
	d := decision.decision with input as req
	d.outcome == "allowed"
	not "combination.outside_business_hours" in d.rules
	count(d.reasons) == 1
}

# Credentials and masking.

test_credential_ttl_defaults_to_a_minute if {
	d := decision.decision with input as grant("analyst")
	d.credential_ttl_s == 60
}

test_mask_always_names_passwords_and_tokens if {
	d := decision.decision with input as grant("analyst")
	d.mask == ["parameters.password", "parameters.token"]
}

# Break-glass.

incident(req) := object.union(req, {"parameters": {"break_glass": true, "incident_id": "INC-4711"}})

uncapped_read := fixtures.action_request(
	"sql.query", production_db, "production",
	{"statement": "SELECT * FROM orders"},
)

break_glass_cases := {
	"uncapped production read for a person": {
		"request": incident(uncapped_read),
		"outcome": "allowed",
		"break_glass": true,
	},
	"on-call role grant in production": {
		"request": incident(grant("incident-responder")),
		"outcome": "allowed",
		"break_glass": true,
	},
	"role revoke in production by a person": {
		"request": fixtures.by_human(incident(fixtures.action_request(
			"iam.role.revoke", "iam://prod/roles", "production",
			{"role": "analyst", "principal": "human:mallory"},
		))),
		"outcome": "allowed",
		"break_glass": true,
	},
	"without an incident id": {
		"request": object.union(uncapped_read, {"parameters": {"break_glass": true}}),
		"outcome": "needs_approval",
		"break_glass": false,
		"refusal": "break-glass refused: it needs parameters.incident_id",
	},
	"outside production": {
		"request": incident(fixtures.action_request(
			"iam.role.grant", "iam://staging/roles", "staging",
			{"role": "incident-responder"},
		)),
		"outcome": "needs_approval",
		"break_glass": false,
		"refusal": "break-glass refused: it is only for production",
	},
	"by an agent acting for nobody": {
		"request": fixtures.unattended(incident(uncapped_read)),
		"outcome": "needs_approval",
		"break_glass": false,
		"refusal": "break-glass refused: a person must make the request or be behind it",
	},
	"for an action that is not a break-glass action": {
		"request": incident(grant("org-admin")),
		"outcome": "needs_approval",
		"break_glass": false,
		"refusal": "break-glass refused: iam.role.grant with these parameters is not a break-glass action",
	},
	"a denied action stays denied": {
		"request": incident(fixtures.action_request(
			"sql.query", production_db, "production",
			{"statement": "DROP TABLE orders"},
		)),
		"outcome": "denied",
		"break_glass": false,
	},
	"an allowed action needs no break-glass": {
		"request": incident(fixtures.action_request(
			"sql.query", production_db, "production",
			{"statement": "SELECT 1", "max_rows": 1},
		)),
		"outcome": "allowed",
		"break_glass": false,
	},
	"break_glass must be the boolean true": {
		"request": object.union(uncapped_read, {"parameters": {"break_glass": "yes", "incident_id": "INC-1"}}),
		"outcome": "needs_approval",
		"break_glass": false,
	},
}

test_break_glass[name] if {
	some name, tc in break_glass_cases
	d := decision.decision with input as tc.request
	d.outcome == tc.outcome
	d.break_glass == tc.break_glass
	object.get(tc, "refusal", "") in {"", d.reasons[_]}
}

test_break_glass_says_why_and_skips_approvals if {
	d := decision.decision with input as incident(uncapped_read)
	d.reasons == ["break-glass for incident INC-4711: allowed without approval, reviewed after the fact"]
	d.approvals == {}
	"combination.break_glass" in d.rules
}

test_base_request_is_allowed if {
	decision.decision.outcome == "allowed" with input as fixtures.base_request
}

# Every family is consulted for some action, or says it judges every action: a family that
# forgot would have its verdicts silently left out by combination.consulted.
test_every_catalog_family_is_consulted_for_some_action if {
	actions := {replace(pattern, "*", "x") | some pattern, _ in data.keyturn.parameters.actions} | {"mcp.notes.read"}

	# the families' tests live beside them, under data.keyturn.catalog too
	families := {name | some name, _ in data.keyturn.catalog; not endswith(name, "_test")}
	count(families) >= 9
	every name in families {
		consulted_for_some(name, actions)
	}
}

consulted_for_some(name, _) if data.keyturn.catalog[name].judges_every_action

consulted_for_some(name, actions) if {
	some action in actions
	data.keyturn.catalog[name].covers_action with input as {"action": action}
}
