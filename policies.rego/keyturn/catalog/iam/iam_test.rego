package keyturn.catalog.iam_test

import data.keyturn.decision
import data.keyturn.fixtures_test as fixtures

roles := "iam://prod/roles"

staging_roles := "iam://staging/roles"

grant(role) := fixtures.action_request(
	"iam.role.grant", "iam://prod/roles", "production",
	{"role": role, "principal": "human:bob"},
)

revoke(resource, environment) := fixtures.action_request(
	"iam.role.revoke", resource, environment,
	{"role": "analyst", "principal": "human:bob"},
)

security := [{"name": "security", "min": 1}]

security_or_platform := [{"name": "platform", "min": 1}, {"name": "security", "min": 1}]

cases := {
	"granting a role needs one security approver": {
		"request": grant("analyst"),
		"outcome": "needs_approval",
		"rule": "iam.role_grant",
		"groups": security,
	},
	"granting a role in staging needs one security approver": {
		"request": fixtures.action_request("iam.role.grant", staging_roles, "staging", {"role": "analyst"}),
		"outcome": "needs_approval",
		"rule": "iam.role_grant",
		"groups": security,
	},
	"granting an unnamed role needs one security approver": {
		"request": fixtures.action_request("iam.role.grant", roles, "production", {}),
		"outcome": "needs_approval",
		"rule": "iam.role_grant_of_an_unnamed_role",
		"groups": security,
	},
	"granting a role by an agent acting for nobody needs one security approver": {
		"request": fixtures.unattended(grant("analyst")),
		"outcome": "needs_approval",
		"rule": "iam.role_grant",
		"groups": security,
	},
	"granting an admin role needs two security approvers": {
		"request": grant("org-admin"),
		"outcome": "needs_approval",
		"rule": "iam.admin_role_grant",
		"groups": [{"name": "security", "min": 2}],
	},
	"admin roles are recognised whatever their case": {
		"request": grant("Billing_Owner"),
		"outcome": "needs_approval",
		"rule": "iam.admin_role_grant",
		"groups": [{"name": "security", "min": 2}],
	},
	"admin roles named in camel case are recognised": {
		"request": grant("roles/AccountAdministrator"),
		"outcome": "needs_approval",
		"rule": "iam.admin_role_grant",
		"groups": [{"name": "security", "min": 2}],
	},
	"blanks around an admin role do not hide it": {
		"request": grant(" admin "),
		"outcome": "needs_approval",
		"rule": "iam.admin_role_grant",
		"groups": [{"name": "security", "min": 2}],
	},
	"admin anywhere in the name counts, erring strict": {
		"request": grant("sysadmin-handbook-reader"),
		"outcome": "needs_approval",
		"rule": "iam.admin_role_grant",
		"groups": [{"name": "security", "min": 2}],
	},
	"an agent acting for nobody may not ask for an admin role": {
		"request": fixtures.unattended(grant("superuser")),
		"outcome": "denied",
		"rule": "iam.admin_role_grant_by_an_unattended_agent",
	},
	"revoking outside production for a person is allowed": {
		"request": revoke(staging_roles, "staging"),
		"outcome": "allowed",
		"rule": "iam.role_revoke_outside_production_for_a_person",
	},
	"revoking outside production by an agent acting for nobody needs either group": {
		"request": fixtures.unattended(revoke(staging_roles, "staging")),
		"outcome": "needs_approval",
		"rule": "iam.role_revoke_needs_one_approver",
		"groups": security_or_platform,
		"require_all": false,
	},
	"revoking in production needs security or platform": {
		"request": revoke(roles, "production"),
		"outcome": "needs_approval",
		"rule": "iam.role_revoke_needs_one_approver",
		"groups": security_or_platform,
		"require_all": false,
	},
	"changing a permission outside production needs security": {
		"request": fixtures.action_request(
			"iam.permission.change", staging_roles, "staging",
			{"principal": "agent:reporter"},
		),
		"outcome": "needs_approval",
		"rule": "iam.permission_change",
		"groups": security,
	},
	"changing a permission in production needs security and platform": {
		"request": fixtures.action_request("iam.permission.change", roles, "production", {"principal": "agent:reporter"}),
		"outcome": "needs_approval",
		"rule": "iam.permission_change_in_production",
		"groups": security_or_platform,
	},
}

test_iam[name] if {
	some name, tc in cases
	fixtures.decision_matches(decision.decision, tc) with input as tc.request
}

test_grant_reason_names_role_and_principal if {
	d := decision.decision with input as grant("analyst")
	d.reasons == ["iam.role.grant of analyst to human:bob: security must approve"]
}
