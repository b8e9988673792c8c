# METADATA
# title: Deletion
# description: |
#   Every *.delete action. Allow-listed kinds (data.keyturn.deletion.allowed_actions) are
#   allowed; forbidden kinds (data.keyturn.deletion.forbidden_actions) are denied; any
#   other deletion needs platform, and security as well in production, where an agent
#   acting for nobody may not delete at all. Families with their own rules for a delete
#   (secrets.delete) add theirs; deny still wins.
# schemas:
#   - input: schema.decision.decision_input
package keyturn.catalog.deletion

import data.keyturn.request
import data.keyturn.verdict

# METADATA
# description: True for every action whose last part is delete.
covers_action if endswith(request.action, ".delete")

allow_listed if request.action in data.keyturn.deletion.allowed_actions

forbidden if request.action in data.keyturn.deletion.forbidden_actions

# A deletion that no list settles.
ordinary_deletion if {
	covers_action
	not allow_listed
	not forbidden
}

# METADATA
# scope: document
# description: What this family says about the action.
verdicts contains verdict.allow("deletion.allow_listed_deletion", msg) if {
	covers_action
	allow_listed
	msg := sprintf("%s is on the list of deletions that need no approval", [request.action])
}

verdicts contains verdict.deny("deletion.forbidden_deletion", msg) if {
	covers_action
	forbidden
	msg := sprintf("%s is on the list of deletions that are never done through Keyturn", [request.action])
}

verdicts contains verdict.deny("deletion.unattended_deletion_in_production", msg) if {
	ordinary_deletion
	request.in_production
	request.unattended_agent
	msg := sprintf("%s in production by an agent acting for nobody", [request.action])
}

verdicts contains verdict.approve_all("deletion.deletion_outside_production", msg, [verdict.group("platform", 1)]) if {
	ordinary_deletion
	not request.in_production
	msg := sprintf("%s in %s: platform must approve", [request.action, request.environment])
}

verdicts contains verdict.approve_all("deletion.deletion_in_production", msg, groups) if {
	ordinary_deletion
	request.in_production
	msg := sprintf("%s in production: platform and security must both approve", [request.action])
	groups := [verdict.group("platform", 1), verdict.group("security", 1)]
}

# db.rows.delete names its table twice: the resource's last segment, which approvers, receipts
# and the audit read, and parameters.table, which the executor deletes from. The two name the
# same table (schema-qualified or not, in any case), or nobody is asked.
resource_table := lower(last) if {
	segments := [s | some s in split(input.resource, "/"); s != ""]
	last := segments[count(segments) - 1]
}

unqualified(name) := parts[count(parts) - 1] if parts := split(lower(name), ".")

table_disagrees if {
	request.action == "db.rows.delete"
	is_string(request.parameters.table)
	unqualified(request.parameters.table) != unqualified(resource_table)
}

verdicts contains verdict.deny("deletion.resource_names_another_table", msg) if {
	table_disagrees
	msg := sprintf(
		"db.rows.delete deletes from parameters.table (%s), but its resource names %s: name the same table in both",
		[request.parameters.table, resource_table],
	)
}
