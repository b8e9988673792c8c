"""Plugins by action prefix: ``sql.query`` → sql, ``http.request`` → http; anything else runs ``noop``.

To add one, write a class following ``base.Plugin`` and register it under its action prefix
in ``PluginRegistry.from_settings`` (the longest matching prefix wins).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from keyturn.config import Settings
from keyturn.executor.plugins.base import Command, ExecutionFailed, OutcomeUnknown, Plugin
from keyturn.executor.plugins.noop import NoopPlugin

__all__ = ["Command", "ExecutionFailed", "OutcomeUnknown", "Plugin", "PluginRegistry"]

log = logging.getLogger(__name__)


class PluginRegistry:
    """Chooses the plugin for an action: the longest registered prefix wins."""

    def __init__(self, plugins: dict[str, Plugin] | None = None, default: Plugin | None = None) -> None:
        self.plugins = dict(plugins or {})
        self.default = default or NoopPlugin()

    @classmethod
    def from_settings(cls, settings: Settings, *, credential_observer: Callable[[str], None] | None = None) -> "PluginRegistry":
        """The shipped plugins, configured from ``settings``.

        ``credential_observer`` sees every credential minted (tests use it to prove that
        none leaks); production passes nothing.
        """
        from keyturn.executor.plugins.http import HttpPlugin
        from keyturn.executor.plugins.sql import SqlPlugin

        return cls({
            "sql.query": SqlPlugin(
                settings.sql_target_url or settings.database_url,
                statement_timeout_s=settings.sql_statement_timeout_s,
                max_result_rows=settings.executor_max_result_rows,
                credential_observer=credential_observer,
            ),
            "http.request": HttpPlugin.from_settings(settings, credential_observer=credential_observer),
        })

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
