"""Runs one cleared order at most once and describes what happened as an ``ActionExecuted``."""

from __future__ import annotations

import asyncio

import logging
from datetime import datetime, timezone
from typing import Any

from keyturn.core.events import ActionExecuted, ExecutionOutcome, canonical_json
from keyturn.core.execution import ExecutionOrder, refusal_reason
from keyturn.executor.ledger import ExecutionLedger
from keyturn.executor.plugins import Command, ExecutionFailed, PluginRegistry

log = logging.getLogger(__name__)


class Executor:
    def __init__(self, ledger: ExecutionLedger, plugins: PluginRegistry, open_parameters: Any, *, timeout_s: float = 60.0) -> None:
        self.ledger = ledger
        self.plugins = plugins
        self.open_parameters = open_parameters  # (request) -> clear parameters; refuses tampered seals
        self.timeout_s = timeout_s

    async def execute(self, order: ExecutionOrder) -> tuple[ActionExecuted, bytes | None]:
        """(the outcome, or the encoded outcome recorded earlier for a redelivered order)."""
        now = datetime.now(timezone.utc)
        request = order.decision.request
        plugin = self.plugins.plugin_for(request.action)
        earlier = await self.ledger.start(order.action_id, now)
        if earlier is not None:
            if earlier.executed_event is not None:
                return self._outcome(order, plugin.name, ExecutionOutcome(earlier.outcome), earlier.started_at, error=None), earlier.executed_event
            unknown = self._outcome(
                order, plugin.name, ExecutionOutcome.OUTCOME_UNKNOWN, earlier.started_at,
                error=f"started at {earlier.started_at.isoformat()} by {earlier.executor} and never finished; not run again",
            )
            return unknown, None
        refusal = refusal_reason(order, now)
        if refusal is not None:
            return self._outcome(order, plugin.name, ExecutionOutcome.FAILED, now, error=f"refused before execution: {refusal}"), None
        try:
            command = Command(order.action_id, request.action, request.resource, self.open_parameters(request), order.decision.credential_ttl_s)
            result = await asyncio.wait_for(plugin.execute(command), self.timeout_s)
        except ExecutionFailed as exc:
            return self._outcome(order, plugin.name, ExecutionOutcome.FAILED, now, error=str(exc)), None
        except asyncio.TimeoutError:
            return self._outcome(order, plugin.name, ExecutionOutcome.FAILED, now, error=f"timed out after {self.timeout_s:.0f}s"), None
        except Exception as exc:  # a plugin bug is a failed action, never a crash loop that re-runs it
            log.exception("plugin %s failed on %s", plugin.name, order.action_id)
            return self._outcome(order, plugin.name, ExecutionOutcome.FAILED, now, error=f"{type(exc).__name__}: {exc}"), None
        return self._outcome(order, plugin.name, ExecutionOutcome.SUCCEEDED, now, result=result), None

    @staticmethod
    def _outcome(order: ExecutionOrder, plugin: str, outcome: ExecutionOutcome, started_at: datetime, *, error: str | None = None, result: Any = None) -> ActionExecuted:
        return ActionExecuted(
            event_id=f"executed:{order.action_id}",
            action_id=order.action_id,
            outcome=outcome,
            plugin=plugin,
            payload_digest=order.payload_digest,
            started_at=started_at,
            finished_at=datetime.now(timezone.utc),
            result_json=canonical_json(result) if result is not None else None,
            error=error,
        )


