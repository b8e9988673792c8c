"""Reading the audit for a command: the audit topic of ``KEYTURN_NAMESPACE``, or a JSONL export.

Shared by ``keyturn audit`` and ``keyturn policy simulate``, so neither command line imports the
other. :func:`audit_records` streams the records of either source, oldest first;
:func:`time_option` reads a ``--since``/``--until`` value; :func:`progress` shows how far the
reading has got. What cannot be read ends the command through :func:`fail` (``error: ...`` on
stderr). Heavy imports stay inside the functions so ``keyturn --help`` stays fast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import typer

from keyturn.terminal import TerminalConsole

err = TerminalConsole(stderr=True)  # the one stderr console of the audit commands, progress bars included


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``error: message`` on stderr and end the command with exit ``code``."""
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


@contextmanager
def progress(label: str, *, enabled: bool = True):
    """A progress bar on stderr when it is a terminal; ``advance(n)`` and ``total(n)`` drive it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    shown = enabled and err.is_terminal
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not shown,
    ) as progress:
        task = progress.add_task(label, total=None)

        def advance(n: int = 1) -> None:
            progress.advance(task, n)

        def total(n: int) -> None:
            progress.update(task, total=n)

        yield advance, total


def _ignore(_: int = 1) -> None:
    """Progress nobody is shown."""


def audit_records(
    bootstrap: str,
    topic: str,
    export: Path | None,
    *,
    advance: Callable[[int], None] = _ignore,
    total: Callable[[int], None] = _ignore,
    to_offset: int | None = None,
    raw: bool = False,
    note_gaps: bool = True,
    on_end_offset: Callable[[int], None] = _ignore,
) -> Iterator[Any]:
    """Records of the audit ``topic`` (on ``bootstrap``) or of an export, oldest first, streamed.

    What the topic holds in place of records (:data:`~keyturn.core.audit.verify.Gap`: a message
    that is not an audit record, messages deleted from its front), or an export marks in their
    place, is part of the chain's story: ``raw`` yields it where it stands (for verify, the report
    and the export), with the export's dicts unparsed (verify reports malformed ones). Without
    ``raw`` only records come out, and once the stream is read a note on stderr names what was
    left out (unless ``note_gaps`` is off: a first pass of a command that reads twice).
    """
    from keyturn.core.audit.verify import Gap

    left_out: list[Gap] = []

    def note() -> None:
        if left_out and note_gaps and not raw:
            err.print(gaps_note(left_out), highlight=False)

    if export is not None:
        from keyturn.audit.export import AuditFileError, read_jsonl
        from keyturn.core.audit.record import AuditRecord, MalformedRecord

        try:
            with export.open("rb") as fp:
                for number, line in enumerate(read_jsonl(fp), start=1):
                    advance(1)
                    if raw:
                        yield line
                        continue
                    if isinstance(line, Gap):
                        left_out.append(line)
                        continue
                    try:
                        yield AuditRecord.from_dict(line)
                    except MalformedRecord as error:
                        fail(
                            f"{export}: record {number} is not an audit record ({error}); "
                            f"run keyturn audit verify --export {export}"
                        )
        except OSError as error:
            fail(f"cannot read {export}: {error.strerror}")
        except AuditFileError as error:
            fail(f"{export}: {error}")
        note()
        return
    from keyturn.audit.stream import AuditMessage, AuditTopic, AuditTopicMissing, blocking, record_or_gap
    from keyturn.core.audit.verify import DeletedMessages

    async def fetches():
        # One list per fetch, not one message at a time: stepping the event loop once per record
        # cost about as much as verifying it.
        async with AuditTopic(bootstrap, topic, to_offset=to_offset) as audit:
            total(max(0, audit.end_offset - audit.start_offset))
            on_end_offset(audit.end_offset)
            if audit.earliest_offset > 0:
                yield [DeletedMessages(topic, 0, audit.earliest_offset)]
            async for batch in audit.batches():
                wanted = [message for message in batch if message.offset < audit.end_offset]
                advance(len(wanted))
                yield wanted
                if len(wanted) < len(batch):
                    return

    try:
        for batch in blocking(fetches()):
            for message in batch:
                item = record_or_gap(topic, message) if isinstance(message, AuditMessage) else message
                if raw or not isinstance(item, Gap):
                    yield item
                else:
                    left_out.append(item)
    except AuditTopicMissing as missing:
        fail(str(missing))
    note()


def gaps_note(gaps: list[Any], *, shown: int = 10) -> str:
    """One line saying what the audit held in place of records, and was left out."""
    from keyturn.audit.export import describe_gap

    listed = "; ".join(describe_gap(gap) for gap in gaps[:shown])
    more = f" and {len(gaps) - shown} more" if len(gaps) > shown else ""
    return f"left out what the audit holds in place of records: {listed}{more}; keyturn audit verify reports it"


def malformed_note(sequences: list[int], *, shown: int = 10) -> str:
    """One line saying which records were left out because their payload is not a readable event."""
    listed = ", ".join(str(sequence) for sequence in sequences[:shown])
    more = f" and {len(sequences) - shown} more" if len(sequences) > shown else ""
    return (
        f"left out {len(sequences)} record(s) whose payload is not a readable event (sequence {listed}{more}); "
        "keyturn audit verify reports them"
    )


def time_option(text: str | None, name: str) -> int | None:
    """UTC milliseconds for a --since/--until value; a clear usage error (exit 2) when unreadable."""
    from keyturn.audit.replay import parse_instant

    if text is None:
        return None
    try:
        return parse_instant(text)
    except ValueError as error:
        fail(f"{name}: {error}", 2)
    return None
