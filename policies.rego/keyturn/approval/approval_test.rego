package keyturn.approval_test

import data.keyturn.approval
import data.keyturn.decision
import data.keyturn.fixtures_test as fixtures

grant_request := fixtures.action_request(
	"iam.role.grant", "iam://prod/roles", "production",
	{"role": "analyst", "principal": "human:bob"},
)

security_decision := {
	"outcome": "needs_approval",
	"reasons": ["iam.role.grant of analyst to human:bob: security must approve"],
	"approvals": {"groups": [{"name": "security", "min": 1}], "require_all": true},
}

human(id) := {"id": id, "kind": "human"}

answer_input(approver, request, decision_output) := {
	"approver": approver,
	"request": request,
	"decision": decision_output,
}

test_a_member_of_the_required_group_may_approve[id] if {
	some id in ["human:carol", "human:dave"]
	a := answer_input(human(id), grant_request, security_decision)
	approval.may_approve with input as a
	approval.counts_for == {"security"} with input as a
	approval.refusals == set() with input as a
}

refusal_cases := {
	"requester chain member outside the group": {
		"approver": human("human:alice"),
		"request": grant_request,
		"refusals": {
			"human:alice is not in any group required for iam.role.grant",
			"self-approval: human:alice is in the requester chain",
		},
	},
	"agent": {
		"approver": {"id": "agent:reporter", "kind": "agent"},
		"request": grant_request,
		"refusals": {
			"agent:reporter is not a person: only humans approve",
			"agent:reporter is not in any group required for iam.role.grant",
			"self-approval: agent:reporter is the requester of iam.role.grant",
		},
	},
	"member of another group": {
		"approver": human("human:frank"),
		"request": grant_request,
		"refusals": {"human:frank is not in any group required for iam.role.grant"},
	},
	"security member who is the requester": {
		"approver": human("human:carol"),
		"request": object.union(grant_request, {"requester": {"id": "human:carol", "kind": "human", "chain": []}}),
		"refusals": {"self-approval: human:carol is the requester of iam.role.grant"},
	},
	"security member the agent acts for": {
		"approver": human("human:carol"),
		"request": object.union(grant_request, {"requester": {"chain": ["human:carol"]}}),
		"refusals": {"self-approval: human:carol is in the requester chain"},
	},
	"security member deeper in the chain, re-cased": {
		"approver": human("human:dave"),
		"request": object.union(grant_request, {"requester": {"chain": ["agent:planner", " Human:Dave"]}}),
		"refusals": {"self-approval: human:dave is in the requester chain"},
	},
	"approver without an id": {
		"approver": {"kind": "human"},
		"request": grant_request,
		"refusals": {"approval input must name approver.id"},
	},
	"request without a requester id": {
		"approver": human("human:carol"),
		"request": json.remove(grant_request, ["requester/id"]),
		"refusals": {"approval input must name request.requester.id"},
	},
}

test_refused_approvals[name] if {
	some name, tc in refusal_cases
	a := answer_input(tc.approver, tc.request, security_decision)
	not approval.may_approve with input as a
	approval.counts_for == set() with input as a
	approval.refusals == tc.refusals with input as a
}

test_an_action_that_does_not_wait_for_approval_cannot_be_approved if {
	allowed := {"outcome": "allowed", "reasons": ["read.table only reads"], "approvals": {}}
	a := answer_input(human("human:carol"), grant_request, allowed)
	not approval.may_approve with input as a
	approval.refusals == {
		"human:carol is not in any group required for iam.role.grant",
		"iam.role.grant is not waiting for approval (outcome allowed)",
	} with input as a
}

test_approval_counts_for_every_required_group_the_approver_is_in if {
	both := object.union(security_decision, {"approvals": {"groups": [
		{"name": "security", "min": 1},
		{"name": "security-oncall", "min": 1},
		{"name": "platform", "min": 1},
	]}})
	a := answer_input(human("human:dave"), grant_request, both)
	approval.may_approve with input as a
	approval.counts_for == {"security", "security-oncall"} with input as a
}

test_missing_input_may_not_approve if {
	not approval.may_approve
	approval.counts_for == set()
	"approval input must name approver.id" in approval.refusals
	"this action is not waiting for approval (outcome unknown)" in approval.refusals
}

test_the_decision_for_a_role_grant_is_approvable_by_security_only if {
	d := decision.decision with input as grant_request
	approval.may_approve with input as answer_input(human("human:carol"), grant_request, d)
	not approval.may_approve with input as answer_input(human("human:heidi"), grant_request, d)
}

break_glass_decision := {
	"outcome": "allowed",
	"reasons": ["break-glass for incident INC-4711: allowed without approval, reviewed after the fact"],
	"break_glass": true,
}

review_by(approver_id) := {
	"approver": {"id": approver_id, "kind": "human"},
	"request": object.union(grant_request, {"requester": {"id": "human:alice", "kind": "human", "chain": []}}),
	"decision": break_glass_decision,
}

test_a_security_member_may_review_a_break_glass_action if {
	approval.may_approve with input as review_by("human:carol")
	approval.counts_for == {"security"} with input as review_by("human:carol")
	approval.groups == {"security"} with input as review_by("human:carol")
}

test_the_reviewer_group_comes_from_the_data if {
	approval.counts_for == {"platform"} with input as review_by("human:judy")
		with data.keyturn.break_glass.reviewers as "platform"
	not approval.may_approve with input as review_by("human:carol") with data.keyturn.break_glass.reviewers as "platform"
}

test_a_break_glass_review_by_a_non_member_or_the_requester_is_refused if {
	not approval.may_approve with input as review_by("human:frank")
	"human:frank is not in any group required for iam.role.grant" in approval.refusals with input as review_by("human:frank")
	not approval.may_approve with input as object.union(review_by("human:carol"), {"request": {"requester": {"id": "human:carol", "kind": "human", "chain": []}}})
}

test_an_allowed_action_without_break_glass_is_not_answerable if {
	plain := object.union(review_by("human:carol"), {"decision": {"break_glass": false}})
	not approval.may_approve with input as plain
	"iam.role.grant is not waiting for approval (outcome allowed)" in approval.refusals with input as plain
}
