"""All configuration in one typed place: environment variables prefixed ``KEYTURN_``.

The defaults are what ``make run`` starts on loopback; production values are documented in
README.md (section "Configuration").
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

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
    partitions: int = 4  # every lifecycle topic has the same count (ordering per action_id)
    run_dir: str = field(default_factory=_default_run_dir)  # keys, logs, pids for local runs
    intake_host: str = "127.0.0.1"
    intake_port: int = 8080
    approval_host: str = "127.0.0.1"
    approval_port: int = 8090
    intake_url: str = "http://127.0.0.1:8080"
    approval_url: str = "http://127.0.0.1:8090"
    jwt_issuer: str = "keyturn-dev"
    jwt_audience: str = "keyturn"
    jwks_url: str = ""  # production: the identity provider's JWKS; empty = local dev key
    jwks_path: str = ""
    opa_timeout_s: float = 2.0
    opa_retries: int = 3
    policy_unavailable_after_s: float = 30.0  # then a request ends denied: policy_unavailable
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Settings":
        """Read ``KEYTURN_*`` variables over the defaults, converting to each field's type."""
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = environ.get(f"KEYTURN_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            kind = f.type if isinstance(f.type, type) else {"int": int, "float": float}.get(str(f.type), str)
            values[f.name] = kind(raw)
        return cls(**values)

    @property
    def keys_dir(self) -> Path:
        """Where local signing and sealing keys live (created on first run, mode 0600)."""
        return Path(self.run_dir) / "keys"
