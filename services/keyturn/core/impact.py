"""Impact previews, the pure part: which statement a preview runs, what OPA sees of it, and the
bound the executor enforces. The dry run itself is ``policy.impact_sql``; the bound check at
execution is ``executor.impact``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Any

from keyturn.core.events import ImpactPreview

# a table name as the deletion family takes it: name or schema.name, each an SQL identifier
_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")


@dataclass(frozen=True)
class PreviewPlan:
    """What to dry-run: ``statement`` is run (a write) or counted (a read or an export)."""

    operation: str  # delete | update | insert | read | export
    statement: str


class NotPreviewable(ValueError):
    """The action is SQL-backed but its parameters give nothing a preview can run safely."""


def deletion_statement(parameters: dict[str, Any]) -> str | None:
    """The DELETE a row deletion (``*.delete`` with ``table`` and ``where``) stands for.

    The deletion executor runs the same statement, so what was previewed is what runs. The
    condition stands in parentheses, so it can only be a condition: a clause after it
    (``… RETURNING (SELECT …)``, ``… ORDER BY``) is a syntax error, not part of the statement.
    """
    table, where = parameters.get("table"), parameters.get("where")
    if not isinstance(table, str) or not isinstance(where, str):
        return None
    if not _TABLE.match(table):
        raise NotPreviewable("parameters.table must be a table name, optionally schema-qualified")
    return f"DELETE FROM {table} WHERE ({where})"


def preview_plan(action: str, parameters: dict[str, Any], write_kind: str | None) -> PreviewPlan | None:
    """The dry run for an action, or None when there is nothing to run.

    ``write_kind`` is the statement's write privilege (INSERT/UPDATE/DELETE) for ``sql.query``,
    None for a read; the caller reads it from the statement (``executor.plugins.sql_text``).
    """
    if action == "sql.query":
        statement = parameters.get("statement")
        if not isinstance(statement, str):
            return None
        operation = (write_kind or "read").lower()
        return PreviewPlan(operation if operation in {"insert", "update", "delete"} else "read", statement)
    if action == "db.export" or action.startswith("read."):
        query = parameters.get("query")
        if not isinstance(query, str):
            return None
        return PreviewPlan("export" if action == "db.export" else "read", query)
    if action.endswith(".delete"):
        statement = deletion_statement(parameters)
        return None if statement is None else PreviewPlan("delete", statement)
    return None


def opa_view(preview: ImpactPreview) -> dict[str, Any]:
    """``input.impact`` (contract: policies.rego/schemas/decision/decision_input.json)."""
    view: dict[str, Any] = {"status": preview.status, "operation": preview.operation, "tables": list(preview.tables)}
    if preview.computed and preview.rows is not None:
        view["rows"] = preview.rows
        view["method"] = preview.method or "exact"
    return view


def bounded(preview: ImpactPreview, tolerance: Any) -> ImpactPreview:
    """The preview with ``max_rows``: its rows plus the policy's tolerance (``impact_tolerance``).

    A tolerance the policy did not give, or gave malformed, is none: the count may not grow.
    """
    if not preview.computed or preview.rows is None:
        return preview
    extra_rows, extra_fraction = 0, 0.0
    if isinstance(tolerance, dict):
        rows_value, fraction_value = tolerance.get("extra_rows", 0), tolerance.get("extra_fraction", 0)
        if isinstance(rows_value, (int, float)) and rows_value >= 0:
            extra_rows = int(rows_value)
        if isinstance(fraction_value, (int, float)) and fraction_value >= 0:
            extra_fraction = float(fraction_value)
    allowed = max(extra_rows, math.floor(preview.rows * extra_fraction))
    return replace(preview, max_rows=preview.rows + allowed)


def exceeds(preview: ImpactPreview | None, real_rows: int) -> str | None:
    """Why ``real_rows`` may not be applied, or None when the preview's bound allows them."""
    if preview is None or preview.max_rows is None:
        return None
    if real_rows <= preview.max_rows:
        return None
    return (
        f"it would touch {real_rows} rows, but the approved impact preview counted {preview.rows} "
        f"({preview.method or 'exact'}) and the policy allows at most {preview.max_rows}; rolled back, nothing changed"
    )
