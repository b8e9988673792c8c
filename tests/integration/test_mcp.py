"""Keyturn's MCP server and proxy, driven by the protocol's own client over stdio and streamable HTTP.

The session's services run with the executor configured for the demo notes server
(``tests/fakes/mcp_notes.py``, ``KEYTURN_MCP_UPSTREAMS`` set by the ``settings`` fixture),
which writes every call it receives to ``calls.jsonl``: the tests count what the upstream
itself got. Approvals are given with ``keyturn approve`` while the tool call waits.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from keyturn.config import REPO_ROOT, Settings
from keyturn.mcp.cli import Listen, serve_catalog, serve_proxy
from keyturn.mcp.upstream import UpstreamSpec
from tests.conftest import free_port, settings_env
from tests.integration.conftest import approval_shown, eventually, keyturn_cli, mint
from tests.processes import MCP_NOTES

pytestmark = pytest.mark.integration

AGENT = ("agent:reporter", ("human:alice",))
PERSONAL = "grace.hopper@example.org"


def upstream_calls(settings: Settings, tool: str) -> list[dict[str, Any]]:
    """What the notes server received, by tool (its own ledger)."""
    ledger = Path(settings.run_dir) / "mcp-notes" / "calls.jsonl"
    lines = ledger.read_text().splitlines() if ledger.exists() else []
    return [call for call in map(json.loads, lines) if call["tool"] == tool]


def text(result: Any) -> str:
    return "\n".join(c.text for c in result.content if c.type == "text")


def keyturn_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "keyturn.cli", "mcp", *args]


def stdio(settings: Settings, *args: str, wait_s: float) -> StdioServerParameters:
    env = settings_env(settings) | {"KEYTURN_TOKEN": mint(settings, *AGENT), "KEYTURN_MCP_WAIT_S": str(wait_s)}
    command = keyturn_command(*args)
    return StdioServerParameters(command=command[0], args=command[1:], env=env, cwd=str(REPO_ROOT))


def approve_when_asked(settings: Settings, approver: str, *, cli: bool) -> tuple[Any, list[str]]:
    """A progress callback that approves, as ``approver``, the action it first hears waiting for approval
    (with ``keyturn approve`` when ``cli``, else through the approval API); and the messages heard."""
    heard: list[str] = []
    approving: list[asyncio.Task] = []

    def approve(action_id: str) -> None:
        if not cli:
            return vote(settings, action_id, approver, "approve")
        voted = keyturn_cli(settings, "approve", action_id, token=mint(settings, approver))
        assert voted.returncode == 0, voted.stdout + voted.stderr

    async def on_progress(_done: float, _total: float | None, message: str | None) -> None:
        heard.append(message or "")
        if approving or not message or "waiting for approval" not in message:
            return
        approving.append(asyncio.create_task(asyncio.to_thread(approve, message.split()[1])))

    return on_progress, heard


def vote(settings: Settings, action_id: str, approver: str, choice: str, reason: str | None = None) -> None:
    """A vote through the approval API, cast as ``keyturn approve``/``deny`` casts it (bound to the digest shown)."""
    headers = {"Authorization": f"Bearer {mint(settings, approver)}"}
    with httpx.Client(base_url=settings.approval_url, headers=headers, timeout=30) as api:
        shown = approval_shown(settings, action_id, approver)
        body = {"choice": choice, "reason": reason, "payload_digest": shown["payload_digest"], "channel": "cli"}
        answer = api.post(f"/v1/approvals/{action_id}/votes", json=body)
        assert answer.status_code == 200, answer.text


def http_server(settings: Settings, name: str, run: Callable[[Listen], Awaitable[None]]) -> Iterator[str]:
    """An MCP server over streamable HTTP, run in this process (a thread with its own event loop) by the
    functions ``keyturn mcp serve/proxy --http`` run; yields its URL once it answers."""
    port = free_port()
    built: list[Any] = []
    listen = Listen(http=True, host="127.0.0.1", port=port, on_ready=built.append)
    thread = threading.Thread(target=lambda: anyio.run(run, listen), name=name, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}/mcp"

    def answering() -> bool:
        try:
            return httpx.post(url, json={}, timeout=2).status_code == 401
        except httpx.HTTPError:
            return False

    try:
        assert eventually(answering, timeout=60), f"{name} never answered"
        yield url
    finally:
        if built:
            built[0].should_exit = True
        thread.join(20)


@pytest.fixture(scope="module")
def proxy_over_http(settings, services):
    """``keyturn mcp proxy --http`` for the notes server; a call waits 3 s, then is pending."""
    upstream = UpstreamSpec(command=(sys.executable, str(MCP_NOTES)))

    def run(listen: Listen) -> Awaitable[None]:
        return serve_proxy(settings, "notes", upstream, caller=None, listen=listen, wait_s=3)

    yield from http_server(settings, "mcp-proxy", run)


@pytest.fixture(scope="module")
def serve_over_http(settings, services):
    """``keyturn mcp serve --http``."""
    yield from http_server(
        settings, "mcp-serve", lambda listen: serve_catalog(settings, caller=None, listen=listen, wait_s=30.0)
    )


async def outcome(client: Client, result: Any) -> Any:
    """The call's outcome: a pending result picked up with wait_for_action, as a model would."""
    while result.structured_content and result.structured_content.get("status") == "pending":
        result = await client.call_tool("wait_for_action", {"action_id": result.structured_content["action_id"]})
    return result


def over_http(url: str, token: str) -> Client:
    return Client(
        streamable_http_client(url, http_client=httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}))
    )


async def test_serve_over_stdio_denies_with_reasons_and_completes_a_call_approved_while_it_waits(settings, services):
    on_progress, heard = approve_when_asked(settings, "human:frank", cli=True)  # db-owners
    async with Client(stdio(settings, "serve", wait_s=120)) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert {"sql.query", "http.request", "wait_for_action"} <= set(tools)
        assert tools["sql.query"].annotations.destructive_hint is True

        denied = await client.call_tool(
            "http.request",
            {"resource": "http://api.example.internal/v1/x", "parameters": {"method": "GET"}, "reason": "check"},
        )
        assert denied.is_error is True, text(denied)
        assert text(denied).startswith("DENIED by Keyturn's policy") and "https" in text(denied)

        approved = await client.call_tool(
            "sql.query",
            {"resource": "postgres://prod/keyturn", "parameters": {"statement": "SELECT 1 AS one"}, "reason": "probe"},
            progress_callback=on_progress,
        )
    assert any("waiting for approval from one of db-owners by " in m for m in heard), heard
    assert approved.is_error is False, text(approved)
    assert approved.structured_content["status"] == "succeeded"
    assert approved.structured_content["result"]["rows"] == [{"one": 1}]


async def test_serve_over_http_acts_under_each_requests_bearer_token(settings, serve_over_http):
    anonymous = await asyncio.to_thread(httpx.post, serve_over_http, json={}, timeout=10)
    assert anonymous.status_code == 401
    forged = await asyncio.to_thread(
        httpx.post, serve_over_http, json={}, headers={"Authorization": "Bearer not-a-token"}, timeout=10
    )
    assert forged.status_code == 401 and "invalid token" in forged.text, forged.text  # no session opened
    async with over_http(serve_over_http, mint(settings, *AGENT)) as client:
        assert "sql.query" in {t.name for t in (await client.list_tools()).tools}
        denied = await client.call_tool(
            "http.request",
            {"resource": "https://evil.example.com/x", "parameters": {"method": "GET"}, "reason": "exfiltrate"},
        )
    assert denied.is_error is True and text(denied).startswith("DENIED by Keyturn's policy"), text(denied)
    assert "allow" in text(denied)


async def test_proxy_over_http_allows_reads_denies_what_the_operator_denies_and_needs_a_token(
    settings, proxy_over_http
):
    anonymous = await asyncio.to_thread(httpx.post, proxy_over_http, json={}, timeout=10)
    assert anonymous.status_code == 401
    async with over_http(proxy_over_http, mint(settings, *AGENT)) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert {"read_note", "add_note", "delete_note", "wipe_notes", "wait_for_action"} <= set(tools)
        listed = await outcome(client, await client.call_tool("list_notes", {"keyturn_reason": "look around"}))
        wiped = await outcome(client, await client.call_tool("wipe_notes", {}))
        notes = Path(settings.run_dir) / "mcp-notes" / "notes.json"
        notes.write_text(json.dumps({"contact": f"write to {PERSONAL}"}))
        read = await outcome(client, await client.call_tool("read_note", {"name": "contact"}))
    assert listed.is_error is False, text(listed)
    assert "Keyturn action" in text(listed) and "succeeded" in text(listed)
    assert len(upstream_calls(settings, "list_notes")) == 1
    assert wiped.is_error is True and "the operator denies tool" in text(wiped)
    assert upstream_calls(settings, "wipe_notes") == []
    # what the upstream answers is masked by the executor before it travels back to the agent
    assert read.is_error is False, text(read)
    assert PERSONAL not in text(read) and "<EMAIL_ADDRESS>" in text(read), text(read)


async def test_a_proxied_call_left_pending_is_approved_in_keyturn_and_forwarded_once(settings, proxy_over_http):
    async with over_http(proxy_over_http, mint(settings, *AGENT)) as client:
        pending = await client.call_tool("add_note", {"name": "plan", "text": "ship it", "keyturn_reason": "notes"})
        assert pending.is_error is False and text(pending).startswith("NOT DONE YET"), text(pending)
        action_id = pending.structured_content["action_id"]
        assert "Do NOT call add_note again" in text(pending) and pending.structured_content["approvers"] == [
            {"group": "platform", "min": 1}
        ]
        assert upstream_calls(settings, "add_note") == []  # nothing reaches the upstream before a person says so

        await asyncio.to_thread(vote, settings, action_id, "human:judy", "approve")
        done = await outcome(client, await client.call_tool("wait_for_action", {"action_id": action_id}))
        again = await client.call_tool("wait_for_action", {"action_id": action_id})
    assert done.is_error is False, text(done)
    assert next(c.text for c in done.content if c.type == "text") == "saved plan"  # the upstream's own answer
    assert text(again) == text(done)  # picking it up twice submits and runs nothing
    assert [c["arguments"] for c in upstream_calls(settings, "add_note")] == [{"name": "plan", "text": "ship it"}]


async def test_a_call_denied_by_an_approver_is_an_error_and_never_reaches_the_upstream(settings, proxy_over_http):
    async with over_http(proxy_over_http, mint(settings, *AGENT)) as client:
        pending = await client.call_tool("delete_note", {"name": "plan"})
        action_id = pending.structured_content["action_id"]
        await asyncio.to_thread(vote, settings, action_id, "human:carol", "deny", "keep it")
        done = await outcome(client, await client.call_tool("wait_for_action", {"action_id": action_id}))
    assert done.is_error is True and text(done).startswith("REFUSED: an approver refused"), text(done)
    assert "keep it" in text(done)
    assert upstream_calls(settings, "delete_note") == []


async def test_the_upstream_gets_an_approved_call_once_even_when_the_executor_dies_mid_call(settings, services):
    on_progress, _ = approve_when_asked(settings, "human:ken", cli=False)  # platform
    async with Client(
        stdio(settings, "proxy", "--name", "notes", "--upstream", f"{sys.executable} {MCP_NOTES}", wait_s=120)
    ) as client:
        call = asyncio.create_task(
            client.call_tool(
                "slow_append", {"name": "log", "text": "once", "seconds": 30}, progress_callback=on_progress
            )
        )
        # approved, and the executor has sent the call: the upstream is running it now
        received = await asyncio.to_thread(eventually, lambda: upstream_calls(settings, "slow_append"), 120)
        assert received, "the approved call never reached the upstream"
        await asyncio.to_thread(services.stop, "executor", kill=True)
        await asyncio.to_thread(services.start, "executor")
        result = await call
    assert result.is_error is True and text(result).startswith("OUTCOME UNKNOWN"), text(result)
    assert "not run again" in text(result)
    await asyncio.sleep(1)
    assert len(upstream_calls(settings, "slow_append")) == 1
