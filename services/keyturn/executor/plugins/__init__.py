"""Plugins by action: ``sql.query`` → sql, ``http.request`` → http, ``mcp`` → mcp, ``iam.*`` → iam,
``db.rows.delete`` → deletion, ``db.export`` → export; an action the catalog marks ``external`` gets a
signed receipt (``external``); anything else has no executor and ends ``failed`` — never a silent success.

To add one, write a class following ``base.Plugin``, register it under its action prefix in
``executor.app.shipped_plugins`` (the longest matching prefix wins), and mark the action
``"keyturn"`` in the catalog's ``data.keyturn.execution``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from keyturn.core.catalog import Execution, ExecutionModes
from keyturn.executor.plugins.base import Command, ExecutionFailed, OutcomeUnknown, Plugin
from keyturn.executor.plugins.external import NoExecutor

__all__ = ["Command", "ExecutionFailed", "OutcomeUnknown", "Plugin", "PluginRegistry"]

log = logging.getLogger(__name__)


class PluginRegistry:
    """Chooses how an action is carried out: the catalog's ``external`` mode gets ``external``
    (a signed receipt, ending ``approved_external``), otherwise the longest registered prefix wins,
    and an action no plugin covers gets ``NoExecutor`` (it ends ``failed``, saying so)."""

    def __init__(
        self,
        plugins: dict[str, Plugin] | None = None,
        *,
        external: Plugin | None = None,
        modes: ExecutionModes | None = None,
        load_modes: Callable[[], Awaitable[ExecutionModes]] | None = None,
        refresh_every_s: float = 30.0,
    ) -> None:
        self.plugins = dict(plugins or {})
        self.external = external
        self.modes = modes or ExecutionModes()
        self.load_modes = load_modes  # re-reads the catalog's modes (the policy data), at start and on refresh
        self.refresh_every_s = refresh_every_s
        self._loaded_at = -1e18

    def plugin_for(self, action: str) -> Plugin:
        mode = self.modes.mode_for(action)
        if mode.execution is Execution.EXTERNAL and self.external is not None:
            return self.external
        if mode.execution is Execution.REFUSED:
            return NoExecutor(f"the catalog refuses {action}: {mode.why}")
        for prefix in sorted(self.plugins, key=len, reverse=True):
            if action == prefix or action.startswith(prefix + "."):
                return self.plugins[prefix]
        return NoExecutor(
            f"no executor performs {action}, and the catalog does not mark it external (data.keyturn.execution)"
        )

    async def refresh_modes_if_stale(self) -> None:
        """Re-read the modes when the last read is older than ``refresh_every_s`` (a policy data change)."""
        if self.load_modes is not None and time.monotonic() - self._loaded_at > self.refresh_every_s:
            await self.refresh_modes()

    async def refresh_modes(self) -> None:
        """Read the catalog's execution modes again; on failure the ones already known stay."""
        if self.load_modes is None:
            return
        self._loaded_at = time.monotonic()
        try:
            self.modes = await self.load_modes()
        except Exception as exc:
            log.warning("executor: the catalog's execution modes were not refreshed (%s: %s)", type(exc).__name__, exc)

    async def start(self) -> None:
        """Give each plugin its start-up turn (sweeping leftovers, say); a failure is logged, not fatal."""
        plugins = (*self.plugins.values(), *((self.external,) if self.external is not None else ()))
        for plugin in {id(p): p for p in plugins}.values():
            start = getattr(plugin, "start", None)
            if start is None:
                continue
            try:
                await start()
            except Exception:
                log.exception("plugin %s did not start cleanly", plugin.name)
