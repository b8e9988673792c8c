"""All configuration in one typed place: environment variables prefixed ``KEYTURN_``.

The defaults are what ``make run`` starts on loopback; production values are documented in
README.md (section "Configuration").
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from keyturn.core.environments import served_environments

REPO_ROOT = Path(__file__).resolve().parents[2]


def _default_run_dir() -> str:
    return str(REPO_ROOT / ".run")


@dataclass(frozen=True)
class Settings:
    """Every setting Keyturn reads, with its environment variable ``KEYTURN_<NAME>``."""

    kafka_bootstrap: str = "127.0.0.1:9092"
    opa_url: str = "http://127.0.0.1:8181"
    database_url: str = "postgresql://keyturn:keyturn@127.0.0.1:5433/keyturn"
    namespace: str = "keyturn"  # topic prefix and consumer-group prefix; tests isolate with it
    # every keyed topic has the same count (ordering per action_id); the most workers a consumer
    # group can use. Set when the topics are created: adding partitions later moves keys. Eight
    # workers per stage outrun the one audit chain several times over (bench/targets.py, the cost
    # model), and every partition costs each fetch and produce: 16 spent 0.1-0.3 CPU-ms per action
    # more in Kafka and the services (bench/README.md, fifteenth round)
    partitions: int = 8
    producer_linger_ms: float = 3.0  # stream workers' producers wait this long to fill a batch
    producer_batch_bytes: int = 256 * 1024  # and put up to this much in one batch per partition
    # the policy and executor workers take up to 64 events at a time, or what arrived
    # within this long: one OPA query, one statement, one produce per batch. Under load, larger
    # batches cost less per action (bench/README.md); a trickle that would not fill the window
    # is not held for it (bus.loop.GATHER_WHEN_EXPECTED)
    worker_gather_ms: float = 20.0
    worker_session_timeout_s: float = 10.0  # a dead worker's partitions move to a live one after this
    # a rebalance waits this long for a busy worker to finish its batch before moving its
    # partitions anyway (orders it still runs then reach another worker: the executor's lease)
    worker_rebalance_timeout_s: float = 60.0
    # the executor handles this many batches at once: a command that runs for minutes holds up
    # its own batch only, not every other action (bus.loop.run's in_flight)
    executor_batches_in_flight: int = 8
    run_dir: str = field(default_factory=_default_run_dir)  # keys, logs, pids for local runs
    intake_host: str = "127.0.0.1"
    intake_port: int = 8080
    approval_host: str = "127.0.0.1"
    approval_port: int = 8090
    intake_url: str = "http://127.0.0.1:8080"
    approval_url: str = "http://127.0.0.1:8090"
    max_body_bytes: int = 1024 * 1024  # larger HTTP bodies are answered 413 before they are read (intake and approval)
    max_header_bytes: int = 16 * 1024  # all request headers together; more is answered 431
    intake_workers: int = 1  # intake processes serving one socket (uvicorn workers)
    intake_reuse_port: int = 0  # 1: bind with SO_REUSEPORT, so separately started intakes share the port
    intake_batch_max_items: int = 500  # items one POST /v1/actions:batch may carry; more is answered 422
    # submissions one caller may make over HTTP, per intake process (``intake.throttle``; ``limits``'
    # notation, ``;`` between several, empty for none): more is answered 429 with Retry-After
    submission_limit: str = "3000/minute"
    jwt_issuer: str = "keyturn-dev"
    jwt_audience: str = "keyturn"
    jwks_url: str = ""  # production: the identity provider's JWKS; empty = local dev key
    jwks_path: str = ""
    opa_timeout_s: float = 2.0
    opa_retries: int = 3
    opa_revision_max_age_s: float = (
        1.0  # policy revision cache: one OPA read per period; provenance may lag a hot reload by as much
    )
    policy_unavailable_after_s: float = 30.0  # then a request ends denied: policy_unavailable
    policy_metrics_port: int = 9465  # the policy worker's Prometheus /metrics on 127.0.0.1; 0 = off
    audit_metrics_port: int = 9464  # the audit worker's Prometheus /metrics on 127.0.0.1; 0 = off
    seal_keys: str = ""  # "kid:base64key,…", first seals; empty = a local key file in run_dir/keys
    log_level: str = "INFO"
    # 1: one log line per HTTP request (intake and approval), masked like every line. Off by
    # default: it was an eighth of the intake's CPU with one POST per action, and what matters is
    # recorded anyway (every action on its topics and in the audit, every refusal under its caller)
    access_log: int = 0
    # every service's event loop: "uvloop" (libuv; every service's socket and scheduling work is in
    # C, see bench/README.md) or "asyncio" (the standard library's, a fallback)
    event_loop: str = "uvloop"
    # the cycle collector: what the process imported is frozen out of it, and the young generation
    # is collected after this many new objects (Python's default, 700, collected several hundred
    # times a flood, a tenth of some services' CPU: bench/README.md); 0 leaves Python's defaults
    gc_young_threshold: int = 10_000
    # the parameter schemas of the catalog (the file OPA loads as data.keyturn.parameters)
    parameter_catalog_path: str = str(REPO_ROOT / "policies.rego" / "keyturn" / "parameters" / "data.json")
    sql_target_url: str = ""  # the PostgreSQL the sql plugin runs statements on; empty = database_url
    # the environments that target serves (comma list of production, staging, development): a
    # SQL-family command runs on it only when its resource is in one of them (``core.environments``).
    # Empty: production for a configured target, staging for the development database
    sql_target_environments: str = ""
    impact_preview_timeout_s: float = 5.0  # the dry run's count; longer falls back to EXPLAIN's estimate
    sql_commands_at_once: int = 16  # per executor process and target; each holds up to two connections
    sql_statement_timeout_s: float = 30.0  # per statement, and never longer than the credential TTL
    http_allowed_hosts: str = ""  # comma list the http plugin may call (the policy allow-lists too); empty = none
    http_connect_to: str = ""  # "host=address:port,…": reach an allow-listed host at another address
    http_ca_file: str = ""  # extra CA bundle (PEM) trusted for the http plugin's TLS; empty = system CAs
    http_timeout_s: float = 10.0
    executor_max_result_rows: int = 50  # rows a result carries back; the rest become a row count
    executor_timeout_s: float = 120.0  # a plugin still running after this ends outcome_unknown
    # MCP: upstream servers the executor forwards approved mcp.<server>.<tool> calls to (JSON object: name ->
    # command line, {"command": [...], "env": {...}} or {"url": ..., "headers": {...}}); empty = none
    mcp_upstreams: str = ""
    mcp_wait_s: float = 45.0  # a tool call of `keyturn mcp serve/proxy` waits this long, then answers "pending"
    mcp_host: str = "127.0.0.1"  # `keyturn mcp serve/proxy --http` listens here
    mcp_port: int = 8070
    receipt_key_path: str = ""  # Ed25519 PEM signing approval receipts; empty = run_dir/keys/receipt-signing.pem
    export_dir: str = ""  # where db.export files wait for their one download; empty = run_dir/exports
    export_ttl_s: float = 3600.0  # an export not downloaded within this is deleted unread
    receipt_ttl_s: float = 900.0  # a receipt for an action allowed outright (no approval window) expires after this
    # Approvers in chat. Slack is off while slack_bot_token is empty; maps are JSON.
    slack_api_url: str = "https://slack.com/api/"
    slack_bot_token: str = ""
    slack_signing_secret: str = ""
    slack_channels: str = ""  # {"security": ["C0SEC"], "*": ["C0APPROVALS"]}: group -> channel or user ids
    slack_user_map: str = ""  # {"U0CAROL": "human:carol"}; otherwise the email rule (docs/approvers.md)
    slack_email_domains: str = ""  # comma list, own domain first; empty: only slack_user_map maps people
    # Microsoft Teams. Off while teams_app_id is empty; the URLs default to Microsoft's public cloud.
    teams_app_id: str = ""
    teams_app_password: str = ""
    teams_tenant_id: str = (
        "botframework.com"  # approvers' accounts must be in this tenant: set it to the organisation's
    )
    teams_service_url: str = "https://smba.trafficmanager.net/teams"
    teams_token_url: str = "https://login.microsoftonline.com/botframework.com/oauth2/v2.0/token"
    teams_openid_url: str = "https://login.botframework.com/v1/.well-known/openidconfiguration"
    teams_token_issuer: str = "https://api.botframework.com"
    teams_conversations: str = ""  # {"security": ["19:abc@thread.tacv2"], "*": [...]}
    teams_user_map: str = ""  # {"<aad object id or Teams user id>": "human:carol"}
    teams_email_domains: str = ""  # comma list, own domain first; empty: only teams_user_map maps people
    # Web console: dev sign-in mints tokens; on when this is 1 or while the local dev key is in use.
    console_dev_signin: int = 0
    # Requester webhooks (callback_url): HMAC-signed; only these hosts are ever called.
    callback_secret: str = ""  # empty: a random secret kept in <run_dir>/keys/callback-secret
    callback_allowed_hosts: str = ""  # comma list of host or host:port; empty: no callbacks are sent
    callback_max_attempts: int = 6

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read ``KEYTURN_*`` variables over the defaults, converting to each field's type."""
        source: Mapping[str, str] = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = source.get(f"KEYTURN_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            kind = f.type if isinstance(f.type, type) else {"int": int, "float": float}.get(str(f.type), str)
            values[f.name] = kind(raw)
        return cls(**values)

    @property
    def dev_identity(self) -> bool:
        """Whether tokens are verified with the local dev key (no identity provider configured)."""
        return not (self.jwks_url or self.jwks_path)

    @property
    def sql_target_serves(self) -> frozenset[str]:
        """``sql_target_environments`` read (ValueError when it names something else)."""
        if self.sql_target_environments.strip():
            return served_environments(self.sql_target_environments)
        return frozenset({"production"} if self.sql_target_url else {"staging"})

    @property
    def keys_dir(self) -> Path:
        """Where local signing and sealing keys live (created on first run, mode 0600)."""
        return Path(self.run_dir) / "keys"
