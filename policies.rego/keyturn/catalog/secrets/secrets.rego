# METADATA
# title: Credential retrieval
# description: |
#   secrets.read hands a credential to the requester: outside production it is allowed
#   when a person is behind the request, in production security-oncall must approve.
#   secrets.delete is denied: a secret is rotated or revoked, never deleted by an agent.
# schemas:
#   - input: schema.decision.decision_input
package keyturn.catalog.secrets

import data.keyturn.request
import data.keyturn.verdict

# METADATA
# description: True for secrets.read and secrets.delete.
covers_action if request.action in {"secrets.read", "secrets.delete"}

# METADATA
# description: Fields of secrets.* that carry secrets.
masked_fields contains field if {
	covers_action
	some field in ["parameters.token", "parameters.wrapping_token"]
}

secret_read_in_production if {
	request.action == "secrets.read"
	request.in_production
}

secret_read_outside_production if {
	request.action == "secrets.read"
	not request.in_production
}

# METADATA
# scope: document
# description: What this family says about the action.
verdicts contains verdict.deny("secrets.deleting_a_secret", msg) if {
	request.action == "secrets.delete"
	msg := "secrets.delete is never done through Keyturn: rotate or revoke the secret instead"
}

verdicts contains verdict.allow("secrets.read_outside_production_for_a_person", msg) if {
	secret_read_outside_production
	request.human_backed
	msg := sprintf("secrets.read in %s on behalf of a person", [request.environment])
}

verdicts contains verdict.approve_all("secrets.unattended_read_outside_production", msg, groups) if {
	secret_read_outside_production
	not request.human_backed
	msg := sprintf("secrets.read in %s with no person behind it: security-oncall must approve", [request.environment])
	groups := [verdict.group("security-oncall", 1)]
}

verdicts contains verdict.approve_all("secrets.read_in_production", msg, [verdict.group("security-oncall", 1)]) if {
	secret_read_in_production
	msg := sprintf("secrets.read in %s: security-oncall must approve", [request.environment])
}
