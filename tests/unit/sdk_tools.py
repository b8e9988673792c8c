"""A tool body the framework-adapter tests gate: it records each time it really ran."""

from __future__ import annotations

from typing import Any

granted: list[tuple[str, str, int]] = []


def grant_role(principal: str, role: str = "analyst", days: int = 30) -> str:
    """Grant a database role to a principal.

    Args:
        principal: who gets the role
        role: the role
        days: how long the grant lasts
    """
    granted.append((principal, role, days))
    return f"granted {role} to {principal} for {days} days"


def approved_and_run(server: Any) -> Any:
    """A step for ``IntakeServer.on_submission``: security approves the action, then it runs."""

    def approve(action_id: str) -> None:
        server.resolve(server.decide(action_id, "needs_approval", groups=("security",)), "approved")
        server.execute(action_id, "succeeded", {"performed": False}, plugin="noop")

    return approve
