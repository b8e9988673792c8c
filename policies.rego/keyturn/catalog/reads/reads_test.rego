package keyturn.catalog.reads_test

import data.keyturn.decision
import data.keyturn.fixtures_test as fixtures

staging_table := "postgres://staging/analytics/customers"

production_table := "postgres://prod/analytics/customers"

cases := {
	"small read in staging is allowed": {
		"request": fixtures.action_request("read.table", staging_table, "staging", {"row_count": 10}),
		"outcome": "allowed",
		"rule": "reads.read_is_allowed",
	},
	"small read in production is allowed": {
		"request": fixtures.action_request("read.table", production_table, "production", {"row_count": 10}),
		"outcome": "allowed",
		"rule": "reads.read_is_allowed",
	},
	"read without a row count is allowed": {
		"request": fixtures.action_request("read.object", "blob://reports.example.internal/q1.csv", "staging", {}),
		"outcome": "allowed",
		"rule": "reads.read_is_allowed",
	},
	"large read in staging is allowed": {
		"request": fixtures.action_request("read.table", staging_table, "staging", {"row_count": 500000}),
		"outcome": "allowed",
		"rule": "reads.read_is_allowed",
	},
	"large read in production needs data-owners": {
		"request": fixtures.action_request("read.table", production_table, "production", {"row_count": 500000}),
		"outcome": "needs_approval",
		"rule": "reads.large_read_in_production",
		"groups": [{"name": "data-owners", "min": 1}],
	},
	"large read where the environment is unknown needs data-owners": {
		"request": fixtures.action_request(
			"read.table", "https://api.example.internal/v1/rows", "unknown",
			{"row_count": 500000},
		),
		"outcome": "needs_approval",
		"rule": "reads.large_read_in_production",
		"groups": [{"name": "data-owners", "min": 1}],
	},
	"small read by an agent acting for nobody is allowed": {
		"request": fixtures.unattended(fixtures.action_request(
			"read.table", production_table, "production",
			{"row_count": 10},
		)),
		"outcome": "allowed",
		"rule": "reads.read_is_allowed",
	},
}

test_reads[name] if {
	some name, tc in cases
	fixtures.decision_matches(decision.decision, tc) with input as tc.request
}
