package keyturn.catalog.secrets_test

import data.keyturn.decision
import data.keyturn.fixtures_test as fixtures

staging_secret := "secret://staging/payments/db"

production_secret := "secret://prod/payments/db"

oncall := [{"name": "security-oncall", "min": 1}]

cases := {
	"staging read for an agent acting for a person is allowed": {
		"request": fixtures.action_request("secrets.read", staging_secret, "staging", {}),
		"outcome": "allowed",
		"rule": "secrets.read_outside_production_for_a_person",
	},
	"staging read by a person is allowed": {
		"request": fixtures.by_human(fixtures.action_request("secrets.read", staging_secret, "staging", {})),
		"outcome": "allowed",
		"rule": "secrets.read_outside_production_for_a_person",
	},
	"staging read by an agent acting for nobody needs security-oncall": {
		"request": fixtures.unattended(fixtures.action_request("secrets.read", staging_secret, "staging", {})),
		"outcome": "needs_approval",
		"rule": "secrets.unattended_read_outside_production",
		"groups": oncall,
	},
	"production read needs security-oncall": {
		"request": fixtures.action_request("secrets.read", production_secret, "production", {}),
		"outcome": "needs_approval",
		"rule": "secrets.read_in_production",
		"groups": oncall,
	},
	"read where nobody knows the environment needs security-oncall": {
		"request": fixtures.action_request("secrets.read", "secret://shared/payments/db", "unknown", {}),
		"outcome": "needs_approval",
		"rule": "secrets.read_in_production",
		"groups": oncall,
	},
	"a production secret named as staging is judged as production": {
		"request": fixtures.action_request("secrets.read", production_secret, "staging", {}),
		"outcome": "needs_approval",
		"rule": "secrets.read_in_production",
		"groups": oncall,
	},
	"delete is denied": {
		"request": fixtures.action_request("secrets.delete", staging_secret, "staging", {}),
		"outcome": "denied",
		"rule": "secrets.deleting_a_secret",
	},
	"delete by a person in production is denied": {
		"request": fixtures.by_human(fixtures.action_request("secrets.delete", production_secret, "production", {})),
		"outcome": "denied",
		"rule": "secrets.deleting_a_secret",
	},
}

test_secrets[name] if {
	some name, tc in cases
	fixtures.decision_matches(decision.decision, tc) with input as tc.request
}

test_secrets_mask_tokens if {
	d := decision.decision with input as fixtures.action_request("secrets.read", staging_secret, "staging", {})
	"parameters.token" in d.mask
	"parameters.wrapping_token" in d.mask
}
