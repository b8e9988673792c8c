"""Endpoints of the real Kafka, OPA and PostgreSQL servers that integration tests talk to.

`ensure_stack()` picks, in order:

1. the environment: KEYTURN_KAFKA_BOOTSTRAP, KEYTURN_OPA_URL, KEYTURN_DATABASE_URL, when all
   three are set (nothing is started);
2. containers, when KEYTURN_TEST_DOCKER=1 and a container engine answers;
3. the local servers of `deploy/stack.sh up` (which itself honours any of the three variables
   that is set, and the KEYTURN_*_PORT / KEYTURN_RUN settings).

Plain functions, no fixtures: conftest.py decides the scope and calls `Endpoints.stop`.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STACK_SCRIPT = REPO / "deploy" / "stack.sh"
POLICIES = REPO / "policies.rego"
ENDPOINT_VARIABLES = ("KEYTURN_KAFKA_BOOTSTRAP", "KEYTURN_OPA_URL", "KEYTURN_DATABASE_URL")

KAFKA_IMAGE = "apache/kafka:4.1.1"
OPA_IMAGE = "openpolicyagent/opa:1.22.3"
POSTGRES_IMAGE = "postgres:16"


def _nothing_to_stop() -> None:
    pass


@dataclass(frozen=True)
class Endpoints:
    """Where the servers are; `stop()` undoes whatever `ensure_stack` started."""

    kafka_bootstrap: str
    opa_url: str
    database_url: str
    stop: Callable[[], None] = field(default=_nothing_to_stop, compare=False, repr=False)


class StackUnavailable(RuntimeError):
    """The servers could not be started; the message carries the scripts' output."""


def ensure_stack() -> Endpoints:
    """Return endpoints of running servers, starting what is missing (see the module doc)."""
    if all(os.environ.get(name) for name in ENDPOINT_VARIABLES):
        return Endpoints(*(os.environ[name] for name in ENDPOINT_VARIABLES))
    if os.environ.get("KEYTURN_TEST_DOCKER") == "1":
        if _container_engine_answers():
            return _start_containers()
        warnings.warn("KEYTURN_TEST_DOCKER=1 but no container engine answers; using deploy/stack.sh", stacklevel=2)
    return _start_local_stack()


# --- local servers (deploy/*.sh) -------------------------------------------------------------


def _run_script(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(STACK_SCRIPT), *args], capture_output=True, text=True, cwd=REPO, check=False)
    if check and result.returncode != 0:
        raise StackUnavailable(
            f"deploy/stack.sh {' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
        )
    return result


def _start_local_stack() -> Endpoints:
    already_up = _run_script("env", check=False).returncode == 0
    _run_script("up")
    exported = _parse_exports(_run_script("env").stdout)

    def stop() -> None:
        # Leave a stack that was already running (a developer's, or a previous session's) alone.
        if not already_up:
            _run_script("down")

    return Endpoints(*(exported[name] for name in ENDPOINT_VARIABLES), stop=stop)


def _parse_exports(text: str) -> dict[str, str]:
    """Parse `export NAME=value` lines as printed by `deploy/stack.sh env`."""
    exported = {}
    for line in text.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            name, value = words[1].split("=", 1)
            exported[name] = value
    missing = [name for name in ENDPOINT_VARIABLES if name not in exported]
    if missing:
        raise StackUnavailable(f"deploy/stack.sh env did not print {missing}:\n{text}")
    return exported


# --- containers ------------------------------------------------------------------------------


def _container_engine_answers() -> bool:
    try:
        import docker

        client = docker.from_env()
    except Exception:  # no client library, no socket, engine down: all mean "use local servers"
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_containers() -> Endpoints:
    """Start a container for each server that no KEYTURN_* variable already names."""
    from testcontainers.community.postgres import PostgresContainer
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.docker_client import DockerClient
    from testcontainers.core.wait_strategies import HttpWaitStrategy, LogMessageWaitStrategy

    started: list[DockerContainer] = []

    def stop() -> None:
        for container in reversed(started):
            container.stop()

    try:
        kafka_bootstrap = os.environ.get("KEYTURN_KAFKA_BOOTSTRAP")
        if not kafka_bootstrap:
            # Clients must be told the host-side address, so the host port is fixed up front.
            host, port = DockerClient().host(), _free_port()
            kafka = (
                DockerContainer(KAFKA_IMAGE)
                .with_bind_ports(9092, port)
                .with_envs(
                    KAFKA_NODE_ID="1",
                    KAFKA_PROCESS_ROLES="broker,controller",
                    KAFKA_LISTENERS="PLAINTEXT://:9092,CONTROLLER://:9093",
                    KAFKA_ADVERTISED_LISTENERS=f"PLAINTEXT://{host}:{port}",
                    KAFKA_CONTROLLER_LISTENER_NAMES="CONTROLLER",
                    KAFKA_LISTENER_SECURITY_PROTOCOL_MAP="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    KAFKA_CONTROLLER_QUORUM_VOTERS="1@localhost:9093",
                    KAFKA_NUM_PARTITIONS="4",
                    KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR="1",
                    KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR="1",
                    KAFKA_TRANSACTION_STATE_LOG_MIN_ISR="1",
                    KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS="0",
                    KAFKA_AUTO_CREATE_TOPICS_ENABLE="false",
                )
                .waiting_for(LogMessageWaitStrategy("Kafka Server started"))
            )
            started.append(kafka)  # before start(), so a failed wait still removes it
            kafka.start()
            kafka_bootstrap = f"{host}:{port}"

        opa_url = os.environ.get("KEYTURN_OPA_URL")
        if not opa_url:
            opa = (
                DockerContainer(OPA_IMAGE)
                .with_command("run --server --addr 0.0.0.0:8181 --watch /policies")
                .with_volume_mapping(str(POLICIES), "/policies", "ro")
                .with_exposed_ports(8181)
                .waiting_for(HttpWaitStrategy(8181, "/health"))
            )
            started.append(opa)
            opa.start()
            opa_url = f"http://{opa.get_container_host_ip()}:{opa.get_exposed_port(8181)}"

        database_url = os.environ.get("KEYTURN_DATABASE_URL")
        if not database_url:
            postgres = PostgresContainer(POSTGRES_IMAGE, username="keyturn", password="keyturn", dbname="keyturn")
            started.append(postgres)
            postgres.start()
            database_url = postgres.get_connection_url(driver=None)
    except BaseException:
        stop()
        raise

    return Endpoints(kafka_bootstrap, opa_url, database_url, stop=stop)
