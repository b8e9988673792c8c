"""Executor service: performs allowed and approved actions, each at most once.

consumes  <ns>.actions.decided (allowed) · <ns>.actions.resolved (approved)
produces  <ns>.actions.executed · <ns>.dlq
state     the execution ledger in PostgreSQL (started / finished per action id)
plugins   sql.query → sql (a temporary role per statement) · http.request → http (a token
          per call) · mcp.<server>.<tool> → mcp (the operator's upstream MCP server, called once) · iam.* → iam,
          db.rows.delete → deletion, db.export → export (a temporary role each) · what the catalog marks
          external → a signed receipt · anything else ends failed (no executor);
          see executor/plugins/base.py to add one
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from keyturn.bus import headers
from keyturn.bus.loop import Stage
from keyturn.bus.warrants import Warrants
from keyturn.config import Settings
from keyturn.core.events import ActionDecided, ApprovalResolved
from keyturn.db import open_pool, schema_name
from keyturn.executor.environments import PolicyEnvironments
from keyturn.executor.ledger import DDL, ExecutionLedger
from keyturn.executor.plugins import PluginRegistry
from keyturn.executor.results import ResultShaper
from keyturn.executor.runner import Executor, ExecutorStage
from keyturn.faults import supervised, until_done
from keyturn.masking.agreement import DDL as KEYRING_DDL
from keyturn.masking.agreement import start_only_in_agreement
from keyturn.masking.protect import keyring_for, parameter_opener
from keyturn.roots import follow_group, opa_client, stream_worker
from keyturn.secret_store import DDL as SECRETS_DDL
from keyturn.secret_store import PostgresSecretStore

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
    from keyturn.audit.keys import load_or_create_signing_key, write_public_key
    from keyturn.core.catalog import ExecutionModes
    from keyturn.executor.plugins.deletion import DeletionPlugin
    from keyturn.executor.plugins.export import ExportPlugin
    from keyturn.executor.plugins.external import ExternalPlugin
    from keyturn.executor.plugins.http import HttpPlugin, parse_connect_to
    from keyturn.executor.plugins.iam import IamPlugin
    from keyturn.executor.plugins.mcp import McpPlugin
    from keyturn.executor.plugins.sql import SqlPlugin
    from keyturn.faults import Unavailable
    from keyturn.mcp.upstream import parse_upstreams
    from keyturn.policy.opa import PolicyUnavailable
    from keyturn.receipts import ReceiptSigner
    from keyturn.roots import export_store, receipt_key_path, receipt_public_key_path

    target = settings.sql_target_url or settings.database_url
    sql_options: dict[str, Any] = {
        "statement_timeout_s": settings.sql_statement_timeout_s,
        "max_result_rows": settings.executor_max_result_rows,
        "credential_observer": credential_observer,
        "commands_at_once": settings.sql_commands_at_once,
        "serves": settings.sql_target_serves,
    }
    key_path = receipt_key_path(settings)
    receipt_key = load_or_create_signing_key(key_path)
    write_public_key(receipt_key.public_key(), receipt_public_key_path(settings))
    opa = opa_client(settings)

    async def load_modes() -> ExecutionModes:
        try:
            document = await opa.data("keyturn/execution")
        except PolicyUnavailable as exc:  # waited out at start, like any server outage
            raise Unavailable(str(exc)) from exc
        return ExecutionModes.from_data(document)

    iam = IamPlugin(target, **sql_options)
    # one-call HTTPS to allow-listed hosts: http.request, and an export delivered to its destination
    http = HttpPlugin.with_key_in(
        settings.keys_dir,
        allowed_hosts=frozenset(h.strip() for h in settings.http_allowed_hosts.split(",") if h.strip()),
        connect_to=parse_connect_to(settings.http_connect_to),
        ca_file=settings.http_ca_file,
        timeout_s=settings.http_timeout_s,
        credential_observer=credential_observer,
    )
    return PluginRegistry(
        {
            "sql.query": SqlPlugin(target, **sql_options),
            "iam.role.grant": iam,
            "iam.role.revoke": iam,
            "iam.permission.change": iam,
            "db.rows.delete": DeletionPlugin(target, **sql_options),
            "db.export": ExportPlugin(
                target, store=export_store(settings), ttl_s=settings.export_ttl_s, delivery=http, **sql_options
            ),
            "http.request": http,
            "mcp": McpPlugin(parse_upstreams(settings.mcp_upstreams), timeout_s=settings.executor_timeout_s),
        },
        external=ExternalPlugin(ReceiptSigner(receipt_key), default_ttl_s=settings.receipt_ttl_s),
        load_modes=load_modes,
    )


def create_app(settings: Settings, plugins: PluginRegistry | None = None):
    """The executor's composition root: its faust app, with everything it uses built here from
    ``settings``; ``plugins`` defaults to the shipped ones (``shipped_plugins``)."""
    app, topics, publisher = stream_worker(settings, "executor")
    keyring = keyring_for(settings.seal_keys, settings.keys_dir)  # opens sealed parameters, and warrants
    registry = plugins or shipped_plugins(settings)

    async def build_executor() -> Executor:
        ddl = DDL + SECRETS_DDL + KEYRING_DDL
        pool = await open_pool(settings.database_url, ddl, schema=schema_name(settings.namespace))
        await start_only_in_agreement(pool, "executor", keyring)
        results = ResultShaper(settings.executor_max_result_rows)
        await asyncio.to_thread(results.warm)
        await registry.start()
        if registry.load_modes is not None:
            registry.modes = await until_done(registry.load_modes, "executor: reading the catalog's execution modes")
        # a start's lease lasts half a worker's session: a dead executor's lease has lapsed before its
        # partitions move (a crash is handled no later than before), a live one's is renewed as it runs
        ledger = ExecutionLedger(
            pool, f"{socket.gethostname()}:{os.getpid()}", lease_s=settings.worker_session_timeout_s / 2
        )
        return Executor(
            ledger,
            registry,
            parameter_opener(keyring),
            publisher.encode,
            results,
            timeout_s=settings.executor_timeout_s,
            secrets=PostgresSecretStore(pool, keyring),
            environment_of=PolicyEnvironments(opa_client(settings)),
        )

    # its outcomes carry its warrant: the intake's status believes only the executor's (bus.warrants)
    publisher.warrants = Warrants(keyring, (topics.executed,))

    @app.task
    async def execute_orders():
        executor = ExecutorStage(
            await until_done(build_executor, "executor: opening the ledger"),
            publisher,
            # orders run only with the warrant of the service that makes them (bus.warrants)
            Warrants(keyring, (topics.decided, topics.resolved)),
        )
        stage = Stage(
            publisher,
            (ActionDecided, ApprovalResolved),
            handle=executor.execute,
            on_failure=executor.on_failure,
            handle_many=executor.execute_batch,
            wants=CLEARED_ORDERS,
        )
        await supervised(
            "executor: executing orders",
            lambda: follow_group(
                settings,
                "executor",
                "orders",
                (topics.decided, topics.resolved),
                stage,
                in_flight=settings.executor_batches_in_flight,
            ),
        )

    return app
