"""The MCP server behind ``keyturn mcp serve`` and ``keyturn mcp proxy`` (the SDK's low-level ``Server``).

Every tool call becomes a Keyturn action under the caller's identity: the token the server
was started with (stdio), or the bearer token of each HTTP request (streamable HTTP). The
call then waits for the action, telling the client in progress notifications who must
approve and by when; past ``wait_s`` it returns *pending* with the action id, and the
``wait_for_action`` tool picks the action up (read-only, idempotent: it never submits).

There is no approval through the protocol: no elicitation, no sampling. The person at the
MCP client is on the requester's side of the key-turn; approvals come only from approvers,
through Keyturn's channels (chat, console, CLI).

The low-level ``Server`` is used rather than the decorator API because the tool list is data
(the catalog, or an upstream server's tools), not Python functions.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import mcp_types as types
from mcp.server import Server

from keyturn.core.principal import Principal
from keyturn.identity.claims import unverified_subject
from keyturn.mcp import outcomes
from keyturn.mcp.catalog import ToolSpec
from keyturn.mcp.gateway import Gateway, Refused, Unreachable
from keyturn.mcp.outcomes import WAIT_TOOL, ToolOutcome
from keyturn.sdk.client import path_segment

log = logging.getLogger(__name__)

Report = Callable[[float, float | None, str], Awaitable[None]]

WAIT_TOOL_SPEC = ToolSpec(
    name=WAIT_TOOL,
    action=None,
    title="Wait for a Keyturn action",
    description=(
        "Waits for a Keyturn action that an earlier tool call left pending (its result named the action_id), "
        "and returns its outcome, or says again that it is pending. Submits nothing: safe to call as often as "
        "needed. Use it instead of repeating the original call."
    ),
    input_schema={
        "type": "object",
        "properties": {
            "action_id": {"type": "string", "minLength": 1, "description": "The action id the pending result named."},
            "wait_s": {
                "type": "number",
                "minimum": 0,
                "description": "How long to wait at most, in seconds (default: the server's wait).",
            },
        },
        "required": ["action_id"],
        "additionalProperties": False,
    },
    annotations={"title": "Wait for a Keyturn action", "readOnlyHint": True, "idempotentHint": True},
)


@dataclass(frozen=True)
class Submission:
    """What one tool call asks Keyturn for."""

    action: str
    resource: str
    parameters: dict[str, Any]
    reason: str


class ActionCalls:
    """What a tool call does, whatever the transport: submit, follow, describe the outcome."""

    def __init__(self, gateway: Gateway, *, wait_s: float, poll_s: float = 5.0) -> None:
        self.gateway = gateway
        self.wait_s = wait_s
        self.poll_s = poll_s

    async def run(self, token: str, tool: str, submission: Submission, report: Report) -> ToolOutcome:
        key = f"mcp-{uuid.uuid4()}"  # one key per call: a lost answer is asked again under it, never twice
        try:
            answer = await self.gateway.submit(
                token,
                action=submission.action,
                resource=submission.resource,
                parameters=submission.parameters,
                reason=submission.reason,
                key=key,
            )
        except Refused as exc:
            return outcomes.refused(str(exc), exc.problems)
        except Unreachable as exc:
            if (action_id := submitted_action_id(token, key)) is not None:
                return outcomes.unanswered(action_id, key, tool, str(exc))
            return ToolOutcome(  # a token without a subject: the intake takes no submission with it
                f"Keyturn is not reachable ({exc}); the action may or may not have been submitted. Try again later.",
                {"status": "unavailable", "detail": str(exc)},
                is_error=True,
            )
        return await self.follow(token, str(answer["action_id"]), tool, report, self.wait_s, submitted=True)

    async def follow(
        self, token: str, action_id: str, tool: str, report: Report, wait_s: float, *, submitted: bool = False
    ) -> ToolOutcome:
        """Wait up to ``wait_s`` for ``action_id``, reporting progress; its outcome or *pending*.

        ``submitted``: this very call submitted the action, so a refusal to show it (a token that
        expired while people decided) must say that the action exists, not that nothing was submitted.
        """
        started = time.monotonic()
        deadline = started + max(0.0, wait_s)
        polls = 0
        while True:
            # short first polls, so the client hears "waiting for approval" soon after the decision
            step = min(self.poll_s, (1.0, 2.0)[polls] if polls < 2 else self.poll_s)
            polls += 1
            try:
                view = await self.gateway.wait(token, action_id, max(0.0, min(step, deadline - time.monotonic())))
            except Refused as exc:
                if submitted:
                    return outcomes.unreadable(action_id, tool, str(exc), exc.problems)
                return outcomes.unseen(action_id, str(exc), exc.problems)
            except Unreachable as exc:
                return ToolOutcome(
                    f"Keyturn is not reachable ({exc}). Action {action_id} exists and goes on without you: "
                    f'call {WAIT_TOOL} with action_id "{action_id}" later; do NOT call {tool} again.',
                    {"status": "unavailable", "action_id": action_id, "detail": str(exc)},
                    is_error=True,
                )
            if view.get("terminal"):
                return outcomes.finished(view)
            await report(round(time.monotonic() - started, 1), wait_s or None, outcomes.progress_message(view))
            if time.monotonic() >= deadline:
                return outcomes.pending(view, tool)


def submitted_action_id(token: str, key: str) -> str | None:
    """The id of the action ``token``'s caller submits under ``key``, as the intake derives it
    (``intake.submissions.action_id_for``), so that a submission whose answer was lost can still be
    followed; None for a token with no subject, which the intake refuses."""
    from keyturn.intake.submissions import action_id_for  # the intake's own rule, imported where needed

    subject = unverified_subject(token)
    if subject is None:
        return None
    return action_id_for(Principal(id=subject, kind=Principal.kind_of(subject)), key)


def as_result(outcome: ToolOutcome) -> types.CallToolResult:
    content: list[Any] = [types.TextContent(type="text", text=outcome.text)]
    if outcome.content is not None:  # a proxied tool's own content first, then Keyturn's line
        content = [*outcome.content, *content]
    return types.CallToolResult.model_validate(
        {
            "content": [c if isinstance(c, dict) else c.model_dump(by_alias=True, exclude_none=True) for c in content],
            "structuredContent": outcome.structured,
            "isError": outcome.is_error,
        }
    )


def as_tool(spec: ToolSpec) -> types.Tool:
    return types.Tool.model_validate(
        {
            "name": spec.name,
            "title": spec.title,
            "description": spec.description,
            "inputSchema": spec.input_schema,
            "annotations": spec.annotations,
        }
    )


def bearer_of(ctx: Any) -> str | None:
    """The bearer token of the HTTP request a call came in (None over stdio)."""
    request = getattr(ctx, "request", None)
    headers = getattr(request, "headers", None)
    if headers is None:
        return None
    scheme, _, token = (headers.get("authorization") or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def build_server(
    name: str,
    tools: Callable[[], Awaitable[Sequence[ToolSpec]]],
    submission_for: Callable[[ToolSpec, dict[str, Any]], Submission],
    calls: ActionCalls,
    *,
    token: str | None,
    present: Callable[[ToolOutcome], ToolOutcome] = lambda outcome: outcome,
    instructions: str = "",
) -> Server:
    """An MCP server offering ``tools()`` plus ``wait_for_action``; ``token`` is the caller's identity
    over stdio (None: each HTTP request's bearer token)."""

    async def list_tools(_ctx: Any, _params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[as_tool(t) for t in [*await tools(), WAIT_TOOL_SPEC]])

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        caller = token or bearer_of(ctx)
        if not caller:
            return as_result(outcomes.refused("no token: the call has no identity to act under"))
        arguments = dict(params.arguments or {})

        async def report(progress: float, total: float | None, message: str) -> None:
            try:
                await ctx.session.report_progress(progress, total, message)
            except Exception as exc:  # a client that went away must not end the wait for the others
                log.info("progress not delivered: %s", type(exc).__name__)

        if params.name == WAIT_TOOL:
            action_id = str(arguments.get("action_id") or "").strip()
            if not action_id:
                return as_result(outcomes.refused("wait_for_action needs the action_id a pending result named"))
            try:
                path_segment(action_id)  # a control character in it would fail the request, not refuse it
            except ValueError as exc:
                return as_result(outcomes.refused(f"wait_for_action: {exc}"))
            wait_s = arguments.get("wait_s")
            patience = calls.wait_s if not isinstance(wait_s, int | float) else min(float(wait_s), calls.wait_s)
            return as_result(present(await calls.follow(caller, action_id, "the original tool", report, patience)))
        spec = next((t for t in await tools() if t.name == params.name), None)
        if spec is None:
            # the name is not echoed: a caller's typo may carry what it should not have sent
            return as_result(outcomes.refused("no tool of that name here; the tool list names every tool offered"))
        try:
            submission = submission_for(spec, arguments)
        except ValueError as exc:
            return as_result(outcomes.refused(str(exc)))
        return as_result(present(await calls.run(caller, spec.name, submission, report)))

    return Server(name, instructions=instructions, on_list_tools=list_tools, on_call_tool=call_tool)


def catalog_submission(spec: ToolSpec, arguments: dict[str, Any]) -> Submission:
    """A ``keyturn mcp serve`` tool's arguments ``{resource, parameters, reason}`` as a submission."""
    resource, parameters, reason = arguments.get("resource"), arguments.get("parameters", {}), arguments.get("reason")
    problems = []
    if not isinstance(resource, str) or not resource:
        problems.append("resource: a non-empty string is required")
    if not isinstance(parameters, dict):
        problems.append("parameters: must be an object")
    if not isinstance(reason, str) or not reason.strip():
        problems.append("reason: say in a sentence why this is needed (approvers read it)")
    if problems or spec.action is None:
        raise ValueError("; ".join(problems) or f"{spec.name} submits no action")
    assert isinstance(resource, str) and isinstance(parameters, dict) and isinstance(reason, str)
    return Submission(spec.action, resource, parameters, reason)


SERVE_INSTRUCTIONS = (
    "Every tool here is a privileged action guarded by Keyturn: it runs only if Keyturn's policy allows it or "
    "people approve it, and the call waits for them. A result that says NOT DONE YET is pending: do not repeat the "
    "call, call wait_for_action with its action_id. An error result means the action did not happen (or, for "
    "OUTCOME UNKNOWN, may have): read its reasons before trying anything else."
)
