"""The ``deletion`` plugin: ``db.rows.delete``, a DELETE bounded by the row count people approved.

Parameters: ``table`` (``schema.table``; unqualified means ``public``), ``where`` (the SQL
condition rows must meet; an empty condition is refused: deleting a whole table is
``sql.query``'s TRUNCATE, with its own policy), ``max_rows`` (the approved row count: the most
rows this deletion may remove).

The statement ``DELETE FROM <table> WHERE <where>`` runs like any ``sql.query`` write (a
temporary role ``keyturn_cmd_<action>`` holding DELETE and SELECT on that table only, valid for
the policy's credential TTL, dropped afterwards). Inside its transaction, before the commit,
the number of rows it deleted is compared with ``max_rows``: more, and the transaction is rolled
back and the action ends ``failed`` with both counts. Nothing beyond the approval is ever
committed. The second bound, checked at the same point, is the impact preview people saw
(``executor.impact.enforce_impact``: the previewed rows plus the policy's tolerance).
"""

from __future__ import annotations

from typing import Any

from psycopg import sql

from keyturn.executor.impact import enforce_impact
from keyturn.executor.plugins.base import Command, ExecutionFailed
from keyturn.executor.plugins.sql import SqlPlugin, _credential_ttl, _resolve, changed_rows
from keyturn.executor.plugins.sql_roles import Grants, Relation, TemporaryRole, role_name_for
from keyturn.executor.plugins.sql_text import StatementShape, UnsupportedStatement, statement_shape


def approved_row_count(parameters: dict[str, Any]) -> int:
    """The approved bound: ``parameters.max_rows``, a whole number ≥ 0 (required)."""
    value = parameters.get("max_rows")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ExecutionFailed(
            "parameters.max_rows must be the approved row count, a whole number ≥ 0; nothing was deleted"
        )
    return value


class DeletionPlugin(SqlPlugin):
    name = "deletion"
    follows_references = False  # its commands run on the plugin's own target (``SqlPlugin.target_of``)

    async def execute(self, command: Command) -> Any:
        table, where = _deletion_parameters(command.parameters)
        bound = approved_row_count(command.parameters)
        ttl_s = _credential_ttl(command)
        name = role_name_for(command.action_id)

        async def prepared() -> tuple[Relation, str, StatementShape, Grants, TemporaryRole]:
            async with self._admin() as admin:
                found = await _resolve(admin, table)
                if found is None:
                    raise ExecutionFailed(f"nothing deleted: table {table} does not exist on {self.target_name}")
                relation = found[0]
                # in parentheses, as the preview has it (``core.impact.deletion_statement``): only a condition
                statement = sql.SQL("DELETE FROM {} WHERE ({})").format(relation.identifier(), sql.SQL(where))
                text = statement.as_string(admin)
                try:
                    shape = statement_shape(text)
                except UnsupportedStatement as exc:
                    raise ExecutionFailed(f"nothing deleted: the condition is refused: {exc}") from None
                if shape.write_privilege != "DELETE":
                    raise ExecutionFailed("nothing deleted: the condition must be a plain SQL condition")
                grants = await self._grants_for(admin, shape)
                grants = Grants(
                    {**grants.tables, relation: tuple(sorted({*grants.tables.get(relation, ()), "SELECT", "DELETE"}))},
                    grants.sequences,
                )
                role = await self._mint(admin, command.action_id, ttl_s, grants)
                return relation, text, shape, grants, role

        relation, text, shape, grants, role = await self.before_any_change(prepared)

        def within_bounds(result: dict[str, Any]) -> None:
            deleted = changed_rows(result)  # with the rows its cascades and triggers removed or changed
            if deleted > bound:
                elsewhere = deleted - int(result.get("row_count") or 0)
                through = (
                    f" ({elsewhere} of them in other tables, removed or changed by cascades or triggers)"
                    if elsewhere
                    else ""
                )
                raise ExecutionFailed(
                    f"the deletion would remove {deleted} rows from {relation}{through}, more than the "
                    f"{bound} approved (parameters.max_rows): rolled back, nothing was deleted"
                )
            enforce_impact(command.impact, command.payload_digest, deleted)  # the preview's bound, same rollback

        timeout_s = min(self.statement_timeout_s, ttl_s)
        try:
            result = await self._run_as(
                role.name, role.password, shape, text, 0, timeout_s, grants, within_bounds, note=command.note
            )
        finally:
            await self._drop_quietly(name)
        done = {"table": str(relation), "deleted_rows": result["row_count"], "approved_rows": bound}
        if "rows_changed" in result:  # what the cascades and triggers did too, so the receipt says all of it
            done |= {"rows_changed": result["rows_changed"], "tables_changed": result["tables_changed"]}
        return done


def _deletion_parameters(parameters: dict[str, Any]) -> tuple[str, str]:
    table, where = parameters.get("table"), parameters.get("where")
    if not isinstance(table, str) or not table.strip():
        raise ExecutionFailed("parameters.table must name the table to delete from; nothing was deleted")
    if not isinstance(where, str) or not where.strip():
        raise ExecutionFailed(
            "parameters.where must be the SQL condition of the rows to delete (a whole table is not deleted "
            "this way); nothing was deleted"
        )
    return table.strip(), where.strip()
