"""Executor service: performs allowed and approved actions, each at most once.

consumes  <ns>.actions.decided (allowed) · <ns>.actions.resolved (approved)
produces  <ns>.actions.executed · <ns>.dlq
state     the execution ledger in PostgreSQL (started / finished per action id)
plugins   sql.query → sql (a temporary role per statement) · http.request → http (a token
          per call) · anything else → noop; see executor/plugins/base.py to add one
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

from keyturn.bus.topics import Topics
from keyturn.bus.worker import consume, faust_publisher, handle_each, make_app
from keyturn.config import Settings
from keyturn.core.events import ActionDecided, ApprovalResolved
from keyturn.db import open_pool
from keyturn.executor.ledger import DDL, ExecutionLedger
from keyturn.executor.plugins import PluginRegistry
from keyturn.executor.results import ResultShaper
from keyturn.executor.runner import Executor, ExecutorStage
from keyturn.faults import until_done
from keyturn.masking.protect import keyring_for, parameter_opener

log = logging.getLogger(__name__)


def create_app(settings: Settings, plugins: PluginRegistry | None = None):
    """The executor's faust app; ``plugins`` defaults to the shipped ones configured from ``settings``."""
    app = make_app(settings, "executor")
    topics = Topics.from_settings(settings)
    publisher = faust_publisher(app, settings, "executor")
    registry = plugins or PluginRegistry.from_settings(settings)

    async def build_executor() -> Executor:
        pool = await open_pool(settings, DDL)
        results = ResultShaper(settings.executor_max_result_rows)
        await asyncio.to_thread(results.warm)
        await registry.start()
        ledger = ExecutionLedger(pool, f"{socket.gethostname()}:{os.getpid()}")
        return Executor(ledger, registry, parameter_opener(keyring_for(settings.seal_keys, settings.keys_dir)), publisher.encode, results, timeout_s=settings.executor_timeout_s)

    @app.agent(consume(app, topics.decided, topics.resolved))
    async def execute_orders(stream):
        stage = ExecutorStage(await until_done(build_executor, "executor: opening the ledger"), publisher)
        await handle_each(stream, publisher, stage.execute, accept=(ActionDecided, ApprovalResolved), on_failure=stage.on_failure)

    return app
