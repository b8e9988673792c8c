"""The ``export`` plugin: ``db.export``, a SELECT's rows written to a file the requester downloads once.

Parameters: ``query`` (one SELECT, as ``sql.query``'s statement; the catalog's name for it),
``format`` (``parquet``, the default, or ``csv``), plus what the policy reads (``row_count``,
``destination``).

1. The statement runs like a ``sql.query`` read: a temporary role holding SELECT on the tables
   it names, for the policy's credential TTL (900 s for exports), in a READ ONLY transaction,
   through a server-side cursor (rows stream in batches, never all in memory).
2. Every value is masked as a ``sql.query`` result is, so that an alias (``email AS e``) or a
   column the list does not name (``user_email``) cannot carry personal data out: the columns
   the policy masks (``columns.<name>`` in the decision's mask, from
   ``data.keyturn.export.masked_columns``) whole, columns named like credentials whole, and
   personal data or secrets found in any other text value (``<EMAIL_ADDRESS>``, ``<SECRET>``,
   …). The clear value never reaches the file; if masking fails, nothing is exported.
3. The file goes to an ``ExportStore`` (named after the action); the result tells the
   requester where to fetch it (``GET /v1/exports/{action_id}`` on the intake, as the
   requester) and until when. The intake hands it out once and deletes it; an expired one is
   deleted unread.

Where files live is ``keyturn.exports.ExportStore`` (a directory by default; see there for an
S3-compatible store).
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import logging
from datetime import UTC, datetime, timedelta
from typing import IO, Any

import httpx
import psycopg

from keyturn.core.execution import masked_columns
from keyturn.executor.impact import ImpactExceeded, enforce_impact
from keyturn.executor.plugins.base import Command, ExecutionFailed, OutcomeUnknown
from keyturn.executor.plugins.http import HttpPlugin
from keyturn.executor.plugins.sql import (
    SqlPlugin,
    _credential_ttl,
    _statement_parameters,
    source_columns,
    statement_error,
)
from keyturn.executor.plugins.sql_roles import TemporaryRole, role_name_for
from keyturn.executor.plugins.sql_text import UnsupportedStatement, statement_shape
from keyturn.executor.values import jsonable
from keyturn.exports import CONTENT_TYPES, REQUESTER, ExportStore, export_file_name
from keyturn.masking.field_names import column_entity
from keyturn.masking.masker import placeholder
from keyturn.masking.protect import shared_masker

log = logging.getLogger(__name__)

FORMATS = ("parquet", "csv")
BATCH_ROWS = 5000


class ExportPlugin(SqlPlugin):
    name = "export"
    follows_references = False  # its commands run on the plugin's own target (``SqlPlugin.target_of``)

    def __init__(
        self,
        target_url: str,
        *,
        store: ExportStore,
        ttl_s: float = 3600.0,
        delivery: HttpPlugin | None = None,
        **options: Any,
    ) -> None:
        super().__init__(target_url, **options)
        self.store = store
        self.ttl_s = ttl_s  # how long the one download stays available
        # the calls that take a file to its destination (the http plugin's allow-list, TLS and
        # one-call tokens); None: only the requester's download (``REQUESTER``) is possible
        self.delivery = delivery

    async def start(self) -> None:
        await super().start()
        removed = self.store.sweep(self.ttl_s)
        if removed:
            log.info("export plugin: deleted %d export files never downloaded", removed)

    async def settle(self, command: Command) -> Any:
        """An export's effect is its file, not a transaction: an interrupted one is not read back."""
        raise OutcomeUnknown("an export's file is not read back after the executor stopped mid-way")

    def _destination(self, command: Command) -> httpx.URL | None:
        """Where the file goes: None for the requester's download (``REQUESTER``), else the URL it
        is delivered to, or ``ExecutionFailed`` before anything runs. The policy judged the export by
        its destination, so the file goes there and nowhere else: a destination the executor cannot
        deliver to is refused, never turned into a download the requester could take anywhere."""
        destination = command.parameters.get("destination")
        if destination == REQUESTER:
            return None
        if self.delivery is None:
            raise ExecutionFailed(
                f"this executor delivers no export to a URL (no KEYTURN_HTTP_ALLOWED_HOSTS); "
                f"parameters.destination {REQUESTER!r} hands the file to the requester. Nothing was exported"
            )
        try:
            return self.delivery.deliverable(destination)
        except ExecutionFailed as exc:
            raise ExecutionFailed(f"the export cannot go to its destination: {exc}. Nothing was exported") from None

    async def execute(self, command: Command) -> Any:
        statement, _ = _statement_parameters(command.parameters, "query")
        file_format = command.parameters.get("format", "parquet")
        if file_format not in FORMATS:
            raise ExecutionFailed(f"parameters.format must be one of {', '.join(FORMATS)}; nothing was exported")
        destination = self._destination(command)
        try:
            shape = statement_shape(statement)
        except UnsupportedStatement as exc:
            raise ExecutionFailed(f"statement refused before running: {exc}") from None
        if not shape.is_read:
            raise ExecutionFailed("an export runs a SELECT; this statement writes. Nothing was exported")
        ttl_s = _credential_ttl(command)
        name = role_name_for(command.action_id)

        async def prepared() -> TemporaryRole:
            async with self._admin() as admin:
                grants = await self._grants_for(admin, shape)
                return await self._mint(admin, command.action_id, ttl_s, grants)

        role = await self.before_any_change(prepared)
        file_name = export_file_name(command.action_id, file_format)
        masked = masked_columns(command.mask)
        try:
            conn = await self._connect_as(role.name, role.password, min(self.statement_timeout_s, ttl_s))
            try:
                async with conn:
                    await conn.set_read_only(True)
                    async with conn.transaction(), conn.cursor(name="keyturn_export") as cursor:
                        await cursor.execute(statement)
                        columns = [column.name for column in cursor.description or ()]
                        # a table's column under another name is masked as that column
                        sources = await source_columns(conn, cursor)
                        held = [sources.get(c) or c for c in columns]
                        hidden = [c for c, h in zip(columns, held, strict=True) if h.lower() in masked]
                        writer = _parquet_writer if file_format == "parquet" else _csv_writer
                        with self.store.put(file_name) as file:
                            counting = _Hashing(file)
                            found = _Findings()
                            batches = _masking(cursor, held, masked, found)
                            rows = await writer(counting, columns, _bounded(batches, command))
            except ImpactExceeded as exc:  # the file was never whole: the store kept nothing
                raise ExecutionFailed(
                    f"the export reached {exc.real} rows, past the {exc.allowed} the approved impact preview "
                    f"allows (it counted {exc.previewed}); nothing was exported"
                ) from None
            except psycopg.errors.QueryCanceled:
                raise ExecutionFailed(f"the export ran longer than {ttl_s:g}s and was cancelled") from None
            except psycopg.Error as exc:
                raise ExecutionFailed(f"PostgreSQL: {statement_error(exc)}; nothing was exported") from None
        finally:
            await self._drop_quietly(name)
        done: dict[str, Any] = {
            "exported_rows": rows,
            "format": file_format,
            "columns": columns,
            "masked_columns": hidden,
            "masked_values": found.count,
            "sha256": counting.digest.hexdigest(),
            "bytes": counting.size,
        }
        if destination is not None:
            return done | {"delivered": await self._deliver(command, destination, file_name, file_format)}
        expires_at = datetime.now(UTC) + timedelta(seconds=self.ttl_s)
        return done | {
            "download": {
                "path": f"/v1/exports/{command.action_id}",
                "once": True,
                "expires_at": expires_at.isoformat(),
            },
        }

    async def _deliver(self, command: Command, url: httpx.URL, file_name: str, file_format: str) -> dict[str, Any]:
        """PUT the file to ``url`` (``HttpPlugin.put_file``), then delete it: no copy waits for a download."""
        assert self.delivery is not None  # _destination refused the command otherwise
        path = self.store.take(file_name)
        if path is None:  # pragma: no cover - the file was written by this command a moment ago
            raise ExecutionFailed("the export's file was gone before its delivery; nothing was delivered")
        try:
            answer = await self.delivery.put_file(command, url, path, CONTENT_TYPES[file_format])
        finally:
            path.unlink(missing_ok=True)
        return {"to": str(url.copy_with(query=None, fragment=None)), "status": answer["status"]}


class _Hashing:
    """A write-through file that counts and hashes what is written (the requester can check the file)."""

    def __init__(self, file: IO[bytes]) -> None:
        self.file, self.digest, self.size = file, hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()

    @property
    def closed(self) -> bool:
        return False


class _Findings:
    """How many values the masking replaced, the policy's columns included."""

    count = 0


async def _masking(cursor: Any, columns: list[str], masked: frozenset[str], found: _Findings):
    """Batches of rows as lists: the policy's columns replaced by their placeholder, every other value
    through the masking a ``sql.query`` result gets (in a thread: a batch can take a while)."""
    hidden = [i for i, c in enumerate(columns) if c.lower() in masked]
    shown = [i for i, c in enumerate(columns) if c.lower() not in masked]
    entities = {i: column_entity(columns[i]) for i in hidden}
    while True:
        batch = await cursor.fetchmany(BATCH_ROWS)
        if not batch:
            return
        rows: list[list[Any]] = [[None] * len(columns) for _ in batch]
        for row, values in zip(rows, batch, strict=True):
            for i in hidden:
                if values[i] is not None:
                    row[i] = placeholder(entities[i], values[i])
                    found.count += 1
        try:
            found.count += await asyncio.to_thread(_scan, [columns[i] for i in shown], shown, batch, rows)
        except Exception as exc:  # fail closed: no file holds a value that could not be masked
            # its type only: the error's text could quote the value it choked on
            log.error("export withheld, masking failed: %s", type(exc).__name__)
            why = f"the rows could not be masked ({type(exc).__name__}); nothing was exported"
            raise ExecutionFailed(why) from None
        yield rows


async def _bounded(batches: Any, command: Command):
    """The batches, until the rows so far pass the approved preview's bound (``enforce_impact``,
    as a write's rows are checked before its commit): the export stops there, its file unfinished."""
    rows = 0
    async for batch in batches:
        rows += len(batch)
        enforce_impact(command.impact, command.payload_digest, rows)
        yield batch


def _scan(names: list[str], shown: list[int], batch: list[tuple], rows: list[list[Any]]) -> int:
    """Put the ``shown`` columns of ``batch`` into ``rows``, masked by name and content; how many values
    were masked. Each cell goes in as its own ``{column: value}``, so that two columns of one name
    (``a.id, b.id``) both stay and a name with a dot in it stays one name."""
    cells = [[{name: jsonable(values[i])} for name, i in zip(names, shown, strict=True)] for values in batch]
    masked = shared_masker().mask({"rows": cells})
    for row, masked_cells in zip(rows, masked.parameters["rows"], strict=True):
        for i, cell in zip(shown, masked_cells, strict=True):
            row[i] = next(iter(cell.values()))
    return len(masked.findings)


async def _csv_writer(file: Any, columns: list[str], batches: Any) -> int:
    def encoded(rows: list[list[Any]]) -> bytes:
        text = io.StringIO(newline="")
        csv.writer(text).writerows(rows)
        return text.getvalue().encode("utf-8")

    file.write(encoded([columns]))
    rows = 0
    async for batch in batches:
        file.write(encoded([["" if v is None else v if isinstance(v, str) else str(v) for v in row] for row in batch]))
        rows += len(batch)
    return rows


async def _parquet_writer(file: Any, columns: list[str], batches: Any) -> int:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ExecutionFailed("format parquet needs pyarrow (the parquet extra); use format csv") from None
    rows, writer, schema = 0, None, None
    try:
        async for batch in batches:
            table = pa.Table.from_pylist([dict(zip(columns, _texts(row), strict=True)) for row in batch], schema=schema)
            if writer is None:  # a column all null in the first batch is kept as text
                schema = pa.schema(
                    [pa.field(f.name, pa.string()) if pa.types.is_null(f.type) else f for f in table.schema]
                )
                table = table.cast(schema)
                writer = pq.ParquetWriter(file, schema)
            writer.write_table(table)
            rows += len(batch)
        if writer is None:  # no rows: an empty file with the columns
            schema = pa.schema([(c, pa.string()) for c in columns])
            writer = pq.ParquetWriter(file, schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        # a number column where masking put a placeholder (a card or a phone number stored as a
        # number): Parquet keeps one type per column. Its type only: the error could quote a value
        raise ExecutionFailed(
            "a column holds numbers and masked values, which one Parquet column cannot keep; nothing was "
            "exported: export it as csv, or have the policy mask the column whole"
        ) from None
    finally:
        if writer is not None:
            writer.close()
    return rows


def _texts(row: list[Any]) -> list[Any]:
    """Values a Parquet column keeps one type for: numbers and booleans as they are, the rest as text."""
    return [v if v is None or isinstance(v, (bool, int, float, str)) else str(v) for v in row]
