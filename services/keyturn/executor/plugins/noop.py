"""The ``noop`` plugin: performs nothing, records that it ran. For dry runs and tests."""

from __future__ import annotations

from typing import Any

from keyturn.executor.plugins.base import Command


class NoopPlugin:
    name = "noop"

    async def execute(self, command: Command) -> Any:
        return {"performed": False, "action": command.action, "resource": command.resource}
