"""How an upstream MCP server's tools are named as Keyturn actions: ``mcp.<server>.<tool>``.

Action names are lower-case dotted words (``^[a-z][a-z0-9_-]*(\\.[a-z0-9_-]+)+$``, the
intake's and the policy's rule), while MCP tool names may hold capitals, dots and more. Each
name becomes one segment: lower-cased, every other character ``_``, a leading non-letter
prefixed ``t``. A name with a character outside ASCII has no segment (``ValueError``): folding
it would let two different names meet unseen (the Kelvin sign lower-cases to ``k``, every
accented letter would become ``_``), so such a tool is neither offered nor called. Names that
still meet (``read.note`` and ``read_note``) share a segment: the proxy does not offer them
and the executor refuses to call either (it would not know which one was approved).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

PREFIX = "mcp"
_OTHER = re.compile(r"[^a-z0-9_-]")


def segment(name: str) -> str:
    """``name`` (a server's or a tool's) as one segment of an action name; ValueError when it holds a
    character outside ASCII (see the module's documentation)."""
    if not name.isascii():
        raise ValueError(f"{name!r} holds characters outside ASCII, which no action name can carry unambiguously")
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


def by_segment(names: Iterable[str]) -> dict[str, list[str]]:
    """``names`` grouped by their segment (names with none left out): a group of more than one is a
    segment the tools share, which neither the proxy offers nor the executor calls."""
    groups: dict[str, list[str]] = {}
    for name in names:
        try:
            groups.setdefault(segment(name), []).append(name)
        except ValueError:
            continue
    return groups
