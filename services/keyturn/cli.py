"""The ``keyturn`` command: run a service, mint local tokens, answer approvals, read the audit."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn

import httpx
import typer
from rich.markup import escape

from keyturn.audit import cli as audit_cli
from keyturn.config import Settings
from keyturn.mcp import cli as mcp_cli
from keyturn.policy import cli as policy_cli
from keyturn.sdk.client import path_segment
from keyturn.terminal import TerminalConsole

app = typer.Typer(
    help="Keyturn: a human key-turn in front of every privileged action an AI agent takes.", no_args_is_help=True
)
token_app = typer.Typer(help="Local development tokens.", no_args_is_help=True)
schemas_app = typer.Typer(help="Avro schemas and their history.", no_args_is_help=True)
secrets_app = typer.Typer(help="The executor's secret store (operators only).", no_args_is_help=True)
receipt_app = typer.Typer(help="Signed approval receipts of external actions.", no_args_is_help=True)
approvals_app = typer.Typer(help="Approvals waiting for you, with what each would do.", no_args_is_help=True)
catalog_app = typer.Typer(help="The action catalog's parameter schemas.", no_args_is_help=True)
app.add_typer(token_app, name="token")
app.add_typer(audit_cli.app, name="audit")
app.add_typer(policy_cli.app, name="policy")
app.add_typer(schemas_app, name="schemas")
app.add_typer(mcp_cli.app, name="mcp")
app.add_typer(receipt_app, name="receipt")
app.add_typer(secrets_app, name="secrets")
app.add_typer(catalog_app, name="catalog")
app.add_typer(approvals_app, name="approvals")
app.command("report")(audit_cli.report)
console = TerminalConsole()
err = TerminalConsole(stderr=True)

SERVICES = ("intake", "policy", "approval", "executor", "audit")


def _settings() -> Settings:
    return Settings.from_env()


def _fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


@app.command()
def serve(service: str = typer.Argument(..., help="intake | policy | approval | executor | audit")) -> None:
    """Run one service in the foreground."""
    settings = _settings()
    if service not in SERVICES:
        _fail(f"unknown service {service!r}; choose one of {', '.join(SERVICES)}", 2)
    _set_up_logging()
    _use_event_loop(settings.event_loop)  # before any loop exists: each service makes its own
    from keyturn.bus.topics import Topics, ensure_topics
    from keyturn.faults import until_done

    # the slow imports first, so the broker found ready below is still there when the service starts
    module = importlib.import_module(f"keyturn.{service}.app")
    _settle_gc(settings.gc_young_threshold)
    # the one place topics are created: every service may be first up, and a topic must exist
    # (with its retention and partitions) before anyone consumes or produces it. A broker that is
    # away (restarting) when a service starts is waited for, like any transient fault.
    asyncio.run(
        until_done(
            lambda: ensure_topics(settings.kafka_bootstrap, Topics(settings.namespace, settings.partitions)),
            f"{service}: creating topics",
        )
    )
    if service == "intake":
        _serve_intake(module, settings)
        return
    if service == "audit":  # a plain asyncio process, not a faust worker (see its module)
        module.serve(settings)
        return
    _run_worker(module.create_app(settings), settings.log_level, service)


def _set_up_logging() -> None:
    """Before anything logs: every line of the process is masked, and the HTTP clients' line per
    outgoing request (chat APIs, webhooks, tokens) is left out."""
    from keyturn.masking.logs import install_log_masking

    install_log_masking()
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(logging.WARNING)


def _settle_gc(young_threshold: int) -> None:
    """Keep the cycle collector off what lives for the whole process, and collect less often.

    Everything imported so far (modules, classes, schemas) lives until the process ends, yet a full
    collection traverses it each time: ``gc.freeze`` moves it out of the collector's generations.
    With Python's default threshold (700 new objects) the young generation was collected several
    hundred times a flood, and the older ones with it; 10,000 leaves a few. Memory is not the
    trade: reference counting frees almost every object at once, the threshold counts only what
    survives, and the bench's memory slope is unchanged (bench/README.md).
    """
    if young_threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(young_threshold, older, oldest)


def _use_event_loop(name: str) -> None:
    """Make every event loop of this process a ``name`` loop: "uvloop" or "asyncio".

    The stream framework, uvicorn and ``asyncio.run`` all take their loop from the policy, so
    one policy set before any loop exists reaches them all (uvicorn is told the same,
    ``bus.http.server_options``).
    """
    if name == "asyncio":
        return
    if name != "uvloop":
        _fail(f"KEYTURN_EVENT_LOOP must be uvloop or asyncio, not {name!r}", 2)
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _serve_intake(module: Any, settings: Settings) -> None:
    """The intake's HTTP server: one process, ``intake_workers`` processes sharing its socket
    (uvicorn's supervisor), and with ``intake_reuse_port`` a socket bound with SO_REUSEPORT, so
    intake processes started separately (several ``keyturn serve intake``) share one port, the
    kernel spreading connections among them. Any number of intake processes is correct: the
    idempotency key is a unique constraint in the shared database, the outbox sweep republishes
    under the same event ids, and the consumers are groups.
    """
    import socket

    import uvicorn

    from keyturn.bus.http import server_options

    options = server_options(settings.event_loop, access_log=bool(settings.access_log))
    level = settings.log_level.lower()
    if settings.intake_workers > 1:  # each worker builds its app from the same environment
        uvicorn.run(
            "keyturn.cli:intake_worker_app",
            factory=True,
            host=settings.intake_host,
            port=settings.intake_port,
            workers=settings.intake_workers,
            log_level=level,
            **options,
        )
        return
    config = uvicorn.Config(
        module.create_app(settings),
        host=settings.intake_host,
        port=settings.intake_port,
        log_level=level,
        **options,
    )
    if not settings.intake_reuse_port:
        uvicorn.Server(config).run()
        return
    family = socket.AF_INET6 if ":" in settings.intake_host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((settings.intake_host, settings.intake_port))
    sock.set_inheritable(True)
    uvicorn.Server(config).run(sockets=[sock])


def intake_worker_app() -> Any:
    """The app of one of ``intake_workers`` processes. uvicorn starts each as a new interpreter
    (spawned, not forked), so nothing ``serve`` set up reaches it: it is set up the same way here,
    the masking of every log line first."""
    _set_up_logging()
    from keyturn.intake.app import create_app

    settings = _settings()
    _settle_gc(settings.gc_young_threshold)
    return create_app(settings)


def _run_worker(stream_app: Any, log_level: str, service: str) -> None:
    """Run a stream worker; one that could not start because a server was away starts over.

    The worker framework exits when the broker does not answer while it starts (a broker
    restarting just then); like any transient fault that is waited out: the process runs again
    (``exec``: the same process id, so whoever supervises it sees one process).
    """
    import time

    import faust

    from keyturn.faults import is_transient

    worker = faust.Worker(stream_app, loglevel=log_level, logfile=None)
    try:
        worker.execute_from_commandline()
    except SystemExit:
        starting = getattr(worker, "_starting_fut", None)  # the framework keeps its start's outcome there
        failure = (
            starting.exception() if starting is not None and starting.done() and not starting.cancelled() else None
        )
        if failure is None or not is_transient(failure):
            raise
        logging.getLogger(__name__).warning(
            "%s could not start (%s: %s); starting again", service, type(failure).__name__, failure
        )
        time.sleep(2)
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


@token_app.command("issue")
def token_issue(
    sub: str = typer.Option(..., "--sub", help="The principal, e.g. agent:reporter or human:carol"),
    act: list[str] = typer.Option([], "--act", help="Who it acts for, outermost first (repeatable), e.g. human:alice"),
    ttl: int = typer.Option(3600, help="Lifetime in seconds (1 to 31,536,000: a year)", min=1, max=365 * 86400),
) -> None:
    """Mint a token signed by the local development key (never for production)."""
    from keyturn.identity import issue_token, load_or_create_signing_key
    from keyturn.identity.verifier import unfit_principal_ids

    unfit = unfit_principal_ids(sub, tuple(act))
    if unfit is not None:  # minted, it would be refused at every door: say so now
        _fail(f"no token minted: {unfit}; every service would refuse it", 2)
    settings = _settings()
    key = load_or_create_signing_key(settings.keys_dir)
    typer.echo(
        issue_token(
            key,
            subject=sub,
            acts_for=act,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            ttl=timedelta(seconds=ttl),
        )
    )


TOKEN_TEXT = re.compile(r"[A-Za-z0-9_\-.=+/]+")  # what a compact JWT is made of


TOKEN_HELP = (
    "Your token, or - to read it from stdin (default: $KEYTURN_TOKEN). A token written here is in the "
    "process list, which every user of the machine can read"
)


def _token(token: str | None) -> str:
    """The caller's token (``-``: its first line on stdin), trimmed (one read from a file often
    ends in a line break), and refused without being repeated if it holds anything no token has:
    sent in a header, it made the HTTP library raise with the whole header, token and all, in its
    message."""
    if token == "-" and not (token := sys.stdin.readline().strip()):
        _fail("no token on stdin (--token - reads its first line)", 2)
    token = (token or os.environ.get("KEYTURN_TOKEN") or "").strip()
    if not token:
        _fail("no token: pass --token or set KEYTURN_TOKEN (mint one with `keyturn token issue --sub human:NAME`)", 2)
    if not TOKEN_TEXT.fullmatch(token):
        _fail("the token holds characters no token has (a space or a line break inside it?); it was not sent", 2)
    return token


def _segment(action_id: str) -> str:
    """``action_id`` for a URL path (``sdk.client.path_segment``), or a one-line error."""
    try:
        return path_segment(action_id)
    except ValueError as exc:
        _fail(str(exc), 2)


@contextlib.contextmanager
def _asking(url: str) -> Iterator[None]:
    """A request that gets no answer (refused connection, timeout) ends in one line naming the
    server and the kind of failure, not a traceback; the library's own text is not repeated (it
    may quote a request's headers)."""
    try:
        yield
    except httpx.HTTPError as exc:
        _fail(f"no answer from {url}: {type(exc).__name__}")


NOT_OPEN_WAIT_S = 10.0  # how long approve/deny wait for an approval that has not opened yet


def _when_open(
    request: Callable[[], httpx.Response], action_id: str, wait_s: float = NOT_OPEN_WAIT_S
) -> httpx.Response:
    """``request``'s answer, asked again while the approval service says the approval is not open
    yet (425, ``Retry-After``): its decision is on its way, typically well within a second. Gives
    up with a clear message after ``wait_s`` seconds."""
    deadline = time.monotonic() + wait_s
    while True:
        answer = request()
        if answer.status_code != 425:
            return answer
        pause = _retry_after(answer)
        if time.monotonic() + pause > deadline:
            _fail(
                f"no approval is open for action {action_id} after waiting {wait_s:g} s: check the action id, "
                "or whether the action needed approval at all (`keyturn status`); nothing was recorded"
            )
        err.print(f"the approval for {action_id} is not open yet; trying again in {pause:g} s")
        time.sleep(pause)


def _retry_after(answer: httpx.Response) -> float:
    """The pause a 425 asks for, within bounds; no number of seconds (absent, text, nan, inf) is 1 s."""
    try:
        pause = float(answer.headers.get("retry-after", "1"))
    except ValueError:
        return 1.0
    return min(max(pause, 0.2), NOT_OPEN_WAIT_S) if math.isfinite(pause) else 1.0


_JSON_KINDS = {dict: "a JSON object", list: "a JSON list", str: "a JSON string", bool: "a JSON boolean"} | {
    int: "a JSON number",
    float: "a JSON number",
    type(None): "JSON null",
}


def _body(response: httpx.Response, shape: type[dict[str, Any]] | type[list[Any]]) -> Any:
    """The JSON object or list a service's answer should be, or a one-line error saying what came
    instead (a proxy's HTML page, another shape): never a traceback."""
    expected = "a JSON object" if shape is dict else "a JSON list"
    try:
        body = response.json()
    except ValueError:
        _fail(f"the answer (HTTP {response.status_code}) is not JSON where {expected} was expected")
    if not isinstance(body, shape):
        _fail(
            f"the answer (HTTP {response.status_code}) is {_JSON_KINDS.get(type(body), 'JSON')} "
            f"where {expected} was expected"
        )
    return body


@contextlib.contextmanager
def _reading() -> Iterator[None]:
    """Reading an answer that lacks a field, or holds one of another shape, ends in one line naming
    it, not a traceback."""
    try:
        yield
    except KeyError as exc:
        _fail(f"the answer lacks the field {exc}")
    except (TypeError, AttributeError, ValueError) as exc:
        _fail(f"the answer holds a field of an unexpected shape ({type(exc).__name__})")


def _vote(action_id: str, choice: str, reason: str | None, token: str | None) -> None:
    settings = _settings()
    headers = {"Authorization": f"Bearer {_token(token)}"}
    segment = _segment(action_id)
    with (
        _asking(settings.approval_url),
        httpx.Client(base_url=settings.approval_url, headers=headers, timeout=30) as client,
    ):
        shown = _when_open(lambda: client.get(f"/v1/approvals/{segment}"), action_id)
        if shown.status_code != 200:
            _fail(_detail(shown))
        approval = _body(shown, dict)
        with _reading():
            _print_approval(approval)
        answer = _when_open(
            lambda: client.post(
                f"/v1/approvals/{segment}/votes",
                json={
                    "choice": choice,
                    "reason": reason,
                    "payload_digest": approval.get("payload_digest"),
                    "channel": "cli",
                },
            ),
            action_id,
        )
    if answer.status_code != 200:
        _fail(_detail(answer))
    body = _body(answer, dict)
    with _reading():
        console.print(
            f"[green]{choice} recorded[/green]: {escape(str(body['status']))} — {escape(str(body['summary']))}"
        )


def _print_approval(approval: dict[str, Any]) -> None:
    """What an approver reads before answering: who asks what, why, its impact, the parameters."""
    # the agent chose these values: escaped, so markup in them cannot restyle or hide what the approver reads
    asked = [escape(str(approval[k])) for k in ("action", "resource", "requester")]
    console.print(
        f"[bold]{asked[0]}[/bold] on {asked[1]} requested by {asked[2]}"
        + (f" for {escape(', '.join(approval['acting_for']))}" if approval["acting_for"] else ""),
        highlight=False,
    )
    console.print(f"reason: {approval['reason']}", highlight=False, markup=False)
    impact = approval.get("impact")
    if impact:
        bound = f"; the executor refuses past {impact['max_rows']} rows" if impact.get("max_rows") is not None else ""
        console.print(f"impact preview: {impact['summary']}{bound}", highlight=False, markup=False)
    for reason in approval.get("policy_reasons") or ():
        console.print(f"policy: {reason}", highlight=False, markup=False)
    console.print(f"progress: {approval.get('summary', '')}", highlight=False, markup=False)
    console.print_json(data=approval["parameters"])


@approvals_app.command("list")
def approvals_list(
    token: str | None = typer.Option(None, "--token", help=TOKEN_HELP),
    as_json: bool = typer.Option(False, "--json", help="The approval service's answer as JSON"),
) -> None:
    """Pending approvals you may decide now, each with its impact preview."""
    settings = _settings()
    headers = {"Authorization": f"Bearer {_token(token)}"}
    with _asking(settings.approval_url), httpx.Client(base_url=settings.approval_url, timeout=30) as client:
        answer = client.get("/v1/approvals", headers=headers)
    if answer.status_code != 200:
        _fail(_detail(answer))
    approvals = _body(answer, list)
    if as_json:
        console.print_json(data=approvals)
        return
    with _reading():
        for approval in approvals:
            impact = (approval.get("impact") or {}).get("summary", "no impact preview (not SQL-backed)")
            console.print(
                f"{approval['action_id']}  {approval['action']}  {approval['resource']}  {impact}  "
                f"{approval['summary']}",
                highlight=False,
                markup=False,
            )


@approvals_app.command("show")
def approvals_show(
    action_id: str,
    token: str | None = typer.Option(None, "--token", help=TOKEN_HELP),
    as_json: bool = typer.Option(False, "--json", help="The approval service's answer as JSON"),
) -> None:
    """One approval as approvers see it: the request, its impact preview, the policy, the progress."""
    settings = _settings()
    headers, segment = {"Authorization": f"Bearer {_token(token)}"}, _segment(action_id)
    with _asking(settings.approval_url), httpx.Client(base_url=settings.approval_url, timeout=30) as client:
        answer = _when_open(lambda: client.get(f"/v1/approvals/{segment}", headers=headers), action_id)
    if answer.status_code != 200:
        _fail(_detail(answer))
    approval = _body(answer, dict)
    if as_json:
        console.print_json(data=approval)
    else:
        with _reading():
            _print_approval(approval)


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:300]}"
    detail = body.get("detail") if isinstance(body, dict) else body
    if isinstance(detail, dict):
        return f"{detail.get('error')}: {detail.get('message')}"
    return f"HTTP {response.status_code}: {detail}"


@app.command()
def approve(
    action_id: str,
    reason: str | None = typer.Option(None, help="Why (optional)"),
    token: str | None = typer.Option(None, "--token", help=TOKEN_HELP),
) -> None:
    """Approve a pending action, bound to the parameters shown."""
    _vote(action_id, "approve", reason, token)


@app.command()
def deny(
    action_id: str,
    reason: str = typer.Option(..., help="Why; shown to the requester"),
    token: str | None = typer.Option(None, "--token", help=TOKEN_HELP),
) -> None:
    """Deny a pending action."""
    _vote(action_id, "deny", reason, token)


@app.command()
def status(
    action_id: str,
    wait: float = typer.Option(0, help="Wait up to this many seconds for a terminal state"),
    token: str | None = typer.Option(None, "--token", help=TOKEN_HELP),
) -> None:
    """Show an action's state and history (as its requester)."""
    settings = _settings()
    segment = _segment(action_id)
    path = f"/v1/actions/{segment}/wait?timeout={wait}" if wait else f"/v1/actions/{segment}"
    headers = {"Authorization": f"Bearer {_token(token)}"}
    with _asking(settings.intake_url):
        response = httpx.get(settings.intake_url + path, headers=headers, timeout=wait + 10)
    if response.status_code != 200:
        _fail(_detail(response))
    console.print_json(data=_body(response, dict))


@schemas_app.command("freeze")
def schemas_freeze() -> None:
    """Copy every current schema into schemas/history under its fingerprint (run before changing one)."""
    from keyturn.bus.codec import SCHEMA_DIR, registry

    history = SCHEMA_DIR / "history"
    history.mkdir(exist_ok=True)
    for name, schema in sorted(registry().readers.items()):
        path = history / f"keyturn.{name}.{registry().fingerprints[name].hex()}.avsc"
        if not path.exists():
            path.write_text(json.dumps(schema, indent=1) + "\n")
            console.print(f"froze {path.name}")


@secrets_app.command("put")
def secrets_put(name: str = typer.Argument(..., help='The name actions refer to: {"secret": "NAME"}')) -> None:
    """Store (or replace) a secret, its value read from stdin (one trailing newline dropped); never echoed."""
    from keyturn.db import open_pool, schema_name
    from keyturn.masking.protect import keyring_for
    from keyturn.secret_store import DDL, PostgresSecretStore

    if not name.strip() or len(name) > 200:
        _fail("the secret's name must be 1 to 200 characters")
    value = sys.stdin.read()
    value = value[:-1] if value.endswith("\n") else value
    if not value:
        _fail("no value on stdin: pipe it in, e.g. keyturn secrets put NAME < file")
    settings = _settings()

    async def put() -> None:
        pool = await open_pool(settings.database_url, DDL, schema=schema_name(settings.namespace), max_size=1)
        try:
            await PostgresSecretStore(pool, keyring_for(settings.seal_keys, settings.keys_dir)).put(name, value)
        finally:
            await pool.close()

    asyncio.run(put())
    console.print(f'secret {name!r} stored sealed ({len(value)} characters); refer to it as {{"secret": {name!r}}}')


@receipt_app.command("verify")
def receipt_verify(
    file: Path = typer.Argument(..., help="The receipt (JSON), or an action's status answer that holds one"),
    key: str | None = typer.Option(
        None,
        help="The receipt key: a PEM public key file, a JWKS file, or the intake's "
        "/.well-known/keyturn-receipt-keys.json URL (default: the local key beside the executor's)",
    ),
    payload: Path | None = typer.Option(
        None, help='The payload about to be performed: {"action", "resource", "parameters"} (JSON)'
    ),
    ledger: Path = typer.Option(
        Path("keyturn-used-receipts.sqlite3"), help="The performing system's ledger of used receipts (SQLite)"
    ),
    consume: bool = typer.Option(True, help="Record the receipt as used (--no-consume only checks)"),
) -> None:
    """Check a receipt offline: signature, expiry, payload digest, and single use."""
    from keyturn.roots import receipt_public_key_path
    from keyturn.sdk.receipts import ReceiptInvalid, UsedReceipts, keys_from, verify_receipt

    try:
        document = json.loads(file.read_text())
        receipt = document.get("result", {}).get("receipt", document) if isinstance(document, dict) else document
        if key is None:
            source: bytes | str = receipt_public_key_path(_settings()).read_bytes()
        elif key.startswith(("http://", "https://")):
            response = httpx.get(key, timeout=10)
            response.raise_for_status()
            source = response.text
        else:
            source = Path(key).read_bytes()
        wanted = json.loads(payload.read_text()) if payload is not None else None
        claims = verify_receipt(receipt, keys_from(source), payload=wanted)
        if consume:
            UsedReceipts(ledger).claim(claims)
    except ReceiptInvalid as exc:
        _fail(f"receipt refused: {exc}")
    except (OSError, ValueError, httpx.HTTPError) as exc:
        _fail(f"receipt not checked: {type(exc).__name__}: {exc}")
    console.print(
        f"receipt {claims['receipt_id']} valid: {claims['action']} on {claims['resource']} "
        f"(action {claims['action_id']}, {claims['decision']} by {', '.join(claims['approvers']) or 'the policy'}), "
        f"until {claims['expires_at']}" + ("; recorded as used" if consume else "; not recorded as used")
    )


@catalog_app.command("generate")
def catalog_generate(
    check: bool = typer.Option(False, "--check", help="Write nothing; exit 1 when a generated file is stale"),
) -> None:
    """Regenerate OPA's input schema and docs/catalog.md from policies.rego/keyturn/parameters/data.json."""
    from keyturn.config import REPO_ROOT
    from keyturn.policy import catalog

    if check:
        stale = catalog.stale(REPO_ROOT)
        for path in stale:
            err.print(f"stale: {path} (run keyturn catalog generate)")
        raise typer.Exit(1 if stale else 0)
    for path in catalog.write(REPO_ROOT):
        console.print(f"wrote {path}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
