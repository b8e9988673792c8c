"""``keyturn mcp serve``'s tools, driven by the protocol's own client in process, over a fake intake.

What a model sees: the catalog's executable actions as tools with schemas and annotations;
a call's outcome (a result, or an error with the reasons, never an empty success); a call that
waits for people answering progress notifications, then *pending* with the action id, the
approvers and the deadline; ``wait_for_action`` picking it up without submitting again.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from mcp import Client

from keyturn.identity.keys import SigningKey
from keyturn.identity.tokens import issue_token
from keyturn.mcp.catalog import action_tools, load_document, parameter_schema
from keyturn.mcp.cli import PARAMETERS_FILE, TOOLS_FILE
from keyturn.mcp.gateway import Refused, Unreachable
from keyturn.mcp.server import ActionCalls, build_server, catalog_submission
from tests.fakes.mcp_gateway import FakeGateway, needs_approval_history

TOKEN = "agent-token"
DEADLINE = "2026-12-04T18:00:00+00:00"
SQL_CALL = {
    "resource": "postgres://prod/shop",
    "parameters": {"statement": "SELECT 1"},
    "reason": "the weekly report",
}


def serve(gateway: FakeGateway, *, wait_s: float = 5.0, token: str = TOKEN) -> Any:
    tools = action_tools(load_document(TOOLS_FILE), load_document(PARAMETERS_FILE))

    async def listed() -> list[Any]:
        return tools

    calls = ActionCalls(gateway, wait_s=wait_s, poll_s=0.2)
    return build_server("keyturn", listed, catalog_submission, calls, token=token)


def text(result: Any) -> str:
    return "\n".join(c.text for c in result.content if c.type == "text")


async def test_the_catalogs_executable_actions_are_tools_with_schemas_and_honest_annotations() -> None:
    async with Client(serve(FakeGateway(lambda s: {"state": "allowed"}))) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == {"sql.query", "http.request", "wait_for_action"}
    sql = tools["sql.query"]
    assert sql.input_schema["required"] == ["resource", "parameters", "reason"]
    assert sql.input_schema["properties"]["parameters"]["type"] == "object"
    assert sql.annotations.read_only_hint is False and sql.annotations.destructive_hint is True
    assert tools["http.request"].annotations.open_world_hint is True
    waiting = tools["wait_for_action"]
    assert waiting.annotations.read_only_hint is True and waiting.annotations.idempotent_hint is True


def test_a_parameters_catalog_gives_each_tool_its_schema() -> None:
    document = {
        "common": {"incident_id": {"type": "string"}},
        "actions": {
            "sql.query": {"summary": "one statement", "schema": {"type": "object", "required": ["statement"]}},
            "read.*": {"schema": {"type": "object", "properties": {"row_count": {"type": "integer"}}}},
        },
    }
    sql = parameter_schema(document, "sql.query")
    assert sql["required"] == ["statement"] and sql["properties"]["incident_id"] == {"type": "string"}
    assert sql["description"] == "one statement"
    assert "row_count" in parameter_schema(document, "read.table")["properties"]
    assert parameter_schema(document, "http.request")["type"] == "object"  # not in the catalog: any object


async def test_an_allowed_call_returns_the_masked_result_under_the_callers_identity() -> None:
    gateway = FakeGateway(lambda s: {"state": "succeeded", "result": {"row_count": 1, "rows": [{"one": 1}]}})
    async with Client(serve(gateway)) as client:
        result = await client.call_tool("sql.query", SQL_CALL)
    assert result.is_error is False
    assert result.structured_content["status"] == "succeeded"
    assert result.structured_content["result"]["rows"] == [{"one": 1}]
    assert "succeeded" in text(result) and '"one": 1' in text(result)
    assert gateway.submissions == [{"token": TOKEN, "action": "sql.query", **SQL_CALL}]


async def test_a_denial_is_a_tool_error_with_the_policys_reasons() -> None:
    reasons = ["http.request: scheme is not https"]
    gateway = FakeGateway(lambda s: {"state": "denied", "reasons": reasons})
    async with Client(serve(gateway)) as client:
        result = await client.call_tool(
            "http.request", {"resource": "http://api.example.internal/x", "parameters": {}, "reason": "r"}
        )
    assert result.is_error is True
    assert text(result).startswith("DENIED by Keyturn's policy") and reasons[0] in text(result)
    assert result.structured_content["reasons"] == reasons


async def test_a_call_that_waits_for_people_reports_who_and_until_when_then_answers_pending() -> None:
    history = needs_approval_history([("db-owners", 1)], DEADLINE)
    gateway = FakeGateway(lambda s: {"state": "needs_approval", "history": history})
    progress: list[tuple[float, float | None, str | None]] = []

    async def heard(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))

    async with Client(serve(gateway, wait_s=1.0)) as client:
        result = await client.call_tool("sql.query", SQL_CALL, progress_callback=heard)
    action_id = next(iter(gateway.actions))
    assert result.is_error is False
    body = text(result)
    assert body.startswith("NOT DONE YET") and action_id in body
    assert "one of db-owners" in body and DEADLINE in body
    assert "Do NOT call sql.query again" in body and "wait_for_action" in body
    assert result.structured_content["status"] == "pending"
    assert result.structured_content["next"] == {"tool": "wait_for_action", "arguments": {"action_id": action_id}}
    assert result.structured_content["approvers"] == [{"group": "db-owners", "min": 1}]
    assert result.structured_content["expires_at"] == DEADLINE
    assert progress, "no progress notification while the call waited"
    assert all(
        f"action {action_id} is waiting for approval from one of db-owners by {DEADLINE}" == m for _, _, m in progress
    )


async def test_wait_for_action_picks_up_the_approval_and_never_submits_again() -> None:
    history = needs_approval_history([("db-owners", 1)], DEADLINE)
    gateway = FakeGateway(lambda s: {"state": "needs_approval", "history": history})
    async with Client(serve(gateway, wait_s=0.5)) as client:
        pending = await client.call_tool("sql.query", SQL_CALL)
        action_id = pending.structured_content["action_id"]
        again = await client.call_tool("wait_for_action", {"action_id": action_id, "wait_s": 0.3})
        assert again.structured_content["status"] == "pending"

        async def approve_soon() -> None:
            await asyncio.sleep(0.3)
            gateway.resolve(action_id, "succeeded", result={"row_count": 1, "rows": [{"one": 1}]})

        approver = asyncio.create_task(approve_soon())
        done = await client.call_tool("wait_for_action", {"action_id": action_id})
        await approver
    assert done.is_error is False and done.structured_content["result"]["rows"] == [{"one": 1}]
    assert len(gateway.submissions) == 1


async def test_a_refusal_while_waiting_names_the_submitted_action_and_says_not_to_call_again() -> None:
    history = needs_approval_history([("db-owners", 1)], DEADLINE)
    gateway = FakeGateway(lambda s: {"state": "needs_approval", "history": history})

    async def refuse_soon() -> None:  # the token expires while people decide
        await asyncio.sleep(0.3)
        gateway.wait_refusal = Refused("HTTP 401: token expired")

    async with Client(serve(gateway, wait_s=5.0)) as client:
        expiry = asyncio.create_task(refuse_soon())
        result = await client.call_tool("sql.query", SQL_CALL)
        await expiry
        picked_up = await client.call_tool("wait_for_action", {"action_id": "not-mine"})
    action_id = next(iter(gateway.actions))
    assert result.is_error is True and "before anything was submitted" not in text(result)
    assert action_id in text(result) and "exists" in text(result) and "token expired" in text(result)
    assert "Do NOT call sql.query again" in text(result)
    assert result.structured_content["action_id"] == action_id
    assert result.structured_content["next"] == {"tool": "wait_for_action", "arguments": {"action_id": action_id}}
    assert picked_up.is_error and "before anything was submitted" not in text(picked_up)
    assert "not-mine" not in text(picked_up), "an id that is not Keyturn's is never repeated to the model"
    assert "submitted nothing" in text(picked_up) and "token expired" in text(picked_up)
    assert len(gateway.submissions) == 1


async def test_a_lost_answer_names_the_action_it_may_be_and_following_it_never_submits_twice() -> None:
    token = issue_token(SigningKey.generate(), subject="agent:reporter", acts_for=["human:alice"])
    gateway = FakeGateway(lambda s: {"state": "succeeded", "result": {"row_count": 1}})
    gateway.answers_lost = Unreachable("HTTP 503 from the proxy in front of the intake")
    async with Client(serve(gateway, token=token)) as client:
        lost = await client.call_tool("sql.query", SQL_CALL)
        gateway.answers_lost = None
        action_id = lost.structured_content["action_id"]
        followed = await client.call_tool("wait_for_action", {"action_id": action_id})
    assert lost.is_error is True and "503" in text(lost)
    assert action_id in text(lost) and "Do NOT call sql.query again" in text(lost)
    assert lost.structured_content["next"] == {"tool": "wait_for_action", "arguments": {"action_id": action_id}}
    assert followed.is_error is False and followed.structured_content["result"] == {"row_count": 1}
    assert len(gateway.submissions) == 1


async def test_a_submission_that_never_arrived_is_told_apart_by_waiting_on_the_id_it_would_have() -> None:
    token = issue_token(SigningKey.generate(), subject="agent:reporter")
    gateway = FakeGateway(lambda s: {"state": "succeeded"})
    gateway.unreachable = Unreachable("connection refused")
    async with Client(serve(gateway, token=token)) as client:
        lost = await client.call_tool("sql.query", SQL_CALL)
        gateway.unreachable = None
        followed = await client.call_tool("wait_for_action", {"action_id": lost.structured_content["action_id"]})
    assert lost.is_error is True and "Do NOT call sql.query again" in text(lost) and "404" in text(lost)
    assert followed.is_error is True and "404" in text(followed) and "submitted nothing" in text(followed)
    assert gateway.submissions == []


@pytest.mark.parametrize(
    ("state", "starts"),
    [
        ("expired", "EXPIRED"),
        ("failed", "FAILED"),
        ("outcome_unknown", "OUTCOME UNKNOWN"),
    ],
)
async def test_every_other_ending_is_an_error_that_says_what_happened(state: str, starts: str) -> None:
    gateway = FakeGateway(lambda s: {"state": state, "reasons": ["because"]})
    async with Client(serve(gateway)) as client:
        result = await client.call_tool("sql.query", SQL_CALL)
    assert result.is_error is True and text(result).startswith(starts) and "because" in text(result)


async def test_a_refusal_by_an_approver_is_told_apart_from_the_policys() -> None:
    history = [{"event": "ApprovalResolved", "summary": "denied by human:frank: not today"}]
    gateway = FakeGateway(
        lambda s: {"state": "denied", "reasons": ["denied by human:frank: not today"], "history": history}
    )
    async with Client(serve(gateway)) as client:
        result = await client.call_tool("sql.query", SQL_CALL)
    assert result.is_error is True and text(result).startswith("REFUSED: an approver refused")


async def test_bad_input_is_refused_before_anything_is_submitted() -> None:
    gateway = FakeGateway(lambda s: {"state": "allowed"})
    async with Client(serve(gateway)) as client:
        no_reason = await client.call_tool("sql.query", {**SQL_CALL, "reason": " "})
        gateway.refusal = Refused("HTTP 422: invalid_request", ["parameters.statement: is required by sql.query"])
        invalid = await client.call_tool("sql.query", {**SQL_CALL, "parameters": {}})
        unknown = await client.call_tool("wait_for_action", {"action_id": "not-mine"})
        odd = await client.call_tool("wait_for_action", {"action_id": "x\u0000123-45-6789"})
        no_such = await client.call_tool("sql.query password=hunter2", SQL_CALL)
    assert no_such.is_error and "no tool of that name" in text(no_such) and "hunter2" not in text(no_such)
    assert no_reason.is_error and "reason" in text(no_reason)
    assert odd.is_error and "not an action id" in text(odd) and "123-45-6789" not in text(odd)
    assert invalid.is_error and "parameters.statement: is required by sql.query" in text(invalid)
    assert unknown.is_error and "404" in text(unknown)
    assert gateway.submissions == []
