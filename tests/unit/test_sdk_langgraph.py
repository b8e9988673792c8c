"""The LangGraph adapter against the intake's own app on in-memory ports: a gated tool asks the model
for a reason, runs its body only once approved, answers refusals as error tool messages the model
can read, and tells listeners while it waits."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.messages import ToolMessage
from langchain_core.tools import tool
from pydantic import BaseModel, Field

from keyturn.sdk import AsyncKeyturn, Keyturn
from keyturn.sdk.adapters.langgraph import WAITING_EVENT, gate_tool, keyturn_tool
from tests.fakes.intake_server import AGENT_TOKEN, IntakeServer
from tests.unit.sdk_tools import approved_and_run

granted: list[tuple[str, str]] = []


@tool
def grant_role(principal: str, role: str = "analyst") -> str:
    """Grant a database role to a principal."""
    granted.append((principal, role))
    return f"granted {role} to {principal}"


class SqlQuery(BaseModel):
    statement: str = Field(description="One SQL statement")
    max_rows: int = 100


@pytest.fixture(scope="module")
def server() -> Iterator[IntakeServer]:
    with IntakeServer() as running:
        yield running


@pytest.fixture
def kt(server: IntakeServer) -> Iterator[Keyturn]:
    with Keyturn(server.url, token=AGENT_TOKEN, backoff_s=0.01) as client:
        yield client


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"type": "tool_call", "id": "call-1", "name": name, "args": arguments}


def test_the_model_must_give_a_reason_and_the_body_runs_once_approved(kt: Keyturn, server: IntakeServer) -> None:
    gated = gate_tool(grant_role, kt, "iam.role.grant", resource="iam://staging/roles/{role}")
    assert gated.name == "grant_role" and "Keyturn" in gated.description
    schema = gated.tool_call_schema.model_json_schema()
    assert set(schema["required"]) == {"principal", "reason"}

    granted.clear()
    server.on_submission(approved_and_run(server))
    answer = gated.invoke(call("grant_role", principal="human:bob", reason="bob joins the analysts"))
    assert isinstance(answer, ToolMessage) and answer.status == "success"
    assert answer.content == "granted analyst to human:bob" and granted == [("human:bob", "analyst")]
    request = server.submitted()
    assert request.reason == "bob joins the analysts" and request.resource == "iam://staging/roles/analyst"
    assert json.loads(request.parameters_json) == {"principal": "human:bob", "role": "analyst"}


def test_a_blank_reason_is_an_error_message_and_nothing_is_submitted(kt: Keyturn, server: IntakeServer) -> None:
    gated = gate_tool(grant_role, kt, "iam.role.grant", resource="iam://staging/roles/{role}")
    sent = len(server.requests)
    granted.clear()
    answer = gated.invoke(call("grant_role", principal="human:bob", reason="   "))
    assert isinstance(answer, ToolMessage) and answer.status == "error" and "reason is required" in answer.content
    assert granted == [] and len(server.requests) == sent


def test_a_denial_is_an_error_message_the_model_reads_and_the_body_never_runs(
    kt: Keyturn, server: IntakeServer
) -> None:
    gated = gate_tool(grant_role, kt, "iam.role.grant", resource="iam://prod/roles/{role}", reason="asked by the user")
    granted.clear()
    never = ("admin roles are never granted to unattended agents",)
    server.on_submission(lambda a: server.decide(a, "denied", never))
    answer = gated.invoke(call("grant_role", principal="agent:x", role="admin"))
    assert answer.status == "error" and granted == []
    assert "denied by the policy" in answer.content and "never granted to unattended agents" in answer.content
    assert "Do not call the tool again" in answer.content


def test_an_executor_tool_answers_with_the_masked_result(kt: Keyturn, server: IntakeServer) -> None:
    sql = keyturn_tool(
        kt,
        "sql.query",
        name="sql_query",
        description="Run one statement on the staging app database",
        args_schema=SqlQuery,
        resource="postgres://staging/app",
    )
    server.on_submission(
        lambda a: server.decide(a, "allowed"),
        lambda a: server.execute(a, "succeeded", {"row_count": 1, "rows": [{"email": "<EMAIL_ADDRESS>"}]}),
    )
    answer = sql.invoke(call("sql_query", statement="SELECT email FROM users LIMIT 1", reason="find the owner"))
    assert answer.status == "success" and json.loads(answer.content)["rows"] == [{"email": "<EMAIL_ADDRESS>"}]
    assert json.loads(server.submitted().parameters_json) == {
        "statement": "SELECT email FROM users LIMIT 1",
        "max_rows": 100,
    }


async def test_while_people_decide_listeners_hear_who_must_approve(server: IntakeServer) -> None:
    async with AsyncKeyturn(server.url, token=AGENT_TOKEN) as akt:
        gated = gate_tool(grant_role, akt, "iam.role.grant", resource="iam://staging/roles/{role}", notice_after_s=0.2)

        def open_approval(action_id: str) -> None:
            server.decide(action_id, "needs_approval", groups=("security",))

        def refuse(action_id: str) -> None:
            decided = server.decide(action_id, "needs_approval", groups=("security",))
            server.resolve(decided, "denied", why="not without a ticket")

        server.on_submission(open_approval, delay=0.1)
        server.on_submission(refuse, delay=1.0)
        heard, answer = [], None
        async for event in gated.astream_events(call("grant_role", principal="human:bob", reason="r"), version="v2"):
            if event["event"] == "on_custom_event" and event["name"] == WAITING_EVENT:
                heard.append(event["data"])
            if event["event"] == "on_tool_end":
                answer = event["data"]["output"]
    [notice] = heard
    assert notice["state"] == "needs_approval" and notice["approver_groups"] == ["security"] and notice["expires_at"]
    assert isinstance(answer, ToolMessage) and answer.status == "error"
    assert "an approver refused" in answer.content and "not without a ticket" in answer.content
