"""Real peers for the executor's tests (no tests here; the executor test modules import these).

- ``sql_target``: a private PostgreSQL cluster started with ``deploy/postgres.sh`` on a free
  port. Unlike a development server it checks passwords (``scram-sha-256``), so expired and
  dropped credentials are really refused, and it logs every statement, so a test can read the
  server log for leaked secrets.
- ``https_peer``: an HTTPS server for ``api.example.internal`` (a test CA signs its
  certificate) that verifies every token it gets with the executor's published JWKS:
  signature, issuer, audience, expiry, and that it was minted for this very call.
- ``ExecutorUnderTest``: the executor as its own process, configured for those peers, in
  place of the session's executor. Run with ``witness=True`` it is started through this
  module's ``__main__``: the production ``create_app`` and plugins, plus an observer that
  writes each minted credential to a file, so a test knows every secret to search for.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from keyturn.bus.loop import JOINED
from keyturn.config import REPO_ROOT, Settings
from tests.conftest import ARTIFACTS, ServiceProcesses, free_port, settings_env
from tests.peers import answer_json
from tests.processes import ServiceProcess, start_service, stop_process

JOINED_LINE = f": {JOINED} ".encode()  # "<group>: consuming N partition(s)": the worker's consumer has its partitions

PEER_HOST = "api.example.internal"
UNREACHABLE_HOST = "hooks.example.internal"  # allow-listed everywhere, but nothing listens where it points


def put_secret(settings: Settings, name: str, value: str) -> None:
    """Store ``value`` in the executor's secret store as ``name``, as an operator does (the CLI)."""
    put = subprocess.run(
        [sys.executable, "-m", "keyturn.cli", "secrets", "put", name],
        input=value + "\n",
        env=settings_env(settings),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert put.returncode == 0, put.stderr
    assert value not in put.stdout + put.stderr


# --- a password-checking PostgreSQL -------------------------------------------------------------


@dataclass
class SqlTarget:
    url: str  # as the executor's admin role (keyturn, CREATEROLE)
    port: int
    socket_dir: Path
    log_path: Path

    def superuser(self) -> psycopg.Connection:
        """A superuser session over the cluster's private socket (for pg_stat_activity, settings)."""
        return psycopg.connect(
            host=str(self.socket_dir), port=self.port, user="postgres", dbname="keyturn", autocommit=True
        )

    def admin(self) -> psycopg.Connection:
        return psycopg.connect(self.url, autocommit=True)

    def temporary_roles(self) -> list[str]:
        with self.admin() as conn:
            return [
                r[0]
                for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE 'keyturn\\_cmd\\_%' ORDER BY 1")
            ]


@pytest.fixture(scope="module")
def sql_target() -> SqlTarget:
    run = Path(tempfile.mkdtemp(prefix="keyturn-sql-target-"))
    run.chmod(0o755)  # the cluster's owner (postgres, when tests run as root) must reach it
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "KEYTURN_DATABASE_URL"} | {
        "KEYTURN_RUN": str(run),
        "KEYTURN_PG_PORT": str(port),
    }
    script = REPO_ROOT / "deploy" / "postgres.sh"
    started = subprocess.run([str(script), "start"], env=env, capture_output=True, text=True)
    assert started.returncode == 0, started.stdout + started.stderr
    data_dir = next(run.glob("**/data/PG_VERSION")).parent.parent
    target = SqlTarget(
        f"postgresql://keyturn:keyturn@127.0.0.1:{port}/keyturn", port, data_dir / "socket", data_dir / "postgres.log"
    )
    with target.superuser() as conn:
        conn.execute("ALTER SYSTEM SET log_statement = 'all'")
        # the application name tells the executor's statements from the impact preview's dry runs
        conn.execute("ALTER SYSTEM SET log_line_prefix = '%m [%p] app=%a '")
        # and a client's errors, which the project's server leaves out of its log (deploy/postgres.sh):
        # a collision is told by the error the target logged
        conn.execute("ALTER SYSTEM SET log_min_messages = 'warning'")
        conn.execute("SELECT pg_reload_conf()")
    try:
        yield target
    finally:
        subprocess.run([str(script), "stop"], env=env, capture_output=True, text=True)
        shutil.rmtree(run, ignore_errors=True)


# --- an HTTPS peer that verifies the executor's tokens ------------------------------------------


@dataclass
class HttpsPeer:
    port: int
    ca_file: Path
    jwks_path: Path
    tokens: list[str] = field(default_factory=list)  # every Authorization bearer received
    verified: list[dict[str, Any]] = field(default_factory=list)  # claims of the tokens that passed
    api_keys: list[str] = field(default_factory=list)  # every X-Api-Key header received
    uploads: dict[str, bytes] = field(default_factory=dict)  # path → body of every verified PUT


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key) for the peer's host names."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Keyturn test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, PEER_HOST)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(PEER_HOST), x509.DNSName(UNREACHABLE_HOST)]), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "server.pem", directory / "server-key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


def _peer_handler(peer: HttpsPeer):
    from keyturn.executor.plugins.http import TOKEN_ISSUER
    from keyturn.identity import InvalidToken, TokenVerifier

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._answer()

        def do_POST(self) -> None:
            self._answer()

        def do_PUT(self) -> None:  # a file delivered (an export): kept as sent, once its token verified
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self._verified() is not None:
                peer.uploads[self.path] = raw
                self._json(201, {"stored": self.path, "bytes": len(raw)})

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the test reads what the peer recorded, not its chatter

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            verified = self._verified()
            if verified is None:
                return
            principal, claims = verified
            if self.path.startswith("/v1/slow"):
                time.sleep(8)  # past the executor's 5 s timeout in test_executor.py
            if self.path.startswith("/v1/items"):
                return self._json(200, [{"id": n, "owner": f"owner{n}@example.com"} for n in range(80)])
            self._json(
                200,
                {
                    "verified": True,
                    "subject": principal.id,
                    "acts_for": list(principal.chain),
                    "action_id": claims.get("keyturn_action_id"),
                    "audience": claims["aud"],
                    "lifetime_s": claims["exp"] - claims["iat"],
                    "echo": body,
                    "api_key_received": self.headers.get("X-Api-Key"),
                    "contact": "ops@example.com",
                },
            )

        def _verified(self) -> tuple[Any, dict[str, Any]] | None:
            """(principal, claims) of a token minted for this very call, else None once refused 401."""
            token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            peer.tokens.append(token)
            if self.headers.get("X-Api-Key"):
                peer.api_keys.append(self.headers["X-Api-Key"])
            origin = f"https://{self.headers.get('Host')}"
            try:
                verifier = TokenVerifier(
                    str(peer.jwks_path), issuer=TOKEN_ISSUER, audience=origin, algorithms=("ES256",), leeway_s=0
                )
                principal = verifier.verify(token)
            except (InvalidToken, ValueError) as exc:
                self._json(401, {"error": getattr(exc, "code", "invalid"), "detail": str(exc)})
                return None
            claims = jwt.decode(token, options={"verify_signature": False})
            if claims.get("htm") != self.command or claims.get("htu") != origin + self.path.split("?")[0]:
                self._json(401, {"error": "wrong_call", "detail": "the token was minted for another call"})
                return None
            peer.verified.append(claims)
            return principal, claims

        def _json(self, status: int, document: Any) -> None:
            answer_json(self, status, document)

    return Handler


@pytest.fixture(scope="module")
def https_peer(settings: Settings, tmp_path_factory) -> HttpsPeer:
    import ssl

    from keyturn.executor.plugins.http import JWKS_FILE, executor_key_directory

    directory = tmp_path_factory.mktemp("https-peer")
    ca_file, cert_file, key_file = _certificates(directory)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server = ThreadingHTTPServer(("127.0.0.1", 0), None)
    peer = HttpsPeer(server.server_address[1], ca_file, executor_key_directory(settings.keys_dir) / JWKS_FILE)
    server.RequestHandlerClass = _peer_handler(peer)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield peer
    finally:
        server.shutdown()
        server.server_close()


# --- the executor as its own process, in place of the session's ---------------------------------


class ExecutorUnderTest:
    """Stops the session's executor and runs one configured with ``overrides`` instead.

    When the overrides name another SQL target, the session's policy service is replaced too:
    its impact preview must dry-run on the database the executor runs on, as in production.
    """

    def __init__(
        self, settings: Settings, services: ServiceProcesses, overrides: dict[str, str], *, witness: Path | None = None
    ) -> None:
        self.settings = settings
        self.services = services
        self.env = settings_env(settings) | overrides
        self.witness = witness
        self.log_path = ARTIFACTS / "logs" / settings.namespace / "executor-under-test.log"
        self.proc: ServiceProcess | None = None
        self.with_policy = "KEYTURN_SQL_TARGET_URL" in overrides
        self.policy_log = ARTIFACTS / "logs" / settings.namespace / "policy-under-test.log"
        self.policy_proc: ServiceProcess | None = None

    def start(self, timeout: float = 120) -> None:
        """Start the process and wait until its consumer has its partitions."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        if self.witness:
            command = [sys.executable, "-m", "tests.integration.test_executor_support", str(self.witness)]
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        else:
            self.proc = start_service("executor", env=self.env, log_path=self.log_path, cwd=REPO_ROOT)
        _wait_ready(self.proc, self.log_path, offset, timeout)

    def kill(self) -> None:
        """SIGKILL: no cleanup, no offset commit, no goodbye to the consumer group."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_process(self.proc, 30)
        self.proc = None

    def __enter__(self) -> ExecutorUnderTest:
        if "executor" in self.services.procs:
            self.services.stop("executor")
        try:
            if self.with_policy:
                if "policy" in self.services.procs:
                    self.services.stop("policy")
                offset = self.policy_log.stat().st_size if self.policy_log.exists() else 0
                self.policy_proc = start_service("policy", env=self.env, log_path=self.policy_log, cwd=REPO_ROOT)
            self.start()
            if self.policy_proc is not None:
                _wait_ready(self.policy_proc, self.policy_log, offset)
        except BaseException:
            # a worker left running would go on taking the namespace's orders for later tests
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        self.services.start("executor")
        if self.policy_proc is not None:
            stop_process(self.policy_proc, 30)
            self.policy_proc = None
            self.services.start("policy")


def _wait_ready(proc: ServiceProcess, log_path: Path, offset: int, timeout: float = 120) -> None:
    """Until the worker's consumer has its partitions, in what the log gained after ``offset``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited with {proc.returncode}; see {log_path}")
        if JOINED_LINE in log_path.read_bytes()[offset:]:
            return
        time.sleep(0.2)
    raise TimeoutError(f"the worker was not ready within {timeout}s; see {log_path}")


def witnessed_secrets(witness: Path) -> list[str]:
    """Every credential the executor minted so far (one per line)."""
    return [line for line in witness.read_text().splitlines() if line] if witness.exists() else []


if __name__ == "__main__":  # the executor, with an observer of minted credentials (ExecutorUnderTest(witness=…))
    import asyncio

    import faust

    from keyturn.bus.topics import Topics, ensure_topics
    from keyturn.executor.app import create_app, shipped_plugins

    witness_path = Path(sys.argv[1])

    def observe(secret: str) -> None:
        with witness_path.open("a") as out:
            out.write(secret + "\n")

    run_settings = Settings.from_env()
    asyncio.run(ensure_topics(run_settings.kafka_bootstrap, Topics(run_settings.namespace, run_settings.partitions)))
    app = create_app(run_settings, shipped_plugins(run_settings, credential_observer=observe))
    faust.Worker(app, loglevel=run_settings.log_level, logfile=None).execute_from_commandline()
