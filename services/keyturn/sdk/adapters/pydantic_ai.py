"""pydantic-ai tools whose every call is a Keyturn action.

    from pydantic_ai import Agent
    from keyturn.sdk import AsyncKeyturn
    from keyturn.sdk.adapters.pydantic_ai import gate_tool

    kt = AsyncKeyturn(URL, token=AGENT_TOKEN)

    def grant_role(principal: str, role: str) -> str:
        "Grant a database role to a principal."
        ...  # runs only once Keyturn approved this very call

    agent = Agent(model, tools=[gate_tool(grant_role, kt, "iam.role.grant", resource="iam://staging/roles/{role}")])

``gate_tool(function, client, action, resource=…, reason=None, parameters=None, mode="auto")``
makes a ``Tool`` with the function's name, description and argument schema (plus a required
``reason`` unless ``reason=`` is given: approvers read it; a missing or blank one raises
``ModelRetry``, so the model is asked again and nothing is submitted). Each call is submitted with the
validated arguments as its parameters; the function runs once the action is approved for the
caller, or the executor's (masked) result is returned (``mode``, as in ``guard``).

A refusal (denied, refused by an approver, expired, failed, outcome unknown, Keyturn away) is
the tool's return value, a sentence starting ``Keyturn:`` with the reasons and an instruction
not to retry, so the model can tell its user; with ``raise_refusals=True`` the exception
propagates out of the run instead. ``on_waiting(notice)`` (plain or async) hears who must
approve and until when once the call has waited ``notice_after_s``.

Needs ``pydantic-ai-slim`` (the SDK's ``pydantic-ai`` extra).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import TypeAdapter

from keyturn.sdk.adapters.common import (
    ReasonMissing,
    built_request,
    governed,
    governed_call,
    invalid_arguments,
    missing_framework,
    schema_with_reason,
    take_reason,
)
from keyturn.sdk.client import AsyncKeyturn, Keyturn
from keyturn.sdk.guard import Built, Mode, checked_mode

try:
    from pydantic_ai import ModelRetry, Tool
except ImportError as missing:  # pragma: no cover - depends on what is installed
    raise missing_framework(__name__, "pydantic-ai", "pydantic-ai", missing) from missing

__all__ = ["gate_tool"]


def gate_tool(
    function: Callable[..., Any],
    client: Keyturn | AsyncKeyturn,
    action: str,
    *,
    resource: Built,
    reason: Built | None = None,
    parameters: Sequence[str] | Callable[..., Any] | None = None,
    mode: Mode = "auto",
    timeout: float | None = None,
    notice_after_s: float = 5.0,
    on_waiting: Callable[[dict[str, Any]], Any] | None = None,
    raise_refusals: bool = False,
    name: str | None = None,
    description: str | None = None,
) -> Tool[Any]:
    """``function`` as a pydantic-ai tool behind Keyturn (see the module's documentation)."""
    checked_mode(mode)
    original: Tool[Any] = Tool(function, takes_ctx=False, name=name, description=description)
    schema, own_reason = schema_with_reason(original.tool_def.parameters_json_schema, reason)
    validate = original.function_schema.validator.validate_python  # the function's own argument validation

    async def gated(**arguments: Any) -> Any:
        given = dict(arguments)
        why = take_reason(given, own_reason)
        named = validate(given)  # coerced, defaults filled: what the function will be called with
        try:
            built = built_request(resource, reason, parameters, named, why, values=_json(named))
        except ReasonMissing as exc:  # the model is asked again, with what to give
            raise ModelRetry(invalid_arguments(original.name, exc)) from None
        run_body, value = await governed_call(
            client,
            action,
            built,
            mode=mode,
            timeout=timeout,
            notice_after_s=notice_after_s,
            on_waiting=on_waiting,
            raise_refusals=raise_refusals,
        )
        if not run_body:
            return value
        answer = function(**named)
        return await answer if inspect.isawaitable(answer) else answer

    return Tool.from_schema(gated, name=original.name, description=governed(original.description), json_schema=schema)


_ARGUMENTS = TypeAdapter(dict[str, Any])  # built once, not on every tool call


def _json(named: dict[str, Any]) -> dict[str, Any]:
    """The validated arguments as JSON values (what the action's parameters hold)."""
    return dict(_ARGUMENTS.dump_python(named, mode="json"))
