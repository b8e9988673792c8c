"""The parameters each catalog action takes: one JSON Schema per action, checked at the intake.

The one source is ``policies.rego/keyturn/parameters/data.json``, which OPA also loads (as
``data.keyturn.parameters``), so the policy, the intake, OPA's input schema and the catalog
page (both generated from it by ``keyturn catalog generate``) never disagree. Its shape:

- ``common``: properties every action accepts (``break_glass``, ``incident_id``);
- ``actions``: by action name, or by a family pattern (``read.*``, ``*.delete``): a
  ``summary``, the ``schema`` of the parameters, and ``sql_backed`` when the impact preview
  runs for it.

An action named exactly has that entry alone; otherwise every pattern it matches applies (as in
the policy, where several families may cover one action). An action no entry covers is left to
the policy, which denies it as unknown.

Validation is ``jsonschema-rs``'s; what this module adds is the refusal's wording: the library's
messages quote the refused value (``"s3cr3t" is not of type "integer"``), so each problem is
rebuilt from the error's kind and its location, never from its message.
"""

from __future__ import annotations

import copy
import fnmatch
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema_rs

DRAFT = "http://json-schema.org/draft-07/schema#"  # the draft OPA's schema checker reads


@dataclass(frozen=True)
class CatalogEntry:
    """One action (or family pattern) of the catalog."""

    name: str
    summary: str
    schema: dict[str, Any]  # the effective schema: the action's own plus the common properties
    sql_backed: bool


class ParameterCatalog:
    """The parameter schemas of every catalog action, compiled once."""

    def __init__(self, document: Mapping[str, Any]) -> None:
        common = dict(document.get("common", {}))
        self.entries: dict[str, CatalogEntry] = {}
        self._validators: dict[str, Any] = {}
        for name, entry in document.get("actions", {}).items():
            schema = copy.deepcopy(entry["schema"])
            schema.setdefault("properties", {})
            for key, spec in common.items():
                schema["properties"].setdefault(key, copy.deepcopy(spec))
            self.entries[name] = CatalogEntry(name, entry.get("summary", ""), schema, bool(entry.get("sql_backed")))
            self._validators[name] = jsonschema_rs.Draft7Validator(schema)

    @classmethod
    def load(cls, path: Path) -> ParameterCatalog:
        return cls(json.loads(path.read_text()))

    def entries_for(self, action: str) -> list[CatalogEntry]:
        """The entries that apply to ``action``: its own, else every family pattern it matches."""
        if action in self.entries:
            return [self.entries[action]]
        return [e for name, e in self.entries.items() if "*" in name and fnmatch.fnmatchcase(action, name)]

    def sql_backed(self, action: str) -> bool:
        return any(entry.sql_backed for entry in self.entries_for(action))

    def problems(self, action: str, parameters: Any) -> list[str]:
        """Each mismatch as ``parameters.<path>: <rule>``; never a byte of the value."""
        found: list[str] = []
        for entry in self.entries_for(action):
            for error in self._validators[entry.name].iter_errors(parameters):
                found.extend(_describe(action, ["parameters", *error.instance_path], error.kind))
        return sorted(set(found))


def _describe(action: str, path: list[str | int], kind: Any) -> list[str]:
    """A validation error in words that name the rule and the place, not the value."""
    where = ".".join(str(p) for p in path)
    name = type(kind).__name__
    if name == "Required":
        return [f"{where}.{kind.property}: is required by {action}"]
    if name == "AdditionalProperties":
        return [f"{where}.{key}: is not a parameter of {action}" for key in kind.unexpected]
    if name == "Type":
        return [f"{where}: must be of type {' or '.join(str(t) for t in kind.types)}"]
    if name in {"Minimum", "Maximum", "ExclusiveMinimum", "ExclusiveMaximum"}:
        words = {
            "Minimum": "at least",
            "Maximum": "at most",
            "ExclusiveMinimum": "more than",
            "ExclusiveMaximum": "less than",
        }
        return [f"{where}: must be {words[name]} {kind.limit}"]
    if name in {"MinLength", "MaxLength"}:
        return [f"{where}: must be {'at least' if name == 'MinLength' else 'at most'} {kind.limit} characters long"]
    if name in {"MinItems", "MaxItems"}:
        return [f"{where}: must have {'at least' if name == 'MinItems' else 'at most'} {kind.limit} items"]
    if name == "Enum":
        return [f"{where}: must be one of {', '.join(json.dumps(o) for o in kind.options)}"]
    if name in ("OneOfNotValid", "OneOfMultipleValid", "AnyOf"):
        return [f"{where}: matches none of the forms {action} allows for it (docs/catalog.md)"]
    return [f"{where}: does not match the {action} schema ({name})"]


def opa_input_schema(base: Mapping[str, Any], catalog: ParameterCatalog) -> dict[str, Any]:
    """OPA's decision input schema with ``parameters`` as any one of the catalog's schemas."""
    schema = copy.deepcopy(dict(base))
    parameters = schema["properties"]["parameters"]
    parameters.pop("additionalProperties", None)
    parameters["description"] = (
        "The action's masked parameters: one of the catalog's schemas "
        "(generated from policies.rego/keyturn/parameters/data.json by keyturn catalog generate)."
    )
    parameters["anyOf"] = [
        {"title": entry.name, **copy.deepcopy(entry.schema)} for entry in catalog.entries.values()
    ] + [{"title": "an action outside the catalog (the policy denies it)", "type": "object"}]
    return schema


def is_secret_reference(value: Any) -> bool:
    """``{"secret": NAME}``: a secret named, for the executor to resolve from its store. The value
    is only a name, so approvers are shown it (masked as any text is); the secret never travels."""
    return isinstance(value, Mapping) and set(value) == {"secret"} and isinstance(value["secret"], str)
