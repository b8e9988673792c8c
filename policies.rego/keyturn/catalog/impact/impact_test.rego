package keyturn.catalog.impact_test

import data.keyturn.decision
import data.keyturn.fixtures_test as fixtures

staging_rows := "postgres://staging/shop/orders"

with_impact(request, impact) := object.union(request, {"impact": impact})

deletion_preview(rows) := {"status": "computed", "operation": "delete", "rows": rows, "method": "exact", "tables": ["public.orders"]}

cases := {
	"a row deletion over the limit needs two of platform": {
		"request": with_impact(
			fixtures.action_request("orders.rows.delete", staging_rows, "staging", {"where": "true"}),
			deletion_preview(1001),
		),
		"outcome": "needs_approval",
		"rule": "impact.large_deletion_needs_two_approvers",
		"groups": [{"name": "platform", "min": 2}],
	},
	"a row deletion at the limit needs the family's one approver": {
		"request": with_impact(
			fixtures.action_request("orders.rows.delete", staging_rows, "staging", {"where": "true"}),
			deletion_preview(1000),
		),
		"outcome": "needs_approval",
		"rule": "deletion.deletion_outside_production",
		"groups": [{"name": "platform", "min": 1}],
	},
	"a DELETE statement over the limit needs two db-owners, even when a person could write alone": {
		"request": fixtures.by_human(with_impact(
			fixtures.action_request("sql.query", staging_rows, "staging", {"statement": "DELETE FROM orders"}),
			deletion_preview(5000),
		)),
		"outcome": "needs_approval",
		"rule": "impact.large_deletion_needs_two_approvers",
		"groups": [{"name": "db-owners", "min": 2}],
	},
	"an UPDATE over the limit is not a deletion": {
		"request": fixtures.by_human(with_impact(
			fixtures.action_request("sql.query", staging_rows, "staging", {"statement": "UPDATE orders SET a = 1"}),
			object.union(deletion_preview(5000), {"operation": "update"}),
		)),
		"outcome": "allowed",
		"rule": "sql.write_outside_production_for_a_person",
	},
	"a preview that failed makes an allowed write wait for db-owners": {
		"request": fixtures.by_human(with_impact(
			fixtures.action_request("sql.query", staging_rows, "staging", {"statement": "UPDATE orders SET a = 1"}),
			{"status": "unavailable", "operation": "update", "tables": []},
		)),
		"outcome": "needs_approval",
		"rule": "impact.preview_unavailable",
		"groups": [{"name": "db-owners", "min": 1}],
	},
	"a production read the preview measured above the limit needs data-owners, whatever was declared": {
		"request": with_impact(
			fixtures.action_request("read.table", "postgres://prod/shop/orders", "production", {"row_count": 10}),
			{"status": "computed", "operation": "read", "rows": 200000, "method": "estimate", "tables": []},
		),
		"outcome": "needs_approval",
		"rule": "reads.large_read_in_production",
		"groups": [{"name": "data-owners", "min": 1}],
	},
	"an export the preview counted larger than declared is judged by the count": {
		"request": with_impact(
			fixtures.action_request(
				"db.export", "postgres://staging/shop/orders", "staging",
				{"row_count": 100, "destination": "https://files.example.internal/x"},
			),
			{"status": "computed", "operation": "export", "rows": 20000, "method": "exact", "tables": []},
		),
		"outcome": "needs_approval",
		"rule": "export.large_internal_export",
		"groups": [{"name": "data-owners", "min": 1}],
	},
	"a preview that failed does not open a denied action": {
		"request": with_impact(
			fixtures.action_request("secrets.delete", "secret://staging/payments/db", "staging", {}),
			{"status": "unavailable", "operation": "delete", "tables": []},
		),
		"outcome": "denied",
		"rule": "secrets.deleting_a_secret",
	},
}

test_impact[name] if {
	some name, tc in cases
	fixtures.decision_matches(decision.decision, tc) with input as tc.request
}

test_the_decision_carries_the_tolerance_the_executor_enforces if {
	request := with_impact(fixtures.action_request("orders.rows.delete", staging_rows, "staging", {}), deletion_preview(10))
	decision.decision.impact_tolerance == {"extra_rows": 10, "extra_fraction": 0.05} with input as request
}

test_without_a_tolerance_in_the_data_none_is_granted if {
	request := with_impact(fixtures.action_request("orders.rows.delete", staging_rows, "staging", {}), deletion_preview(10))
	tolerance := decision.decision.impact_tolerance with input as request with data.keyturn.impact as {}
	tolerance == {"extra_rows": 0, "extra_fraction": 0}
}
