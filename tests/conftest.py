"""Session fixtures: the real stack (Kafka, OPA, PostgreSQL) and the five services as processes.

Each test session gets its own namespace, so topics, consumer groups and SQL schemas never
mix with another run or with ``make run``.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from keyturn.config import Settings

# The process helpers live in tests/processes.py (make bench and the chaos tests use them too);
# they are re-exported here for the tests that import them from this module.
from tests.processes import (  # noqa: F401
    ARTIFACTS,
    SERVICES,
    ServiceProcesses,
    ensure_target_roles,
    forget_namespaces,
    free_port,
    mcp_notes_upstream,
    settings_env,
)

# The files that take longest (servers of their own, restarts, the fault drill), longest first.
# `make test` hands whole files to its workers in collection order (--no-loadscope-reorder), so
# these start at once instead of last: the drill alone is three minutes, and begun at the end it
# kept one worker busy while the other sat idle.
LONGEST_FIRST = (
    "tests/chaos/test_short_chaos.py",
    "tests/integration/test_intake_outages.py",
    "tests/integration/test_approval_faults.py",
    "tests/integration/test_approval_replicas.py",
    "tests/integration/test_executor_crash.py",
    "tests/integration/test_data_protection.py",
    "tests/integration/test_approval_slack.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: every other file keeps its place and its tests their order


@pytest.fixture(scope="session")
def endpoints():
    """The real servers: env overrides, testcontainers (KEYTURN_TEST_DOCKER=1), or deploy/ scripts."""
    from tests.stack import ensure_stack

    found = ensure_stack()
    yield found
    stop = getattr(found, "stop", None)
    if stop:
        stop()


@pytest.fixture(scope="session", autouse=True)
def _forget_namespaces_at_end() -> Iterator[None]:
    """Set up before, so torn down after, every fixture that starts services."""
    yield
    forget_namespaces()


@pytest.fixture(scope="session")
def namespace() -> str:
    return f"kt{secrets.token_hex(4)}"


@pytest.fixture(scope="session")
def target_database(endpoints, namespace: str) -> Iterator[str]:
    """The SQL target the session's executor acts on: a database of its own (never Keyturn's state),
    created by the state database's role (CREATEROLE, CREATEDB) and dropped at the end."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = f"{namespace}_target"
    with psycopg.connect(endpoints.database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    ensure_target_roles(endpoints.database_url)
    url = make_conninfo(**{**conninfo_to_dict(endpoints.database_url), "dbname": name})
    try:
        yield url
    finally:
        with psycopg.connect(endpoints.database_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def settings(endpoints, namespace: str, target_database: str, tmp_path_factory) -> Settings:
    intake_port, approval_port = free_port(), free_port()
    run_dir = tmp_path_factory.mktemp("run")
    return Settings(
        kafka_bootstrap=endpoints.kafka_bootstrap,
        opa_url=endpoints.opa_url,
        database_url=endpoints.database_url,
        sql_target_url=target_database,
        # the tests' one target plays both environments their resources name (Settings.sql_target_serves)
        sql_target_environments="staging,production",
        namespace=namespace,
        run_dir=str(run_dir),
        intake_port=intake_port,
        approval_port=approval_port,
        intake_url=f"http://127.0.0.1:{intake_port}",
        approval_url=f"http://127.0.0.1:{approval_port}",
        policy_unavailable_after_s=10.0,
        impact_preview_timeout_s=1.0,
        policy_metrics_port=free_port(),
        audit_metrics_port=free_port(),
        log_level="INFO",
        # the executor forwards approved mcp.notes.* calls to the demo upstream the MCP tests put behind the proxy
        mcp_upstreams=mcp_notes_upstream(run_dir / "mcp-notes"),
    )


@pytest.fixture(scope="session")
def services(settings) -> Iterator[ServiceProcesses]:
    procs = ServiceProcesses(settings)
    try:
        procs.start_all(SERVICES)
        yield procs
    finally:
        procs.stop_all()
