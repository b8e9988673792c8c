"""A small upstream MCP server for the tests and the docs: notes in a directory.

Run as a script (``python tests/fakes/mcp_notes.py`` for stdio, ``--http PORT`` for streamable
HTTP); ``NOTES_DIR`` names the directory. Every tool call is first written to
``<NOTES_DIR>/calls.jsonl`` (tool and arguments), so a test counts what the upstream itself
received, whoever called it. Self-contained: it imports only the ``mcp`` package.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations

DIR = Path(os.environ.get("NOTES_DIR", "."))
server = MCPServer("notes", instructions="Notes kept in a directory.")


def _received(tool: str, **arguments: object) -> None:
    with (DIR / "calls.jsonl").open("a") as ledger:
        ledger.write(json.dumps({"tool": tool, "arguments": arguments, "pid": os.getpid()}) + "\n")
        ledger.flush()
        os.fsync(ledger.fileno())


def _notes() -> dict[str, str]:
    path = DIR / "notes.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _save(notes: dict[str, str]) -> None:
    (DIR / "notes.json").write_text(json.dumps(notes))


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def read_note(name: str) -> str:
    """The text of one note."""
    _received("read_note", name=name)
    notes = _notes()
    if name not in notes:
        raise ToolError(f"no note named {name}")
    return notes[name]


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def list_notes() -> list[str]:
    """The names of every note."""
    _received("list_notes")
    return sorted(_notes())


@server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False))
def add_note(name: str, text: str) -> str:
    """Add a note (or replace one)."""
    _received("add_note", name=name, text=text)
    notes = _notes()
    notes[name] = text
    _save(notes)
    return f"saved {name}"


@server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False))
def slow_append(name: str, text: str, seconds: float = 20.0) -> str:
    """Append to a note, slowly (the tests stop the caller meanwhile)."""
    _received("slow_append", name=name, text=text, seconds=seconds)
    time.sleep(seconds)
    notes = _notes()
    notes[name] = notes.get(name, "") + text
    _save(notes)
    return f"appended to {name}"


@server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True))
def delete_note(name: str) -> str:
    """Delete one note."""
    _received("delete_note", name=name)
    notes = _notes()
    notes.pop(name, None)
    _save(notes)
    return f"deleted {name}"


@server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=True))
def wipe_notes() -> str:
    """Delete every note."""
    _received("wipe_notes")
    _save({})
    return "wiped"


@server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False))
def store_token(name: str, api_key: str) -> str:
    """Keep a credential as a note (and echo it back, as careless tools do)."""
    _received("store_token", name=name, api_key="<received>")
    notes = _notes()
    notes[name] = api_key
    _save(notes)
    return f"stored {name}: {api_key}"


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--http":
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
