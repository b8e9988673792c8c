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
from tests.processes import ARTIFACTS, SERVICES, ServiceProcesses, free_port, settings_env  # noqa: F401


@pytest.fixture(scope="session")
def endpoints():
    """The real servers: env overrides, testcontainers (KEYTURN_TEST_DOCKER=1), or deploy/ scripts."""
    from tests.stack import ensure_stack

    found = ensure_stack()
    yield found
    stop = getattr(found, "stop", None)
    if stop:
        stop()


@pytest.fixture(scope="session")
def target_database(endpoints) -> Iterator[str]:
    """A SQL target of its own for this session (never Keyturn's state database): a database and
    its owner role, both named for the session, on the stack's PostgreSQL; dropped afterwards.

    The owner has CREATEROLE (the sql plugin and the impact preview make per-command roles) and
    CREATEDB only to create this database, as an operator's target owner would own its tables.
    """
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    name = f"kt_target_{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(24)
    with psycopg.connect(endpoints.database_url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {name} LOGIN CREATEROLE CREATEDB PASSWORD '{password}'")
    owner = conninfo_to_dict(endpoints.database_url) | {"user": name, "password": password}
    with psycopg.connect(make_conninfo(**owner), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = make_conninfo(**(owner | {"dbname": name}))
    try:
        yield url
    finally:
        try:
            with psycopg.connect(make_conninfo(**owner), autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            with psycopg.connect(endpoints.database_url, autocommit=True) as admin:
                admin.execute(f"DROP ROLE IF EXISTS {name}")
        except psycopg.Error as exc:  # left behind: named for the session, harmless to others
            print(f"target database {name} not dropped: {exc}")


@pytest.fixture(scope="session")
def settings(endpoints, target_database, tmp_path_factory) -> Settings:
    intake_port, approval_port = free_port(), free_port()
    return Settings(
        kafka_bootstrap=endpoints.kafka_bootstrap,
        opa_url=endpoints.opa_url,
        database_url=endpoints.database_url,
        namespace=f"kt{secrets.token_hex(4)}",
        run_dir=str(tmp_path_factory.mktemp("run")),
        intake_port=intake_port,
        approval_port=approval_port,
        intake_url=f"http://127.0.0.1:{intake_port}",
        approval_url=f"http://127.0.0.1:{approval_port}",
        policy_unavailable_after_s=10.0,
        sql_target_url=target_database,
        impact_preview_timeout_s=1.0,
        policy_metrics_port=free_port(),
        audit_metrics_port=free_port(),
        log_level="INFO",
    )


@pytest.fixture(scope="session")
def services(settings) -> Iterator[ServiceProcesses]:
    procs = ServiceProcesses(settings)
    try:
        procs.start_all(SERVICES)
        yield procs
    finally:
        procs.stop_all()
