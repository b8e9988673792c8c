"""``keyturn policy``: try a policy before it decides anything live."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import NoReturn

import typer

from keyturn.config import Settings
from keyturn.terminal import TerminalConsole

app = typer.Typer(help="Policies: explain a decision, simulate a candidate against history.", no_args_is_help=True)
console = TerminalConsole()
err = TerminalConsole(stderr=True)


def _fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


@app.command("explain")
def explain(
    action_id: str = typer.Argument(..., help="The action whose decision to explain"),
    as_json: bool = typer.Option(False, "--json", help="Print the explanation as one JSON document"),
) -> None:
    """Re-evaluate the exact recorded input against the policy OPA has loaded now: which rules
    fired then and now, and whether the policy revision has changed since it decided."""
    from keyturn.bus.topics import Topics
    from keyturn.policy.explain import explain as explain_decision
    from keyturn.policy.opa import PolicyAnswerInvalid, PolicyUnavailable
    from keyturn.roots import opa_client

    settings = Settings.from_env()
    opa = opa_client(settings)
    decided = Topics(settings.namespace, settings.partitions).decided
    try:
        explanation = asyncio.run(explain_decision(opa, settings.kafka_bootstrap, decided, action_id))
    except (PolicyUnavailable, PolicyAnswerInvalid) as error:
        _fail(f"cannot re-evaluate: {error}")
    if explanation is None:
        _fail(f"no decision recorded for action {action_id}")
    result = explanation.as_dict()
    if as_json:
        typer.echo(json.dumps(result, indent=1))
        return
    then, now = result["recorded"], result["now"]
    console.print(f"[bold]{result['action']}[/bold] {action_id}", highlight=False)
    console.print(
        f"decided {then['outcome']} at {then['decided_at']} by revision {then['policy_revision']} "
        f"(OPA decision {then['decision_id']}, input {then['input_digest']})",
        highlight=False,
    )
    for rule in then["rules"]:
        console.print(f"  fired: {rule}", highlight=False)
    for reason in then["reasons"]:
        console.print(f"  why:   {reason}", highlight=False)
    if result["revision_changed"]:
        console.print(
            f"[yellow]the policy changed since[/yellow]: now revision {now['policy_revision']}", highlight=False
        )
    else:
        console.print(f"same policy revision now ({now['policy_revision']})", highlight=False)
    verdict = "[red]would now be[/red]" if result["outcome_changed"] else "still"
    console.print(f"today: {verdict} {now['outcome']}", highlight=False)
    for rule in result["rules_added"]:
        console.print(f"  now fires:      {rule}", highlight=False)
    for rule in result["rules_removed"]:
        console.print(f"  no longer fires: {rule}", highlight=False)


@app.command("simulate")
def simulate(
    policy: Path = typer.Option(
        ..., "--policy", help="Directory of the candidate policy (like policies.rego/, with data.json)"
    ),
    since: str | None = typer.Option(None, help="Decisions made at or after: ISO 8601, or a duration ago (2h, 7d)"),
    until: str | None = typer.Option(None, help="Decisions made before this time"),
    export: Path | None = typer.Option(
        None, "--export", help="Read decisions from this JSONL audit export instead of the topic"
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON document"),
) -> None:
    """Replay recorded decisions through a candidate policy in a private OPA and print every
    decision that would change (outcome or approver groups), with counts by action type."""
    from keyturn.audit.sources import audit_records, progress, time_option
    from keyturn.bus.topics import Topics
    from keyturn.policy.opa import PolicyUnavailable
    from keyturn.policy.simulate import CandidateOpa, CandidatePolicyInvalid, OpaNotFound, recorded_decisions
    from keyturn.policy.simulate import simulate as run_simulation

    settings = Settings.from_env()
    window = (time_option(since, "--since"), time_option(until, "--until"))
    if window[0] is not None and window[1] is not None and window[0] >= window[1]:
        _fail("--since must be before --until", 2)
    with progress("reading decisions") as (advance, total):
        decisions = recorded_decisions(
            audit_records(
                settings.kafka_bootstrap,
                Topics(settings.namespace, settings.partitions).audit,
                export,
                advance=advance,
                total=total,
            ),
            since=window[0],
            until=window[1],
        )
    try:
        with CandidateOpa(policy) as opa_url:
            report = asyncio.run(run_simulation(decisions, opa_url))
    except (OpaNotFound, CandidatePolicyInvalid, PolicyUnavailable) as error:
        _fail(str(error))
    result = report.to_dict()
    if as_json:
        typer.echo(json.dumps(result, indent=1))
        return
    _print_report(result)


def _print_report(result: dict) -> None:
    from rich.table import Table

    from keyturn.audit.sources import malformed_note

    changes = Table(title=f"decisions that would change under {result['candidate_revision']}")
    for column in (
        "seq",
        "decided (UTC)",
        "action",
        "action id",
        "requester",
        "recorded",
        "candidate",
        "candidate reasons",
    ):
        changes.add_column(column, overflow="fold")
    for change in result["changes"]:
        changes.add_row(
            str(change["sequence"]),
            change["decided_at"][:23],
            change["action"],
            change["action_id"],
            change["requester"] or "-",
            _decision(change["recorded"]),
            _decision(change["candidate"]),
            "; ".join(change["candidate"]["reasons"]),
        )
    if result["changes"]:
        console.print(changes)
    counts = Table(title="by action type")
    for column in ("action", "evaluated", "changed", "how"):
        counts.add_column(column)
    for action, row in result["by_action"].items():
        counts.add_row(
            action,
            str(row["evaluated"]),
            str(row["changed"]),
            ", ".join(f"{k}: {v}" for k, v in row["transitions"].items()),
        )
    console.print(counts)
    console.print(
        f"{result['changed']} of {result['evaluated']} decisions would change"
        + (f"; {result['without_input']} recorded decisions had no input to replay" if result["without_input"] else ""),
        highlight=False,
    )
    if result["malformed_records"]:
        err.print(malformed_note(result["malformed_records"]), highlight=False)


def _decision(side: dict) -> str:
    groups = " and ".join(f"{name} x{minimum}" for name, minimum in side["groups"])
    return side["outcome"] + (f" ({groups})" if groups else "")
