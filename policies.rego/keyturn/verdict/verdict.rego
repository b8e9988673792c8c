# METADATA
# title: Verdicts
# description: |
#   The one shape every catalog family answers in. A family adds verdicts to its
#   `verdicts` set; keyturn.decision combines them: deny wins over everything, then
#   approval requests, then allowances. `rule` names the family rule that fired.
package keyturn.verdict

# METADATA
# description: A reason the action must not happen.
deny(rule, reason) := {"effect": "deny", "rule": rule, "reason": reason}

# METADATA
# description: A reason the action may happen without a person.
allow(rule, reason) := {"effect": "allow", "rule": rule, "reason": reason}

# METADATA
# description: Every group in groups must approve (each {"name", "min"}).
approve_all(rule, reason, groups) := {
	"effect": "approve",
	"rule": rule,
	"reason": reason,
	"groups": groups,
	"require_all": true,
}

# METADATA
# description: Any one group in groups may approve on its own.
approve_any(rule, reason, groups) := {
	"effect": "approve",
	"rule": rule,
	"reason": reason,
	"groups": groups,
	"require_all": false,
}

# METADATA
# description: A group that must approve, and how many distinct members of it must.
group(name, min_approvers) := {"name": name, "min": min_approvers}
