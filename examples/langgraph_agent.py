"""A LangGraph agent whose tools go through Keyturn: one call allowed, one denied, one that waits
while a person approves it.

No model is downloaded or called: a scripted chat model plays the agent's part (it asks for the
three tools in turn, then sums up what came back), so everything you see besides it is real:
the intake, the policy, the approval, the executor and the audit.

    make run                                    # the stack, in another terminal
    export PATH=$PWD/.venv/bin:$PATH
    export KEYTURN_INTAKE_URL=http://127.0.0.1:8080
    export KEYTURN_TOKEN=$(keyturn token issue --sub agent:onboarder --act human:alice)
    python examples/langgraph_agent.py

When the agent waits on ``grant_role``, it prints the command a security approver runs
(``keyturn approve ACTION_ID --token …``, or the web console at http://127.0.0.1:8090/console as
``human:carol``). Approve it, or deny it, and watch the agent carry on.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from langgraph.prebuilt import create_react_agent

from keyturn.sdk import Keyturn
from keyturn.sdk.adapters.langgraph import WAITING_EVENT, gate_tool

# -- the agent's own tools: their bodies run only once Keyturn lets them --------------------------


@tool
def read_table(table: str) -> str:
    """Read a table of the staging analytics database."""
    return f"read {table}: 3 orders last week (sample data)"


@tool
def delete_secret(name: str) -> str:
    """Delete a secret from the vault."""
    return f"deleted {name}"  # the policy never lets this run


@tool
def grant_role(principal: str, role: str) -> str:
    """Grant a role to a person."""
    return f"granted {role} to {principal}"


# -- a chat model that follows a script instead of calling a language model -----------------------

SCRIPT = [
    ("read_table", {"table": "orders", "reason": "count last week's orders for Bob's onboarding pack"}),
    ("delete_secret", {"name": "payments/api-key", "reason": "the old payments key looks unused"}),
    ("grant_role", {"principal": "bob", "role": "analyst", "reason": "Bob joins the analytics team"}),
]


class ScriptedChatModel(BaseChatModel):
    """Asks for the next tool of ``SCRIPT`` on each turn, then sums up the tool answers it got."""

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedChatModel:
        return self

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **_: Any) -> ChatResult:
        turn = sum(isinstance(m, AIMessage) for m in messages)
        if turn < len(SCRIPT):
            name, arguments = SCRIPT[turn]
            reply = AIMessage(content="", tool_calls=[{"name": name, "args": arguments, "id": f"call-{turn}"}])
        else:
            answers = [m for m in messages if isinstance(m, ToolMessage)]
            lines = [f"- {m.name}: {'done' if m.status == 'success' else 'not done'} ({m.content})" for m in answers]
            reply = AIMessage(content="Here is what happened:\n" + "\n".join(lines))
        return ChatResult(generations=[ChatGeneration(message=reply)])


def main() -> int:
    url = os.environ.get("KEYTURN_INTAKE_URL", "http://127.0.0.1:8080")
    token = os.environ.get("KEYTURN_TOKEN")
    if not token:
        print("set KEYTURN_TOKEN (keyturn token issue --sub agent:onboarder --act human:alice)", file=sys.stderr)
        return 2
    with Keyturn(url, token=token) as kt:
        tools = [
            gate_tool(read_table, kt, "read.table", resource="postgres://staging/analytics/{table}"),
            gate_tool(delete_secret, kt, "secrets.delete", resource="vault://staging/{name}"),
            gate_tool(grant_role, kt, "iam.role.grant", resource="iam://staging/roles/{role}", notice_after_s=1.0),
        ]
        agent = create_react_agent(ScriptedChatModel(), tools)
        request = HumanMessage("Onboard Bob: get last week's orders, tidy the old payments key, make him an analyst.")
        for mode, chunk in agent.stream({"messages": [request]}, stream_mode=["updates", "custom"]):
            if mode == "custom" and WAITING_EVENT in chunk:
                waiting = chunk[WAITING_EVENT]
                print(
                    f"WAITING {waiting['action_id']}: {waiting['action']} needs "
                    f"{' and '.join(waiting['approver_groups']) or 'an approver'} (open until {waiting['expires_at']})",
                    flush=True,
                )
                print(
                    f"  approve as a security approver: keyturn approve {waiting['action_id']} "
                    '--token "$(keyturn token issue --sub human:carol)"',
                    flush=True,
                )
                continue
            for update in chunk.values() if mode == "updates" else ():
                for message in update.get("messages", []):
                    if isinstance(message, AIMessage) and message.tool_calls:
                        for call in message.tool_calls:
                            print(f"agent calls {call['name']} {call['args']}", flush=True)
                    elif isinstance(message, ToolMessage):
                        print(f"  {message.name} → {message.status}: {message.content}", flush=True)
                    elif isinstance(message, AIMessage):
                        print(f"agent: {message.content}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
