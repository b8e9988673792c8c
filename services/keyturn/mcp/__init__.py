"""Keyturn for agents that speak the Model Context Protocol (the ``mcp`` extra).

- ``keyturn mcp serve``: the catalog's executable actions as MCP tools; each call becomes an
  action under the caller's identity and comes back when it is over (or as *pending*, with a
  ``wait_for_action`` tool to pick it up).
- ``keyturn mcp proxy``: fronts an existing MCP server; each tool call becomes the action
  ``mcp.<server>.<tool>``, judged by the policy and forwarded upstream by the executor, once.

Modules: ``names`` (tool ↔ action), ``catalog`` (which tools, from the catalog files),
``outcomes`` (an action's status as a tool result; pure), ``gateway`` (the intake, behind a
port), ``server`` (the MCP server and its transports), ``upstream`` (talking to an upstream
MCP server), ``cli`` (the commands). The executor's side is ``executor/plugins/mcp.py``.
"""
