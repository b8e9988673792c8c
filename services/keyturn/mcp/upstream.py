"""Talking to an upstream MCP server (the one ``keyturn mcp proxy`` fronts), with the SDK's client.

An upstream is a command (spoken to over its stdin/stdout) or a streamable HTTP URL. The
executor's plugin and the proxy both read them as ``UpstreamSpec``; the executor's come from
the operator's setting ``KEYTURN_MCP_UPSTREAMS``, never from an agent.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from keyturn.mcp.names import by_segment, segment


@dataclass(frozen=True)
class UpstreamSpec:
    """How to reach one upstream MCP server: ``command`` (argv) or ``url``."""

    command: tuple[str, ...] = ()
    url: str = ""
    env: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if bool(self.command) == bool(self.url):
            raise ValueError("an MCP upstream is either a command or a URL")

    @classmethod
    def parse(cls, value: Any) -> UpstreamSpec:
        """A command line (``"python -m notes"``), ``{"command": [...] | "...", "env": {...}}`` or
        ``{"url": "https://…/mcp", "headers": {...}}``."""
        if isinstance(value, str):
            return cls(command=tuple(shlex.split(value)))
        if not isinstance(value, Mapping):
            raise ValueError("an MCP upstream is a command line or an object with command or url")
        command = value.get("command") or ()
        if isinstance(command, str):
            command = shlex.split(command)
        return cls(
            command=tuple(str(c) for c in command),
            url=str(value.get("url") or ""),
            env={str(k): str(v) for k, v in (value.get("env") or {}).items()},
            headers={str(k): str(v) for k, v in (value.get("headers") or {}).items()},
        )

    def describe(self) -> str:
        """Where it is, without its environment or headers (they may hold credentials)."""
        return self.url or shlex.join(self.command[:1])


def parse_upstreams(text: str) -> dict[str, UpstreamSpec]:
    """The executor's setting: a JSON object of server name → upstream; empty text, none."""
    if not text.strip():
        return {}
    document = json.loads(text)
    if not isinstance(document, dict):
        raise ValueError("KEYTURN_MCP_UPSTREAMS must be a JSON object: server name -> upstream")
    return {segment(name): UpstreamSpec.parse(value) for name, value in document.items()}


@asynccontextmanager
async def connected(spec: UpstreamSpec, *, timeout_s: float | None = None) -> AsyncIterator[Any]:
    """An initialised ``mcp.Client`` session with the upstream."""
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters, stdio_client

    server: Any
    if spec.command:
        parameters = StdioServerParameters(command=spec.command[0], args=list(spec.command[1:]), env=dict(spec.env))
        # the upstream's stderr goes to the process's real one: a worker may have replaced sys.stderr with a
        # logging proxy that has no file descriptor to hand to a child
        server = stdio_client(parameters, errlog=sys.__stderr__ or sys.stderr)
    else:
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        server = streamable_http_client(spec.url, http_client=httpx2.AsyncClient(headers=dict(spec.headers)))
    async with Client(server, read_timeout_seconds=timeout_s, cache=None) as client:
        yield client


def find_tool(tools: list[Any], wanted: str) -> Any:
    """The one upstream tool whose action segment is ``wanted`` (``names.segment``); LookupError when
    none is, or when several are: the action does not say which of them was approved, even if one
    of them is named ``wanted`` exactly."""
    matching = by_segment(t.name for t in tools).get(wanted, [])
    if len(matching) > 1:
        raise LookupError(
            f"{len(matching)} upstream tools are named {wanted!r} as an action ({', '.join(map(repr, matching))}): "
            "refusing to guess"
        )
    if not matching:
        raise LookupError(f"the upstream has no tool named {wanted!r}")
    return next(t for t in tools if t.name == matching[0])
