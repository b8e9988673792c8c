"""Which tools ``keyturn mcp serve`` offers, read from the catalog files (never a copy here).

Two files under ``policies.rego/keyturn/``, both loaded by OPA as policy data too:

- ``tools/data.json`` (``data.keyturn.tools``): the actions that have an executor, each with a
  title, a description, its MCP annotations (``readOnlyHint``, ``destructiveHint``, …) and how
  its resource is named. An action without an executor is not offered: a model would take its
  no-op "success" for the real thing.
- ``parameters/data.json`` (``data.keyturn.parameters``): the JSON Schema of each action's
  parameters (``actions.<name>.schema``, or a family pattern such as ``read.*``, plus the
  ``common`` properties). While it is absent, a tool's parameters are any JSON object.

A tool's input is ``{resource, parameters, reason}``: what Keyturn needs of every action.
"""

from __future__ import annotations

import copy
import fnmatch
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ANY_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "description": "The action's parameters (see the Keyturn catalog).",
}


@dataclass(frozen=True)
class ToolSpec:
    """One tool: the action it submits, what the model reads about it, and its input schema."""

    name: str
    action: str | None  # None for Keyturn's own tools (wait_for_action)
    title: str
    description: str
    input_schema: dict[str, Any]
    annotations: dict[str, Any]


def parameter_schema(document: Mapping[str, Any], action: str) -> dict[str, Any]:
    """The JSON Schema of ``action``'s parameters in a parameters catalog document: its own entry,
    else the one family pattern it matches, with the common properties; any object when none."""
    actions = document.get("actions", {})
    entry = actions.get(action) or next(
        (e for name, e in actions.items() if "*" in name and fnmatch.fnmatchcase(action, name)), None
    )
    if not entry or "schema" not in entry:
        return dict(ANY_PARAMETERS)
    schema = copy.deepcopy(entry["schema"])
    properties = schema.setdefault("properties", {})
    for key, spec in document.get("common", {}).items():
        properties.setdefault(key, copy.deepcopy(spec))
    if entry.get("summary"):
        schema.setdefault("description", entry["summary"])
    return schema


def action_tools(tools: Mapping[str, Any], parameters: Mapping[str, Any]) -> list[ToolSpec]:
    """A tool per executable action of ``tools`` (the ``tools/data.json`` document)."""
    found = []
    for action, entry in sorted(tools.get("actions", {}).items()):
        resource = {"type": "string", "minLength": 1, **entry.get("resource", {})}
        annotations = {k: v for k, v in entry.get("annotations", {}).items() if v is not None}
        found.append(
            ToolSpec(
                name=action,
                action=action,
                title=entry.get("title", action),
                description=entry.get("description", "")
                + " Runs only if Keyturn's policy allows it or people approve it; the call waits for them.",
                input_schema={
                    "type": "object",
                    "properties": {
                        "resource": resource,
                        "parameters": parameter_schema(parameters, action),
                        "reason": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": 4000,
                            "description": "Why this is needed, in a sentence; the people who approve read it.",
                        },
                    },
                    "required": ["resource", "parameters", "reason"],
                    "additionalProperties": False,
                },
                annotations={"title": entry.get("title", action), **annotations},
            )
        )
    return found


def load_document(path: Path) -> dict[str, Any]:
    """A catalog file; an absent one reads as empty (the parameters file is optional)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
