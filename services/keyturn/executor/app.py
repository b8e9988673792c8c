"""Executor service: performs allowed and approved actions, each at most once.

consumes  <ns>.actions.decided (allowed) · <ns>.actions.resolved (approved)
produces  <ns>.actions.executed · <ns>.dlq
state     the execution ledger in PostgreSQL (started / finished per action id)
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import datetime, timezone

from keyturn.bus.topics import Topics, ensure_topics
from keyturn.bus.worker import consume, decoded_events, faust_publisher, make_app
from keyturn.config import Settings
from keyturn.core.events import ActionDecided, ApprovalResolved
from keyturn.core.execution import order_from
from keyturn.db import open_pool
from keyturn.executor.ledger import DDL, ExecutionLedger
from keyturn.executor.plugins import PluginRegistry
from keyturn.executor.runner import Executor
from keyturn.masking.protect import parameter_opener

log = logging.getLogger(__name__)


def create_app(settings: Settings):
    app = make_app(settings, "executor")
    topics = Topics.from_settings(settings)
    publisher = faust_publisher(app, settings, "executor")

    async def build_executor() -> Executor:
        await ensure_topics(settings)
        pool = await open_pool(settings, DDL)
        ledger = ExecutionLedger(pool, f"{socket.gethostname()}:{os.getpid()}")
        return Executor(ledger, PluginRegistry(), parameter_opener(settings))

    @app.agent(consume(app, topics.decided, topics.resolved))
    async def execute_orders(stream):
        executor = await build_executor()
        async for event, _ in decoded_events(stream, publisher, accept=(ActionDecided, ApprovalResolved)):
            order = order_from(event)
            if order is None:
                continue
            executed, recorded = await executor.execute(order)
            encoded = recorded or publisher.encode(executed)
            if recorded is None:
                await executor.ledger.finish(order.action_id, executed.outcome.value, encoded, datetime.now(timezone.utc))
            log.info("executed %s: %s", order.action_id, executed.outcome.value)
            await publisher.publish_encoded(topics.executed, order.action_id, encoded)

    return app
