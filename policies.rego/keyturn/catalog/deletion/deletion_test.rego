package keyturn.catalog.deletion_test

import data.keyturn.decision
import data.keyturn.fixtures_test as fixtures

bucket := "blob://prod.example.internal/reports/q1.csv"

staging_bucket := "blob://staging.example.internal/reports/q1.csv"

cases := {
	"a row deletion whose resource names another table is denied": {
		"request": fixtures.action_request(
			"db.rows.delete", "postgres://staging/shop/users", "staging",
			{"table": "other", "where": "true", "max_rows": 1},
		),
		"outcome": "denied",
		"rule": "deletion.resource_names_another_table",
	},
	"a row deletion naming its table in both places, one schema-qualified, is judged as any deletion": {
		"request": fixtures.action_request(
			"db.rows.delete", "postgres://staging/shop/Sessions", "staging",
			{"table": "public.sessions", "where": "expired", "max_rows": 3},
		),
		"outcome": "needs_approval",
		"rule": "deletion.deletion_outside_production",
		"groups": [{"name": "platform", "min": 1}],
	},
	"an allow-listed deletion is allowed, even in production": {
		"request": fixtures.action_request("cache.entry.delete", "cache://prod/sessions/abc", "production", {}),
		"outcome": "allowed",
		"rule": "deletion.allow_listed_deletion",
	},
	"a forbidden deletion is denied": {
		"request": fixtures.action_request("audit.record.delete", "audit://staging/records/1", "staging", {}),
		"outcome": "denied",
		"rule": "deletion.forbidden_deletion",
	},
	"deleting outside production needs platform": {
		"request": fixtures.action_request("bucket.object.delete", staging_bucket, "staging", {}),
		"outcome": "needs_approval",
		"rule": "deletion.deletion_outside_production",
		"groups": [{"name": "platform", "min": 1}],
	},
	"deleting in production needs platform and security": {
		"request": fixtures.action_request("bucket.object.delete", bucket, "production", {}),
		"outcome": "needs_approval",
		"rule": "deletion.deletion_in_production",
		"groups": [{"name": "platform", "min": 1}, {"name": "security", "min": 1}],
	},
	"deleting in production by an agent acting for nobody is denied": {
		"request": fixtures.unattended(fixtures.action_request("bucket.object.delete", bucket, "production", {})),
		"outcome": "denied",
		"rule": "deletion.unattended_deletion_in_production",
	},
	"deleting a secret is denied, whatever deletion would ask": {
		"request": fixtures.action_request("secrets.delete", "secret://staging/payments/db", "staging", {}),
		"outcome": "denied",
		"rule": "secrets.deleting_a_secret",
	},
}

test_deletion[name] if {
	some name, tc in cases
	fixtures.decision_matches(decision.decision, tc) with input as tc.request
}
