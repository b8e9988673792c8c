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

from collections.abc import Callable, Sequence
from typing import Any

from keyturn.sdk import errors
from keyturn.sdk.adapters.common import (
    REASON_FIELD,
    REASON_HELP,
    WAITING_EVENT,
    ReasonMissing,
    built_request,
    call_async,
    call_sync,
    governed,
    invalid_arguments,
    missing_framework,
    refusal_for_a_model,
    take_reason,
)
from keyturn.sdk.client import AsyncKeyturn, Keyturn
from keyturn.sdk.guard import Built, Mode, checked_mode, settle
from keyturn.sdk.models import Action

try:
    from langchain_core.callbacks import adispatch_custom_event, dispatch_custom_event
    from langchain_core.tools import BaseTool, StructuredTool, ToolException
    from pydantic import BaseModel, Field, create_model
except ImportError as missing:  # pragma: no cover - depends on what is installed
    raise missing_framework(__name__, "langchain-core", "langgraph", missing) from missing

__all__ = ["WAITING_EVENT", "gate_tool", "keyturn_tool", "refusal_for_a_model"]


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
    checked_mode(mode)
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
        why = take_reason(given, own_reason)
        named = args_schema.model_validate(given).model_dump(mode="json")  # defaults filled, JSON-able
        try:
            return given, built_request(resource, reason, parameters, named, why)
        except ReasonMissing as exc:
            raise ToolException(invalid_arguments(name, exc)) from None

    def on_end(done: Action) -> tuple[bool, Any]:
        try:
            return settle(done, mode)
        except errors.KeyturnError as exc:
            raise ToolException(refusal_for_a_model(exc, action)) from exc

    def run_sync(**arguments: Any) -> Any:
        if not isinstance(client, Keyturn):
            raise ToolException(f"{name} runs in async graphs only (its Keyturn client is AsyncKeyturn)")
        own, built = request(arguments)
        try:
            done = call_sync(
                client, action, built, timeout=timeout, notice_after_s=notice_after_s, on_waiting=_tell_listeners
            )
        except errors.KeyturnError as exc:
            raise ToolException(refusal_for_a_model(exc, action)) from exc
        run_body, value = on_end(done)
        if not run_body:
            return value
        assert body is not None  # settle() runs a body only in modes that have one
        return body.invoke(own)

    async def run_async(**arguments: Any) -> Any:
        own, built = request(arguments)
        try:
            done = await call_async(
                client, action, built, timeout=timeout, notice_after_s=notice_after_s, on_waiting=_atell_listeners
            )
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
        description=governed(description),
        args_schema=schema,
        handle_tool_error=True,
    )


def _tell_listeners(notice: dict[str, Any]) -> None:
    _write_to_graph_stream(WAITING_EVENT, notice)
    try:
        dispatch_custom_event(WAITING_EVENT, notice)
    except RuntimeError:  # called outside a runnable (a plain tool.invoke): nobody listens for events
        pass


async def _atell_listeners(notice: dict[str, Any]) -> None:
    _write_to_graph_stream(WAITING_EVENT, notice)
    try:
        await adispatch_custom_event(WAITING_EVENT, notice)
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
