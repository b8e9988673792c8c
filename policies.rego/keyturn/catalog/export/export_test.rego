package keyturn.catalog.export_test

import data.keyturn.decision
import data.keyturn.fixtures_test as fixtures

production_table := "postgres://prod/analytics/customers"

staging_table := "postgres://staging/analytics/customers"

inside := "blob://exports.example.internal/daily/"

outside := "https://files.example.net/upload"

export(resource, environment, rows, destination) := fixtures.action_request(
	"db.export", resource, environment,
	{"row_count": rows, "destination": destination, "destination_credentials": "****"},
)

both_groups := [{"name": "data-owners", "min": 1}, {"name": "security", "min": 1}]

cases := {
	"small export inside the company is allowed": {
		"request": export(production_table, "production", 500, inside),
		"outcome": "allowed",
		"rule": "export.small_internal_export",
	},
	"export to the bare internal domain is inside": {
		"request": export(staging_table, "staging", 500, "sftp://corp.example.com/in/"),
		"outcome": "allowed",
		"rule": "export.small_internal_export",
	},
	"small export from production by an agent acting for nobody needs data-owners": {
		"request": fixtures.unattended(export(production_table, "production", 500, inside)),
		"outcome": "needs_approval",
		"rule": "export.unattended_export_in_production",
		"groups": [{"name": "data-owners", "min": 1}],
	},
	"small export from staging by an agent acting for nobody is allowed": {
		"request": fixtures.unattended(export(staging_table, "staging", 500, inside)),
		"outcome": "allowed",
		"rule": "export.small_internal_export",
	},
	"large export inside the company needs data-owners": {
		"request": export(staging_table, "staging", 50000, inside),
		"outcome": "needs_approval",
		"rule": "export.large_internal_export",
		"groups": [{"name": "data-owners", "min": 1}],
	},
	"huge export inside the company from staging needs data-owners": {
		"request": export(staging_table, "staging", 2000000, inside),
		"outcome": "needs_approval",
		"rule": "export.large_internal_export",
		"groups": [{"name": "data-owners", "min": 1}],
	},
	"huge export inside the company from production needs security as well": {
		"request": export(production_table, "production", 2000000, inside),
		"outcome": "needs_approval",
		"rule": "export.huge_internal_export_from_production",
		"groups": both_groups,
	},
	"export outside the company needs security and data-owners": {
		"request": export(staging_table, "staging", 10, outside),
		"outcome": "needs_approval",
		"rule": "export.export_leaves_the_company",
		"groups": both_groups,
	},
	"a look-alike of the internal domain is outside": {
		"request": export(staging_table, "staging", 10, "https://evilexample.internal/drop"),
		"outcome": "needs_approval",
		"rule": "export.export_leaves_the_company",
		"groups": both_groups,
	},
	"huge export outside the company is denied": {
		"request": export(staging_table, "staging", 2000000, outside),
		"outcome": "denied",
		"rule": "export.huge_export_leaves_the_company",
	},
	"export without a row count is denied": {
		"request": fixtures.action_request("db.export", staging_table, "staging", {"destination": inside}),
		"outcome": "denied",
		"rule": "export.export_details_are_missing",
	},
	"export with a negative row count is denied": {
		"request": export(staging_table, "staging", -1, inside),
		"outcome": "denied",
		"rule": "export.export_details_are_missing",
	},
	"export without a destination is denied": {
		"request": fixtures.action_request("db.export", staging_table, "staging", {"row_count": 10}),
		"outcome": "denied",
		"rule": "export.export_details_are_missing",
	},
	"export to something that is not a URL is denied": {
		"request": export(staging_table, "staging", 10, "exports.example.internal"),
		"outcome": "denied",
		"rule": "export.export_details_are_missing",
	},
}

test_export[name] if {
	some name, tc in cases
	fixtures.decision_matches(decision.decision, tc) with input as tc.request
}

test_export_masks_destination_credentials if {
	d := decision.decision with input as export(staging_table, "staging", 10, inside)
	"parameters.destination_credentials" in d.mask
}

test_export_masks_the_listed_columns_in_the_file if {
	d := decision.decision with input as export(staging_table, "staging", 10, inside)
	"columns.email" in d.mask
}

test_export_credential_lives_long_enough_to_copy if {
	d := decision.decision with input as export(staging_table, "staging", 10, inside)
	d.credential_ttl_s == 900
}

test_an_export_the_requester_downloads_is_judged_as_leaving_the_company if {
	d := decision.decision with input as export(staging_table, "staging", 10, "keyturn://requester")
	d.outcome == "needs_approval"
	some reason in d.reasons
	contains(reason, "to the requester (a download) leaves the company")
}
