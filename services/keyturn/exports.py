"""Where export files wait for their one download: written by the executor, served once by the intake.

``ExportStore`` is three calls. ``DirectoryExportStore`` keeps files in a directory both services
reach (``KEYTURN_EXPORT_DIR``; a shared volume when they run on different hosts). An
S3-compatible object store fits the same three calls: ``put`` uploads the object (multipart,
server-side encrypted) under the same name, ``take`` reads then deletes it (or, for large files,
answers a presigned GET URL valid for one short window and deletes the object after), and
``sweep`` is a lifecycle rule on the bucket that expires objects after ``KEYTURN_EXPORT_TTL_S``.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import IO, Protocol


class ExportStore(Protocol):
    def put(self, name: str) -> AbstractContextManager[IO[bytes]]:
        """A binary file to write ``name`` into; it exists, whole, once the context exits."""

    def take(self, name: str) -> Path | None:
        """Claim ``name`` for its one download: a path only this caller holds (delete it after), or None."""

    def sweep(self, older_than_s: float) -> int:
        """Delete files never downloaded within ``older_than_s``; how many."""


#: The media type of each export format, as served for download and sent to a destination.
CONTENT_TYPES = {"parquet": "application/vnd.apache.parquet", "csv": "text/csv"}
#: ``parameters.destination`` of an export the requester downloads, once, from the intake
#: (``GET /v1/exports/{id}``), instead of one delivered to a URL.
REQUESTER = "keyturn://requester"


def export_file_name(action_id: str, file_format: str) -> str:
    """The stored name. Knowing it gives nothing: only the intake serves it, to the requester, once."""
    return f"{action_id}.{file_format}"


class DirectoryExportStore:
    """Export files in one directory (mode 0700, files 0600), shared by the executor and the intake."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    @contextmanager
    def put(self, name: str) -> Iterator[IO[bytes]]:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        partial = self.directory / f".{name}.{uuid.uuid4().hex}.partial"
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "wb") as file:
                yield file
            os.replace(partial, self.directory / name)  # appears whole or not at all
        finally:
            partial.unlink(missing_ok=True)

    def take(self, name: str) -> Path | None:
        if "/" in name or name.startswith("."):
            return None
        taken = self.directory / f".{name}.{uuid.uuid4().hex}.taken"
        try:
            os.rename(self.directory / name, taken)  # atomic: one caller wins the single download
        except FileNotFoundError:
            return None
        return taken

    def sweep(self, older_than_s: float) -> int:
        if not self.directory.is_dir():
            return 0
        cutoff, removed = time.time() - older_than_s, 0
        for path in self.directory.iterdir():
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
                removed += 1
        return removed
