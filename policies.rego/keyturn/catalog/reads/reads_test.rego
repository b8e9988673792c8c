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
	"a production read whose row count masking withheld needs data-owners": {
		"request": fixtures.unattended(fixtures.action_request(
			"read.table", production_table, "production",
			{"row_count": "<PHONE_NUMBER>"},
		)),
		"outcome": "needs_approval",
		"rule": "reads.unknown_read_in_production",
		"groups": [{"name": "data-owners", "min": 1}],
	},
	"a staging read whose row count masking withheld is allowed": {
		"request": fixtures.action_request("read.table", staging_table, "staging", {"row_count": "<CREDIT_CARD>"}),
		"outcome": "allowed",
		"rule": "reads.read_is_allowed",
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

test_a_count_given_as_a_float_reads_as_a_whole_number if {
	req := fixtures.action_request("read.table", staging_table, "staging", {"row_count": 1e10})
	some v in data.keyturn.catalog.reads.verdicts with input as req
	v.reason == "read.table only reads (10000000000 rows) in staging"
}

test_reads[name] if {
	some name, tc in cases
	fixtures.decision_matches(decision.decision, tc) with input as tc.request
}
