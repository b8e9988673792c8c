package keyturn.batch_test

import data.keyturn.batch
import data.keyturn.decision
import data.keyturn.fixtures_test as fixtures

# One of every outcome, and a malformed item, in one batch.
mixed := [
	fixtures.action_request("read.table", "postgres://prod/analytics/customers", "production", {"row_count": 25}),
	fixtures.action_request("iam.role.grant", "iam://prod/roles", "production", {"role": "analyst"}),
	fixtures.action_request("secrets.delete", "secret://prod/payments/db", "production", {}),
	{"action": 7},
	fixtures.off_hours(fixtures.action_request("iam.role.grant", "iam://prod/roles", "production", {"role": "admin"})),
	fixtures.action_request("unknown.thing", "x://somewhere", "staging", {}),
]

test_each_item_is_decided_as_it_would_be_alone[i] if {
	decisions := batch.decisions with input as {"batch": mixed}
	count(decisions) == count(mixed)
	some i, item in mixed
	decisions[i] == decision.decision with input as item
}

test_the_outcomes_keep_the_order_of_the_batch if {
	decisions := batch.decisions with input as {"batch": mixed}
	[d.outcome | some d in decisions] == ["allowed", "needs_approval", "denied", "denied", "needs_approval", "denied"]
}

test_an_item_does_not_change_its_neighbours_decision if {
	alone := batch.decisions with input as {"batch": [mixed[0]]}
	among := batch.decisions with input as {"batch": [mixed[3], mixed[0], mixed[2]]}
	among[1] == alone[0]
}

test_an_empty_batch_has_no_decisions if {
	batch.decisions == [] with input as {"batch": []}
}

test_no_batch_has_no_decisions if {
	batch.decisions == [] with input as {}
}
