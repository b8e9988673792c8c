"""The impact preview: before OPA is asked, what a SQL-backed action would touch.

``Previewer`` is the port the decider uses (a fake in ``tests/fakes/service_ports.py``);
``SqlPreviewer`` is the real one, a dry run on the target database (``sql_target_url``):

1. open the sealed parameters (the masked copy may have altered literals) and find the
   statement (``core.impact.preview_plan``); its shape must be one the sql plugin runs
   (``executor.plugins.sql_text``): one SELECT / INSERT / UPDATE / DELETE;
2. create a role holding only the privileges the statement needs (the sql plugin's
   ``grants_for``), log in as it (never ``SET ROLE`` in the policy's own session, which a
   statement can undo), and in ONE transaction that is always rolled back, under
   ``statement_timeout`` and ``lock_timeout`` and a time limit of the preview's own, run the
   write as one statement (``sql.run_one``) and read its row count, or count a read's / an
   export's rows (``SELECT count(*) FROM (…)``). The rollback undoes the rows; the role is
   dropped after (by the executors' start-up sweep, should the policy die first);
3. when counting takes longer than the time limit, PostgreSQL cancels it and, in a new
   rolled-back transaction under the same kind of role, ``EXPLAIN`` gives the planner's
   estimate (``method: estimate``);
4. any other failure (the target is down, the statement is refused, a table is missing)
   gives ``status: unavailable`` with the reason, masked: the policy then requires approval
   (``impact.preview_unavailable``), so a failed preview never lets an action through unseen.

What a rolled-back write cannot undo: sequence values an INSERT drew, and whatever triggers do
outside the database. The preview role holds no privilege beyond the statement's own.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import psycopg
from psycopg import sql

from keyturn.bus.refusals import masked_line
from keyturn.core.events import ActionRequested, ImpactPreview
from keyturn.core.impact import NotPreviewable, PreviewPlan, preview_plan
from keyturn.core.parameters import ParameterCatalog
from keyturn.executor.plugins.base import ExecutionFailed
from keyturn.executor.plugins.sql import (
    grants_for,
    postgres_message,
    rows_changed,
    run_one,
    statement_error,
    target_name,
    within,
)
from keyturn.executor.plugins.sql_roles import PREVIEW_ROLE_PREFIX, Grants, create_role, drop_role
from keyturn.executor.plugins.sql_text import StatementShape, UnsupportedStatement, statement_shape
from keyturn.masking.protect import without_hidden

log = logging.getLogger(__name__)


class Previewer(Protocol):
    """What the decider asks before OPA: the impact of a request, or None when it has none."""

    def applies_to(self, request: ActionRequested) -> bool:
        """Whether ``request`` may have a preview at all (cheap: no I/O)."""
        ...

    async def preview(self, request: ActionRequested) -> ImpactPreview | None: ...


class _Unavailable(Exception):
    """The preview cannot be computed; the message says why (masked before it travels)."""


PREVIEW_GRANT_ATTEMPTS = 20
# A dry run's role is valid for its time limit and this much more: the login, the grants' commit
# and the drop happen around the statement's own time.
ROLE_VALIDITY_MARGIN_S = 60.0


class SqlPreviewer:
    """Dry runs on the target database (see the module doc)."""

    def __init__(
        self,
        target_url: str,
        catalog: ParameterCatalog,
        open_parameters: Callable[[ActionRequested], dict[str, Any]],
        *,
        timeout_s: float = 5.0,
        connect_timeout_s: int = 5,
    ) -> None:
        self.target_url = target_url
        self.catalog = catalog
        self.open_parameters = open_parameters
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.target_name = target_name(target_url)

    def applies_to(self, request: ActionRequested) -> bool:
        return self.catalog.sql_backed(request.action) and _names_sql(request.action, request.parameters)

    async def preview(self, request: ActionRequested) -> ImpactPreview | None:
        if not self.applies_to(request):
            return None
        started = time.monotonic()
        operation = "delete" if request.action.endswith(".delete") else "read"

        def result(status: str, **fields: Any) -> ImpactPreview:
            return ImpactPreview(
                payload_digest=request.payload_digest,
                status=status,
                operation=fields.pop("operation", operation),
                computed_at=datetime.now(UTC),
                duration_ms=int((time.monotonic() - started) * 1000),
                **fields,
            )

        parameters: dict[str, Any] = {}

        def failure(text: str) -> str:
            """Masked as every refusal is, and without a value the masked copy hides (which a database
            error can quote and no recogniser would find)."""
            return masked_line(without_hidden(text, parameters, request.parameters))

        try:
            parameters = self.open_parameters(request)
            if "connection_string" in parameters:
                # another target, named by a secret only the executor resolves: no dry run here, and an
                # unavailable preview makes the policy ask people
                raise _Unavailable(
                    "the statement runs on the target a secret reference names, which only the executor "
                    "resolves: no dry run"
                )
            plan, shape = _plan(request.action, parameters)
            if plan is None or shape is None:
                return None  # SQL-backed family, but these parameters name no SQL (e.g. read.table by name)
            operation = plan.operation
            rows, method, tables, detail = await self._dry_run(plan, shape)
        except _Unavailable as exc:
            return result("unavailable", detail=failure(str(exc)))
        except Exception as exc:  # fail closed: a preview that broke is unavailable, and the policy then asks people
            log.warning("impact preview of %s failed: %s", request.action_id, type(exc).__name__)
            return result("unavailable", detail=failure(f"the preview failed: {type(exc).__name__}: {exc}"))
        return result("computed", rows=rows, method=method, tables=tables, detail=detail)

    async def _dry_run(self, plan: PreviewPlan, shape: StatementShape) -> tuple[int, str, tuple[str, ...], str | None]:
        # every statement of the session is bounded, the grants and the role's creation included
        conn = await self._connect("")
        async with conn:
            try:
                grants = await grants_for(conn, shape, self.target_name)
            except ExecutionFailed as exc:
                raise _Unavailable(str(exc)) from None
            await conn.rollback()
            tables = tuple(sorted(str(relation) for relation in grants.tables))
            try:
                rows, changed = await self._count(conn, plan, grants)
                if reached := sorted(set(changed) - set(tables)):  # cascades and triggers reach other tables
                    detail = f"counts the rows cascades and triggers change in {', '.join(reached)}"
                    return rows, "exact", tuple(sorted({*tables, *changed})), detail
                return rows, "exact", tables, None
            except psycopg.errors.QueryCanceled:
                await conn.rollback()
            except psycopg.Error as exc:
                await conn.rollback()
                raise _Unavailable(f"PostgreSQL refused the dry run: {statement_error(exc)}") from None
            try:
                estimate = await self._estimate(conn, plan, grants)
            except psycopg.Error as exc:
                await conn.rollback()
                raise _Unavailable(
                    f"counting took longer than {self.timeout_s:g}s and EXPLAIN failed: {statement_error(exc)}"
                ) from None
            detail = f"counting took longer than {self.timeout_s:g}s: the planner's estimate is shown"
            return estimate, "estimate", tables, detail

    async def _connect(self, as_whom: str, **login: Any) -> psycopg.AsyncConnection:
        """A session on the target whose every statement is bounded by the time limit (``login``:
        another user and password than the URL's); ``_Unavailable`` when it cannot be had."""
        milliseconds = max(1, int(self.timeout_s * 1000))
        try:
            return await psycopg.AsyncConnection.connect(
                self.target_url,
                connect_timeout=self.connect_timeout_s,
                options=f"-c search_path=public -c statement_timeout={milliseconds} -c lock_timeout={milliseconds}",
                application_name="keyturn-impact-preview",
                **login,
            )
        except psycopg.OperationalError as exc:
            raise _Unavailable(
                f"cannot connect to the SQL target {self.target_name}{as_whom}: {postgres_message(exc)}"
            ) from None

    @contextlib.asynccontextmanager
    async def _as_preview_role(
        self, conn: psycopg.AsyncConnection, grants: Grants
    ) -> AsyncIterator[psycopg.AsyncConnection]:
        """A session logged in as a role made for this dry run, holding only ``grants``, in a
        transaction rolled back whatever happens; the role is dropped when it ends.

        Its own login, not ``SET ROLE`` in the policy's session: a session can always go back to
        the user it logged in as (``RESET ROLE``, or ``set_config('role', 'none', true)`` called
        from inside a SELECT), and the policy's user holds Keyturn's tables and may end anyone's
        sessions. A role's own session has nobody else to go back to. Its statement's time is
        bounded by the preview too (``sql.within``), not only by ``statement_timeout``, which the
        statement may change.

        The role (``sql_roles.create_role``: LOGIN, one connection, valid for the dry run's
        length) is committed first, on its own: a GRANT holds its table's catalog row until its
        transaction ends, and a command granting on the same table would wait the whole dry run
        for it. Should the policy die before the drop, the executors' start-up sweep
        (``sql_roles.sweep_expired_roles``) drops it: left behind, it would hold the privileges it
        was granted."""
        name = PREVIEW_ROLE_PREFIX + secrets.token_hex(8)
        await conn.rollback()
        # under a burst of commands on the same table, a dry run's grants collide more often than
        # the commands' do with each other: tried longer before the preview is given up as unavailable
        role = await create_role(conn, name, self.timeout_s + ROLE_VALIDITY_MARGIN_S, grants, PREVIEW_GRANT_ATTEMPTS)
        try:
            session = await self._connect(" as the dry run's role", user=role.name, password=role.password)
            async with session, session.transaction(force_rollback=True):  # the rows it changed: all undone
                yield session
        finally:
            await conn.rollback()
            try:
                await drop_role(conn, name)  # ends its session, should one be left
            except psycopg.Error as exc:  # the target went away: the start-up sweep drops it
                await conn.rollback()
                log.warning("impact preview: role not dropped yet (%s); the executors' sweep will", type(exc).__name__)

    async def _count(
        self, conn: psycopg.AsyncConnection, plan: PreviewPlan, grants: Grants
    ) -> tuple[int, tuple[str, ...]]:
        """(rows, the tables a write changed): a write's rows count what its cascades and
        triggers change too (``sql.rows_changed``), as the executor's bound counts them."""
        async with self._as_preview_role(conn, grants) as session:
            if plan.operation in {"delete", "update", "insert"}:
                cursor = await within(self.timeout_s, run_one(session, plan.statement.strip().rstrip(";")))
                changed, tables = await rows_changed(session)
                return max(0, cursor.rowcount, changed), tables
            counting = sql.SQL("SELECT count(*) FROM ({}) AS keyturn_preview").format(
                sql.SQL(plan.statement.strip().rstrip(";"))
            )
            cursor = await within(self.timeout_s, run_one(session, counting.as_string(session)))
            row = await cursor.fetchone()
            return (int(row[0]) if row else 0), ()

    async def _estimate(self, conn: psycopg.AsyncConnection, plan: PreviewPlan, grants: Grants) -> int:
        async with self._as_preview_role(conn, grants) as session:
            explain = sql.SQL("EXPLAIN (FORMAT JSON) {}").format(sql.SQL(plan.statement.strip().rstrip(";")))
            cursor = await within(self.timeout_s, run_one(session, explain.as_string(session)))
            row = await cursor.fetchone()
        document: Any = row[0] if row else None
        if isinstance(document, str):
            document = json.loads(document)
        if not isinstance(document, list) or not document:
            raise psycopg.DataError("EXPLAIN gave no plan")
        node = document[0]["Plan"]
        # a write's top node (ModifyTable) plans 0 rows without RETURNING; the rows it changes are its input's
        while node.get("Node Type") == "ModifyTable" and node.get("Plans"):
            node = node["Plans"][0]
        return int(node.get("Plan Rows", 0))


def _names_sql(action: str, masked: Any) -> bool:
    """Whether the parameters name SQL at all (their keys survive masking; the seal opens only then)."""
    if not isinstance(masked, dict):
        return False
    try:
        return preview_plan(action, masked, None) is not None
    except NotPreviewable:
        return True  # named, but malformed: the dry run says why


def _plan(action: str, parameters: dict[str, Any]) -> tuple[PreviewPlan | None, StatementShape | None]:
    """The dry run for these parameters and its statement's shape; refused shapes are unavailable."""
    try:
        if action == "sql.query":
            statement = parameters.get("statement")
            if not isinstance(statement, str):
                return None, None
            shape = statement_shape(statement)
            plan = preview_plan(action, parameters, shape.write_privilege)
            return plan, shape
        plan = preview_plan(action, parameters, None)
        if plan is None:
            return None, None
        shape = statement_shape(plan.statement)
    except (UnsupportedStatement, NotPreviewable) as exc:
        raise _Unavailable(f"the statement cannot be previewed: {exc}") from None
    if plan.operation in {"read", "export"} and not shape.is_read:
        raise _Unavailable(f"the {plan.operation} query must be a single SELECT")
    if plan.operation == "delete" and shape.write_privilege != "DELETE":
        raise _Unavailable("the deletion must be a single DELETE")
    return plan, shape
