# METADATA
# title: Keyturn decision
# description: |
#   The entry point the policy service queries (POST /v1/data/keyturn/decision, reading
#   result.decision). It only shapes the answer; keyturn.combination decides. The package
#   holds nothing else, so the response carries the decision and no internals.
# schemas:
#   - input: schema.decision.decision_input
package keyturn.decision

import data.keyturn.combination

# METADATA
# scope: document
# title: Decision
# description: |
#   Always an object: outcome (allowed, denied, needs_approval), reasons, approvals
#   ({} unless needs_approval), credential_ttl_s, mask, break_glass, the rules that fired, and
#   the denials: each rule that denied with its own reason ([] unless denied). rules also holds
#   rules a denial overrode (an approval, an allowance), and reasons is a set of its own, so
#   only denials says which rule denied and why.
# entrypoint: true
default decision := {
	"outcome": "denied",
	"reasons": ["no decision could be reached for this input; denied by default"],
	"approvals": {},
	"credential_ttl_s": 0,
	"mask": [],
	"break_glass": false,
	"rules": ["decision.default_denial"],
	"denials": [{
		"rule": "decision.default_denial",
		"reason": "no decision could be reached for this input; denied by default",
	}],
	"impact_tolerance": {"extra_rows": 0, "extra_fraction": 0},
}

# The contract fixes the path data.keyturn.decision.decision, so the name repeats the package.
decision := {
	"outcome": combination.outcome,
	"reasons": sort(combination.reasons),
	"approvals": combination.approvals,
	"credential_ttl_s": combination.credential_ttl_s,
	"mask": sort(combination.mask),
	"break_glass": combination.break_glass,
	"rules": sort(combination.rules),
	"denials": sort({{"rule": entry.rule, "reason": entry.reason} | some entry in combination.denials}),
	"impact_tolerance": impact_tolerance,
}

# How far the rows an action really touches may exceed its impact preview before the executor
# refuses to run it (none when the policy data names no tolerance).
default impact_tolerance := {"extra_rows": 0, "extra_fraction": 0}

impact_tolerance := data.keyturn.impact.tolerance
