"""The OpenAI Agents adapter against the intake's own app on in-memory ports, driven by the SDK's own
runner with a scripted model: the model must give a reason, the function runs only once approved,
the executor's result or a refusal is what the model reads back, and bad arguments submit nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from agents import Agent, RunConfig, RunContextWrapper, Runner
from agents.items import ModelResponse
from agents.models.interface import Model
from agents.usage import Usage
from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage, ResponseOutputText

from keyturn.sdk import AsyncKeyturn, Keyturn
from keyturn.sdk.adapters.openai_agents import gate_tool
from tests.fakes.intake_server import AGENT_TOKEN, IntakeServer
from tests.unit.sdk_tools import approved_and_run, grant_role, granted

NO_TRACES = RunConfig(tracing_disabled=True)  # nothing leaves the machine


class Scripted(Model):
    """A model that calls one tool once with ``arguments``, then answers with what the tool returned."""

    def __init__(self, tool: str, arguments: dict[str, Any] | str, asks_reason: bool = True) -> None:
        self.tool, self.arguments, self.asks_reason = tool, arguments, asks_reason
        self.schemas: list[dict[str, Any]] = []

    async def get_response(self, system_instructions, input, model_settings, tools, *_: Any, **__: Any):
        returned = [i for i in input if isinstance(i, dict) and i.get("type") == "function_call_output"]
        if not returned:
            [tool] = tools
            self.schemas.append(tool.params_json_schema)
            assert ("reason" in tool.params_json_schema["required"]) is self.asks_reason
            arguments = self.arguments if isinstance(self.arguments, str) else json.dumps(self.arguments)
            call = ResponseFunctionToolCall(
                type="function_call", call_id="call-1", name=self.tool, arguments=arguments, id="fc-1"
            )
            return ModelResponse(output=[call], usage=Usage(), response_id=None)
        text = ResponseOutputText(type="output_text", text=f"tool said: {returned[-1]['output']}", annotations=[])
        message = ResponseOutputMessage(
            type="message", id="msg-1", role="assistant", status="completed", content=[text]
        )
        return ModelResponse(output=[message], usage=Usage(), response_id=None)

    def stream_response(self, *_: Any, **__: Any):  # pragma: no cover - the runner here does not stream
        raise NotImplementedError


@pytest.fixture(scope="module")
def server() -> Iterator[IntakeServer]:
    with IntakeServer() as running:
        yield running


async def run(model: Scripted, tool: Any, prompt: str) -> str:
    result = await Runner.run(Agent(name="ops", model=model, tools=[tool]), prompt, run_config=NO_TRACES)
    return str(result.final_output)


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

        granted.clear()
        server.on_submission(lambda a: server.decide(a, "needs_approval", groups=("security",)))
        server.on_submission(approved_and_run(server), delay=1.0)
        model = Scripted("grant_role", {"principal": "human:bob", "role": "analyst", "days": 7, "reason": "bob joins"})
        output = await run(model, tool, "make bob an analyst")
    assert output == "tool said: granted analyst to human:bob for 7 days"
    assert granted == [("human:bob", "analyst", 7)]
    request = server.submitted()
    assert request.reason == "bob joins" and request.resource == "iam://staging/roles/analyst"
    assert json.loads(request.parameters_json) == {"principal": "human:bob", "role": "analyst", "days": 7}
    assert [n["approver_groups"] for n in heard] == [["security"]]
    [schema] = model.schemas  # what the model was offered: strict, the reason required, nothing else allowed
    assert schema["additionalProperties"] is False and set(schema["required"]) == set(schema["properties"])
    assert set(schema["properties"]) == {"principal", "role", "days", "reason"}


async def test_the_executors_result_comes_back_as_json_and_the_body_never_runs(server: IntakeServer) -> None:
    ran: list[str] = []

    def sql_query(statement: str) -> str:
        """Run one statement on the staging app database."""
        ran.append(statement)
        return "the body's own answer"

    async with AsyncKeyturn(server.url, token=AGENT_TOKEN) as kt:
        tool = gate_tool(sql_query, kt, "sql.query", resource="postgres://staging/app")
        server.on_submission(
            lambda a: server.decide(a, "allowed"),
            lambda a: server.execute(a, "succeeded", {"row_count": 1, "rows": [{"email": "<EMAIL_ADDRESS>"}]}),
        )
        model = Scripted("sql_query", {"statement": "SELECT email FROM users LIMIT 1", "reason": "find the owner"})
        output = await run(model, tool, "who owns it?")
    assert ran == []
    assert json.loads(output.removeprefix("tool said: ")) == {"row_count": 1, "rows": [{"email": "<EMAIL_ADDRESS>"}]}
    assert json.loads(server.submitted().parameters_json) == {"statement": "SELECT email FROM users LIMIT 1"}


async def test_a_refusal_is_what_the_model_reads_and_the_function_never_runs(server: IntakeServer) -> None:
    with Keyturn(server.url, token=AGENT_TOKEN) as kt:  # a blocking client works too (in a worker thread)
        tool = gate_tool(grant_role, kt, "iam.role.grant", resource="iam://prod/roles/{role}", reason="asked")
        granted.clear()
        never = ("admin roles are never granted to unattended agents",)
        server.on_submission(lambda a: server.decide(a, "denied", never))
        model = Scripted("grant_role", {"principal": "agent:x", "role": "admin", "days": 30}, asks_reason=False)
        output = await run(model, tool, "make x an admin")
    assert granted == []
    assert output.startswith("tool said: Keyturn: iam.role.grant was denied by the policy")
    assert "never granted to unattended agents" in output and "Do not call the tool again" in output


@pytest.mark.parametrize(
    ("arguments", "why"),
    [
        ({"principal": "human:bob", "role": "analyst", "days": "a week", "reason": "r"}, "days"),
        ({"principal": "human:bob", "role": "analyst", "days": 7, "reason": "  "}, "reason is required"),
        ("not json", "invalid"),
    ],
)
async def test_arguments_that_do_not_validate_submit_nothing(server: IntakeServer, arguments: Any, why: str) -> None:
    before = len(server.store.rows)
    async with AsyncKeyturn(server.url, token=AGENT_TOKEN) as kt:
        tool = gate_tool(grant_role, kt, "iam.role.grant", resource="iam://staging/roles/{role}")
        granted.clear()
        output = await run(Scripted("grant_role", arguments), tool, "make bob an analyst")
    assert output.startswith("tool said: Keyturn: the arguments of grant_role are invalid, nothing was submitted")
    assert why in output
    assert len(server.store.rows) == before and granted == []


async def test_a_function_that_takes_the_run_context_gets_it(server: IntakeServer) -> None:
    seen: list[Any] = []

    def rotate(ctx: RunContextWrapper[Any], name: str) -> str:
        """Rotate a key."""
        seen.append(ctx.context)
        return f"rotated {name}"

    async with AsyncKeyturn(server.url, token=AGENT_TOKEN) as kt:
        tool = gate_tool(rotate, kt, "iam.role.grant", resource="iam://staging/roles/{name}")

        def allow(action_id: str) -> None:
            server.decide(action_id, "allowed")
            server.execute(action_id, "succeeded", {"performed": False}, plugin="noop")

        server.on_submission(allow)
        model = Scripted("rotate", {"name": "deploy", "reason": "quarterly"})
        agent = Agent(name="ops", model=model, tools=[tool])
        result = await Runner.run(agent, "rotate it", context={"team": "ops"}, run_config=NO_TRACES)
    assert str(result.final_output) == "tool said: rotated deploy"
    assert seen == [{"team": "ops"}]


def test_a_mode_no_tool_knows_is_refused_when_the_tool_is_made(server: IntakeServer) -> None:
    with Keyturn(server.url, token=AGENT_TOKEN) as kt, pytest.raises(ValueError, match="mode must be one of"):
        gate_tool(grant_role, kt, "iam.role.grant", resource="iam://staging/roles/{role}", mode="remote")  # type: ignore[arg-type]
