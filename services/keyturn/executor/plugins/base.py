"""The plugin interface: one class per kind of action, registered by action prefix.

A plugin gets the clear parameters (opened from the sealed copy) and the credential TTL the
policy granted; it returns a JSON-able result or raises ``ExecutionFailed`` with a reason
the requester can read. It must not retry side effects: the executor guarantees at most once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Command:
    action_id: str
    action: str
    resource: str
    parameters: dict[str, Any]
    credential_ttl_s: int


class ExecutionFailed(Exception):
    """The action ran (or tried to) and failed; the message is shown to the requester."""


class Plugin(Protocol):
    name: str

    async def execute(self, command: Command) -> Any:
        """Perform the command once; return a JSON-able result."""
