# METADATA
# title: Approval answer
# description: |
#   Facts about one person's answer to a needs_approval action, or review of a break-glass
#   action (the approval input): who
#   answers, whether they are the requester or in its chain, and which of the groups the
#   decision requires they belong to (data.keyturn.groups). keyturn.approval turns these
#   into may_approve, counts_for and refusals.
# schemas:
#   - input: schema.approval.approval_input
package keyturn.answer

# METADATA
# description: The approver's principal id, when the input names one.
approver := input.approver.id if approver_is_named

approver_is_named if {
	is_string(input.approver.id)
	input.approver.id != ""
}

approver_is_human if input.approver.kind == "human"

requester_is_named if {
	is_string(input.request.requester.id)
	input.request.requester.id != ""
}

# METADATA
# scope: document
# description: The action type being approved, or "this action" when the input has none.
default action := "this action"

action := input.request.action if is_string(input.request.action)

# METADATA
# scope: document
# description: The decision's outcome, or "unknown" when the input has none.
default decision_outcome := "unknown"

decision_outcome := input.decision.outcome if is_string(input.decision.outcome)

awaits_approval if input.decision.outcome == "needs_approval"

# METADATA
# description: |
#   The answer is the review after the fact of a break-glass action: the policy allowed it
#   without approval (outcome allowed, break_glass true), so an answer records a review, not a quorum.
is_break_glass_review if {
	input.decision.outcome == "allowed"
	input.decision.break_glass == true
}

# METADATA
# scope: document
# description: The group whose members review break-glass actions (data.keyturn.break_glass.reviewers, default security).
default break_glass_reviewers := "security"

break_glass_reviewers := data.keyturn.break_glass.reviewers if is_string(data.keyturn.break_glass.reviewers)

# METADATA
# description: Whether a person may answer at all (the action waits for approval, or is a break-glass action to review).
answerable if awaits_approval

answerable if is_break_glass_review

# Self-approval: compared case-blind and trimmed so a re-cased id cannot approve its own request.
# Rego has no Unicode normalisation: the approval service refuses a look-alike written in other
# code points (a fullwidth letter) itself, comparing NFKC case-folded ids (core.principal.principal_key).
approver_is_the_requester if same_principal(approver, input.request.requester.id)

approver_is_in_the_requester_chain if {
	some principal in input.request.requester.chain
	same_principal(approver, principal)
}

default same_principal(_, _) := false

same_principal(a, b) if lower(trim_space(a)) == lower(trim_space(b))

required_groups contains group.name if some group in input.decision.approvals.groups

required_groups contains break_glass_reviewers if is_break_glass_review

# METADATA
# description: The decision's required groups that list the approver as a member.
approver_groups contains name if {
	some name in required_groups
	approver in data.keyturn.groups[name]
}
