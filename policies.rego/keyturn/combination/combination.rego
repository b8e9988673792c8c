# METADATA
# title: Combination
# description: |
#   How the verdicts of the catalog families become one decision. Every family is a
#   package under data.keyturn.catalog; this gathers their verdicts and combines them:
#   deny wins over break-glass, approval and allow; an action no family covers is denied
#   as an unknown action; malformed input is denied with what is wrong; an action nothing
#   allows is denied. keyturn.decision shapes the result for the policy service.
# schemas:
#   - input: schema.decision.decision_input
package keyturn.combination

import data.keyturn.request

# Gathering verdicts.

# Each family is a package under data.keyturn.catalog with covers_action and verdicts, and
# optionally masked_fields and break_glass_permitted; a new family file joins by existing. A
# family that judges every action whatever its family (impact) says judges_every_action.
# Only the families consulted for a request are evaluated: the cost of a decision stays that
# of its own family as the catalog grows.
consulted contains name if data.keyturn.catalog[name].covers_action

consulted contains name if data.keyturn.catalog[name].judges_every_action

catalog_verdicts contains entry if {
	request.well_formed
	some name in consulted
	some entry in data.keyturn.catalog[name].verdicts
}

known_action if data.keyturn.catalog[_].covers_action

# Verdicts about the request as a whole, before and after the catalog has spoken.
gate_verdicts contains {"effect": "deny", "rule": "combination.input_is_malformed", "reason": msg} if {
	some problem in request.problems
	msg := sprintf("malformed input: %s", [problem])
}

gate_verdicts contains {"effect": "deny", "rule": "combination.action_is_unknown", "reason": msg} if {
	request.well_formed
	not known_action
	msg := sprintf("unknown action: %s is not in the Keyturn catalog", [request.action])
}

gate_verdicts contains {"effect": "deny", "rule": "combination.nothing_allows_the_action", "reason": msg} if {
	request.well_formed
	known_action
	count(approval_requests) == 0
	count(allowances) == 0
	count(catalog_denials) == 0
	msg := sprintf("no catalog rule allows %s in this context", [request.action])
}

catalog_denials contains entry if {
	some entry in catalog_verdicts
	entry.effect == "deny"
}

denials contains entry if some entry in catalog_denials

denials contains entry if some entry in gate_verdicts

approval_requests contains entry if {
	some entry in catalog_verdicts
	entry.effect == "approve"
}

allowances contains entry if {
	some entry in catalog_verdicts
	entry.effect == "allow"
}

# Combining them: deny wins, then break-glass, then approval, then allow.

# METADATA
# scope: document
# description: allowed, denied or needs_approval.
default outcome := "denied"

outcome := outcome_unless_denied if count(denials) == 0

outcome_unless_denied := "allowed" if {
	break_glass
} else := "needs_approval" if {
	count(approval_requests) > 0
} else := "allowed" if {
	count(allowances) > 0
}

reasons contains entry.reason if {
	outcome == "denied"
	some entry in denials
}

reasons contains entry.reason if {
	outcome == "needs_approval"
	some entry in approval_requests
}

reasons contains entry.reason if {
	outcome == "allowed"
	some entry in allowances
}

reasons contains msg if {
	outcome == "needs_approval"
	request.off_hours
	msg := sprintf(
		"submitted outside business hours (%s): the request expires after %d s and escalates to %s",
		[request.submitted_when, pending_ttl_s, data.keyturn.timing.off_hours_escalation_group],
	)
}

reasons contains msg if {
	break_glass
	msg := sprintf(
		"break-glass for incident %s: allowed without approval, reviewed after the fact",
		[request.parameters.incident_id],
	)
}

reasons contains msg if {
	outcome != "denied"
	some refusal in break_glass_refusals
	msg := sprintf("break-glass refused: %s", [refusal])
}

rules contains entry.rule if some entry in catalog_verdicts

rules contains entry.rule if some entry in gate_verdicts

rules contains "combination.outside_business_hours" if {
	outcome == "needs_approval"
	request.off_hours
}

rules contains "combination.break_glass" if break_glass

rules contains "combination.break_glass_refused" if count(break_glass_refusals) > 0

# Approvals.

# METADATA
# scope: document
# description: What approval needs, for needs_approval; {} for any other outcome.
default approvals := {}

approvals := {
	"groups": approval_groups,
	"require_all": require_all,
	"pending_ttl_s": pending_ttl_s,
	"execution_window_s": data.keyturn.timing.execution_window_s,
	"escalation_group": escalation_group,
	"reminder_fractions": data.keyturn.timing.reminder_fractions,
} if {
	outcome == "needs_approval"
}

approval_group_names contains group.name if {
	some entry in approval_requests
	some group in entry.groups
}

# Several rules may ask the same group; the largest number they ask for is needed.
approvals_needed_from[name] := max(counts) if {
	some name in approval_group_names
	counts := {group.min | some entry in approval_requests; some group in entry.groups; group.name == name}
}

approval_groups := [{"name": name, "min": approvals_needed_from[name]} | some name in sort(approval_group_names)]

# "Any one group" holds only when every request offers the same set of groups that way;
# otherwise every group must approve, which satisfies each request.
default require_all := true

require_all := false if {
	every entry in approval_requests {
		entry.require_all == false
	}
	count(offered_group_sets) == 1
}

offered_group_sets contains {group.name | some group in entry.groups} if some entry in approval_requests

pending_ttl_s := data.keyturn.timing.off_hours_pending_ttl_s if {
	request.off_hours
} else := data.keyturn.timing.pending_ttl_s

default escalation_group := null

escalation_group := data.keyturn.timing.off_hours_escalation_group if request.off_hours

# Break-glass: a person in a production incident skips approval for a few actions.

break_glass_requested if request.parameters.break_glass == true

# METADATA
# scope: document
# description: True when break-glass was asked for, is permitted, skips an approval, and nothing denies the action.
default break_glass := false

break_glass if {
	break_glass_requested
	count(break_glass_refusals) == 0
	count(denials) == 0
	count(approval_requests) > 0
}

break_glass_permitted_by_catalog if {
	some name in consulted
	data.keyturn.catalog[name].break_glass_permitted
}

incident_is_named if {
	is_string(request.parameters.incident_id)
	request.parameters.incident_id != ""
}

break_glass_refusals contains "it needs parameters.incident_id" if {
	break_glass_requested
	not incident_is_named
}

break_glass_refusals contains "it is only for production" if {
	break_glass_requested
	request.environment != "production"
}

break_glass_refusals contains "a person must make the request or be behind it" if {
	break_glass_requested
	not request.human_backed
}

break_glass_refusals contains msg if {
	break_glass_requested
	not break_glass_permitted_by_catalog
	msg := sprintf("%s with these parameters is not a break-glass action", [request.action])
}

# Credentials and masking.

credential_ttl_s := object.get(
	data.keyturn.timing.credential_ttl_s_by_action,
	request.action,
	data.keyturn.timing.credential_ttl_s,
)

mask contains field if some field in data.keyturn.masking.always

mask contains field if {
	request.well_formed
	some field in family_mask
}

family_mask contains field if {
	some name in consulted
	some field in data.keyturn.catalog[name].masked_fields
}

# METADATA
# description: |
#   The parameter fields masked for input.action, from its name alone: every family's
#   masked_fields depends on the action's name, never on the rest of the request. The intake
#   asks this of each action name before any topic carries a request, so a field an operator
#   registered as secret (an MCP tool's mask, masking.always) never travels in clear.
parameter_mask contains field if {
	some field in data.keyturn.masking.always
	startswith(field, "parameters.")
}

parameter_mask contains field if {
	some field in family_mask
	startswith(field, "parameters.")
}
