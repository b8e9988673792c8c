# METADATA
# title: Impact
# description: |
#   What the impact preview found (input.impact, computed by the policy service with a
#   read-only dry run on the target database before OPA is asked) adds to what the action's
#   family says: a deletion of more rows than data.keyturn.impact.two_approvers_over_rows
#   needs two approvers, and a preview that could not be computed never lets the action
#   through unseen: a person must approve. This package covers no action of its own.
# schemas:
#   - input: schema.decision.decision_input
package keyturn.catalog.impact

import data.keyturn.request
import data.keyturn.verdict

# METADATA
# description: The impact rules judge an action of any family (combination.consulted).
judges_every_action := true

# A preview was attempted for this action (the policy service sends none for actions
# that are not SQL-backed).
previewed if is_object(input.impact)

unavailable if {
	previewed
	input.impact.status == "unavailable"
}

rows := input.impact.rows if {
	previewed
	input.impact.status == "computed"
	is_number(input.impact.rows)
}

# A deletion: a *.delete action, or a statement whose preview found it deletes.
deletion if endswith(request.action, ".delete")

deletion if input.impact.operation == "delete"

large_deletion_group := data.keyturn.impact.large_deletion_groups[request.action]

large_deletion_group := data.keyturn.impact.large_deletion_groups.default if {
	not data.keyturn.impact.large_deletion_groups[request.action]
}

# METADATA
# scope: document
# description: What the impact preview adds to the action's family.
verdicts contains verdict.approve_all("impact.large_deletion_needs_two_approvers", msg, groups) if {
	deletion
	rows > data.keyturn.impact.two_approvers_over_rows
	msg := sprintf(
		"%s would delete %d rows (%s), more than %d: two of %s must approve",
		[
			request.action, rows, input.impact.method,
			data.keyturn.impact.two_approvers_over_rows, large_deletion_group,
		],
	)
	groups := [verdict.group(large_deletion_group, 2)]
}

verdicts contains verdict.approve_all("impact.preview_unavailable", msg, groups) if {
	unavailable
	msg := sprintf(
		"the impact of %s could not be previewed: %s must approve without knowing how many rows it touches",
		[request.action, data.keyturn.impact.unavailable_group],
	)
	groups := [verdict.group(data.keyturn.impact.unavailable_group, 1)]
}
