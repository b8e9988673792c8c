"""Plugins by action prefix: ``sql.query`` → sql, ``http.request`` → http, ``mcp`` → mcp; anything else runs
``noop``.

To add one, write a class following ``base.Plugin`` and register it under its action prefix
in ``executor.app.shipped_plugins`` (the longest matching prefix wins).
"""

from __future__ import annotations

import logging

from keyturn.executor.plugins.base import Command, ExecutionFailed, OutcomeUnknown, Plugin
from keyturn.executor.plugins.noop import NoopPlugin

__all__ = ["Command", "ExecutionFailed", "OutcomeUnknown", "Plugin", "PluginRegistry"]

log = logging.getLogger(__name__)


class PluginRegistry:
    """Chooses the plugin for an action: the longest registered prefix wins."""

    def __init__(self, plugins: dict[str, Plugin] | None = None, default: Plugin | None = None) -> None:
        self.plugins = dict(plugins or {})
        self.default = default or NoopPlugin()

    def plugin_for(self, action: str) -> Plugin:
        for prefix in sorted(self.plugins, key=len, reverse=True):
            if action == prefix or action.startswith(prefix + "."):
                return self.plugins[prefix]
        return self.default

    async def start(self) -> None:
        """Give each plugin its start-up turn (sweeping leftovers, say); a failure is logged, not fatal."""
        for plugin in {id(p): p for p in (*self.plugins.values(), self.default)}.values():
            start = getattr(plugin, "start", None)
            if start is None:
                continue
            try:
                await start()
            except Exception:
                log.exception("plugin %s did not start cleanly", plugin.name)
