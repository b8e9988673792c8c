"""Talking to an upstream MCP server (the one ``keyturn mcp proxy`` fronts), with the SDK's client.

An upstream is a command (spoken to over its stdin/stdout) or a streamable HTTP URL. The
executor's plugin and the proxy both read them as ``UpstreamSpec``; the executor's come from
the operator's setting ``KEYTURN_MCP_UPSTREAMS``, never from an agent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO

from keyturn.masking.protect import mask_text, without
from keyturn.mcp.names import by_segment, segment

log = logging.getLogger(__name__)


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
async def connected(
    spec: UpstreamSpec, *, timeout_s: float | None = None, hidden: Mapping[str, str] | None = None
) -> AsyncIterator[Any]:
    """An initialised ``mcp.Client`` session with the upstream; ``hidden`` (``masking.protect.hidden_values``
    of the call's arguments) is taken out of what the upstream writes to its stderr."""
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters, stdio_client

    server: Any
    async with AsyncExitStack() as stack:
        if spec.command:
            parameters = StdioServerParameters(command=spec.command[0], args=list(spec.command[1:]), env=dict(spec.env))
            errlog = await stack.enter_async_context(masked_lines(spec.describe(), hidden or {}))
            server = stdio_client(parameters, errlog=errlog)
        else:
            import httpx2
            from mcp.client.streamable_http import streamable_http_client

            server = streamable_http_client(spec.url, http_client=httpx2.AsyncClient(headers=dict(spec.headers)))
        async with Client(server, read_timeout_seconds=timeout_s, cache=None) as client:
            yield client


#: The longest line of an upstream's stderr logged as one (a longer one is logged in parts).
ERR_LINE_BYTES = 4096
#: How long a line waits for the next one before it is logged on its own (a quiet upstream's last word).
ERR_PAUSE_S = 1.0


class WrappedLines:
    """An upstream's stderr lines, logged masked, each once, and never half a value in clear.

    A line is held until the next one comes: the two are masked as one text (joined by a space,
    where a wrap at the terminal's width usually broke it) and apart. When that finds nothing
    more, the held line is logged on its own; when it does (a card number wrapped as ``… 4111
    1111`` / ``1111 1111 …``, whose halves look like nothing), the two are kept together and
    logged as one line, masked as one. Masking a line on its own could never see such a value.
    What is held stays under ``2 * ERR_LINE_BYTES``: past it, the held text is logged, masked as
    a whole, and the next line starts afresh, so a chatty upstream costs a bounded masking per
    line.
    """

    def __init__(self, upstream: str, hidden: Mapping[str, str]) -> None:
        self.upstream = upstream
        self.hidden = hidden
        self.held = ""  # as written, not yet logged
        self.held_masked = ""

    def masked(self, text: str) -> str:
        return mask_text(without(text, self.hidden))

    def add(self, line: bytes) -> None:
        text = line.decode("utf-8", errors="replace").rstrip()
        if not text:
            return
        if not self.held:
            self.held, self.held_masked = text, self.masked(text)
            return
        together = f"{self.held} {text.lstrip()}"
        together_masked, alone_masked = self.masked(together), self.masked(text)
        if together_masked == f"{self.held_masked} {alone_masked.lstrip()}":  # nothing runs over the break
            self.say(self.held_masked)
            self.held, self.held_masked = text, alone_masked
        elif len(together) >= 2 * ERR_LINE_BYTES:
            self.say(together_masked)
            self.held = self.held_masked = ""
        else:
            self.held, self.held_masked = together, together_masked

    def flush(self) -> None:
        if self.held:
            self.say(self.held_masked)
        self.held = self.held_masked = ""

    def say(self, masked: str) -> None:
        log.info("upstream %s said: %s", self.upstream, masked)


@asynccontextmanager
async def masked_lines(upstream: str, hidden: Mapping[str, str] | None = None) -> AsyncIterator[TextIO]:
    """A file to give a child process as its stderr, whose lines reach this process's log masked
    (``masking.protect.mask_text``, after taking out ``hidden``: the values of the call's
    arguments that only their field's name or the policy's mask says are secret), never as
    written: an upstream's errors quote what it was given (``no note named alice@…``), and a
    child writing to the log file directly would pass every log filter by. Each line is masked
    with the next one too (``WrappedLines``): an upstream that wraps its messages can break a
    value over two lines. Read as it is written, so a chatty child never blocks on a full pipe."""
    read_fd, write_fd = os.pipe()
    writer = os.fdopen(write_fd, "w")
    stream = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(stream), os.fdopen(read_fd, "rb", buffering=0)
    )
    lines = WrappedLines(upstream, hidden or {})

    async def relay() -> None:
        pending = b""
        while True:
            try:  # a held line waits a moment for the line that may finish its value, then is logged
                chunk = await asyncio.wait_for(stream.read(ERR_LINE_BYTES), ERR_PAUSE_S if lines.held else None)
            except TimeoutError:
                lines.flush()
                continue
            if not chunk:
                break
            *complete, pending = (pending + chunk).split(b"\n")
            if len(pending) >= ERR_LINE_BYTES:
                complete, pending = [*complete, pending], b""
            for line in complete:
                lines.add(line)
        lines.add(pending)
        lines.flush()

    relaying = asyncio.create_task(relay())
    try:
        yield writer
    finally:
        writer.close()  # the child's copy closes when it exits: then the relay reads the end
        try:
            await asyncio.wait_for(asyncio.shield(relaying), 2.0)
        except TimeoutError:  # a grandchild holding the pipe open: what it writes later is not read
            relaying.cancel()
            lines.flush()
        transport.close()


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
