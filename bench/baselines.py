"""Baselines measured in the same run as the figures they sit beside.

* ``kafka_chain``: producer → A → relay → B → relay → C → sink with plain aiokafka and no
  logic — the same three hops as intake → requested → policy → decided → executor → executed
  → (status, audit). Each relay is its own process, as each service is; each stamps the time it
  received a message onto what it forwards, so the sink knows every hop's latency.
* ``opa_*``: decisions from the same OPA with the same input document, by raw httpx POSTs, by
  Keyturn's ``OpaClient`` (and the policy service's whole ``PolicyDecider.decide``), and by
  opa-python-client's ``AsyncOpaClient``, each one at a time and with 16 in flight.

Run as ``python -m bench.baselines relay BOOTSTRAP SRC DST GROUP`` to be one relay process.
"""

from __future__ import annotations

import asyncio
import struct
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from keyturn.config import REPO_ROOT

STAMP = struct.Struct("<d")
PAYLOAD_BYTES = 1024  # about an encoded ActionRequested with its request and provenance


def percentiles(values: list[float]) -> dict[str, float]:
    """p50 / p95 / p99 / max in milliseconds of latencies given in seconds."""
    if not values:
        return {"p50_ms": float("nan"), "p95_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan"), "n": 0}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))] * 1000

    return {"p50_ms": at(0.50), "p95_ms": at(0.95), "p99_ms": at(0.99), "max_ms": ordered[-1] * 1000, "n": len(ordered)}


# --- raw Kafka chain ------------------------------------------------------------------------


async def relay(bootstrap: str, source: str, destination: str, group: str) -> None:
    """Forward every message of ``source`` to ``destination`` with our receive time appended."""
    consumer = AIOKafkaConsumer(
        source, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await consumer.start()
    await producer.start()
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=100, max_records=500)
            sent = []
            for messages in batch.values():
                for message in messages:
                    sent.append(
                        await producer.send(destination, message.value + STAMP.pack(time.time()), key=message.key)
                    )
            if sent:
                await asyncio.gather(*sent)
                await consumer.commit()
    finally:
        await producer.stop()
        await consumer.stop()


class KafkaChain:
    """Three hops of plain aiokafka between four topics of a namespace of its own."""

    def __init__(self, bootstrap: str, partitions: int = 4) -> None:
        self.bootstrap = bootstrap
        self.partitions = partitions
        prefix = f"bench-chain-{uuid.uuid4().hex[:6]}"
        self.topics = [f"{prefix}.{n}" for n in ("requested", "decided", "executed")]
        self.prefix = prefix
        self.relays: list[subprocess.Popen] = []

    async def __aenter__(self) -> KafkaChain:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(t, self.partitions, 1) for t in self.topics])
        finally:
            await admin.close()
        # two relays = policy and executor; the sink (in this process) plays status / audit
        for i, (source, destination) in enumerate(zip(self.topics, self.topics[1:], strict=False)):
            self.relays.append(
                subprocess.Popen(  # noqa: ASYNC220 - starts a long-lived relay; Popen returns at once
                    [
                        sys.executable,
                        "-m",
                        "bench.baselines",
                        "relay",
                        self.bootstrap,
                        source,
                        destination,
                        f"{self.prefix}-relay{i}",
                    ],
                    cwd=REPO_ROOT,
                    env={"PYTHONPATH": f"{REPO_ROOT / 'services'}:{REPO_ROOT}", "PATH": "/usr/bin:/bin"},
                )
            )
        self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True)
        self.sink = AIOKafkaConsumer(
            self.topics[-1],
            bootstrap_servers=self.bootstrap,
            group_id=f"{self.prefix}-sink",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await self.producer.start()
        await self.sink.start()
        await self._warm_up()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        for proc in self.relays:
            proc.terminate()
        for proc in self.relays:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        await self.producer.stop()
        await self.sink.stop()
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.delete_topics(self.topics)
        finally:
            await admin.close()

    async def _warm_up(self) -> None:
        """Until one message makes the whole trip (the relays joined their groups)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            await self._send(1)
            if await self._collect(1, timeout=3.0):
                return
        raise TimeoutError("the raw Kafka chain never delivered a message end to end")

    async def _send(self, count: int, *, rate: float | None = None) -> None:
        padding = b"x" * (PAYLOAD_BYTES - STAMP.size)
        pending = []
        start = time.monotonic()
        for i in range(count):
            if rate:
                delay = start + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            pending.append(
                await self.producer.send(self.topics[0], STAMP.pack(time.time()) + padding, key=uuid.uuid4().bytes)
            )
            if len(pending) >= 1000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)

    async def _collect(self, count: int, *, timeout: float) -> list[tuple[float, float, float, float]]:
        """(sent, relay 1 received, relay 2 received, sink received) of ``count`` messages."""
        found = []
        deadline = time.monotonic() + timeout
        while len(found) < count and time.monotonic() < deadline:
            batch = await self.sink.getmany(timeout_ms=200, max_records=2000)
            now = time.time()
            for messages in batch.values():
                for m in messages:
                    found.append(
                        (
                            STAMP.unpack_from(m.value, 0)[0],
                            STAMP.unpack_from(m.value, len(m.value) - 16)[0],
                            STAMP.unpack_from(m.value, len(m.value) - 8)[0],
                            now,
                        )
                    )
        await self.sink.commit()
        return found

    async def throughput(self, count: int) -> dict[str, Any]:
        """Push ``count`` messages as fast as possible; messages per second through all three hops."""
        started = time.time()
        sender = asyncio.create_task(self._send(count))
        found = await self._collect(count, timeout=max(60.0, count / 200))
        await sender
        finished = max((f[3] for f in found), default=time.time())
        return {"messages": len(found), "seconds": finished - started, "per_second": len(found) / (finished - started)}

    async def latency(self, rate: float, seconds: float) -> dict[str, Any]:
        """Open loop at ``rate`` msgs/s: latency to the first relay (≈ decided), to the second
        (≈ executed) and one hop (relay 1 → relay 2, ≈ approve → executed)."""
        count = int(rate * seconds)
        sender = asyncio.create_task(self._send(count, rate=rate))
        found = await self._collect(count, timeout=seconds + 60)
        await sender
        return {
            "one_hop": percentiles([r1 - sent for sent, r1, _, _ in found]),
            "two_hops": percentiles([r2 - sent for sent, _, r2, _ in found]),
            "hop_between_relays": percentiles([r2 - r1 for _, r1, r2, _ in found]),
            "three_hops": percentiles([sink - sent for sent, _, _, sink in found]),
            "messages": len(found),
        }


# --- raw OPA --------------------------------------------------------------------------------


def sample_request() -> Any:
    """A request like the benchmark's allowed reads, as the policy service receives it."""
    from keyturn.core.canonical import canonical_json
    from keyturn.core.events import ActionRequested, Digest
    from keyturn.core.principal import Principal, PrincipalKind

    parameters = {
        "columns": ["id", "created_at", "amount", "currency"],
        "limit": 100,
        "row_count": 100,
        "filter": {"region": "eu"},
    }
    action_id = str(uuid.uuid4())
    return ActionRequested(
        event_id=f"requested:{action_id}",
        action_id=action_id,
        action="read.table",
        resource="postgres://staging/analytics/orders",
        parameters_json=canonical_json(parameters),
        reason="quarterly churn analysis (benchmark)",
        requester=Principal("agent:bench", PrincipalKind.AGENT, ("human:alice",)),
        payload_digest=Digest.of_json(parameters),
        requested_at=datetime.now(UTC),
    )


async def _rate(call, seconds: float, concurrency: int, latencies: list[float] | None = None) -> dict[str, Any]:
    """Run ``call()`` back to back in ``concurrency`` tasks for ``seconds``: rate and latency."""
    latencies = [] if latencies is None else latencies
    done_before = len(latencies)
    stop = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {"per_second": (len(latencies) - done_before) / elapsed, "seconds": elapsed, **percentiles(latencies)}


async def _interleaved(candidates: dict[str, Any], seconds: float, concurrency: int, rounds: int = 5) -> dict[str, Any]:
    """Each candidate in turn, ``rounds`` times, ``seconds / rounds`` at a time: on a noisy machine
    the load drifts, and alternating spreads the drift over every candidate alike."""
    latencies: dict[str, list[float]] = {name: [] for name in candidates}
    spent: dict[str, float] = dict.fromkeys(candidates, 0.0)
    for _ in range(rounds):
        for name, call in candidates.items():
            spent[name] += (await _rate(call, seconds / rounds, concurrency, latencies[name]))["seconds"]
    return {
        f"{name}_c{concurrency}": {"per_second": len(latencies[name]) / spent[name], **percentiles(latencies[name])}
        for name in candidates
    }


async def opa_decisions(opa_url: str, seconds: float) -> dict[str, Any]:
    """Decisions per second and latency, raw and through Keyturn's client, serial and 16 in flight."""
    import httpx

    from keyturn.policy.app import PolicyDecider
    from keyturn.policy.decisions import policy_input
    from keyturn.policy.opa import OpaClient

    request = sample_request()
    document = {"input": policy_input(request)}
    results: dict[str, Any] = {}
    raw = httpx.AsyncClient(
        base_url=opa_url, timeout=10, limits=httpx.Limits(max_connections=32, max_keepalive_connections=32)
    )
    client = OpaClient(opa_url)
    decider = PolicyDecider(client, 30.0)

    async def raw_decision() -> None:
        response = await raw.post("/v1/data/keyturn/decision", json=document)
        response.raise_for_status()
        assert response.json()["result"]["decision"]["outcome"] == "allowed"

    async def keyturn_query() -> None:
        answer = await client.query("keyturn/decision", document["input"])
        assert answer.result["decision"]["outcome"] == "allowed"

    async def keyturn_decide() -> None:
        decision = await decider.decide(request)
        assert decision.outcome.value == "allowed", decision.reasons

    try:
        for _ in range(50):  # warm connections and OPA's caches
            await raw_decision()
            await keyturn_decide()
        candidates = {"raw_httpx": raw_decision, "keyturn_opaclient": keyturn_query, "keyturn_decider": keyturn_decide}
        for concurrency in (1, 16):
            results.update(await _interleaved(candidates, seconds, concurrency))
        results.update(await _opa_python_client(opa_url, document["input"], seconds, raw_decision))
    finally:
        await raw.aclose()
        await client.close()
    return results


async def _opa_python_client(
    opa_url: str, input_document: dict[str, Any], seconds: float, raw_decision
) -> dict[str, Any]:
    """The same decision through opa-python-client 3.0 (aiohttp underneath), when installed,
    interleaved with raw httpx again so the two share the same moments of the machine."""
    try:
        from opa_client.opa_async import AsyncOpaClient
    except ImportError:
        return {}
    from urllib.parse import urlsplit

    address = urlsplit(opa_url)
    results: dict[str, Any] = {}
    async with AsyncOpaClient(host=address.hostname, port=address.port or 8181, timeout=10) as opa:

        async def decision() -> None:
            answer = await opa.query_rule(input_document, "keyturn.decision")
            assert answer["result"]["decision"]["outcome"] == "allowed"

        for _ in range(50):
            await decision()
        for concurrency in (1, 16):
            pair = await _interleaved(
                {"opa_python_client": decision, "raw_httpx_again": raw_decision}, seconds, concurrency
            )
            results.update(pair)
    return results


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "relay":
        try:
            asyncio.run(relay(*sys.argv[2:]))
        except KeyboardInterrupt:
            pass
    else:
        print("usage: python -m bench.baselines relay BOOTSTRAP SOURCE DESTINATION GROUP", file=sys.stderr)
        sys.exit(2)
