"""The ``mcp`` plugin: forwards an approved ``mcp.<server>.<tool>`` call to its upstream MCP server, once.

The upstreams are the operator's (``KEYTURN_MCP_UPSTREAMS``: server name → command or URL),
never the agent's: ``keyturn mcp proxy`` only submits, the executor alone calls upstream, with
the approved arguments (the executor has checked them against the approved payload digest).

Once means: the tool is called at most once per action, and never retried. A call that fails
before it was sent (no such upstream, it does not start, no such tool) ends ``failed``; once
the request was sent, a lost connection or a timeout ends ``outcome_unknown`` (the tool may
have run). A result the tool itself marks as an error ends ``failed`` with its text. An
executor killed mid-call leaves the ledger's start without a finish, so the order, when
redelivered, ends ``outcome_unknown`` and the upstream is not called again
(``executor.runner``).

The result is the tool's content, structured content and error flag, masked by the executor
like every result before it travels back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping
from typing import Any

from keyturn.executor.plugins.base import Command, ExecutionFailed, OutcomeUnknown
from keyturn.masking.protect import hidden_values, mask_parameters
from keyturn.mcp.names import split_action
from keyturn.mcp.upstream import UpstreamSpec, connected, find_tool

log = logging.getLogger(__name__)


class McpPlugin:
    name = "mcp"

    def __init__(self, upstreams: Mapping[str, UpstreamSpec], *, timeout_s: float = 60.0) -> None:
        self.upstreams = dict(upstreams)
        self.timeout_s = timeout_s

    async def execute(self, command: Command) -> Any:
        try:
            server, tool = split_action(command.action)
        except ValueError as exc:
            raise ExecutionFailed(str(exc)) from None
        spec = self.upstreams.get(server)
        if spec is None:
            raise ExecutionFailed(
                f"no upstream is configured for MCP server {server!r} (KEYTURN_MCP_UPSTREAMS); nothing was sent"
            )
        sent = False
        result: Any = None
        try:
            # what the upstream writes to its stderr quotes its arguments: the ones masking hides by
            # name or by the policy's word are taken out before the log sees a line
            hidden = hidden_values(command.parameters, mask_parameters(command.parameters, command.mask), command.mask)
            async with connected(spec, timeout_s=self.timeout_s, hidden=hidden) as client:
                listed = await client.list_tools()
                try:
                    found = find_tool(list(listed.tools), tool)
                except LookupError as exc:
                    raise ExecutionFailed(f"MCP server {server!r}: {exc}; nothing was sent") from None
                sent = True  # from here on the upstream may have run the tool
                result = await client.call_tool(found.name, dict(command.parameters))
        except ExecutionFailed:
            raise
        except BaseException as exc:  # the SDK's task groups raise exception groups
            if isinstance(exc, KeyboardInterrupt | SystemExit | asyncio.CancelledError):  # a timeout ends it unknown
                raise
            refused = next((e for e in _leaves(exc) if isinstance(e, ExecutionFailed)), None)
            if refused is not None:  # this plugin's own refusal, raised inside the SDK's task group
                raise refused from None
            what = _describe(exc)
            if result is not None:  # the answer arrived; only closing the connection failed
                log.info("MCP server %s: closing after the call failed: %s", server, what)
            elif sent:
                raise OutcomeUnknown(
                    f"MCP server {server!r} did not answer the call of {tool!r} ({what}); the tool may have run "
                    "and is not called again"
                ) from None
            else:
                log.warning("MCP server %s (%s) was not reached", server, spec.describe(), exc_info=exc)
                raise ExecutionFailed(
                    f"MCP server {server!r} could not be reached ({what}); nothing was sent"
                ) from None
        body = result.model_dump(mode="json", by_alias=True, exclude_none=True)
        answer = {
            "content": body.get("content", []),
            "structuredContent": body.get("structuredContent"),
            "isError": bool(body.get("isError")),
        }
        if answer["isError"]:
            text = " ".join(c.get("text", "") for c in answer["content"] if c.get("type") == "text").strip()
            raise ExecutionFailed(f"MCP server {server!r}, tool {found.name!r} answered an error: {text or 'no text'}")
        return answer


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions an exception group holds, however nested (or ``exc`` itself)."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _describe(exc: BaseException) -> str:
    """The innermost exceptions' names and messages (an exception group hides them)."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}".rstrip(": ")
