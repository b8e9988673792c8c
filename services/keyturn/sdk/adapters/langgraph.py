"""LangGraph (LangChain) tools whose every call is a Keyturn action.

    from keyturn.sdk import Keyturn
    from keyturn.sdk.adapters.langgraph import gate_tool, keyturn_tool

    kt = Keyturn(URL, token=AGENT_TOKEN)

    @tool
    def grant_role(principal: str, role: str) -> str:
        "Grant a database role to a principal."
        ...  # runs only once Keyturn approved this very call

    tools = [
        gate_tool(grant_role, kt, "iam.role.grant", resource="iam://staging/roles/{role}"),
        keyturn_tool(kt, "sql.query", name="sql_query", description="Run one SQL statement on the staging app "
                     "database", args_schema=SqlQuery, resource="postgres://staging/app"),
    ]
    agent = create_react_agent(model, tools)

- ``gate_tool`` wraps a tool you have: each call is submitted with the tool's arguments as its
  parameters; the tool runs once the action is approved for the caller to perform, or the
  executor's result is returned when Keyturn performed it (``mode``, as in ``guard``).
- ``keyturn_tool`` is a tool with no body of its own: Keyturn's executor performs the action
  and its (masked) result is the tool's answer.

Unless ``reason=`` is given, the tool asks the model for a ``reason`` argument: the people who
approve read it. The call blocks while people decide (both tools work in sync and async
graphs with ``Keyturn``; with ``AsyncKeyturn``, async graphs only). After ``notice_after_s``
the tool dispatches a custom event ``keyturn_waiting`` (action id, state, approver groups,
deadline) that ``astream_events``/``stream(..., stream_mode="custom")`` consumers can show.

A refusal is the tool's answer, never an exception through the graph: the model reads
"denied by the policy: …" (or refused by an approver, expired, failed, outcome unknown) with
the reasons and an instruction not to retry, as a tool message with status ``error``.

Needs ``langchain-core`` (the SDK's ``langgraph`` extra).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from keyturn.sdk import errors
from keyturn.sdk.client import AsyncKeyturn, Keyturn
from keyturn.sdk.guard import Built, Mode, build_parameters, build_text, settle
from keyturn.sdk.models import Action

try:
    from langchain_core.callbacks import adispatch_custom_event, dispatch_custom_event
    from langchain_core.tools import BaseTool, StructuredTool, ToolException
    from pydantic import BaseModel, Field, create_model
except ImportError as missing:  # pragma: no cover - depends on what is installed
    raise ImportError(
        f"keyturn.sdk.adapters.langgraph needs langchain-core ({missing.name} is missing): "
        "pip install 'keyturn-sdk[langgraph]'"
    ) from missing

__all__ = ["WAITING_EVENT", "gate_tool", "keyturn_tool", "refusal_for_a_model"]

log = logging.getLogger(__name__)
WAITING_EVENT = "keyturn_waiting"
REASON_FIELD = "reason"
REASON_HELP = "Why this action is needed, in one or two sentences; the people who approve it read this."
_NO_RETRY = "Do not call the tool again for this; tell the user."


def refusal_for_a_model(exc: errors.KeyturnError, action: str) -> str:
    """What the model reads when a gated call did not go through: what happened, why, and what not to do."""
    why = "; ".join(getattr(exc, "reasons", ()) or ()) or "no reason given"
    if isinstance(exc, errors.ApprovalRefused):
        return f"Keyturn: an approver refused {action} (action {exc.action_id}): {why}. {_NO_RETRY}"
    if isinstance(exc, errors.Denied):
        return f"Keyturn: {action} was denied by the policy (action {exc.action_id}): {why}. {_NO_RETRY}"
    if isinstance(exc, errors.Expired):
        return f"Keyturn: nobody approved {action} in time (action {exc.action_id}); it expired. {_NO_RETRY}"
    if isinstance(exc, errors.OutcomeUnknown):
        return (
            f"Keyturn: {action} (action {exc.action_id}) may or may not have taken effect: {why}. Do not repeat it; "
            "tell the user it needs checking."
        )
    if isinstance(exc, errors.ExecutionFailed):
        return f"Keyturn: {action} failed and did not take effect (action {exc.action_id}): {exc.error or why}."
    if isinstance(exc, errors.WaitTimeout):
        waiting = exc.action
        who = ", ".join(waiting.approver_groups) or "its approvers"
        until = f" until {waiting.expires_at}" if waiting.expires_at else ""
        return (
            f"Keyturn: {action} (action {waiting.action_id}) is still {waiting.state}, waiting for {who}{until}. "
            "Do not call the tool again: that would ask for a second action."
        )
    if isinstance(exc, errors.InvalidRequest):
        return f"Keyturn refused the request as malformed: {exc.detail}"
    if isinstance(exc, errors.Unavailable):
        return f"Keyturn is unavailable right now ({exc.detail}); nothing was done. Try again later."
    return f"Keyturn: {action} did not go through: {exc}"


def gate_tool(
    tool: BaseTool,
    client: Keyturn | AsyncKeyturn,
    action: str,
    *,
    resource: Built,
    reason: Built | None = None,
    parameters: Sequence[str] | Callable[..., Any] | None = None,
    mode: Mode = "auto",
    timeout: float | None = None,
    notice_after_s: float = 5.0,
) -> StructuredTool:
    """``tool`` behind Keyturn: same name, description and arguments (plus ``reason`` unless given)."""
    return _gated(
        client,
        action,
        name=tool.name,
        description=tool.description,
        args_schema=tool.args_schema,
        body=tool,
        resource=resource,
        reason=reason,
        parameters=parameters,
        mode=mode,
        timeout=timeout,
        notice_after_s=notice_after_s,
    )


def keyturn_tool(
    client: Keyturn | AsyncKeyturn,
    action: str,
    *,
    name: str,
    description: str,
    args_schema: type[BaseModel],
    resource: Built,
    reason: Built | None = None,
    parameters: Sequence[str] | Callable[..., Any] | None = None,
    timeout: float | None = None,
    notice_after_s: float = 5.0,
) -> StructuredTool:
    """A tool Keyturn's executor performs: its answer is the executor's (masked) result."""
    return _gated(
        client,
        action,
        name=name,
        description=description,
        args_schema=args_schema,
        body=None,
        resource=resource,
        reason=reason,
        parameters=parameters,
        mode="executor",
        timeout=timeout,
        notice_after_s=notice_after_s,
    )


def _gated(
    client: Keyturn | AsyncKeyturn,
    action: str,
    *,
    name: str,
    description: str,
    args_schema: Any,
    body: BaseTool | None,
    resource: Built,
    reason: Built | None,
    parameters: Sequence[str] | Callable[..., Any] | None,
    mode: Mode,
    timeout: float | None,
    notice_after_s: float,
) -> StructuredTool:
    if not (isinstance(args_schema, type) and issubclass(args_schema, BaseModel)):
        raise TypeError(f"tool {name}: its arguments must be a pydantic model (as @tool and args_schema= make)")
    own_reason = REASON_FIELD in args_schema.model_fields
    schema: type[BaseModel] = args_schema
    if reason is None and not own_reason:
        schema = create_model(  # the original arguments plus the reason the model must give
            f"{args_schema.__name__}WithReason",
            __base__=args_schema,
            reason=(str, Field(description=REASON_HELP, min_length=1)),
        )

    def request(arguments: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the tool's own arguments, what is submitted)."""
        given = dict(arguments)
        why = given[REASON_FIELD] if own_reason else given.pop(REASON_FIELD, None)
        named = args_schema.model_validate(given).model_dump(mode="json")  # defaults filled, JSON-able
        built: dict[str, Any] = {
            "resource": build_text(resource, "resource", named, (), named),
            "reason": build_text(reason, "reason", named, (), named) if reason is not None else str(why),
            "parameters": build_parameters(parameters, named, (), named),
        }
        return given, built

    def on_end(done: Action) -> tuple[bool, Any]:
        try:
            return settle(done, mode)
        except errors.KeyturnError as exc:
            raise ToolException(refusal_for_a_model(exc, action)) from exc

    def waiting_notice(pending: Action) -> dict[str, Any]:
        notice = {
            "action_id": pending.action_id,
            "action": action,
            "state": pending.state,
            "approver_groups": pending.approver_groups,
            "expires_at": pending.expires_at,
        }
        log.info("%s %s waits (%s) for %s", action, pending.action_id, pending.state, pending.approver_groups)
        return notice

    def run_sync(**arguments: Any) -> Any:
        if not isinstance(client, Keyturn):
            raise ToolException(f"{name} runs in async graphs only (its Keyturn client is AsyncKeyturn)")
        own, built = request(arguments)
        started = time.monotonic()
        try:
            submitted = client.submit(action, **built)
            try:
                done = client.wait(submitted.action_id, _first_wait(timeout, notice_after_s))
            except errors.WaitTimeout as pending:
                _dispatch(WAITING_EVENT, waiting_notice(pending.action))
                done = client.wait(submitted.action_id, _rest(timeout, started))
        except errors.KeyturnError as exc:
            raise ToolException(refusal_for_a_model(exc, action)) from exc
        run_body, value = on_end(done)
        if not run_body:
            return value
        assert body is not None  # settle() runs a body only in modes that have one
        return body.invoke(own)

    async def run_async(**arguments: Any) -> Any:
        own, built = request(arguments)
        started = time.monotonic()
        try:
            if isinstance(client, AsyncKeyturn):
                submitted = await client.submit(action, **built)
                try:
                    done = await client.wait(submitted.action_id, _first_wait(timeout, notice_after_s))
                except errors.WaitTimeout as pending:
                    await _adispatch(WAITING_EVENT, waiting_notice(pending.action))
                    done = await client.wait(submitted.action_id, _rest(timeout, started))
            else:
                blocking = client
                submitted = await asyncio.to_thread(lambda: blocking.submit(action, **built))
                try:
                    done = await asyncio.to_thread(
                        blocking.wait, submitted.action_id, _first_wait(timeout, notice_after_s)
                    )
                except errors.WaitTimeout as pending:
                    await _adispatch(WAITING_EVENT, waiting_notice(pending.action))
                    done = await asyncio.to_thread(blocking.wait, submitted.action_id, _rest(timeout, started))
        except errors.KeyturnError as exc:
            raise ToolException(refusal_for_a_model(exc, action)) from exc
        run_body, value = on_end(done)
        if not run_body:
            return value
        assert body is not None
        return await body.ainvoke(own)

    return StructuredTool.from_function(
        func=run_sync,
        coroutine=run_async,
        name=name,
        description=f"{description}\n\nGoverned by Keyturn: each call is checked by policy and may wait for a "
        "person's approval; a refusal comes back with its reasons.",
        args_schema=schema,
        handle_tool_error=True,
    )


def _first_wait(timeout: float | None, notice_after_s: float) -> float:
    return notice_after_s if timeout is None else min(timeout, notice_after_s)


def _rest(timeout: float | None, started: float) -> float | None:
    return None if timeout is None else max(0.0, timeout - (time.monotonic() - started))


def _dispatch(name: str, data: dict[str, Any]) -> None:
    _write_to_graph_stream(name, data)
    try:
        dispatch_custom_event(name, data)
    except RuntimeError:  # called outside a runnable (a plain tool.invoke): nobody listens for events
        pass


async def _adispatch(name: str, data: dict[str, Any]) -> None:
    _write_to_graph_stream(name, data)
    try:
        await adispatch_custom_event(name, data)
    except RuntimeError:
        pass


def _write_to_graph_stream(name: str, data: dict[str, Any]) -> None:
    """Inside a LangGraph run, also ``{name: data}`` on its ``stream_mode="custom"`` stream."""
    try:
        from langgraph.config import get_stream_writer
    except ImportError:  # a LangChain tool used without LangGraph
        return
    try:
        writer = get_stream_writer()
    except (RuntimeError, KeyError):  # not inside a graph run (outside any runnable, or in a plain one)
        return
    writer({name: data})
