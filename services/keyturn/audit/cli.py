"""``keyturn audit``: read, verify, replay, export, analyse and ship the hash-chained audit.

Every command reads the audit topic of ``KEYTURN_NAMESPACE`` (read_committed), or with
``--export FILE`` a JSONL export instead, so an auditor can work from a copy without access to
Kafka. Heavy imports stay inside the commands so ``keyturn --help`` stays fast.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import typer

from keyturn.audit.sources import audit_records, err, fail, malformed_note, progress, time_option
from keyturn.config import Settings
from keyturn.core.text import for_terminal
from keyturn.terminal import TerminalConsole

app = typer.Typer(
    help="The hash-chained audit stream: tail, verify, replay, export, stats, ship.", no_args_is_help=True
)
console = TerminalConsole()

FORMATS = ("table", "jsonl", "csv", "parquet")
EXPORT_OPTION = typer.Option(None, "--export", help="Read this JSONL export instead of the audit topic")


def _settings() -> Settings:
    return Settings.from_env()


def _audit_topic(settings: Settings) -> tuple[str, str]:
    """The bootstrap servers and the audit topic of ``settings``' namespace."""
    from keyturn.bus.topics import Topics

    return settings.kafka_bootstrap, Topics(settings.namespace, settings.partitions).audit


@app.command("tail")
def tail(
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new records"),
    as_json: bool = typer.Option(False, "--json", help="One JSON record per line"),
    limit: int = typer.Option(0, help="Only the last N records (0: all; not with --follow)"),
    checkpoints: bool = typer.Option(
        False,
        "--checkpoints",
        help="Show the signed checkpoints too (each transaction ends with one; --json has them)",
    ),
) -> None:
    """Print the audit stream: sequence, time, event, action, actor."""
    from keyturn.audit.stream import AuditTopicMissing, follow_audit

    kept: deque = deque(maxlen=limit or None)  # the last ``limit`` records, printed at the end

    async def run() -> None:
        async for record in follow_audit(*_audit_topic(_settings()), follow=follow):
            if record.is_checkpoint and not (checkpoints or as_json):
                continue
            if follow:
                _print_record(record, as_json)
            else:
                kept.append(record)

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        return
    except AuditTopicMissing as missing:
        fail(str(missing))
    for record in kept:
        _print_record(record, as_json)


def _print_record(record, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(record.to_dict(), sort_keys=True), nl=True)
        sys.stdout.flush()
        return
    from keyturn.core.canonical import from_millis

    typer.echo(
        for_terminal(
            f"{record.sequence:>6}  {from_millis(record.recorded_at).isoformat(timespec='milliseconds')}  "
            f"{record.event_type:<17} {record.action_id or '-':<36}  {record.actor or '-'}"
        )
    )


@app.command("verify")
def verify(
    export: Path | None = EXPORT_OPTION,
    public_key: list[Path] = typer.Option([], help="Checkpoint public key PEM(s); default: the local key"),
    require_checkpoint_at_end: bool = typer.Option(
        False, help="Fail when the tail after the last checkpoint is unsigned"
    ),
) -> None:
    """Prove the chain is intact: every edit, drop, reorder, truncation or forged checkpoint is named
    with its position (sequence and index); exits 1 when anything is wrong."""
    from keyturn.core.audit.verify import verify as verify_chain

    settings = _settings()
    verifier = _checkpoint_verifier(settings, public_key)
    started = time.perf_counter()
    with progress("verifying") as (advance, total):
        records = audit_records(*_audit_topic(settings), export, advance=advance, total=total, raw=True)
        report = verify_chain(records, verifier, require_checkpoint_at_end=require_checkpoint_at_end)
    elapsed = time.perf_counter() - started
    for problem in report.problems:
        where = (
            f"sequence {problem.sequence} (index {problem.index})"
            if problem.sequence is not None
            else f"index {problem.index}"
        )
        err.print(f"[red]{problem.kind.value}[/red] at {where}: {problem.message}", highlight=False)
    if report.problems_omitted:
        err.print(f"… and {report.problems_omitted} more problems")
    if not report.ok:
        err.print(
            f"[red]audit chain NOT intact[/red]: {len(report.problems) + report.problems_omitted} "
            f"problem(s) in {report.records_checked} records",
            highlight=False,
        )
        raise typer.Exit(1)
    if report.records_checked == 0:
        # nothing was deleted (that fails above): nothing has been recorded yet, or the export is empty
        console.print(
            "[yellow]no audit records[/yellow]: the chain is empty, so nothing was verified "
            "(pass --require-checkpoint-at-end to fail on an empty export)",
            highlight=False,
        )
        return
    rate = report.records_checked / elapsed if elapsed > 0 else 0
    console.print(
        f"[green]audit chain intact[/green]: {report.records_checked} records, last sequence {report.last_sequence}, "
        f"last checkpoint at {report.last_checkpoint_sequence}"
        + (
            f"; {report.unverified_tail} records after it are chained but not yet signed"
            if report.unverified_tail
            else ""
        )
        + f" ({rate:,.0f} records/s)",
        highlight=False,
    )


def _checkpoint_verifier(settings: Settings, public_key: list[Path]):
    """The trusted checkpoint keys: the PEM files given, else the local key."""
    from keyturn.audit.app import checkpoint_key_path
    from keyturn.audit.keys import load_or_create_signing_key, load_verifier
    from keyturn.core.audit.checkpoint import CheckpointVerifier

    try:
        if public_key:
            return load_verifier(public_key)
        return CheckpointVerifier.from_keys([load_or_create_signing_key(checkpoint_key_path(settings)).public_key()])
    except (OSError, ValueError) as error:
        fail(f"cannot load the checkpoint key: {error}")


def report(
    since: str = typer.Option("30d", help="Start of the period: ISO 8601 (no zone = UTC), a date, or a duration ago"),
    until: str | None = typer.Option(None, help="End of the period (excluded); default: now"),
    format: str = typer.Option("html", "--format", "-f", help="html | pdf"),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="File to write; default keyturn-report-SINCE-UNTIL.FORMAT"
    ),
    rubber_stamp_seconds: float = typer.Option(
        10.0, "--rubber-stamp-seconds", min=0, help="Flag approvals given within this many seconds of the opening"
    ),
    public_key: list[Path] = typer.Option([], help="Checkpoint public key PEM(s); default: the local key"),
    export: Path | None = EXPORT_OPTION,
) -> None:
    """The compliance report for a period: chain verification and checkpoints first, outcomes per day,
    time to decision and rubber stamps, approvers, agents, denial reasons, break-glass and its
    reviews, refused votes, policy revisions. One self-contained HTML file (charts inline), or PDF.
    Exits 1 when the chain is not intact (the report is still written, and says so on page one)."""
    from datetime import UTC, datetime

    from keyturn.audit.report.model import build_report
    from keyturn.audit.report.render import PdfUnavailable, render_html, render_pdf
    from keyturn.core.canonical import to_millis

    if format not in ("html", "pdf"):
        fail(f"unknown format {format!r}; choose html or pdf", 2)
    start = time_option(since, "--since")
    end = time_option(until, "--until") if until else to_millis(datetime.now(UTC))
    if start is None or end is None or start >= end:
        fail("--since must be before --until", 2)
    settings = _settings()
    verifier = _checkpoint_verifier(settings, public_key)
    started = time.perf_counter()
    with progress("reading and verifying the audit") as (advance, total):
        records = audit_records(*_audit_topic(settings), export, advance=advance, total=total, raw=True)
        figures = build_report(records, verifier, start, end, rubber_stamp_s=rubber_stamp_seconds)
    html = render_html(figures)
    content: bytes = html.encode("utf-8")
    if format == "pdf":
        try:
            content = render_pdf(html)
        except PdfUnavailable as error:
            fail(str(error))
    path = out or Path(f"keyturn-report-{_stamp(start)}-{_stamp(end)}.{format}")
    try:
        path.write_bytes(content)
    except OSError as error:
        fail(f"cannot write {path}: {error.strerror}")
    integrity = figures.integrity
    assert integrity is not None  # build_report always verifies
    err.print(
        f"wrote {path}: {figures.actions} actions, {integrity.verification.records_checked} records verified "
        f"in {time.perf_counter() - started:.1f} s",
        highlight=False,
    )
    if not integrity.intact:
        err.print(
            f"[red]audit chain NOT intact[/red]: {integrity.problem_count} problem(s); the report says so on its "
            "first page (keyturn audit verify lists them)",
            highlight=False,
        )
        raise typer.Exit(1)


def _stamp(millis: int) -> str:
    from keyturn.core.canonical import from_millis

    return from_millis(millis).strftime("%Y%m%dT%H%MZ")


@app.command("public-key")
def public_key(output: str = typer.Option("-", "--output", "-o", help="PEM file to write, or - for stdout")) -> None:
    """Print the checkpoint public key (PEM) to hand to auditors for verify --public-key."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from keyturn.audit.app import checkpoint_key_path
    from keyturn.audit.keys import load_signing_key

    path = checkpoint_key_path(_settings())
    try:
        pem = load_signing_key(path).public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    except FileNotFoundError:
        fail(f"no checkpoint key at {path}: the audit worker creates it on its first start")
    except (OSError, ValueError) as error:
        fail(f"cannot read the checkpoint key {path}: {error}")
    if output == "-":
        typer.echo(pem.decode(), nl=False)
    else:
        Path(output).write_bytes(pem)
        err.print(f"wrote the checkpoint public key to {output}", highlight=False)


@app.command("export")
def export(
    format: str = typer.Option("jsonl", "--format", "-f", help="jsonl | csv | parquet"),
    output: str = typer.Option("-", "--output", "-o", help="File to write, or - for stdout (not for parquet)"),
    follow: bool = typer.Option(False, "--follow", help="jsonl only: keep writing new records as they are committed"),
) -> None:
    """Write the whole chain, in order, for an auditor or a SIEM. A JSONL export verifies with
    keyturn audit verify --export FILE. What the topic holds in place of records (a message that is
    not an audit record, messages deleted from its front) is marked in its place (Parquet refuses
    it), and the export then exits 1: the chain it copies is not intact."""
    if format not in ("jsonl", "csv", "parquet"):
        fail(f"unknown format {format!r}; choose jsonl, csv or parquet", 2)
    if follow and format != "jsonl":
        fail("--follow writes JSON lines only; use --format jsonl", 2)
    settings = _settings()
    if follow:
        _follow_jsonl(settings, output)
        return
    from keyturn.core.audit.verify import Gap, UnreadableMessage

    gaps: list[Any] = []

    def marked(items):
        for item in items:
            if isinstance(item, Gap):
                gaps.append(item)
            yield item

    with progress("exporting") as (advance, total):
        records = audit_records(*_audit_topic(settings), None, advance=advance, total=total, raw=True)
        count = _write(format, marked(records), output)
    where = "stdout" if output == "-" else output
    if not gaps:
        err.print(f"exported {count} records to {where}", highlight=False)
        return
    unreadable = sum(isinstance(gap, UnreadableMessage) for gap in gaps)
    deleted = sum(gap.count for gap in gaps if not isinstance(gap, UnreadableMessage))
    err.print(
        f"exported {count} records to {where}, and marked in their place {unreadable} unreadable message(s)"
        + (f" and {deleted} message(s) deleted from the topic's front" if deleted else ""),
        highlight=False,
    )
    fail(
        "the audit chain exported is NOT intact: the topic holds what is marked in place of records "
        f"(keyturn audit verify{'' if output == '-' else ' --export ' + output} lists it)"
    )


def _follow_jsonl(settings: Settings, output: str) -> None:
    """Every record as it is committed, and a marker in place of what is not one (said on stderr
    too: a follower runs on, so no exit code can tell)."""
    from keyturn.audit.export import describe_gap, write_jsonl
    from keyturn.audit.stream import AuditTopic, AuditTopicMissing, record_or_gap
    from keyturn.core.audit.verify import DeletedMessages, Gap

    bootstrap, topic = _audit_topic(settings)

    async def run(fp) -> None:
        async with AuditTopic(bootstrap, topic) as audit:
            first = [DeletedMessages(topic, 0, audit.earliest_offset)] if audit.earliest_offset > 0 else []
            for item in first:
                write(fp, item)
            async for message in audit.messages(follow=True):
                write(fp, record_or_gap(topic, message))

    def write(fp, item) -> None:
        write_jsonl([item], fp)
        fp.flush()
        if isinstance(item, Gap):
            err.print(
                f"[red]marked[/red] {describe_gap(item)} in place of records: the audit chain is NOT intact",
                highlight=False,
            )

    fp = sys.stdout if output == "-" else open(output, "a", encoding="utf-8")  # noqa: SIM115 - closed below unless stdout
    try:
        asyncio.run(run(fp))
    except KeyboardInterrupt:
        pass
    except AuditTopicMissing as missing:
        fail(str(missing))
    finally:
        if fp is not sys.stdout:
            fp.close()


def _write(format: str, records, output: str) -> int:
    from keyturn.audit.export import GapInParquet, ParquetUnavailable, write_csv, write_jsonl, write_parquet

    if format == "parquet":
        if output == "-":
            fail("parquet cannot go to stdout; pass --output FILE.parquet", 2)
        try:
            return write_parquet(records, output)
        except ParquetUnavailable as error:
            fail(str(error))
        except GapInParquet as error:
            Path(output).unlink(missing_ok=True)  # a file without the gap would show a chain the topic does not hold
            fail(f"nothing written: {error}")
    writer = write_jsonl if format == "jsonl" else write_csv
    if output == "-":
        return writer(records, sys.stdout)
    try:
        with open(output, "w", encoding="utf-8", newline="" if format == "csv" else None) as fp:
            return writer(records, fp)
    except OSError as error:
        fail(f"cannot write {output}: {error.strerror}")
    return 0


@app.command("replay")
def replay(
    action_id: list[str] = typer.Option([], "--action-id", help="Only this action (repeatable)"),
    requester: list[str] = typer.Option(
        [], "--requester", help="Actions requested by, or on behalf of, this principal (repeatable)"
    ),
    approver: list[str] = typer.Option(
        [], "--approver", help="Actions this principal voted on, accepted or refused (repeatable)"
    ),
    action_type: list[str] = typer.Option(
        [], "--action-type", help="Action type, wildcards allowed: read.* (repeatable)"
    ),
    outcome: list[str] = typer.Option(
        [],
        "--outcome",
        help="Actions that reached this outcome: allowed, denied, needs_approval, approved, expired, succeeded, "
        "failed, outcome_unknown, approved_external (repeatable)",
    ),
    since: str | None = typer.Option(
        None, help="Records that occurred at or after: ISO 8601, or a duration ago (2h, 7d)"
    ),
    until: str | None = typer.Option(None, help="Records that occurred before this time"),
    format: str = typer.Option("table", "--format", "-f", help="table | jsonl | csv | parquet"),
    output: str = typer.Option("-", "--output", "-o", help="File to write, or - for stdout"),
    export: Path | None = EXPORT_OPTION,
) -> None:
    """Replay the audit through filters: every record of the matching actions, in chain order."""
    from keyturn.audit.replay import ActionIndex, ReplayFilter

    if format not in FORMATS:
        fail(f"unknown format {format!r}; choose {', '.join(FORMATS)}", 2)
    try:
        wanted = ReplayFilter(
            frozenset(action_id),
            frozenset(requester),
            frozenset(approver),
            frozenset(action_type),
            frozenset(outcome),
            time_option(since, "--since"),
            time_option(until, "--until"),
        )
    except ValueError as error:
        fail(str(error), 2)
    settings = _settings()
    index, to_offset = None, None
    if wanted.needs_index:
        index = ActionIndex()
        to_offset = _index_actions(settings, export, index)

    def selected():
        with progress("replaying") as (advance, total):
            for record in audit_records(
                *_audit_topic(settings), export, advance=advance, total=total, to_offset=to_offset
            ):
                if wanted.selects(record, index.get(record.action_id) if index else None):
                    yield record

    if format == "table":
        _print_table(list(selected()))
    else:
        count = _write(format, selected(), output)
        err.print(f"replayed {count} records", highlight=False)
    if index is not None and index.malformed:
        err.print(malformed_note(index.malformed) + ": the filters could not read them", highlight=False)


def _index_actions(settings: Settings, export: Path | None, index) -> int | None:
    """First pass: the facts of every action; returns the topic offset the pass stopped at."""
    end: list[int] = []
    with progress("indexing actions") as (advance, total):
        for record in audit_records(
            *_audit_topic(settings), export, advance=advance, total=total, on_end_offset=end.append, note_gaps=False
        ):
            index.add(record)
    return end[0] if end else None


def _print_table(records) -> None:
    from rich.table import Table

    from keyturn.audit.replay import timeline_step

    table = Table(show_lines=False)
    for column in ("seq", "occurred (UTC)", "event", "action", "who", "what", "why"):
        table.add_column(column, overflow="fold")
    for record in records:
        step = timeline_step(record)
        table.add_row(
            str(step.sequence),
            step.at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
            step.event_type,
            record.action_id or "-",
            step.who,
            step.what,
            step.why,
        )
    console.print(table)
    err.print(f"{len(records)} records", highlight=False)


@app.command("timeline")
def timeline(
    action_id: str = typer.Argument(..., help="The action to show"),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per step"),
    export: Path | None = EXPORT_OPTION,
) -> None:
    """The whole life of one action: who, when, what, why, and under which policy revision."""
    from rich.table import Table

    from keyturn.audit.replay import timeline as action_timeline

    with progress("reading the audit") as (advance, total):
        steps = action_timeline(
            audit_records(*_audit_topic(_settings()), export, advance=advance, total=total), action_id
        )
    if not steps:
        fail(f"no audit records for action {action_id}")
    if as_json:
        for step in steps:
            typer.echo(
                json.dumps(
                    {
                        "sequence": step.sequence,
                        "at": step.at.isoformat(),
                        "event_type": step.event_type,
                        "who": step.who,
                        "what": step.what,
                        "why": step.why,
                        "policy_revision": step.policy_revision,
                        "flags": list(step.flags),
                    }
                )
            )
        return
    table = Table(title=f"action {action_id}")
    for column in ("seq", "when (UTC)", "who", "what", "why", "policy revision"):
        table.add_column(column, overflow="fold")
    for step in steps:
        what = step.what + (f" [{', '.join(step.flags)}]" if step.flags else "")
        table.add_row(
            str(step.sequence),
            step.at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
            step.who,
            what,
            step.why,
            step.policy_revision or "",
        )
    console.print(table)


@app.command("stats")
def stats(
    since: str | None = typer.Option(None, help="Only approvals opened at or after this time (ISO 8601 or 2h, 7d)"),
    until: str | None = typer.Option(None, help="Only approvals opened before this time"),
    rubber_stamp_seconds: float = typer.Option(
        10.0, "--rubber-stamp-seconds", help="Flag approvals given within this many seconds of the approval opening"
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the numbers as one JSON document"),
    export: Path | None = EXPORT_OPTION,
) -> None:
    """Time to decision per approver group (p50/p90/p99), rubber-stamp approvals, per-approver
    approve and deny rates. The approval opening (the needs_approval decision) stands in for the
    notification time until notifications are recorded."""
    from rich.table import Table

    from keyturn.audit.analytics import approval_stats
    from keyturn.audit.replay import ActionIndex, ReplayFilter

    window = ReplayFilter(since=time_option(since, "--since"), until=time_option(until, "--until"))
    settings = _settings()
    with progress("reading the audit") as (advance, total):
        records = audit_records(*_audit_topic(settings), export, advance=advance, total=total)
        if window.since is not None or window.until is not None:
            records = _opened_within(records, window, ActionIndex())
        result = approval_stats(records, rubber_stamp_s=rubber_stamp_seconds).to_dict()
    if result["malformed_records"]:
        err.print(malformed_note(result["malformed_records"]), highlight=False)
    if as_json:
        typer.echo(json.dumps(result, indent=1))
        return
    groups = Table(title="time to decision by approver group (seconds)")
    for column in ("group", "decided", "approved", "denied", "expired", "p50", "p90", "p99", "max"):
        groups.add_column(column, justify="right" if column != "group" else "left")
    for row in result["time_to_decision"]:
        groups.add_row(
            row["group"],
            *(str(row[k]) for k in ("decided", "approved", "denied", "expired")),
            *(_seconds(row[k]) for k in ("p50_s", "p90_s", "p99_s", "max_s")),
        )
    console.print(groups)
    people = Table(title="approvers")
    for column in ("approver", "approve", "deny", "refused", "approve rate", "deny rate", "rubber stamps"):
        people.add_column(column, justify="right" if column != "approver" else "left")
    for row in result["approvers"]:
        people.add_row(
            row["approver"],
            str(row["approve"]),
            str(row["deny"]),
            str(row["refused"]),
            _rate(row["approve_rate"]),
            _rate(row["deny_rate"]),
            str(row["rubber_stamps"]),
        )
    console.print(people)
    stamps = result["rubber_stamps"]
    console.print(
        f"{len(stamps)} approval(s) given within {rubber_stamp_seconds:g}s of the approval opening "
        "(the decision time stands in for the notification time)",
        highlight=False,
    )
    for stamp in stamps:
        console.print(
            f"  {stamp['approver']} approved {stamp['action']} {stamp['action_id']} after {stamp['seconds']}s "
            f"(record {stamp['sequence']})",
            highlight=False,
        )


def _opened_within(records, window, index):
    """Records of actions whose request occurred inside the window (and records without an action)."""
    for record in records:
        index.add(record)
        facts = index.get(record.action_id)
        opened = facts.requested_at if facts and facts.requested_at is not None else record.occurred_at
        if (window.since is None or opened >= window.since) and (window.until is None or opened < window.until):
            yield record


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


@app.command("ship")
def ship(
    webhook: str = typer.Option(..., "--webhook", help="The SIEM's HTTP(S) endpoint; batches are POSTed as JSON lines"),
    follow: bool = typer.Option(False, "--follow", help="Keep shipping new records until interrupted"),
    state: Path | None = typer.Option(
        None, help="Where the last shipped position is kept (default: under KEYTURN_RUN_DIR, per sink)"
    ),
    batch_size: int = typer.Option(500, min=1, help="Records per POST"),
    retries: int = typer.Option(5, min=0, help="Retries per batch after the first attempt"),
    backoff: float = typer.Option(
        0.5, min=0, help="Seconds before the first retry; doubles each retry (capped at 30 s)"
    ),
    header: list[str] = typer.Option(
        [], "--header", help="Extra HTTP header 'Name: value' (repeatable), e.g. an auth token"
    ),
) -> None:
    """Ship the audit to a SIEM webhook, resuming after the last record it acknowledged."""
    from keyturn.audit.shipping import ShippingFailed, ShippingStateMismatch, WebhookSink, default_state_path
    from keyturn.audit.shipping import ship as ship_records

    settings = _settings()
    headers = {}
    for line in header:
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            fail(f"--header {line!r} is not 'Name: value'", 2)
        headers[name.strip()] = value.strip()
    try:
        sink = WebhookSink(webhook, retries=retries, backoff_s=backoff, headers=headers)
    except ValueError as error:
        fail(str(error), 2)
    state_path = state or default_state_path(settings.run_dir, settings.namespace, webhook)

    def shipped(count: int, position) -> None:
        err.print(f"shipped {count} records, up to sequence {position.last_sequence}", highlight=False)

    async def run():
        try:
            return await ship_records(
                *_audit_topic(settings), sink, state_path, follow=follow, batch_size=batch_size, on_shipped=shipped
            )
        finally:
            await sink.close()

    try:
        result = asyncio.run(run())
    except KeyboardInterrupt:
        return
    except (ShippingFailed, ShippingStateMismatch) as error:
        fail(f"{error} (position kept in {state_path})")
    console.print(
        f"shipped {result.shipped} records to {webhook}; last shipped sequence "
        f"{result.state.last_sequence} (position in {state_path})",
        highlight=False,
    )
