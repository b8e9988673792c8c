"""The requester's webhook: each new state of its action, POSTed as JSON and signed with HMAC-SHA256.

``X-Keyturn-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``. A receiver
recomputes the HMAC over the raw body and refuses a ``t`` older than it tolerates (5 minutes is
what Keyturn itself allows Slack). Deliveries come from an outbox, are retried with backoff a
bounded number of times, and go only to hosts in ``KEYTURN_CALLBACK_ALLOWED_HOSTS``: the URL
comes from an agent, and the approval service must not become a way to reach anything else.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from keyturn.approval.store import ApprovalStore, Callback
from keyturn.core.canonical import canonical_json
from keyturn.core.lifecycle import ActionState

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Keyturn-Signature"


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    """The signature header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def unix_seconds(text: str | None) -> int | None:
    """A signed request's timestamp (decimal unix seconds), or None when ``text`` is not one.

    Strictly ASCII digits, at most 15 of them (a time 30 million years away is far enough to be
    refused as stale): ``str.isdigit`` also takes digits such as "²" that ``int`` refuses, and
    ``int`` refuses more than 4,300 digits; a signature check must refuse such a header, not fail."""
    stamp = (text or "").strip()
    if not stamp or len(stamp) > 15 or not (stamp.isascii() and stamp.isdigit()):
        return None
    return int(stamp)


def signature_valid(secret: bytes, body: bytes, header: str, now: float, tolerance_s: int = 300) -> bool:
    """What a receiver does: parse ``t=…,v1=…``, check the age, compare in constant time."""
    parts = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    timestamp = unix_seconds(parts.get("t"))
    if timestamp is None or abs(now - timestamp) > tolerance_s:
        return False
    expected = sign(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


def callback_body(action_id: str, state: str, at: datetime, summary: str, reasons: tuple[str, ...] = ()) -> str:
    """What the requester's webhook receives: the action's new state, as JSON."""
    return canonical_json(
        {
            "action_id": action_id,
            "state": state,
            "terminal": ActionState(state).is_terminal,
            "summary": summary,
            "reasons": list(reasons),
            "at": at.isoformat(),
        }
    )


def callback_secret(configured: str, keys_dir: Path | str) -> bytes:
    """The configured secret, else one kept (mode 0600) beside the local dev keys."""
    if configured:
        return configured.encode()
    path = Path(keys_dir) / "callback-secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_hex(32))
    return path.read_text().strip().encode()


def host_allowed(url: str, allowed: frozenset[str]) -> bool:
    """Whether ``url`` is http(s) to a host (or host:port) on the allow-list."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return False
    host = parts.hostname.lower()
    return host in allowed or (parts.port is not None and f"{host}:{parts.port}" in allowed)


class CallbackCourier:
    """Sends queued webhook deliveries; each is delivered, retried later, or given up (and logged)."""

    def __init__(
        self,
        store: ApprovalStore,
        secret: bytes,
        allowed_hosts: frozenset[str],
        max_attempts: int,
        client: httpx.AsyncClient,
    ) -> None:
        self.store = store
        self.secret = secret
        self.allowed_hosts = allowed_hosts
        self.max_attempts = max_attempts
        self.client = client

    async def deliver_due(self) -> int:
        now = datetime.now(UTC)
        await self.store.forget_untargeted_callbacks(now - timedelta(hours=1))
        delivered = 0
        for callback in await self.store.claim_callbacks(now):
            delivered += await self._deliver(callback, now)
        return delivered

    async def _deliver(self, callback: Callback, now: datetime) -> int:
        if not host_allowed(callback.url, self.allowed_hosts):
            log.warning(
                "not calling back %s for action %s: host is not in KEYTURN_CALLBACK_ALLOWED_HOSTS",
                callback.url,
                callback.action_id,
            )
            await self.store.callback_done(callback.id, "refused", "host is not in KEYTURN_CALLBACK_ALLOWED_HOSTS", now)
            return 0
        body = callback.body.encode()
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self.secret, body, int(time.time())),
            "X-Keyturn-Action": callback.action_id,
            "X-Keyturn-Delivery": str(callback.id),
        }
        try:
            response = await self.client.post(callback.url, content=body, headers=headers)
            if response.status_code >= 300:
                raise httpx.HTTPStatusError(
                    f"answered {response.status_code}", request=response.request, response=response
                )
        except httpx.HTTPError as exc:
            give_up = callback.attempts >= self.max_attempts
            log.warning(
                "callback %s for %s failed (attempt %s%s): %s",
                callback.id,
                callback.action_id,
                callback.attempts,
                ", giving up" if give_up else "",
                exc,
            )
            retry_at = now + timedelta(seconds=min(2**callback.attempts, 600))
            await self.store.callback_done(
                callback.id, "failed" if give_up else "pending", f"{type(exc).__name__}: {exc}", now, retry_at
            )
            return 0
        await self.store.callback_done(callback.id, "delivered", None, datetime.now(UTC))
        return 1
