# METADATA
# title: Reads
# description: |
#   read.* actions (read.table, read.object, ...): reading is allowed; a production read
#   declaring more rows than data.keyturn.limits.read_approval_rows needs data-owners.
# schemas:
#   - input: schema.decision.decision_input
package keyturn.catalog.reads

import data.keyturn.request
import data.keyturn.verdict

# METADATA
# description: True for every read.* action.
covers_action if startswith(request.action, "read.")

# parameters.row_count is the requester's estimate; absent means it declared none.
default row_count := 0

# The larger of what the requester declared and what the impact preview counted: an agent
# cannot under-declare a read the preview measured.
row_count := max(volumes) if count(volumes) > 0

volumes contains request.parameters.row_count if is_number(request.parameters.row_count)

volumes contains request.previewed_rows

large_read_in_production if {
	covers_action
	request.in_production
	row_count > data.keyturn.limits.read_approval_rows
}

# A row_count given but not a number here: masking withheld it (ten digits or more can read as a
# phone or card number, and the policy sees the masked copy) or it is text. An unknown volume is
# judged as a large one, never as none.
withheld_row_count if {
	"row_count" in object.keys(request.parameters)
	not is_number(request.parameters.row_count)
}

unknown_read_in_production if {
	covers_action
	request.in_production
	withheld_row_count
}

# METADATA
# scope: document
# description: What this family says about the action.
verdicts contains verdict.allow("reads.read_is_allowed", msg) if {
	covers_action
	not large_read_in_production
	not unknown_read_in_production
	msg := sprintf("%s only reads (%s rows) in %s", [request.action, format_int(row_count, 10), request.environment])
}

verdicts contains verdict.approve_all("reads.large_read_in_production", msg, [verdict.group("data-owners", 1)]) if {
	large_read_in_production
	msg := sprintf(
		"%s reads %s rows in production, more than %d: data-owners must approve",
		[request.action, format_int(row_count, 10), data.keyturn.limits.read_approval_rows],
	)
}

verdicts contains verdict.approve_all("reads.unknown_read_in_production", msg, [verdict.group("data-owners", 1)]) if {
	unknown_read_in_production
	msg := sprintf(
		"%s reads production, and parameters.row_count is not a number the policy can read (masked or text): data-owners must approve",
		[request.action],
	)
}
