# METADATA
# title: Role and permission changes
# description: |
#   iam.role.grant needs security (two approvers for an admin role, and an agent acting
#   for nobody may not ask for one at all); iam.role.revoke is allowed outside production
#   when a person is behind it, and in production either security or platform may approve;
#   iam.permission.change needs security, and platform as well in production.
#   parameters.role names the role and parameters.principal who gets or loses it.
# schemas:
#   - input: schema.decision.decision_input
package keyturn.catalog.iam

import data.keyturn.request
import data.keyturn.verdict

# METADATA
# description: True for iam.role.grant, iam.role.revoke and iam.permission.change.
covers_action if request.action in {"iam.role.grant", "iam.role.revoke", "iam.permission.change"}

default role := ""

role := trim_space(request.parameters.role) if is_string(request.parameters.role)

default principal := "an unnamed principal"

principal := request.parameters.principal if {
	is_string(request.parameters.principal)
	request.parameters.principal != ""
}

role_is_admin if regex.match(data.keyturn.iam.admin_role_pattern, lower(role))

role_is_oncall if role in data.keyturn.iam.oncall_roles

role_grant if request.action == "iam.role.grant"

role_revoke if request.action == "iam.role.revoke"

revoke_needs_approval if request.in_production

revoke_needs_approval if not request.human_backed

role_grant_is_unnamed if {
	role_grant
	role == ""
}

# METADATA
# scope: document
# description: A production incident may grant an on-call role, or revoke one, under break-glass.
break_glass_permitted if {
	role_grant
	role_is_oncall
}

break_glass_permitted if role_revoke

# METADATA
# scope: document
# description: What this family says about the action.
verdicts contains verdict.approve_all("iam.role_grant", msg, [verdict.group("security", 1)]) if {
	role_grant
	not role_is_admin
	not role_grant_is_unnamed
	msg := sprintf("iam.role.grant of %s to %s: security must approve", [role, principal])
}

verdicts contains verdict.approve_all("iam.role_grant_of_an_unnamed_role", msg, [verdict.group("security", 1)]) if {
	role_grant_is_unnamed
	msg := "iam.role.grant names no parameters.role: security must approve after reading the parameters"
}

verdicts contains verdict.approve_all("iam.admin_role_grant", msg, [verdict.group("security", 2)]) if {
	role_grant
	role_is_admin
	msg := sprintf("iam.role.grant of admin role %s to %s: two members of security must approve", [role, principal])
}

verdicts contains verdict.deny("iam.admin_role_grant_by_an_unattended_agent", msg) if {
	role_grant
	role_is_admin
	request.unattended_agent
	msg := sprintf("an agent acting for nobody may not ask for admin role %s", [role])
}

verdicts contains verdict.allow("iam.role_revoke_outside_production_for_a_person", msg) if {
	role_revoke
	not request.in_production
	request.human_backed
	msg := sprintf("iam.role.revoke of %s from %s in %s on behalf of a person", [role, principal, request.environment])
}

verdicts contains verdict.approve_any("iam.role_revoke_needs_one_approver", msg, groups) if {
	role_revoke
	revoke_needs_approval
	msg := sprintf(
		"iam.role.revoke of %s from %s in %s: security or platform may approve",
		[role, principal, request.environment],
	)
	groups := [verdict.group("security", 1), verdict.group("platform", 1)]
}

verdicts contains verdict.approve_all("iam.permission_change", msg, [verdict.group("security", 1)]) if {
	request.action == "iam.permission.change"
	msg := sprintf("iam.permission.change for %s: security must approve", [principal])
}

verdicts contains verdict.approve_all("iam.permission_change_in_production", msg, groups) if {
	request.action == "iam.permission.change"
	request.in_production
	msg := "iam.permission.change in production: platform must approve as well"
	groups := [verdict.group("security", 1), verdict.group("platform", 1)]
}
