"""How each catalog action is carried out: by a Keyturn executor, or outside Keyturn. Pure.

The catalog's policy data says it (``data.keyturn.execution`` in ``policies.rego/data.json``,
served by OPA like the rest of the policy data), one entry per action or pattern:

- ``"keyturn"``: an executor plugin performs it; the action ends ``succeeded``, ``failed`` or
  ``outcome_unknown``;
- ``"external"``: Keyturn decides and collects the approvals, then hands the requester a signed
  approval receipt (``keyturn.receipts``); the action ends ``approved_external``, never
  ``succeeded``: the system that performs it verifies the receipt;
- ``{"refused": "why"}``: the intake answers 422 with that explanation; nothing is recorded as
  an action.

A pattern is an exact action (``iam.role.grant``), a family (``read.*``) or a suffix
(``*.delete``); the exact entry wins, then the longest family (``mcp.*`` says how every tool of the MCP
family is carried out, even one named ``delete``), then the longest suffix. An action no entry names has
no way to be carried out: the executor ends it ``failed`` ("no executor"), never ``succeeded``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Execution(str, Enum):
    KEYTURN = "keyturn"
    EXTERNAL = "external"
    REFUSED = "refused"
    NONE = "none"  # no entry: nothing can carry it out


@dataclass(frozen=True)
class ExecutionMode:
    execution: Execution
    pattern: str = ""
    why: str = ""  # for REFUSED: the explanation the intake answers with


@dataclass(frozen=True)
class ExecutionModes:
    entries: Mapping[str, ExecutionMode] = field(default_factory=dict)

    @classmethod
    def from_data(cls, document: Any) -> ExecutionModes:
        """The modes of ``data.keyturn.execution``; a malformed entry is refused (``ValueError``)."""
        if document is None:
            return cls({})
        if not isinstance(document, Mapping):
            raise ValueError("data.keyturn.execution must be an object of action pattern → mode")
        entries: dict[str, ExecutionMode] = {}
        for pattern, mode in document.items():
            if not isinstance(pattern, str) or not pattern or pattern.count("*") > 1:
                raise ValueError(f"data.keyturn.execution: {pattern!r} is not an action or pattern")
            if mode in (Execution.KEYTURN.value, Execution.EXTERNAL.value):
                entries[pattern] = ExecutionMode(Execution(mode), pattern)
            elif isinstance(mode, Mapping) and isinstance(mode.get("refused"), str) and mode["refused"].strip():
                entries[pattern] = ExecutionMode(Execution.REFUSED, pattern, mode["refused"].strip())
            else:
                raise ValueError(
                    f'data.keyturn.execution[{pattern!r}] must be "keyturn", "external" or {{"refused": why}}'
                )
        return cls(entries)

    def mode_for(self, action: str) -> ExecutionMode:
        exact = self.entries.get(action)
        if exact is not None:
            return exact
        matching = [pattern for pattern in self.entries if "*" in pattern and _matches(pattern, action)]
        if not matching:
            return ExecutionMode(Execution.NONE)
        return self.entries[max(matching, key=lambda p: (p.endswith("*"), len(p), p))]


def _matches(pattern: str, action: str) -> bool:
    head, _, tail = pattern.partition("*")
    return len(action) > len(head) + len(tail) and action.startswith(head) and action.endswith(tail)
