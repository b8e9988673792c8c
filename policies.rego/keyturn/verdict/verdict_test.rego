package keyturn.verdict_test

import data.keyturn.verdict

test_deny_and_allow_carry_effect_rule_and_reason if {
	verdict.deny("family.rule", "why") == {"effect": "deny", "rule": "family.rule", "reason": "why"}
	verdict.allow("family.rule", "why") == {"effect": "allow", "rule": "family.rule", "reason": "why"}
}

test_approvals_say_whether_every_group_must_approve if {
	groups := [verdict.group("security", 1), verdict.group("platform", 2)]
	all_of := verdict.approve_all("family.rule", "why", groups)
	all_of.require_all == true
	all_of.groups == [{"name": "security", "min": 1}, {"name": "platform", "min": 2}]

	any_of := verdict.approve_any("family.rule", "why", groups)
	any_of.require_all == false
	any_of.effect == "approve"
}
