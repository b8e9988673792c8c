"""Plugins by action prefix; anything without a plugin runs ``noop``."""

from __future__ import annotations

from keyturn.executor.plugins.base import Command, ExecutionFailed, Plugin
from keyturn.executor.plugins.noop import NoopPlugin

__all__ = ["Command", "ExecutionFailed", "Plugin", "PluginRegistry"]


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
