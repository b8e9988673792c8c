"""``keyturn mcp proxy``: an upstream MCP server's tools, each call submitted as ``mcp.<server>.<tool>``.

The proxy lists the upstream's tools under their own names (an agent configured for the
upstream keeps working) and never calls them: a call is submitted to Keyturn, judged by the
policy on the operator's registration of the tool (``data.keyturn.mcp``, not the annotations
the upstream or the agent show), and, once allowed or approved, forwarded upstream by the
executor, which holds the operator's own list of upstreams. The result travels back masked.

Each tool's input schema gains an optional ``keyturn_reason`` (the sentence approvers read);
it is taken out before the arguments are submitted, so the upstream gets exactly the
arguments it declared.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any

from keyturn.mcp.catalog import ToolSpec
from keyturn.mcp.names import action_for, by_segment, resource_for
from keyturn.mcp.outcomes import ToolOutcome
from keyturn.mcp.server import Submission

log = logging.getLogger(__name__)

REASON_ARGUMENT = "keyturn_reason"
GATED = (
    " (Through Keyturn: runs only if Keyturn's policy allows it or people approve it; the call waits for them. "
    f"Say why in {REASON_ARGUMENT}.)"
)


def proxied_tools(server: str, tools: Sequence[Any]) -> list[ToolSpec]:
    """The upstream's tools the proxy offers: each one whose name makes an action name no other tool's
    makes (``names.by_segment``). The others are left out, with a warning: the executor would refuse
    to call them, so offering them would only ask people to approve a call that cannot run."""
    groups = by_segment(t.name for t in tools)
    offered = {names[0] for names in groups.values() if len(names) == 1}
    left_out = [t.name for t in tools if t.name not in offered]
    if left_out:
        log.warning(
            "upstream %s: not offering %d tool(s) whose names make no action name of their own "
            "(outside ASCII, or shared with another tool): %s",
            server,
            len(left_out),
            ", ".join(map(repr, left_out)),
        )
    return [proxied_tool(server, t) for t in tools if t.name in offered]


def proxied_tool(server: str, tool: Any) -> ToolSpec:
    """The ``ToolSpec`` of upstream ``tool`` (an ``mcp_types.Tool``) behind the proxy for ``server``."""
    schema = copy.deepcopy(tool.input_schema or {"type": "object"})
    schema.setdefault("type", "object")
    schema.setdefault("properties", {})[REASON_ARGUMENT] = {
        "type": "string",
        "maxLength": 4000,
        "description": "Why this call is needed, for the people who approve it (not passed to the tool).",
    }
    annotations = tool.annotations.model_dump(by_alias=True, exclude_none=True) if tool.annotations else {}
    return ToolSpec(
        name=tool.name,
        action=action_for(server, tool.name),
        title=tool.title or (annotations.get("title") if annotations else None) or tool.name,
        description=(tool.description or "") + GATED,
        input_schema=schema,
        annotations=annotations,
    )


def proxied_submission(server: str):
    def submission_for(spec: ToolSpec, arguments: dict[str, Any]) -> Submission:
        parameters = {k: v for k, v in arguments.items() if k != REASON_ARGUMENT}
        reason = arguments.get(REASON_ARGUMENT)
        if not isinstance(reason, str) or not reason.strip():
            reason = f"{spec.name} called through the Keyturn MCP proxy (no reason given)"
        assert spec.action is not None
        return Submission(spec.action, resource_for(server, spec.name), parameters, reason)

    return submission_for


def upstream_result(outcome: ToolOutcome) -> ToolOutcome:
    """A succeeded call answers with the upstream tool's own (masked) content, then Keyturn's line."""
    result = outcome.structured.get("result") if outcome.structured.get("status") == "succeeded" else None
    if not isinstance(result, dict) or not isinstance(result.get("content"), list):
        return outcome
    structured = result.get("structuredContent")
    return ToolOutcome(
        outcome.text.split("\n", 1)[0],
        structured if isinstance(structured, dict) else outcome.structured,
        is_error=False,
        content=[c for c in result["content"] if isinstance(c, dict)],
    )
