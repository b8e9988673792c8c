package keyturn.catalog.mcp_test

import data.keyturn.combination
import data.keyturn.decision
import data.keyturn.fixtures_test as fixtures

call(tool, arguments) := fixtures.action_request(concat(".", ["mcp.notes", tool]), "mcp://notes", "staging", arguments)

registry := {
	"default_approvers": "platform",
	"servers": {
		"notes": {
			"approvers": ["platform"],
			"tools": {
				"read_note": {"readOnlyHint": true},
				"add_note": {"readOnlyHint": false, "destructiveHint": false},
				"delete_note": {"destructiveHint": true, "approvers": ["security"]},
				"unannotated": {},
				"wipe_notes": {"readOnlyHint": false, "policy": "deny"},
				"flush_cache": {"readOnlyHint": false, "policy": "allow"},
				"peek_ledger": {"readOnlyHint": true, "policy": "approve"},
				"store_token": {"readOnlyHint": false, "destructiveHint": false, "mask": ["api_key"]},
			},
		},
		"bare": {"tools": {"change": {"readOnlyHint": false}}},
	},
}

cases := {
	"a read-only tool is allowed": {
		"request": call("read_note", {"name": "a"}),
		"outcome": "allowed",
		"rule": "mcp.read_only_tool",
	},
	"a tool that adds needs its server's approvers": {
		"request": call("add_note", {"name": "a", "text": "b"}),
		"outcome": "needs_approval",
		"rule": "mcp.tool_changes_things",
		"groups": [{"name": "platform", "min": 1}],
		"require_all": false,
	},
	"a destructive tool needs its own approvers": {
		"request": call("delete_note", {"name": "a"}),
		"outcome": "needs_approval",
		"rule": "mcp.tool_changes_things",
		"groups": [{"name": "security", "min": 1}],
		"require_all": false,
	},
	"a tool registered without annotations is taken as destructive": {
		"request": call("unannotated", {}),
		"outcome": "needs_approval",
		"rule": "mcp.tool_changes_things",
		"groups": [{"name": "platform", "min": 1}],
		"require_all": false,
	},
	"a server without approvers falls back to the default group": {
		"request": fixtures.action_request("mcp.bare.change", "mcp://bare", "staging", {}),
		"outcome": "needs_approval",
		"rule": "mcp.tool_changes_things",
		"groups": [{"name": "platform", "min": 1}],
		"require_all": false,
	},
	"a tool the operator denies is denied": {
		"request": call("wipe_notes", {}),
		"outcome": "denied",
		"rule": "mcp.tool_is_denied",
	},
	"a tool the operator allows is allowed": {
		"request": call("flush_cache", {}),
		"outcome": "allowed",
		"rule": "mcp.tool_is_allowed",
	},
	"an approval override wins over read-only": {
		"request": call("peek_ledger", {}),
		"outcome": "needs_approval",
		"rule": "mcp.tool_needs_approval",
		"groups": [{"name": "platform", "min": 1}],
		"require_all": false,
	},
	"an unregistered tool is denied": {
		"request": call("format_disk", {}),
		"outcome": "denied",
		"rule": "mcp.tool_is_not_registered",
	},
	"an unregistered server is denied": {
		"request": fixtures.action_request("mcp.shell.run", "mcp://shell", "staging", {}),
		"outcome": "denied",
		"rule": "mcp.server_is_not_registered",
	},
}

test_mcp[name] if {
	some name, tc in cases
	fixtures.decision_matches(decision.decision, tc) with input as tc.request with data.keyturn.mcp as registry
}

test_annotations_in_the_request_are_not_trusted if {
	forged := call("format_disk", {"readOnlyHint": true, "annotations": {"readOnlyHint": true}})
	d := decision.decision with input as forged with data.keyturn.mcp as registry
	d.outcome == "denied"
}

test_registered_secret_arguments_are_masked if {
	d := decision.decision with input as call("store_token", {"api_key": "x"}) with data.keyturn.mcp as registry
	"parameters.api_key" in d.mask
}

test_the_intake_learns_a_registered_mask_from_the_action_name_alone if {
	fields := combination.parameter_mask with input as {"action": "mcp.notes.store_token"} with data.keyturn.mcp as registry
	fields == {"parameters.api_key", "parameters.password", "parameters.token"}
}

test_a_name_of_no_family_is_masked_as_always if {
	fields := combination.parameter_mask with input as {"action": "no.such.thing"} with data.keyturn.mcp as registry
	fields == {"parameters.password", "parameters.token"}
}

test_the_shipped_registration_keeps_destructive_tools_behind_a_person if {
	d := decision.decision with input as call("delete_note", {"name": "a"})
	d.outcome == "needs_approval"
	r := decision.decision with input as call("read_note", {"name": "a"})
	r.outcome == "allowed"
}
