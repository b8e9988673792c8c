"""The pydantic-ai adapter against the intake's own app on in-memory ports, driven by a pydantic-ai
agent whose model is a script (FunctionModel): the model must give a reason, the function runs only
once approved, and a refusal is what the model reads back."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic_ai import Agent, ModelRetry
from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel

from keyturn.sdk import AsyncKeyturn, Keyturn
from keyturn.sdk.adapters.pydantic_ai import gate_tool
from tests.fakes.intake_server import AGENT_TOKEN, IntakeServer
from tests.unit.sdk_tools import approved_and_run, grant_role, granted


def scripted(arguments: dict[str, Any], asks_reason: bool = True) -> FunctionModel:
    """A model that calls grant_role once with ``arguments``, then answers with what the tool returned."""

    def answer(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        returned = [p for m in messages for p in getattr(m, "parts", []) if isinstance(p, ToolReturnPart)]
        if not returned:
            [tool] = info.function_tools
            assert ("reason" in tool.parameters_json_schema["required"]) is asks_reason
            return ModelResponse(parts=[ToolCallPart("grant_role", arguments)])
        return ModelResponse(parts=[TextPart(f"tool said: {returned[-1].content}")])

    return FunctionModel(answer)


@pytest.fixture(scope="module")
def server() -> Iterator[IntakeServer]:
    with IntakeServer() as running:
        yield running


async def test_the_function_runs_once_approved_with_its_validated_arguments(server: IntakeServer) -> None:
    heard: list[dict[str, Any]] = []
    async with AsyncKeyturn(server.url, token=AGENT_TOKEN) as kt:
        tool = gate_tool(
            grant_role,
            kt,
            "iam.role.grant",
            resource="iam://staging/roles/{role}",
            notice_after_s=0.6,
            on_waiting=heard.append,
        )
        agent = Agent(scripted({"principal": "human:bob", "days": "7", "reason": "bob joins"}), tools=[tool])

        granted.clear()
        server.on_submission(lambda a: server.decide(a, "needs_approval", groups=("security",)))
        server.on_submission(approved_and_run(server), delay=1.0)
        result = await agent.run("make bob an analyst")
    assert result.output == "tool said: granted analyst to human:bob for 7 days"
    assert granted == [("human:bob", "analyst", 7)]
    request = server.submitted()
    assert request.reason == "bob joins" and request.resource == "iam://staging/roles/analyst"
    assert json.loads(request.parameters_json) == {"principal": "human:bob", "role": "analyst", "days": 7}
    assert [n["approver_groups"] for n in heard] == [["security"]]


def test_a_refusal_is_what_the_model_reads_and_the_function_never_runs(server: IntakeServer) -> None:
    with Keyturn(server.url, token=AGENT_TOKEN) as kt:
        tool = gate_tool(grant_role, kt, "iam.role.grant", resource="iam://prod/roles/{role}", reason="asked")
        agent = Agent(scripted({"principal": "agent:x", "role": "admin"}, asks_reason=False), tools=[tool])
        granted.clear()
        never = ("admin roles are never granted to unattended agents",)
        server.on_submission(lambda a: server.decide(a, "denied", never))
        result = agent.run_sync("make x an admin")
    assert granted == []
    assert result.output.startswith("tool said: Keyturn: iam.role.grant was denied by the policy")
    assert "never granted to unattended agents" in result.output and "Do not call the tool again" in result.output


@pytest.mark.parametrize("given", [{}, {"reason": ""}, {"reason": "   "}, {"reason": None}])
async def test_a_missing_or_blank_reason_is_asked_for_again_and_nothing_is_submitted(
    server: IntakeServer, given: dict[str, Any]
) -> None:
    async with AsyncKeyturn(server.url, token=AGENT_TOKEN) as kt:
        tool = gate_tool(grant_role, kt, "iam.role.grant", resource="iam://staging/roles/{role}")
        sent = len(server.requests)
        granted.clear()
        with pytest.raises(ModelRetry, match="reason is required"):
            await tool.function(principal="human:bob", **given)
    assert granted == [] and len(server.requests) == sent
