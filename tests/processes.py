"""Keyturn's services and servers as processes this run owns: shared by the test fixtures, the
chaos tests (tests/chaos/) and ``make bench`` (bench/), so all three start things the same way.

``ServiceProcesses``  the five services (or extra workers of one) as child processes.
``PrivateServers``    a Kafka + OPA + PostgreSQL of this run's own, through deploy/*.sh, on free
                      ports and in its own KEYTURN_RUN, so stopping or restarting one of them never
                      touches the shared development servers or another engineer's run.
"""

from __future__ import annotations

import atexit
import functools
import io
import multiprocessing
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import httpx

from keyturn.config import REPO_ROOT, Settings

ARTIFACTS = REPO_ROOT / "tests" / "artifacts"
SERVICES = ("intake", "policy", "approval", "executor", "audit")
SERVERS = ("kafka", "opa", "postgres")

# What every service imports before it does anything: the masker's NLP stack alone is ~2 of the
# ~3.3 CPU-seconds a service spends importing, and a test run starts services about a hundred
# times; then ``tests.prebuilt`` builds what each would build again as it starts. Not
# ``keyturn.cli``: its consoles size themselves from the environment when it is imported, so
# each child imports it (8 ms once these are in).
PRELOADED = ("typer", *(f"keyturn.{service}.app" for service in SERVICES), "tests.prebuilt")


@functools.cache
def _listening_range() -> range:
    """Ports for what this run listens on: below the range the kernel takes the local ends of
    outgoing connections from (``ip_local_port_range``). A server the drills stop and start again
    on its port (Kafka, an intake) could not bind it if, while it was down, a client's connection
    to anything had been handed that port as its own end: the short drill's broker once failed to
    start again that way ("Socket server failed to bind to 127.0.0.1:<controller port>")."""
    try:
        first_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        first_ephemeral = 32768
    return range(15000, first_ephemeral - 1) if first_ephemeral > 16000 else range(0)  # a pair fits below


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, outside the ephemeral range
    (:func:`_listening_range`) where the system has one."""
    ports = _listening_range()
    for _ in range(200 if ports else 0):
        port = ports[secrets.randbelow(len(ports))]  # not ``random``: tests may seed it alike
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_pair() -> int:
    """A free port whose successor is free too (Kafka's controller listens on port + 1)."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports found on 127.0.0.1")


def run_settings(
    prefix: str, run_dir: Path, *, kafka_bootstrap: str, opa_url: str, database_url: str, **extra: Any
) -> Settings:
    """Settings for services this run starts: a fresh namespace ``<prefix><hex>``, a free port for
    everything they listen on (so runs never collide), INFO logs; ``extra`` overrides."""
    intake_port, approval_port = free_port(), free_port()
    values: dict[str, Any] = dict(
        kafka_bootstrap=kafka_bootstrap,
        opa_url=opa_url,
        database_url=database_url,
        namespace=f"{prefix}{secrets.token_hex(3)}",
        run_dir=str(run_dir),
        intake_port=intake_port,
        approval_port=approval_port,
        intake_url=f"http://127.0.0.1:{intake_port}",
        approval_url=f"http://127.0.0.1:{approval_port}",
        policy_metrics_port=free_port(),
        audit_metrics_port=free_port(),
        log_level="INFO",
        # the tests' one database plays the target of both environments their resources name; a
        # deployment's target serves its own (``Settings.sql_target_serves``)
        sql_target_environments="staging,production",
    )
    return Settings(**{**values, **extra})


def run_settings_on(endpoints: Any, run_dir: Path, prefix: str = "kt", **extra: Any) -> Settings:
    """``run_settings`` on the shared servers (the ``endpoints`` fixture)."""
    return run_settings(
        prefix,
        run_dir,
        kafka_bootstrap=endpoints.kafka_bootstrap,
        opa_url=endpoints.opa_url,
        database_url=endpoints.database_url,
        **extra,
    )


MCP_NOTES = REPO_ROOT / "tests" / "fakes" / "mcp_notes.py"


def mcp_notes_upstream(notes_dir: Path) -> str:
    """``KEYTURN_MCP_UPSTREAMS`` for the demo notes server kept in ``notes_dir`` (created here)."""
    import json

    notes_dir.mkdir(parents=True, exist_ok=True)
    return json.dumps({"notes": {"command": [sys.executable, str(MCP_NOTES)], "env": {"NOTES_DIR": str(notes_dir)}}})


#: (Kafka bootstrap, database URL, namespace) of each namespace this process started services in.
_STARTED_IN: set[tuple[str, str, str]] = set()


def own_namespace(settings: Settings, suffix: str) -> Settings:
    """``settings`` in a namespace of its own, ``<namespace><suffix>``: topics, groups and
    transactional ids no running service shares; forgotten with this process's others."""
    own = replace(settings, namespace=f"{settings.namespace}{suffix}")
    _STARTED_IN.add((own.kafka_bootstrap, own.database_url, own.namespace))
    return own


def forget_namespaces() -> None:
    """Delete the topics and SQL schemas of the namespaces this process started services in (or
    made with :func:`own_namespace`), on the servers that still answer. A run makes dozens of
    namespaces of ~8 topics of 8 partitions each, and a development broker kept them all, run
    after run (1,150 topics after two), so every client's metadata answer and every start grew.
    Servers of a run's own (``PrivateServers``) are gone by then and skipped; nothing another run
    or ``make run`` uses is touched, as only namespaces made here are named."""
    import asyncio

    import psycopg
    from aiokafka.admin import AIOKafkaAdminClient
    from psycopg import sql

    from keyturn.db import schema_name

    def answers(address: str) -> bool:
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
        except (OSError, ValueError):
            return False
        return True

    async def delete_topics(bootstrap: str, namespaces: set[str]) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30_000)
        await admin.start()
        try:
            doomed = [t for t in await admin.list_topics() if any(t.startswith((f"{n}.", f"{n}-")) for n in namespaces)]
            for at in range(0, len(doomed), 50):
                await admin.delete_topics(doomed[at : at + 50], timeout_ms=30_000)
        finally:
            await admin.close()

    by_bootstrap: dict[str, set[str]] = {}
    by_database: dict[str, set[str]] = {}
    for bootstrap, database_url, namespace in _STARTED_IN:
        by_bootstrap.setdefault(bootstrap, set()).add(namespace)
        by_database.setdefault(database_url, set()).add(namespace)
    _STARTED_IN.clear()
    for bootstrap, namespaces in by_bootstrap.items():
        if answers(bootstrap.split(",")[0]):
            try:
                asyncio.run(delete_topics(bootstrap, namespaces))
            except Exception as exc:  # housekeeping: a run's result never depends on it
                print(f"topics of {sorted(namespaces)} not deleted: {exc!r}", file=sys.stderr)
    for database_url, namespaces in by_database.items():
        try:
            # a lock a straggling connection holds ends the wait, not the run
            with psycopg.connect(database_url, autocommit=True, connect_timeout=2, options="-c lock_timeout=5s") as db:
                drop = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE")
                for namespace in namespaces:
                    db.execute(drop.format(sql.Identifier(schema_name(namespace))))
        except psycopg.Error as exc:
            print(f"schemas of {sorted(namespaces)} not dropped: {exc!r}", file=sys.stderr)


def settings_env(settings: Settings, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment that makes a child process use ``settings`` (plus ``extra`` variables)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYTURN_")}
    env.update({f"KEYTURN_{f.name.upper()}": str(getattr(settings, f.name)) for f in fields(settings)})
    env["PYTHONPATH"] = str(REPO_ROOT / "services")
    env["COLUMNS"] = "400"  # the CLI's console wraps at the terminal width; tests read whole sentences
    env.update(extra or {})
    return env


def stop_process(proc: ServiceProcess, grace_s: float = 20) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``grace_s``; wait for it either way."""
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def rss_bytes(pid: int) -> int:
    """Resident memory of one process (VmRSS), 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _become(env: dict[str, str], cwd: str, stdout: str, stderr: str) -> None:
    """In a child of the fork server: take the environment, working directory and output files a
    process started by a shell would have (stdout and stderr appended to files, stdin empty)."""
    for target, path in ((1, stdout), (2, stderr)):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(fd, target)
        os.close(fd)
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", line_buffering=True)
    sys.stderr = io.TextIOWrapper(
        io.FileIO(2, "w", closefd=False), encoding="utf-8", errors="backslashreplace", line_buffering=True
    )
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)


def _keyturn_forked(args: list[str], env: dict[str, str], cwd: str, stdout: str, stderr: str) -> None:
    """``keyturn <args>`` in a child of the fork server, ending as an interpreter ends: its exit
    handlers run (the fork server's child leaves with ``os._exit``, which would skip them), and
    its ``SystemExit`` code is the child's exit code."""
    _become(env, cwd, stdout, stderr)
    sys.argv = ["keyturn", *args]
    # what a service that must start over re-executes (``cli._run_worker``): the command this
    # child stands for, not the fork server's own
    sys.orig_argv = [sys.executable, "-m", "keyturn.cli", *args]
    from keyturn.cli import app

    try:
        app(args=args, prog_name="python -m keyturn.cli")  # as click names what it was started as
    finally:
        atexit._run_exitfuncs()


def _fork(args: list[str], env: dict[str, str], cwd: Path, stdout: Path, stderr: Path) -> ForkedService:
    for path in (stdout, stderr):  # there when this returns, as a shell's redirection makes them
        path.touch()
    process = _fork_server().Process(
        target=_keyturn_forked, args=(args, env, str(cwd), str(stdout), str(stderr)), name=args[0]
    )
    process.start()
    return ForkedService(process)


def run_keyturn(
    args: list[str], *, env: dict[str, str], cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``keyturn <args>`` run to its end as a process of its own (forked from the preloaded fork
    server), its output captured: what ``subprocess.run(..., capture_output=True, text=True)``
    returns for ``python -m keyturn.cli <args>``."""
    with tempfile.TemporaryDirectory(prefix="keyturn-cli-") as scratch:
        stdout, stderr = Path(scratch) / "stdout", Path(scratch) / "stderr"
        child = _fork(args, env, cwd, stdout, stderr)
        try:
            code = child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(10)
            raise
        out, err = (path.read_text("utf-8", errors="replace") for path in (stdout, stderr))  # made by _fork
        return subprocess.CompletedProcess(["keyturn", *args], code, out, err)


class ForkedService:
    """A service or command forked from the preloaded fork server, answering as the
    ``subprocess.Popen`` of an exec'd one does: ``pid``, ``poll``, ``wait``, ``returncode`` (negative: the signal that
    ended it), ``terminate``, ``kill``."""

    def __init__(self, process: multiprocessing.process.BaseProcess) -> None:
        self._process = process

    @property
    def pid(self) -> int:
        assert self._process.pid is not None
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            # named by its subcommand only: its arguments may be anything a test passes
            raise subprocess.TimeoutExpired(f"keyturn {self._process.name} (pid {self.pid})", timeout or 0)
        return self._process.exitcode

    def terminate(self) -> None:
        self._process.terminate()

    def kill(self) -> None:
        self._process.kill()


_FORK_SERVER: multiprocessing.context.ForkServerContext | None = None


def _fork_server() -> multiprocessing.context.ForkServerContext:
    """Python's fork server, started once per test process with every service module imported:
    each service is then a fork of it, a process of its own, without the import. The modules read
    no settings when imported (``Settings.from_env`` is called by ``serve``), and import makes no
    event loop, thread or connection, so a fork starts as clean as an exec."""
    global _FORK_SERVER
    if _FORK_SERVER is None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(list(PRELOADED))
        _FORK_SERVER = context
    return _FORK_SERVER


ServiceProcess = subprocess.Popen | ForkedService


def start_service(
    service: str, *, env: dict[str, str], log_path: Path, cwd: Path, preloaded: bool = True
) -> ServiceProcess:
    """``keyturn serve <service>`` with ``env``, run in ``cwd`` and appending its output to
    ``log_path``: forked from the preloaded fork server (:func:`_fork_server`), or with
    ``preloaded=False`` a fresh interpreter, as a deployment starts it."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if preloaded:
        return _fork(["serve", service], env, cwd, log_path, log_path)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "keyturn.cli", "serve", service],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
        )


class ServiceProcesses:
    """Services as child processes, each logging to ``<log_dir>/<name>.log``.

    Each process runs with its log directory as working directory, so what a worker writes
    next to itself (faust's ``<app>-data`` folders) stays with its logs, not in the checkout.

    ``preloaded`` (the tests' way) forks each service from a server that has imported them all
    (:func:`_fork_server`), sparing each start its ~3 CPU-seconds of imports; without it
    (the bench's way, which measures processes as a deployment runs them) each is
    ``python -m keyturn.cli serve <service>``, a fresh interpreter.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        log_dir: Path | None = None,
        env: dict[str, str] | None = None,
        preloaded: bool = True,
    ) -> None:
        self.settings = settings
        self.env = dict(env or {})
        self.preloaded = preloaded
        self.procs: dict[str, ServiceProcess] = {}
        self.services: dict[str, str] = {}  # process name -> service it runs
        self.log_dir = log_dir or ARTIFACTS / "logs" / settings.namespace
        self.log_dir.mkdir(parents=True, exist_ok=True)
        _STARTED_IN.add((settings.kafka_bootstrap, settings.database_url, settings.namespace))

    def start(self, name: str, service: str | None = None) -> None:
        """Start ``service`` (default: ``name``) as the process called ``name``."""
        service = service or self.services.get(name) or name
        self.services[name] = service
        self.procs[name] = start_service(
            service,
            env=settings_env(self.settings, self.env),
            log_path=self.log_dir / f"{name}.log",
            cwd=self.log_dir,
            preloaded=self.preloaded,
        )

    def start_all(self, names: tuple[str, ...] = SERVICES, *, timeout: float = 90) -> None:
        """Start ``names`` and wait until the intake and the approval desk answer."""
        for name in names:
            self.start(name)
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 90) -> None:
        """Wait for the HTTP services that are running to answer /healthz."""
        if "intake" in self.procs:
            self.wait_http(f"{self.settings.intake_url}/healthz", timeout)
        if "approval" in self.procs:
            self.wait_http(f"{self.settings.approval_url}/healthz", timeout)

    def stop(self, name: str, *, kill: bool = False) -> None:
        """SIGTERM (or SIGKILL with ``kill``) one process and wait for it."""
        proc = self.procs.pop(name)
        if kill:
            proc.kill()
            proc.wait(5)
        else:
            stop_process(proc)

    def restart(self, name: str, *, kill: bool = False, timeout: float = 90) -> None:
        """Stop one process (SIGKILL with ``kill``), start it again, wait until it answers."""
        self.stop(name, kill=kill)
        self.start(name)
        if self.services[name] in ("intake", "approval"):
            self.wait_ready(timeout)

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def rss(self) -> dict[str, int]:
        """Resident memory of every running process, by name."""
        return {name: rss_bytes(proc.pid) for name, proc in self.procs.items()}

    def exited(self) -> dict[str, int]:
        """Processes that exited on their own, with their exit codes."""
        return {name: proc.returncode for name, proc in self.procs.items() if proc.poll() is not None}

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


class ServerScriptFailed(RuntimeError):
    """A deploy/*.sh command failed; the message carries its output."""


# Roles the walk-through, the tests, the bench and the drills grant on the SQL target. Roles belong
# to the whole PostgreSQL cluster, not to one database: they are created when missing and left in
# place (NOLOGIN, holding nothing but each other), so concurrent runs share them harmlessly.
TARGET_ROLES = (
    *("analyst", "auditor", "reader", "writer", "viewer", "incident-responder", "db-admin"),
    *("bob", "erin", "frank", "gina"),
)


def ensure_target_roles(database_url: str) -> None:
    """Create the ``TARGET_ROLES`` that are missing on the cluster behind ``database_url``."""
    import psycopg
    from psycopg import sql

    # Two test workers may create the same role at once: the loser of that race gets unique_violation
    # on pg_authid rather than duplicate_object, and either means the role is there.
    create = "DO $$ BEGIN CREATE ROLE {} NOLOGIN; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
    with psycopg.connect(database_url, autocommit=True) as admin:
        for role in TARGET_ROLES:
            admin.execute(sql.SQL(create).format(sql.Identifier(role)))


class PrivateServers:
    """Kafka, OPA and PostgreSQL of this run alone, started with deploy/*.sh.

    They live in ``run_dir`` (KEYTURN_RUN) on the given ports (free ones by default), so
    ``stop("kafka")`` restarts this broker and no other. ``up()`` starts all three;
    ``down()`` stops them; with ``remove=True`` it also deletes ``run_dir``.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        kafka_port: int | None = None,
        opa_port: int | None = None,
        pg_port: int | None = None,
        opa_bundle: bool = False,
    ) -> None:
        self.run_dir = Path(run_dir)
        # OPA serving a bundle with a revision, as production does (deploy/opa.sh,
        # KEYTURN_OPA_BUNDLE), rather than the watched directory of development
        self.opa_bundle = opa_bundle
        self.ports = {
            "kafka": kafka_port or free_port_pair(),
            "opa": opa_port or free_port(),
            "postgres": pg_port or free_port(),
        }

    @property
    def env(self) -> dict[str, str]:
        """The environment deploy/*.sh need to act on these servers (and not on any other)."""
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("KEYTURN_KAFKA_BOOTSTRAP", "KEYTURN_OPA_URL", "KEYTURN_DATABASE_URL")
        }
        env.update(
            KEYTURN_RUN=str(self.run_dir),
            KEYTURN_KAFKA_PORT=str(self.ports["kafka"]),
            KEYTURN_OPA_PORT=str(self.ports["opa"]),
            KEYTURN_PG_PORT=str(self.ports["postgres"]),
            KEYTURN_OPA_BUNDLE="1" if self.opa_bundle else "0",
        )
        return env

    def settings(self, prefix: str, **extra: Any) -> Settings:
        """``run_settings`` for services that use all three of these servers."""
        return run_settings(
            prefix,
            self.run_dir / "keyturn",
            kafka_bootstrap=self.kafka_bootstrap,
            opa_url=self.opa_url,
            database_url=self.database_url,
            **extra,
        )

    @property
    def kafka_bootstrap(self) -> str:
        return f"127.0.0.1:{self.ports['kafka']}"

    @property
    def opa_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['opa']}"

    @property
    def database_url(self) -> str:
        return f"postgresql://keyturn:keyturn@127.0.0.1:{self.ports['postgres']}/keyturn"

    def script(self, name: str, command: str, *, timeout: float = 180) -> str:
        """Run ``deploy/<name>.sh <command>`` for these servers; its output."""
        result = subprocess.run(
            [str(REPO_ROOT / "deploy" / f"{name}.sh"), command],
            env=self.env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise ServerScriptFailed(
                f"deploy/{name}.sh {command} exited {result.returncode}:\n{result.stdout}{result.stderr}"
            )
        return result.stdout

    def up(self) -> None:
        self.script("stack", "up")
        ensure_target_roles(self.database_url)  # the bench and the drills grant these (iam.role.grant)

    def start(self, server: str) -> None:
        self.script(server, "start")

    def stop(self, server: str) -> None:
        self.script(server, "stop")

    def pid(self, server: str) -> int | None:
        """The PID deploy/<server>.sh recorded, while that process runs."""
        try:
            return int((self.run_dir / f"{server}.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def signal(self, server: str, sig: signal.Signals) -> None:
        """Send ``sig`` to the recorded server process (SIGSTOP / SIGCONT to freeze it)."""
        pid = self.pid(server)
        if pid is None:
            raise ServerScriptFailed(f"{server} has no recorded pid in {self.run_dir}")
        os.kill(pid, sig)

    def down(self, *, remove: bool = False) -> None:
        """Stop all three; with ``remove`` delete their data and logs too."""
        try:
            self.script("stack", "down")
        finally:
            if remove:
                shutil.rmtree(self.run_dir, ignore_errors=True)

    def describe(self) -> str:
        return " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items() if k.startswith("KEYTURN_"))
