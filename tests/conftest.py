"""Session fixtures: the real stack (Kafka, OPA, PostgreSQL) and the five services as processes.

Each test session gets its own namespace, so topics, consumer groups and SQL schemas never
mix with another run or with ``make run``.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from keyturn.config import REPO_ROOT, Settings

ARTIFACTS = REPO_ROOT / "tests" / "artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
def settings(endpoints, tmp_path_factory) -> Settings:
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
        log_level="INFO",
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process use ``settings``."""
    from dataclasses import fields

    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYTURN_")}
    env.update({f"KEYTURN_{f.name.upper()}": str(getattr(settings, f.name)) for f in fields(settings)})
    env["PYTHONPATH"] = str(REPO_ROOT / "services")
    return env


class ServiceProcesses:
    """The five services as child processes, each logging to tests/artifacts/logs/<name>.log."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.procs: dict[str, subprocess.Popen] = {}
        self.log_dir = ARTIFACTS / "logs" / settings.namespace
        self.log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, service: str | None = None) -> None:
        """Start ``service`` (default: ``name``) as the process called ``name``."""
        log = (self.log_dir / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "keyturn.cli", "serve", service or name],
            env=settings_env(self.settings), stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
        )

    def stop(self, name: str, *, kill: bool = False) -> None:
        proc = self.procs.pop(name)
        if kill:
            proc.kill()
        else:
            proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def wait_http(self, url: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}; see {self.log_dir / (name + '.log')}")
            try:
                if httpx.get(url, timeout=1).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"{url} did not answer within {timeout}s; logs in {self.log_dir}")


@pytest.fixture(scope="session")
def services(settings) -> Iterator[ServiceProcesses]:
    procs = ServiceProcesses(settings)
    for name in ("intake", "policy", "approval", "executor", "audit"):
        procs.start(name)
    try:
        procs.wait_http(f"{settings.intake_url}/healthz")
        procs.wait_http(f"{settings.approval_url}/healthz")
        yield procs
    finally:
        procs.stop_all()
