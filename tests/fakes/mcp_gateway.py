"""An in-memory intake behind the MCP server's ``Gateway`` port (``keyturn.mcp.gateway``).

Keeps the intake's guarantees the server relies on: one action per (token, idempotency key),
its id derived from the token's subject and the key as the intake derives it,
a status view shaped like ``GET /v1/actions/{id}`` (history with the decision's approval), a
long poll that returns as soon as the action is terminal or at its timeout, and 404 for an
action the caller cannot see. The test plays the policy and the approvers (``decide``,
``resolve``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import jwt

from keyturn.core.principal import Principal
from keyturn.intake.submissions import action_id_for
from keyturn.mcp.gateway import Refused, Unreachable

TERMINAL = {"succeeded", "failed", "denied", "expired", "outcome_unknown"}


def view(action_id: str, action: str, state: str, **extra: Any) -> dict[str, Any]:
    return {
        "action_id": action_id,
        "action": action,
        "resource": extra.pop("resource", "x://y"),
        "state": state,
        "terminal": state in TERMINAL,
        "reasons": extra.pop("reasons", []),
        "result": extra.pop("result", None),
        "history": extra.pop("history", []),
        **extra,
    }


def needs_approval_history(groups: list[tuple[str, int]], expires_at: str) -> list[dict[str, Any]]:
    """A status history up to a decision that asks ``groups`` (name, how many) to approve by ``expires_at``."""
    return [
        {"event": "ActionRequested", "state": "requested"},
        {
            "event": "ActionDecided",
            "approver_groups": [g for g, _ in groups],
            "approvers": [{"name": g, "min": n} for g, n in groups],
            "require_all": True,
            "expires_at": expires_at,
        },
    ]


class FakeGateway:
    def __init__(self, decide: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.decide = decide  # submission -> fields of the first view (state, reasons, history, result)
        self.actions: dict[str, dict[str, Any]] = {}
        self.owners: dict[str, str] = {}
        self.keys: dict[tuple[str, str], str] = {}
        self.submissions: list[dict[str, Any]] = []
        self.refusal: Refused | None = None  # the next submissions are refused with it
        self.wait_refusal: Refused | None = None  # reading any action is refused with it (a token that expired)
        self.unreachable: Unreachable | None = None  # the next submissions never reach the intake
        self.answers_lost: Unreachable | None = None  # the next submissions are taken, their answers lost
        self.changed = asyncio.Event()

    async def submit(
        self, token: str, *, action: str, resource: str, parameters: dict[str, Any], reason: str, key: str
    ) -> dict[str, Any]:
        if self.refusal is not None:
            raise self.refusal
        if self.unreachable is not None:
            raise self.unreachable
        submission = {
            "token": token,
            "action": action,
            "resource": resource,
            "parameters": parameters,
            "reason": reason,
        }
        if (token, key) in self.keys:
            action_id = self.keys[(token, key)]
            return {"action_id": action_id, "state": self.actions[action_id]["state"]}
        self.submissions.append(submission)
        action_id = action_id_for(principal_of(token), key)
        self.keys[(token, key)] = action_id
        self.owners[action_id] = token
        self.actions[action_id] = view(action_id, action, **{"resource": resource, **self.decide(submission)})
        if self.answers_lost is not None:
            raise self.answers_lost
        return {"action_id": action_id, "state": self.actions[action_id]["state"]}

    async def wait(self, token: str, action_id: str, timeout: float) -> dict[str, Any]:
        if self.wait_refusal is not None:
            raise self.wait_refusal
        if self.owners.get(action_id) != token:
            raise Refused(f"HTTP 404: no action {action_id} visible to this token")
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.actions[action_id]["terminal"]:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except TimeoutError:
                break
        return dict(self.actions[action_id])

    def resolve(self, action_id: str, state: str, **fields: Any) -> None:
        """People (or the executor) moved the action on."""
        current = self.actions[action_id]
        history = [*current["history"], *fields.pop("history", [])]
        self.actions[action_id] = view(action_id, current["action"], state, history=history, **fields)
        self.changed.set()


def principal_of(token: str) -> Principal:
    """The token's caller as the intake sees it: its subject (signature unchecked: the tests sign them); a
    token that is no JWT stands for itself."""
    try:
        subject = str(jwt.decode(token, options={"verify_signature": False})["sub"])
    except (jwt.PyJWTError, KeyError):
        subject = token
    return Principal(id=subject, kind=Principal.kind_of(subject))
