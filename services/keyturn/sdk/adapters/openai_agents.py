"""OpenAI Agents SDK function tools whose every call is a Keyturn action.

    from agents import Agent, Runner
    from keyturn.sdk import AsyncKeyturn
    from keyturn.sdk.adapters.openai_agents import gate_tool

    kt = AsyncKeyturn(URL, token=AGENT_TOKEN)

    def grant_role(principal: str, role: str) -> str:
        "Grant a database role to a principal."
        ...  # runs only once Keyturn approved this very call

    agent = Agent(name="ops", tools=[gate_tool(grant_role, kt, "iam.role.grant", resource="iam://staging/roles/{role}")])

``gate_tool(function, client, action, resource=…, reason=None, parameters=None, mode="auto")``
makes a ``FunctionTool`` with the function's name, description and strict argument schema (the
SDK's own ``function_schema``, plus a required ``reason`` unless ``reason=`` is given:
approvers read it). Each call is submitted with the validated arguments as its parameters;
the function runs once the action is approved for the caller, or the executor's (masked)
result is returned as JSON (``mode``, as in ``guard``). A function whose first parameter is
the run context gets it, as with ``function_tool``.

A refusal (denied, refused by an approver, expired, failed, outcome unknown, Keyturn away) is
the tool's output, a sentence starting ``Keyturn:`` with the reasons and an instruction not
to retry, so the model can tell its user; with ``raise_refusals=True`` the exception
propagates out of the run instead. Arguments that do not validate are answered the same way,
before anything is submitted. ``on_waiting(notice)`` (plain or async) hears who must approve
and until when once the call has waited ``notice_after_s``.

The SDK's own ``needs_approval`` pauses a run for whoever runs the agent; this tool's approval
is Keyturn's: policy first, then the approvers the policy names, never the requester.

Needs ``openai-agents`` (the SDK's ``openai-agents`` extra).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence
from typing import Any

from keyturn.sdk.adapters.common import (
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
    from agents import FunctionTool, RunContextWrapper
    from agents.function_schema import function_schema
except ImportError as missing:  # pragma: no cover - depends on what is installed
    raise missing_framework(__name__, "the OpenAI Agents SDK", "openai-agents", missing) from missing

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
) -> FunctionTool:
    """``function`` as an OpenAI Agents function tool behind Keyturn (see the module's documentation)."""
    checked_mode(mode)
    signature = function_schema(function, name_override=name, description_override=description)
    # the SDK made the schema strict: every property required, no others; the reason joins it so
    schema, own_reason = schema_with_reason(signature.params_json_schema, reason, strict=True)

    async def invoke(context: RunContextWrapper[Any], arguments: str) -> Any:
        try:
            given = json.loads(arguments or "{}")
            if not isinstance(given, dict):
                raise ValueError("the arguments must be a JSON object")
            why = take_reason(given, own_reason)
            validated = signature.params_pydantic_model(**given)  # the function's own argument validation
            named = validated.model_dump(mode="json")  # coerced, defaults filled: what the function will get
            built = built_request(resource, reason, parameters, named, why)
        except ValueError as exc:  # pydantic's ValidationError is one, and so is ReasonMissing
            return invalid_arguments(signature.name, exc)
        positional, keywords = signature.to_call_args(validated)
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
            return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        if signature.takes_context:
            positional = [context, *positional]
        answer = function(*positional, **keywords)
        return await answer if inspect.isawaitable(answer) else answer

    return FunctionTool(
        name=signature.name,
        description=governed(signature.description),
        params_json_schema=schema,
        on_invoke_tool=invoke,
        strict_json_schema=signature.strict_json_schema,
    )
