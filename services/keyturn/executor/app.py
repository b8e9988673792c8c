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
from collections.abc import Callable

from keyturn.bus import headers
from keyturn.bus.worker import consume, handle_each
from keyturn.config import Settings
from keyturn.core.events import ActionDecided, ApprovalResolved
from keyturn.db import open_pool, schema_name
from keyturn.executor.ledger import DDL, ExecutionLedger
from keyturn.executor.plugins import PluginRegistry
from keyturn.executor.results import ResultShaper
from keyturn.executor.runner import Executor, ExecutorStage
from keyturn.faults import until_done
from keyturn.masking.protect import keyring_for, parameter_opener
from keyturn.roots import stream_worker

log = logging.getLogger(__name__)

# Only allowed decisions and approved resolutions are orders; the rest are skipped undecoded.
CLEARED_ORDERS = headers.wanting(
    {"ActionDecided": headers.outcome_in("allowed"), "ApprovalResolved": headers.outcome_in("approved")}
)


def shipped_plugins(settings: Settings, *, credential_observer: Callable[[str], None] | None = None) -> PluginRegistry:
    """The shipped plugins, configured from ``settings``.

    ``credential_observer`` sees every credential minted (tests use it to prove that none
    leaks); production passes nothing.
    """
    from keyturn.executor.plugins.http import HttpPlugin, parse_connect_to
    from keyturn.executor.plugins.sql import SqlPlugin

    return PluginRegistry(
        {
            "sql.query": SqlPlugin(
                settings.sql_target_url or settings.database_url,
                statement_timeout_s=settings.sql_statement_timeout_s,
                max_result_rows=settings.executor_max_result_rows,
                credential_observer=credential_observer,
            ),
            "http.request": HttpPlugin.with_key_in(
                settings.keys_dir,
                allowed_hosts=frozenset(h.strip() for h in settings.http_allowed_hosts.split(",") if h.strip()),
                connect_to=parse_connect_to(settings.http_connect_to),
                ca_file=settings.http_ca_file,
                timeout_s=settings.http_timeout_s,
                credential_observer=credential_observer,
            ),
        }
    )


def create_app(settings: Settings, plugins: PluginRegistry | None = None):
    """The executor's composition root: its faust app, with everything it uses built here from
    ``settings``; ``plugins`` defaults to the shipped ones (``shipped_plugins``)."""
    app, topics, publisher = stream_worker(settings, "executor")
    registry = plugins or shipped_plugins(settings)

    async def build_executor() -> Executor:
        pool = await open_pool(settings.database_url, DDL, schema=schema_name(settings.namespace))
        results = ResultShaper(settings.executor_max_result_rows)
        await asyncio.to_thread(results.warm)
        await registry.start()
        ledger = ExecutionLedger(pool, f"{socket.gethostname()}:{os.getpid()}")
        return Executor(
            ledger,
            registry,
            parameter_opener(keyring_for(settings.seal_keys, settings.keys_dir)),
            publisher.encode,
            results,
            timeout_s=settings.executor_timeout_s,
        )

    @app.agent(consume(app, topics.decided, topics.resolved))
    async def execute_orders(stream):
        stage = ExecutorStage(await until_done(build_executor, "executor: opening the ledger"), publisher)
        await handle_each(
            stream,
            publisher,
            stage.execute,
            accept=(ActionDecided, ApprovalResolved),
            on_failure=stage.on_failure,
            handle_many=stage.execute_batch,
            wants=CLEARED_ORDERS,
        )

    return app
