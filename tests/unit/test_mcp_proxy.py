"""The proxy's side of an upstream tool (names, schema, submission, result) and the executor plugin's refusals."""

from __future__ import annotations

import mcp_types as types
import pytest

from keyturn.executor.plugins.base import Command, ExecutionFailed
from keyturn.executor.plugins.mcp import McpPlugin
from keyturn.mcp.names import action_for, resource_for, segment, split_action
from keyturn.mcp.outcomes import ToolOutcome
from keyturn.mcp.proxy import REASON_ARGUMENT, proxied_submission, proxied_tool, proxied_tools, upstream_result
from keyturn.mcp.upstream import UpstreamSpec, find_tool, parse_upstreams

UPSTREAM_TOOL = types.Tool(
    name="deleteNote",
    description="Delete one note.",
    input_schema={"type": "object", "properties": {"name": {"type": "string"}}, "additionalProperties": False},
    annotations=types.ToolAnnotations(read_only_hint=False, destructive_hint=True),
)


def test_tool_names_become_action_segments_the_policy_accepts() -> None:
    assert action_for("Notes", "deleteNote") == "mcp.notes.deletenote"
    assert segment("read.file") == "read_file" and segment("2fa") == "t2fa"
    assert resource_for("notes", "deleteNote") == "mcp://notes/deleteNote"
    assert split_action("mcp.notes.deletenote") == ("notes", "deletenote")
    with pytest.raises(ValueError):
        split_action("sql.query")


def test_an_upstream_tool_keeps_its_name_and_schema_and_gains_only_a_reason() -> None:
    spec = proxied_tool("notes", UPSTREAM_TOOL)
    assert spec.name == "deleteNote" and spec.action == "mcp.notes.deletenote"
    assert set(spec.input_schema["properties"]) == {"name", REASON_ARGUMENT}
    assert spec.annotations == {"readOnlyHint": False, "destructiveHint": True}
    assert "Through Keyturn" in spec.description
    submission = proxied_submission("notes")(spec, {"name": "a", REASON_ARGUMENT: "tidy up"})
    assert submission.parameters == {"name": "a"}  # exactly the upstream's arguments
    assert (submission.action, submission.resource, submission.reason) == (
        "mcp.notes.deletenote",
        "mcp://notes/deleteNote",
        "tidy up",
    )
    assert "no reason given" in proxied_submission("notes")(spec, {"name": "a"}).reason


def test_a_succeeded_call_answers_with_the_upstreams_own_content() -> None:
    result = {"content": [{"type": "text", "text": "deleted a"}], "structuredContent": {"result": "deleted a"}}
    done = ToolOutcome(
        "Done: Keyturn action x succeeded.\nResult: {...}", {"status": "succeeded", "result": result}, False
    )
    shown = upstream_result(done)
    assert shown.content == [{"type": "text", "text": "deleted a"}]
    assert shown.structured == {"result": "deleted a"} and shown.text == "Done: Keyturn action x succeeded."
    denied = ToolOutcome("DENIED", {"status": "denied"}, True)
    assert upstream_result(denied) is denied


def test_the_executors_upstreams_are_the_operators_setting() -> None:
    upstreams = parse_upstreams(
        '{"Notes": "python notes.py", "remote": {"url": "https://mcp.example.internal/mcp", "headers": {"x": "y"}}}'
    )
    assert upstreams["notes"].command == ("python", "notes.py")
    assert upstreams["remote"].url == "https://mcp.example.internal/mcp"
    assert upstreams["remote"].describe() == "https://mcp.example.internal/mcp"
    assert parse_upstreams("") == {}
    with pytest.raises(ValueError):
        UpstreamSpec(command=("a",), url="b")


def test_an_upstream_tool_is_found_by_its_segment_never_by_a_guess() -> None:
    tools = [UPSTREAM_TOOL, types.Tool(name="readNote", input_schema={"type": "object"})]
    assert find_tool(tools, "deletenote").name == "deleteNote"
    assert find_tool(tools, "readnote").name == "readNote"
    twins = [*tools, types.Tool(name="DeleteNote", input_schema={"type": "object"})]
    with pytest.raises(LookupError, match="refusing to guess"):
        find_tool(twins, "deletenote")
    with pytest.raises(LookupError):
        find_tool(tools, "wipe")


def tool(name: str) -> types.Tool:
    return types.Tool(name=name, input_schema={"type": "object"})


def test_two_tools_sharing_an_action_name_are_refused_even_when_one_matches_exactly() -> None:
    shared = [tool("read.note"), tool("read_note")]
    assert action_for("notes", "read.note") == action_for("notes", "read_note") == "mcp.notes.read_note"
    with pytest.raises(LookupError, match="refusing to guess"):
        find_tool(shared, "read_note")
    assert proxied_tools("notes", [*shared, tool("list")]) == [proxied_tool("notes", tool("list"))]


@pytest.mark.parametrize("name", ["\u212aill", "\u00e9", "caf\u00e9", "\u0131d"])
def test_a_name_outside_ascii_makes_no_action_name_so_it_can_never_stand_for_another(name: str) -> None:
    with pytest.raises(ValueError, match="outside ASCII"):
        segment(name)
    ascii_twin = {"\u212aill": "kill", "\u00e9": "t_", "caf\u00e9": "caf_", "\u0131d": "id"}[name]
    tools = [tool(name), tool(ascii_twin)]
    assert find_tool(tools, segment(ascii_twin)).name == ascii_twin
    assert [t.name for t in proxied_tools("notes", tools)] == [ascii_twin]
    with pytest.raises(ValueError):
        action_for("notes", name)


async def test_the_plugin_sends_nothing_for_a_server_the_operator_did_not_configure() -> None:
    plugin = McpPlugin({"notes": UpstreamSpec(command=("true",))})
    with pytest.raises(ExecutionFailed, match="no upstream is configured for MCP server 'shell'"):
        await plugin.execute(Command("a1", "mcp.shell.run", "mcp://shell/run", {}, 60))
    with pytest.raises(ExecutionFailed, match="not an MCP action"):
        await plugin.execute(Command("a1", "mcp.notes", "mcp://notes", {}, 60))


async def test_the_plugin_s_own_refusal_inside_the_sdk_s_task_group_is_said_as_itself(monkeypatch) -> None:
    """The SDK's client runs in a task group, which wraps what the block raises in an exception
    group: a refusal there (two tools sharing the action name) is still that refusal, not an
    upstream that "could not be reached"."""
    from contextlib import asynccontextmanager

    from keyturn.executor.plugins import mcp as plugin_module

    class Client:
        async def list_tools(self) -> types.ListToolsResult:
            return types.ListToolsResult(tools=[tool("read.note"), tool("read_note")])

    @asynccontextmanager
    async def connected(spec, *, timeout_s=None, hidden=None):
        try:
            yield Client()
        except Exception as exc:
            raise BaseExceptionGroup("unhandled errors in a TaskGroup", [exc]) from None

    monkeypatch.setattr(plugin_module, "connected", connected)
    plugin = McpPlugin({"notes": UpstreamSpec(command=("true",))})
    with pytest.raises(ExecutionFailed) as refused:
        await plugin.execute(Command("a1", "mcp.notes.read_note", "mcp://notes/read_note", {}, 60))
    assert "refusing to guess" in str(refused.value) and "could not be reached" not in str(refused.value)


def test_the_executor_sends_every_mcp_action_to_the_mcp_plugin(tmp_path) -> None:
    from keyturn.config import Settings
    from keyturn.executor.app import shipped_plugins

    settings = Settings(run_dir=str(tmp_path), mcp_upstreams='{"notes": "python notes.py"}')
    plugin = shipped_plugins(settings).plugin_for("mcp.notes.add_note")
    assert plugin.name == "mcp"
    assert isinstance(plugin, McpPlugin) and plugin.upstreams["notes"].command == ("python", "notes.py")


async def test_an_upstream_s_stderr_reaches_the_log_masked_line_by_line(caplog) -> None:
    import asyncio
    import logging
    import sys

    from keyturn.mcp.upstream import ERR_LINE_BYTES, masked_lines

    script = (
        "import sys\n"
        "sys.stderr.write('Tool read_note failed: no note named grace.hopper.p1@example.org\\n')\n"
        "sys.stderr.write('stored key kv7Q-registered-secret\\n')\n"  # only the policy's mask says so
        f"sys.stderr.write('x' * {ERR_LINE_BYTES * 20})\n"  # more than a pipe holds, no newline
    )
    caplog.set_level(logging.INFO, logger="keyturn.mcp.upstream")
    async with masked_lines("python notes", {"kv7Q-registered-secret": "<MASKED>"}) as errlog:
        child = await asyncio.create_subprocess_exec(sys.executable, "-c", script, stderr=errlog)
        assert await asyncio.wait_for(child.wait(), 30) == 0  # never blocked on a full pipe
    said = [r.getMessage() for r in caplog.records if r.name == "keyturn.mcp.upstream"]
    assert said[0] == "upstream python notes said: Tool read_note failed: no note named <EMAIL_ADDRESS>"
    assert said[1] == "upstream python notes said: stored key <MASKED>"
    assert "grace.hopper" not in caplog.text and "kv7Q-registered-secret" not in caplog.text
    assert sum(m.count("x") for m in said[2:]) == ERR_LINE_BYTES * 20


async def test_a_value_an_upstream_wraps_over_two_lines_never_reaches_the_log_in_clear(caplog) -> None:
    import asyncio
    import logging
    import sys

    from keyturn.mcp.upstream import masked_lines

    script = (  # a message wrapped at the terminal's width: neither half of the card looks like one
        "import sys\n"
        "sys.stderr.write('Tool read_note failed: no note named <AWS_ACCESS_KEY> 4111 1111\\n')\n"
        'sys.stderr.write("1111 1111 <EMAIL_ADDRESS>\'\\n")\n'
        "sys.stderr.write('unlocking with correct horse\\n')\n"  # a passphrase only the policy's mask names
        "sys.stderr.write('battery staple: refused\\n')\n"
        "sys.stderr.write('done\\n')\n"
    )
    caplog.set_level(logging.INFO, logger="keyturn.mcp.upstream")
    async with masked_lines("python notes", {"correct horse battery staple": "<MASKED>"}) as errlog:
        child = await asyncio.create_subprocess_exec(sys.executable, "-c", script, stderr=errlog)
        assert await asyncio.wait_for(child.wait(), 30) == 0
    said = [r.getMessage() for r in caplog.records if r.name == "keyturn.mcp.upstream"]
    assert "4111" not in caplog.text and "1111 1111" not in caplog.text
    assert "correct horse" not in caplog.text and "battery staple" not in caplog.text
    assert "<MASKED>: refused" in said[1]  # the wrapped lines logged as one, masked as one
    assert said[-1] == "upstream python notes said: done"  # a line that finishes no value is logged on its own


async def test_a_quiet_upstream_s_last_line_is_logged_while_it_runs(caplog, monkeypatch) -> None:
    import asyncio
    import logging
    import sys

    from keyturn.mcp import upstream

    monkeypatch.setattr(upstream, "ERR_PAUSE_S", 0.1)
    script = "import sys, time\nsys.stderr.write('listening on stdio\\n')\nsys.stderr.flush()\ntime.sleep(30)\n"
    caplog.set_level(logging.INFO, logger="keyturn.mcp.upstream")
    async with upstream.masked_lines("python notes") as errlog:
        child = await asyncio.create_subprocess_exec(sys.executable, "-c", script, stderr=errlog)
        try:
            for _ in range(100):
                if "listening on stdio" in caplog.text:
                    break
                await asyncio.sleep(0.1)
            assert "upstream python notes said: listening on stdio" in caplog.text
        finally:
            child.kill()
            await child.wait()
