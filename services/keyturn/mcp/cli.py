"""``keyturn mcp serve`` and ``keyturn mcp proxy``: Keyturn as an MCP server, over stdio or streamable HTTP.

A command-line entry point, so it reads ``Settings``; the ``mcp`` package is imported only
when a command runs (the rest of ``keyturn`` works without the ``mcp`` extra).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from keyturn.config import REPO_ROOT, Settings

app = typer.Typer(help="Keyturn for agents that speak the Model Context Protocol.", no_args_is_help=True)

TOOLS_FILE = REPO_ROOT / "policies.rego" / "keyturn" / "tools" / "data.json"
PARAMETERS_FILE = REPO_ROOT / "policies.rego" / "keyturn" / "parameters" / "data.json"


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _logging(settings: Settings) -> None:
    """Logs on stderr, masked: over stdio, stdout is the protocol's."""
    from keyturn.masking.logs import install_log_masking

    install_log_masking()
    logging.basicConfig(stream=sys.stderr, level=settings.log_level, format="%(asctime)s %(name)s %(message)s")
    for chatty in ("httpx", "httpcore", "mcp"):
        logging.getLogger(chatty).setLevel(logging.WARNING)


def _needs_the_mcp_extra() -> None:
    try:
        import mcp  # noqa: F401
    except ImportError:
        _fail("the Model Context Protocol SDK is not installed: pip install 'keyturn[mcp]' (or mcp==2.3.0)")


def _caller_token(token: str | None, http: bool) -> str | None:
    token = token or os.environ.get("KEYTURN_TOKEN") or None
    if http and token:
        _fail("--http takes each caller's identity from its bearer token; do not give --token (or KEYTURN_TOKEN)")
    if not http and not token:
        _fail("over stdio the server acts under one identity: pass --token or set KEYTURN_TOKEN")
    return token


HTTP_HELP = "Serve streamable HTTP at http://HOST:PORT/mcp (each request's bearer token is its identity)"


@app.command()
def serve(
    http: bool = typer.Option(False, "--http", help=HTTP_HELP),
    host: str | None = typer.Option(None, help="HTTP address (default KEYTURN_MCP_HOST)"),
    port: int | None = typer.Option(None, help="HTTP port (default KEYTURN_MCP_PORT)"),
    token: str | None = typer.Option(None, help="The agent's token over stdio (default KEYTURN_TOKEN)"),
    wait_s: float | None = typer.Option(None, help="How long a call waits before answering pending"),
) -> None:
    """The catalog's executable actions as MCP tools; each call is an action under the caller's identity."""
    settings = Settings.from_env()
    _needs_the_mcp_extra()
    caller = _caller_token(token, http)
    _logging(settings)
    import anyio

    anyio.run(lambda: serve_catalog(settings, caller=caller, listen=Listen(http, host, port), wait_s=wait_s))


@app.command()
def proxy(
    name: str = typer.Option(..., "--name", help="The upstream's server name in action names: mcp.<name>.<tool>"),
    upstream: str | None = typer.Option(None, "--upstream", help='The upstream server\'s command, e.g. "npx srv"'),
    upstream_url: str | None = typer.Option(None, "--upstream-url", help="The upstream's streamable HTTP URL"),
    http: bool = typer.Option(False, "--http", help=HTTP_HELP),
    host: str | None = typer.Option(None, help="HTTP address (default KEYTURN_MCP_HOST)"),
    port: int | None = typer.Option(None, help="HTTP port (default KEYTURN_MCP_PORT)"),
    token: str | None = typer.Option(None, help="The agent's token over stdio (default KEYTURN_TOKEN)"),
    wait_s: float | None = typer.Option(None, help="How long a call waits before answering pending"),
) -> None:
    """Front an MCP server: its tools, each call an action mcp.<name>.<tool> the executor forwards once approved."""
    settings = Settings.from_env()
    if bool(upstream) == bool(upstream_url):
        _fail("give the upstream as --upstream COMMAND or --upstream-url URL (one of them)")
    _needs_the_mcp_extra()
    caller = _caller_token(token, http)
    _logging(settings)
    import anyio

    from keyturn.mcp.upstream import UpstreamSpec

    spec = UpstreamSpec.parse(upstream if upstream else {"url": upstream_url})
    anyio.run(lambda: serve_proxy(settings, name, spec, caller=caller, listen=Listen(http, host, port), wait_s=wait_s))


@dataclass(frozen=True)
class Listen:
    """Where the server talks: stdio, or streamable HTTP at ``host:port``; ``on_ready`` gets the HTTP server
    once it is built (tests stop it with ``should_exit``)."""

    http: bool = False
    host: str | None = None
    port: int | None = None
    on_ready: Callable[[Any], None] | None = None


async def serve_catalog(settings: Settings, *, caller: str | None, listen: Listen, wait_s: float | None) -> None:
    """``keyturn mcp serve``: the catalog's executable actions as tools, until the transport closes."""
    from keyturn.mcp.catalog import action_tools, load_document
    from keyturn.mcp.server import SERVE_INSTRUCTIONS, catalog_submission

    parameters_file = Path(settings.parameter_catalog_path)
    tools = action_tools(load_document(TOOLS_FILE), load_document(parameters_file))

    async def listed() -> list[Any]:
        return list(tools)

    await _serve(settings, "keyturn", listed, catalog_submission, caller, listen, wait_s, SERVE_INSTRUCTIONS)


async def serve_proxy(
    settings: Settings, name: str, spec: Any, *, caller: str | None, listen: Listen, wait_s: float | None
) -> None:
    """``keyturn mcp proxy``: the upstream ``spec``'s tools, each call submitted as ``mcp.<name>.<tool>``."""
    from keyturn.mcp.names import segment
    from keyturn.mcp.proxy import proxied_submission, proxied_tools, upstream_result
    from keyturn.mcp.upstream import connected

    server = segment(name)
    async with connected(spec) as client:

        async def listed() -> list[Any]:
            return proxied_tools(server, (await client.list_tools()).tools)

        await _serve(
            settings,
            f"keyturn-proxy-{server}",
            listed,
            proxied_submission(server),
            caller,
            listen,
            wait_s,
            f"The tools of MCP server {server!r}, each guarded by Keyturn: a call runs only if Keyturn's policy "
            "allows it or people approve it. A result that says NOT DONE YET is pending: do not repeat the call, "
            "call wait_for_action with its action_id.",
            upstream_result,
        )


async def _serve(
    settings: Settings,
    name: str,
    tools: Any,
    submission_for: Any,
    caller: str | None,
    listen: Listen,
    wait_s: float | None,
    instructions: str,
    present: Any = None,
) -> None:
    from keyturn.mcp.gateway import SdkGateway
    from keyturn.mcp.server import ActionCalls, build_server

    gateway = SdkGateway(settings.intake_url)
    calls = ActionCalls(gateway, wait_s=settings.mcp_wait_s if wait_s is None else wait_s)
    extra = {"present": present} if present else {}
    server = build_server(name, tools, submission_for, calls, token=caller, instructions=instructions, **extra)
    try:
        if not listen.http:
            from mcp.server.stdio import stdio_server

            async with stdio_server() as (read, write):
                await server.run(read, write, server.create_initialization_options())
            return
        import uvicorn

        from keyturn.bus.http import server_options
        from keyturn.mcp.http import require_bearer, token_verifier

        address = listen.host or settings.mcp_host
        app = server.streamable_http_app(streamable_http_path="/mcp", host=address)
        asgi = require_bearer(app, token_verifier(settings))
        config = uvicorn.Config(
            asgi,
            host=address,
            port=listen.port or settings.mcp_port,
            log_level="warning",
            timeout_graceful_shutdown=3,
            **server_options(settings.event_loop),
        )
        http_server = uvicorn.Server(config)
        if listen.on_ready is not None:
            listen.on_ready(http_server)
        await http_server.serve()
    finally:
        await gateway.aclose()
