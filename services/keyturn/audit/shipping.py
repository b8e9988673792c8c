"""Shipping the audit to a SIEM over an HTTP webhook, resumable and at-least-once.

Each POST carries a batch of records as JSON lines (``application/x-ndjson``), in chain order,
with ``Idempotency-Key`` (SHA-256 over the batch's record hashes) and
``X-Keyturn-Audit-Sequences: FIRST-LAST``. A record's own ``hash`` is unique to it, so a
receiver that keeps the hashes it has stored drops any record sent twice. Failures are retried
a bounded number of times with exponential backoff (connection errors, 408, 425, 429, 5xx;
``Retry-After`` in seconds is honoured up to the cap); other answers stop shipping at once.

After every acknowledged batch the position (last sequence, its hash, the next offset) is
written to a state file, atomically, so a restart continues after the last record the SIEM
acknowledged. The first record shipped after a restart must link to the saved hash: a topic
that was rewritten, or a state file from another topic, stops the shipper instead of
feeding the SIEM a different history.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from keyturn.audit.export import record_to_dict
from keyturn.audit.stream import AuditTopic
from keyturn.core.audit.record import AuditRecord

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class ShippingFailed(RuntimeError):
    """The sink refused or kept failing; nothing after the saved position was acknowledged."""


class ShippingStateMismatch(RuntimeError):
    """The audit topic does not continue the history the state file says was shipped."""


@dataclass(frozen=True)
class ShipState:
    """Where shipping to one sink stands: the last acknowledged record and where to read next."""

    sink: str
    last_sequence: int | None = None
    last_hash: str | None = None
    next_offset: int = 0

    @classmethod
    def load(cls, path: Path, sink: str) -> ShipState:
        """The saved state, or a fresh one; refuses a state file written for another sink."""
        if not path.exists():
            return cls(sink)
        try:
            data = json.loads(path.read_text())
            state = cls(**data)
        except (ValueError, TypeError) as error:
            raise ShippingStateMismatch(
                f"{path} is not a shipping state file ({error}); move it away to start over"
            ) from None
        if state.sink != sink:
            raise ShippingStateMismatch(
                f"{path} records shipping to {state.sink}, not {sink}; use another --state file per sink"
            )
        return state

    def save(self, path: Path) -> None:
        """Write atomically (a crash leaves the old or the new state, never half of one)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps(asdict(self), sort_keys=True) + "\n")
        os.replace(temporary, path)


def default_state_path(run_dir: Path | str, namespace: str, sink: str) -> Path:
    """``<run_dir>/audit-ship-<namespace>-<digest of the sink URL>.json``."""
    digest = hashlib.sha256(sink.encode()).hexdigest()[:12]
    return Path(run_dir) / f"audit-ship-{namespace}-{digest}.json"


def batch_body(records: list[AuditRecord]) -> bytes:
    """The records as JSON lines, fields in schema order."""
    return b"".join(
        json.dumps(record_to_dict(r), ensure_ascii=False, separators=(",", ":")).encode() + b"\n" for r in records
    )


def batch_idempotency_key(records: list[AuditRecord]) -> str:
    """SHA-256 over the batch's record hashes: the same batch always has the same key."""
    return hashlib.sha256("".join(r.hash for r in records).encode()).hexdigest()


class WebhookSink:
    """POSTs batches to one URL with bounded, backed-off retries."""

    def __init__(
        self,
        url: str,
        *,
        retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        timeout_s: float = 10.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"webhook URL must start with http:// or https://, not {url!r}")
        self.url = url
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._http = httpx.AsyncClient(timeout=timeout_s, headers=headers or {})
        self.attempts = 0

    async def close(self) -> None:
        await self._http.aclose()

    async def deliver(self, records: list[AuditRecord]) -> None:
        """POST one batch until it is acknowledged (2xx); raise :class:`ShippingFailed` otherwise."""
        headers = {
            "Content-Type": "application/x-ndjson",
            "Idempotency-Key": batch_idempotency_key(records),
            "X-Keyturn-Audit-Sequences": f"{records[0].sequence}-{records[-1].sequence}",
        }
        body = batch_body(records)
        problem, retry_after = "", 0.0
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(min(max(self.backoff_s * 2 ** (attempt - 1), retry_after), self.max_backoff_s))
            self.attempts += 1
            retry_after = 0.0
            try:
                response = await self._http.post(self.url, content=body, headers=headers)
            except httpx.HTTPError as error:
                problem = f"{type(error).__name__}: {error}"
                continue
            if 200 <= response.status_code < 300:
                return
            problem = f"HTTP {response.status_code}: {response.text[:200]}"
            if response.status_code not in RETRYABLE_STATUS:
                raise ShippingFailed(f"{self.url} refused records {headers['X-Keyturn-Audit-Sequences']}: {problem}")
            if response.headers.get("Retry-After", "").isdigit():
                retry_after = float(response.headers["Retry-After"])
        raise ShippingFailed(
            f"{self.url} did not take records {headers['X-Keyturn-Audit-Sequences']} after "
            f"{self.retries + 1} attempts; last: {problem}"
        )


@dataclass(frozen=True)
class ShipResult:
    shipped: int
    state: ShipState


async def ship(
    bootstrap: str,
    topic: str,
    sink: WebhookSink,
    state_path: Path,
    *,
    follow: bool = False,
    batch_size: int = 500,
    on_shipped: Callable[[int, ShipState], None] | None = None,
) -> ShipResult:
    """Ship every record after the saved position; with ``follow``, keep shipping new ones."""
    state = ShipState.load(state_path, sink.url)
    shipped = 0
    async with AuditTopic(bootstrap, topic, from_offset=state.next_offset) as audit:
        async for messages in audit.batches(follow=follow):
            pending: list[AuditRecord] = []
            for message in messages:
                if message.record is None:
                    raise ShippingStateMismatch(
                        f"the audit topic holds an unreadable message at offset {message.offset} "
                        f"({message.unreadable.reason if message.unreadable else 'unknown'}); run keyturn audit verify"
                    )
                record = message.record
                if state.last_sequence is not None and record.sequence <= state.last_sequence:
                    continue
                _check_continues(state, record)
                pending.append(record)
                state = ShipState(state.sink, record.sequence, record.hash, message.offset + 1)
                if len(pending) >= batch_size:
                    shipped += await _deliver(sink, pending, state, state_path, on_shipped)
                    pending = []
            if pending:
                shipped += await _deliver(sink, pending, state, state_path, on_shipped)
            elif messages:
                # Only transaction markers or already-shipped records: remember to skip them next time.
                state = ShipState(state.sink, state.last_sequence, state.last_hash, await audit.position())
                state.save(state_path)
    return ShipResult(shipped, state)


def _check_continues(state: ShipState, record: AuditRecord) -> None:
    expected = 0 if state.last_sequence is None else state.last_sequence + 1
    if record.sequence != expected or (state.last_hash is not None and record.prev_hash != state.last_hash):
        raise ShippingStateMismatch(
            f"the audit topic continues with record {record.sequence}, which does not follow record "
            f"{state.last_sequence} as last shipped (hash {str(state.last_hash)[:12]}…): the topic was "
            "rewritten or records are missing; run keyturn audit verify before shipping more"
        )


async def _deliver(
    sink: WebhookSink, records: list[AuditRecord], state: ShipState, state_path: Path, on_shipped
) -> int:
    await sink.deliver(records)
    state.save(state_path)
    if on_shipped is not None:
        on_shipped(len(records), state)
    return len(records)
