"""How an upstream MCP server's tools are named as Keyturn actions: ``mcp.<server>.<tool>``.

Action names are lower-case dotted words (``^[a-z][a-z0-9_-]*(\\.[a-z0-9_-]+)+$``, the
intake's and the policy's rule), while MCP tool names may hold capitals, dots and more. Each
name becomes one segment: lower-cased, every other character ``_``, a leading non-letter
prefixed ``t``. The executor finds the upstream tool again by the same rule, and refuses a
segment that two upstream tools share (it would not know which one was approved).
"""

from __future__ import annotations

import re

PREFIX = "mcp"
_OTHER = re.compile(r"[^a-z0-9_-]")


def segment(name: str) -> str:
    """``name`` (a server's or a tool's) as one segment of an action name."""
    word = _OTHER.sub("_", name.strip().lower())
    if not word or not word[0].isalpha():
        word = f"t{word}"
    return word


def action_for(server: str, tool: str) -> str:
    """The action a call of ``tool`` on ``server`` is submitted as."""
    return f"{PREFIX}.{segment(server)}.{segment(tool)}"


def resource_for(server: str, tool: str) -> str:
    """The resource such a call touches, as approvers and the audit see it."""
    return f"mcp://{segment(server)}/{tool}"


def split_action(action: str) -> tuple[str, str]:
    """(server segment, tool segment) of ``mcp.<server>.<tool>``; ValueError for any other action."""
    parts = action.split(".")
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        raise ValueError(f"{action!r} is not an MCP action (mcp.<server>.<tool>)")
    return parts[1], parts[2]
