# METADATA
# title: Tools of MCP servers behind the Keyturn proxy
# description: |
#   `keyturn mcp proxy` submits every tool call of an MCP server it fronts as the action
#   mcp.<server>.<tool>. What a tool may do is read from the operator's registration in
#   data.keyturn.mcp.servers, never from the request: the agent runs the proxy, so the
#   annotations it could send are the agent's word, not the operator's. A tool registered
#   read-only is allowed; any other registered tool needs approval (its own approvers, its
#   server's, else data.keyturn.mcp.default_approvers); an unregistered server or tool is
#   denied. A registration may say "policy": "deny", "approve" or "allow" to override.
# schemas:
#   - input: schema.decision.decision_input
package keyturn.catalog.mcp

import data.keyturn.request
import data.keyturn.verdict

# METADATA
# description: True for every action of the form mcp.<server>.<tool>.
covers_action if startswith(request.action, "mcp.")

parts := split(request.action, ".") if covers_action

server_name := parts[1]

tool_name := concat(".", array.slice(parts, 2, count(parts)))

server := data.keyturn.mcp.servers[server_name]

tool := server.tools[tool_name]

# The tool's registration says it changes nothing (MCP readOnlyHint).
read_only if tool.readOnlyHint == true

# MCP's own default: a tool that is not read-only may destroy (destructiveHint defaults to true).
destructive if {
	not read_only
	not tool.destructiveHint == false
}

override := tool.policy

default_groups := [verdict.group(data.keyturn.mcp.default_approvers, 1)]

approvers := [verdict.group(name, 1) | some name in tool.approvers] if {
	count(tool.approvers) > 0
} else := [verdict.group(name, 1) | some name in server.approvers] if {
	count(server.approvers) > 0
} else := default_groups

# METADATA
# description: Fields of a tool's arguments the operator registered as secret.
masked_fields contains field if {
	some name in tool.mask
	field := concat(".", ["parameters", name])
}

what_it_does := "is registered read-only" if {
	read_only
} else := "is registered as destructive" if {
	destructive
} else := "changes things (registered not read-only)"

# METADATA
# scope: document
# description: What this family says about the action.
verdicts contains verdict.deny("mcp.server_is_not_registered", msg) if {
	covers_action
	not server
	msg := sprintf("MCP server %q is not registered by the operator (data.keyturn.mcp.servers)", [server_name])
}

verdicts contains verdict.deny("mcp.tool_is_not_registered", msg) if {
	server
	not tool
	msg := sprintf("tool %q of MCP server %q is not registered by the operator", [tool_name, server_name])
}

verdicts contains verdict.deny("mcp.tool_is_denied", msg) if {
	override == "deny"
	msg := sprintf("the operator denies tool %q of MCP server %q", [tool_name, server_name])
}

verdicts contains verdict.allow("mcp.read_only_tool", msg) if {
	tool
	not override
	read_only
	msg := sprintf("tool %q of MCP server %q %s", [tool_name, server_name, what_it_does])
}

verdicts contains verdict.allow("mcp.tool_is_allowed", msg) if {
	override == "allow"
	msg := sprintf("the operator allows tool %q of MCP server %q", [tool_name, server_name])
}

verdicts contains verdict.approve_any("mcp.tool_changes_things", msg, approvers) if {
	tool
	not override
	not read_only
	msg := sprintf("tool %q of MCP server %q %s: a person must approve", [tool_name, server_name, what_it_does])
}

verdicts contains verdict.approve_any("mcp.tool_needs_approval", msg, approvers) if {
	override == "approve"
	msg := sprintf("the operator requires approval for tool %q of MCP server %q", [tool_name, server_name])
}
