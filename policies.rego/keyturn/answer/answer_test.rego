package keyturn.answer_test

import data.keyturn.answer

# An answer to a db.export by agent:reporter for human:alice that needs security and data-owners.
answer_by(approver_id) := {
	"approver": {"id": approver_id, "kind": "human"},
	"request": {"action": "db.export", "requester": {"id": "agent:reporter", "kind": "agent", "chain": ["human:alice"]}},
	"decision": {
		"outcome": "needs_approval",
		"approvals": {"groups": [{"name": "security", "min": 1}, {"name": "data-owners", "min": 1}]},
	},
}

test_approver_groups_are_the_required_groups_the_approver_is_in[approver_id] if {
	some approver_id, groups in {
		"human:carol": {"security"},
		"human:heidi": {"data-owners"},
		"human:frank": set(),
	}
	answer.approver_groups == groups with input as answer_by(approver_id)
}

test_group_membership_is_exact if {
	count(answer.approver_groups) == 0 with input as answer_by("Human:Carol")
}

principal_cases := {
	"same id": {"a": "human:alice", "b": "human:alice", "same": true},
	"different case": {"a": "Human:Alice", "b": "human:alice", "same": true},
	"surrounding space": {"a": " human:alice ", "b": "human:alice", "same": true},
	"different principal": {"a": "human:alicia", "b": "human:alice", "same": false},
}

test_same_principal[name] if {
	some name, tc in principal_cases
	tc.same == answer.same_principal(tc.a, tc.b)
}

test_self_approval_is_seen_in_the_chain_and_in_the_requester if {
	answer.approver_is_in_the_requester_chain with input as answer_by("human:alice")
	answer.approver_is_the_requester with input as answer_by("agent:reporter")
	not answer.approver_is_in_the_requester_chain with input as answer_by("human:carol")
	not answer.approver_is_the_requester with input as answer_by("human:carol")
}

test_awaits_approval_only_for_needs_approval if {
	answer.awaits_approval with input as answer_by("human:carol")
	answer.decision_outcome == "needs_approval" with input as answer_by("human:carol")
	not answer.awaits_approval with input as object.union(answer_by("human:carol"), {"decision": {"outcome": "allowed"}})
}

test_missing_fields_read_as_placeholders if {
	answer.action == "this action"
	answer.decision_outcome == "unknown"
	not answer.approver
	not answer.approver_is_named
	not answer.requester_is_named
}
