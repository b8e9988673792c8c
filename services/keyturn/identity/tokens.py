"""Minting bearer tokens with the local signing key, for development, tests and the CLI."""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

from keyturn.core.principal import PrincipalKind
from keyturn.identity.claims import ACT_CLAIM, KIND_CLAIM, delegation_claim, principal_kind
from keyturn.identity.keys import SigningKey

DEFAULT_AUDIENCE = "keyturn"
DEFAULT_ISSUER = "keyturn-dev"
RESERVED_CLAIMS = frozenset({"iss", "sub", "aud", "exp", "nbf", "iat", "jti", ACT_CLAIM, KIND_CLAIM})


def issue_token(
    key: SigningKey,
    *,
    subject: str,
    acts_for: Sequence[str] = (),
    audience: str = DEFAULT_AUDIENCE,
    issuer: str = DEFAULT_ISSUER,
    ttl: timedelta = timedelta(hours=1),
    kind: str | PrincipalKind | None = None,
    extra_claims: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> str:
    """A signed JWT for ``subject``, acting for ``acts_for`` (outermost first).

    ``acts_for=["human:alice", "human:bob"]`` means the subject acts directly for alice, who
    acts for bob: ``act={"sub": "human:alice", "act": {"sub": "human:bob"}}``. The kind goes
    in ``keyturn_kind`` and defaults to the subject's ``kind:`` prefix.
    """
    if not isinstance(subject, str) or not subject.strip():
        raise ValueError("subject must be a non-empty principal id such as 'agent:reporter'")
    if ttl <= timedelta(0):
        raise ValueError("ttl must be positive")
    issued_at = now or datetime.now(UTC)
    if issued_at.tzinfo is None:
        raise ValueError("now must be timezone-aware, e.g. datetime.now(UTC)")
    clashing = RESERVED_CLAIMS.intersection(extra_claims or {})
    if clashing:
        raise ValueError(f"extra_claims may not set {sorted(clashing)}; use the arguments")

    declared = kind.value if isinstance(kind, PrincipalKind) else kind
    claims: dict[str, Any] = {
        **(extra_claims or {}),
        "iss": issuer,
        "sub": subject,
        "aud": audience,
        "iat": int(issued_at.timestamp()),
        "nbf": int(issued_at.timestamp()),
        "exp": int((issued_at + ttl).timestamp()),
        "jti": secrets.token_urlsafe(16),
        KIND_CLAIM: principal_kind(subject, declared).value,
    }
    act = delegation_claim(acts_for)
    if act is not None:
        claims[ACT_CLAIM] = act
    return jwt.encode(claims, key.private_key, algorithm=key.algorithm, headers={"kid": key.kid})
