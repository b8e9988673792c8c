"""In-memory stand-ins for the service layer's ports, keeping the real ones' guarantees.

- ``FakeActionStore``: one row per action id, the first insert wins (as the primary key and
  ``UNIQUE (requester, idempotency_key)`` make it); ``down`` makes it answer like a database
  that is away (``StoreUnavailable``).
- ``FakeLedger``: a start is committed at most once per action, ever; the first outcome stays.
- ``FakeDecisions``: the policy's one decision per action; the first kept stands.
- ``FakeSend``: a broker. A record counts once it is acknowledged; ``down`` raises the
  transient error a broker outage raises, so nothing is acknowledged while it is down.
- ``FakeOpa``: answers from a function of the input, or raises ``PolicyUnavailable`` while down.
- ``ListSource``: a consumption source over fixed batches, recording each commit.
- ``MemoryConsumer``: aiokafka's consumer as ``bus.loop.KafkaSource`` uses it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from keyturn.bus.codec import registry
from keyturn.bus.publisher import Publisher
from keyturn.bus.topics import Topics
from keyturn.core.events import ImpactPreview
from keyturn.core.lifecycle import ActionState
from keyturn.executor.ledger import LedgerEntry
from keyturn.intake.store import LifecycleChange, NewAction, StatusRow, StoredAction, StoreUnavailable
from keyturn.policy.opa import OpaAnswer, PolicyUnavailable
from keyturn.secret_store import SecretNotFound


class FakeActionStore:
    def __init__(self) -> None:
        self.rows: dict[str, StoredAction] = {}
        self.keys: dict[tuple[str, str], str] = {}  # (requester, idempotency key) -> action id, unique
        self.down = False

    def _answer(self) -> None:
        if self.down:
            raise StoreUnavailable("database unavailable: the fake is down")

    async def ping(self, patience_s: float = 1.0) -> None:
        self._answer()

    async def insert_requested(
        self,
        *,
        action_id: str,
        requester: str,
        principals: list[str],
        idempotency_key: str | None,
        payload_digest: str,
        action: str,
        resource: str,
        requested_event: bytes,
        at: datetime,
        request_digest: str | None = None,
    ) -> tuple[StoredAction, bool]:
        self._answer()
        earlier = self.keys.get((requester, idempotency_key)) if idempotency_key is not None else None
        if action_id in self.rows or earlier is not None:
            return self.rows[action_id if action_id in self.rows else earlier], False  # type: ignore[index]
        if idempotency_key is not None:
            self.keys[(requester, idempotency_key)] = action_id
        history = [{"state": ActionState.REQUESTED.value, "at": at.isoformat(), "event": "ActionRequested"}]
        self.rows[action_id] = StoredAction(
            action_id,
            requester,
            principals,
            payload_digest,
            action,
            resource,
            ActionState.REQUESTED,
            [],
            None,
            history,
            requested_event,
            False,
            request_digest,
        )
        return self.rows[action_id], True

    async def insert_many(self, rows: Sequence[NewAction]) -> list[tuple[StoredAction, bool]]:
        """One statement for the batch, as the real store: all inserted, or (down at the first row) none."""
        return [await self.insert_requested(**dataclasses.asdict(row)) for row in rows]

    async def get_many(self, action_ids: Sequence[str]) -> dict[str, StoredAction]:
        self._answer()
        return {a: self.rows[a] for a in action_ids if a in self.rows}

    async def mark_published(self, action_id: str, *, at_once: bool = False) -> None:
        self.rows[action_id] = dataclasses.replace(self.rows[action_id], published=True)

    def acknowledged(self, action_id: str) -> bool:
        return False  # marks are written at once here

    async def unpublished(self, older_than_s: float = 10.0, limit: int = 500) -> list[StoredAction]:
        self._answer()
        return [r for r in self.rows.values() if not r.published][:limit]

    async def get(self, action_id: str) -> StoredAction | None:
        self._answer()
        return self.rows.get(action_id)

    async def apply_many(self, changes: Any, patience_s: float | None = None) -> dict[str, ActionState]:
        self._answer()
        folded: dict[str, StatusRow] = {}
        for change in changes:
            stored = self.rows.get(change.action_id)
            if stored is None:
                continue
            row = folded.setdefault(change.action_id, StatusRow(stored.state, list(stored.history)))
            row.fold(change)
        for action_id, row in folded.items():
            stored = self.rows[action_id]
            self.rows[action_id] = dataclasses.replace(
                stored,
                state=row.state,
                history=row.history,
                reasons=row.reasons if row.reasons is not None else stored.reasons,
                result=row.result if row.result is not None else stored.result,
            )
        return {action_id: row.state for action_id, row in folded.items()}


class MemorySecrets:
    """The executor's secret store (``keyturn.secret_store.SecretStore``), in memory."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values

    async def get(self, name: str) -> str:
        if name not in self.values:
            raise SecretNotFound(f"no secret named {name!r} in the secret store")
        return self.values[name]

    async def put(self, name: str, value: str) -> None:
        self.values[name] = value


class FakeLedger:
    """The ledger in memory; a start's lease runs from ``at`` on the wall clock, as the
    database's runs from its own clock."""

    def __init__(self, executor: str = "fake-executor", *, lease_s: float = 10.0) -> None:
        self.executor = executor
        self.lease_s = lease_s
        self.entries: dict[str, LedgerEntry] = {}
        self.lease_until: dict[str, datetime] = {}
        self.renewals: list[list[str]] = []

    def _as_read(self, action_id: str) -> LedgerEntry:
        entry = self.entries[action_id]
        held = action_id in self.lease_until and self.lease_until[action_id] > datetime.now(UTC)
        return dataclasses.replace(entry, held=held)

    async def start(
        self, action_id: str, at: datetime, *, payload_digest: str = "", plugin: str = ""
    ) -> LedgerEntry | None:
        if action_id in self.entries:
            return self._as_read(action_id)
        self.entries[action_id] = LedgerEntry(
            action_id, self.executor, at, None, None, None, payload_digest, plugin, progress={}
        )
        self.lease_until[action_id] = at + timedelta(seconds=self.lease_s)
        return None

    async def renew(self, action_ids: list[str]) -> None:
        self.renewals.append(list(action_ids))
        for action_id in action_ids:
            entry = self.entries.get(action_id)
            if entry is not None and entry.executor == self.executor and entry.finished_at is None:
                self.lease_until[action_id] = datetime.now(UTC) + timedelta(seconds=self.lease_s)

    async def finish(self, action_id: str, outcome: str, executed_event: bytes, at: datetime) -> bool:
        entry = self.entries[action_id]
        if entry.finished_at is not None:
            return False
        self.entries[action_id] = dataclasses.replace(
            entry, finished_at=at, outcome=outcome, executed_event=executed_event
        )
        self.lease_until.pop(action_id, None)  # a finished action is held by nobody
        return True

    async def get(self, action_id: str) -> LedgerEntry | None:
        return self._as_read(action_id) if action_id in self.entries else None

    async def note(self, action_id: str, progress: dict[str, Any]) -> bool:
        entry = self.entries.get(action_id)
        if entry is None or entry.executor != self.executor or entry.finished_at is not None:
            return False
        self.entries[action_id] = dataclasses.replace(entry, progress=dict(progress))
        return True

    async def start_many(self, starts: list[tuple[str, str, str]], at: datetime) -> dict[str, LedgerEntry]:
        earlier = {}
        for action_id, digest, plugin in starts:
            entry = await self.start(action_id, at, payload_digest=digest, plugin=plugin)
            if entry is not None:
                earlier[action_id] = entry
        return earlier

    async def finish_many(self, finishes: list[tuple[str, str, bytes, datetime]]) -> set[str]:
        # recorded now, or already with this very event (an earlier attempt of the same call)
        return {f[0] for f in finishes if await self.finish(*f) or self.entries[f[0]].executed_event == f[2]}


class FakeDecisions:
    def __init__(self) -> None:
        self.kept: dict[str, bytes] = {}

    async def earlier(self, action_id: str) -> bytes | None:
        return self.kept.get(action_id)

    async def keep(self, action_id: str, decided_event: bytes) -> bytes:
        return self.kept.setdefault(action_id, decided_event)

    async def earlier_many(self, action_ids: list[str]) -> dict[str, bytes]:
        return {action_id: self.kept[action_id] for action_id in action_ids if action_id in self.kept}

    async def keep_many(self, decided: dict[str, bytes]) -> dict[str, bytes]:
        return {action_id: self.kept.setdefault(action_id, event) for action_id, event in decided.items()}


@dataclass
class FakeSend:
    """Acknowledged records, in order: (topic, key, value)."""

    acked: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    down: bool = False

    async def __call__(self, topic: str, key: bytes, value: bytes) -> None:
        if self.down:
            raise KafkaConnectionError("the fake broker is down")
        self.acked.append((topic, key, value))

    def events(self, topic: str) -> list[Any]:
        return [registry().decode_event(value) for t, _, value in self.acked if t == topic]


def fake_publisher(service: str, send: FakeSend | None = None, namespace: str = "unit") -> tuple[Publisher, FakeSend]:
    send = send or FakeSend()
    return Publisher(send, Topics(namespace, 4), service), send


class FakeOpa:
    def __init__(self, answer: Callable[[dict[str, Any]], Any], revision: str = "sha256:fake") -> None:
        self.answer = answer
        self.revision = revision
        self.down = False
        self.queries = 0

    async def query(self, path: str, input_document: dict[str, Any]) -> OpaAnswer:
        """``keyturn/batch`` answers each item of ``batch`` with ``answer`` (its ``decision``), as
        the real package does; any other path answers ``answer`` of the whole input."""
        self.queries += 1
        if self.down:
            raise PolicyUnavailable("the fake OPA is down")
        if path == "keyturn/batch":
            decisions = []
            for item in input_document["batch"]:
                answer = self.answer(item)
                decisions.append(answer.get("decision") if isinstance(answer, dict) else None)
            return OpaAnswer({"decisions": decisions}, f"decision-{self.queries}", self.revision)
        return OpaAnswer(self.answer(input_document), f"decision-{self.queries}", self.revision)

    async def revision_of(self, answer: OpaAnswer) -> str:
        return answer.revision or self.revision

    async def policy_revision(self) -> str:
        if self.down:
            raise PolicyUnavailable("the fake OPA is down")
        return self.revision


@dataclass
class Record:
    """A consumed record as both transports give it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()
    timestamp: int = 0  # when its producer made it, in ms


@dataclass
class ListSource:
    """Hands out fixed batches; ``committed`` lists the batches committed, in order."""

    batches_to_give: list[list[Record]]
    committed: list[list[Record]] = field(default_factory=list)

    async def batches(self):
        for batch in self.batches_to_give:
            yield batch

    async def handled(self, batch: Sequence[Record]) -> None:
        self.committed.append(list(batch))


class MemoryConsumer:
    """aiokafka's consumer as ``KafkaSource`` uses it, over records fed to it: ``getmany`` hands
    out what was fed (waiting up to its timeout for something) and notes each call's timeout with
    the fetch settings the broker would be asked for meanwhile (``asked``); ``commit`` records the
    offsets asked for. ``_fetcher`` holds the two settings where aiokafka's fetcher does, as the
    consumer was made (aiokafka's defaults unless given)."""

    def __init__(self, topic: str, *, fetch_min_bytes: int = 1, fetch_max_wait_ms: int = 500) -> None:
        self.topic = topic
        self._fetcher = SimpleNamespace(_fetch_min_bytes=fetch_min_bytes, _fetch_max_wait_ms=fetch_max_wait_ms)
        self.fed: asyncio.Queue[Record] = asyncio.Queue()
        self.asked: list[tuple[int, int, int]] = []  # (getmany timeout, min bytes, wait ms)
        self.commits: list[dict[tuple[str, int], int]] = []

    def feed(self, *keys_and_offsets: tuple[str, int], partition: int = 0) -> None:
        for key, offset in keys_and_offsets:
            self.fed.put_nowait(Record(self.topic, partition, offset, key.encode(), key.encode()))

    def fetching(self) -> tuple[int, int]:
        """What the next fetch would ask the broker for: (min bytes, wait ms)."""
        return self._fetcher._fetch_min_bytes, self._fetcher._fetch_max_wait_ms

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[Any, list[Record]]:
        self.asked.append((timeout_ms, *self.fetching()))
        try:
            first = await asyncio.wait_for(self.fed.get(), timeout_ms / 1000)
        except TimeoutError:
            return {}
        got = [first]
        while len(got) < max_records and not self.fed.empty():
            got.append(self.fed.get_nowait())
        by_partition: dict[Any, list[Record]] = {}
        for record in got:
            by_partition.setdefault(TopicPartition(record.topic, record.partition), []).append(record)
        return by_partition

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append({(tp.topic, tp.partition): offset for tp, offset in offsets.items()})

    def committed(self, partition: int = 0) -> int | None:
        """The last offset committed for ``partition``, None if never."""
        return next((c[(self.topic, partition)] for c in reversed(self.commits) if (self.topic, partition) in c), None)


__all__ = [
    "FakeActionStore",
    "FakeDecisions",
    "FakeLedger",
    "FakeOpa",
    "FakeSend",
    "LifecycleChange",
    "ListSource",
    "MemoryConsumer",
    "Record",
    "fake_publisher",
]


class FakePreviewer:
    """The impact preview port (``policy.impact.Previewer``): a fixed answer per action, with
    the real one's rule that a preview is bound to the request's payload digest."""

    def __init__(self, rows: dict[str, int | None] | None = None, *, operation: str = "delete") -> None:
        self.rows = rows or {}  # action id -> rows (None: the preview was unavailable); absent: not SQL-backed
        self.operation = operation
        self.asked: list[str] = []

    def applies_to(self, request: Any) -> bool:
        return request.action_id in self.rows

    async def preview(self, request: Any) -> Any:
        self.asked.append(request.action_id)
        if request.action_id not in self.rows:
            return None
        rows = self.rows[request.action_id]
        status = "unavailable" if rows is None else "computed"
        return ImpactPreview(
            payload_digest=request.payload_digest,
            status=status,
            operation=self.operation,
            computed_at=datetime.now(UTC),
            rows=rows,
            method=None if rows is None else "exact",
            tables=("public.orders",),
            detail="the fake target is down" if rows is None else None,
        )
