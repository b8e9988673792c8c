# METADATA
# title: Keyturn approval
# description: |
#   The entry point the approval service queries (POST /v1/data/keyturn/approval) when a
#   person answers a needs_approval action. It says whether this approver may approve
#   (may_approve), which of the decision's groups the approval counts for (counts_for) and,
#   when not, why (refusals), and the groups whose members may answer (groups). A break-glass
#   action (allowed, break_glass) is answerable too: the answer is its review after the fact, by
#   a member of data.keyturn.break_glass.reviewers. Self-approval is refused for everyone, with
#   no exemption. The package holds nothing else, so the response carries these four and no internals.
# schemas:
#   - input: schema.approval.approval_input
package keyturn.approval

import data.keyturn.answer

# METADATA
# scope: document
# title: May approve
# description: True only when nothing refuses the approver and the approval counts for a required group.
# entrypoint: true
default may_approve := false

may_approve if {
	count(refusals) == 0
	count(answer.approver_groups) > 0
}

# METADATA
# title: Counts for
# description: The decision's groups this approval counts for; empty whenever may_approve is false.
# entrypoint: true
counts_for contains name if {
	may_approve
	some name in answer.approver_groups
}

# METADATA
# title: Groups
# description: |
#   The groups whose members may answer: the decision's required groups or, for a break-glass
#   action, its reviewers (data.keyturn.break_glass.reviewers); named in a refusal.
# entrypoint: true
groups contains name if some name in answer.required_groups

# METADATA
# scope: document
# title: Refusals
# description: Why the approver may not approve, one sentence each.
# entrypoint: true
refusals contains "approval input must name approver.id" if not answer.approver_is_named

refusals contains "approval input must name request.requester.id" if not answer.requester_is_named

refusals contains sprintf("%s is not in any group required for %s", [answer.approver, answer.action]) if {
	count(answer.approver_groups) == 0
}

refusals contains sprintf("self-approval: %s is the requester of %s", [answer.approver, answer.action]) if {
	answer.approver_is_the_requester
}

refusals contains sprintf("self-approval: %s is in the requester chain", [answer.approver]) if {
	answer.approver_is_in_the_requester_chain
}

refusals contains sprintf("%s is not a person: only humans approve", [answer.approver]) if {
	not answer.approver_is_human
}

refusals contains sprintf("%s is not waiting for approval (outcome %s)", [answer.action, answer.decision_outcome]) if {
	not answer.answerable
}
