"""Helpers for tests that drive the running services the way an agent and an approver would."""

from __future__ import annotations

import asyncio
import subprocess
import time
from datetime import timedelta
from typing import Any

import httpx
import pytest

from keyturn.config import REPO_ROOT, Settings
from keyturn.identity import issue_token, load_or_create_signing_key
from tests.conftest import settings_env
from tests.processes import run_keyturn

pytestmark = pytest.mark.integration


class Agent:
    """An agent (or human) talking to the intake with its own token."""

    def __init__(self, settings: Settings, subject: str, acts_for: tuple[str, ...] = ()) -> None:
        self.settings = settings
        self.subject = subject
        self.token = mint(settings, subject, acts_for)
        self.http = httpx.Client(
            base_url=settings.intake_url, headers={"Authorization": f"Bearer {self.token}"}, timeout=90
        )

    def submit(
        self,
        action: str,
        resource: str,
        parameters: dict[str, Any] | None = None,
        reason: str = "integration test",
        **extra: Any,
    ) -> httpx.Response:
        body = {"action": action, "resource": resource, "parameters": parameters or {}, "reason": reason, **extra}
        return self.http.post("/v1/actions", json=body)

    def submit_ok(self, *args: Any, **kwargs: Any) -> str:
        response = self.submit(*args, **kwargs)
        assert response.status_code == 202, response.text
        return response.json()["action_id"]

    def status(self, action_id: str) -> dict[str, Any]:
        response = self.http.get(f"/v1/actions/{action_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait(self, action_id: str, timeout: float = 60) -> dict[str, Any]:
        # the client waits longer than the server may hold the request: a wait past the client's
        # default read timeout (90 s) ended in ReadTimeout instead of the action's state
        response = self.http.get(f"/v1/actions/{action_id}/wait", params={"timeout": timeout}, timeout=timeout + 30)
        assert response.status_code == 200, response.text
        return response.json()

    def wait_for_state(self, action_id: str, state: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            current = self.status(action_id)
            if current["state"] == state or current["terminal"]:
                return current
            time.sleep(0.2)
        return self.status(action_id)


def mint(settings: Settings, subject: str, acts_for: tuple[str, ...] = ()) -> str:
    key = load_or_create_signing_key(settings.keys_dir)
    return issue_token(
        key,
        subject=subject,
        acts_for=acts_for,
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
        ttl=timedelta(hours=2),
    )


def keyturn_cli(settings: Settings, *args: str, token: str | None = None) -> subprocess.CompletedProcess:
    """Run the ``keyturn`` command as a user would, against this session's services."""
    env = settings_env(settings)
    if token:
        env["KEYTURN_TOKEN"] = token
    return run_keyturn(list(args), env=env, cwd=REPO_ROOT)


def approval_shown(settings: Settings, action_id: str, reader: str) -> dict[str, Any]:
    """The approval as `reader` sees it in the console. An action's state can read needs_approval a
    moment before the approval service has taken the decision in: while it answers 'not open yet'
    (425, Retry-After), ask again, as the console and the CLI do."""
    headers = {"Authorization": f"Bearer {mint(settings, reader)}"}
    deadline = time.monotonic() + 30
    while True:
        shown = httpx.get(f"{settings.approval_url}/v1/approvals/{action_id}", headers=headers, timeout=30)
        if shown.status_code != 425 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert shown.status_code == 200, shown.text
    return shown.json()


def vote_over_api(settings: Settings, action_id: str, approver: str, choice: str = "approve", why: str = "") -> None:
    """Vote as a person does in the console or with `keyturn approve|deny` (both call this API): read the
    approval, vote on the digest shown; waits while the approval is not open yet (425)."""
    headers = {"Authorization": f"Bearer {mint(settings, approver)}"}
    with httpx.Client(base_url=settings.approval_url, headers=headers, timeout=30) as api:
        shown = approval_shown(settings, action_id, approver)
        body = {"choice": choice, "payload_digest": shown["payload_digest"], "reason": why or None}
        voted = api.post(f"/v1/approvals/{action_id}/votes", json=body)
        assert voted.status_code == 200, voted.text


@pytest.fixture(scope="session")
def reporter(settings, services) -> Agent:
    """agent:reporter acting for human:alice."""
    return Agent(settings, "agent:reporter", ("human:alice",))


async def _read_topic(settings: Settings, topic: str) -> list[tuple[Any, Any]]:
    from aiokafka import AIOKafkaConsumer

    from keyturn.bus.codec import UndecodableMessage, registry

    # no group: the consumer assigns itself every partition of the topic
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        for _ in range(100):
            partitions = sorted(consumer.assignment())
            if partitions:
                break
            await asyncio.sleep(0.1)
        assert partitions, f"topic {topic} has no partitions"
        end = await consumer.end_offsets(partitions)
        found: list[tuple[Any, Any]] = []
        while any([await consumer.position(tp) < end[tp] for tp in partitions]):
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                for message in messages:
                    try:
                        found.append((registry().decode_event(message.value), message))
                    except UndecodableMessage:
                        found.append((None, message))
        return found
    finally:
        await consumer.stop()


def read_topic(settings: Settings, topic: str) -> list[tuple[Any, Any]]:
    """Every (event or None when undecodable, message) on ``topic`` so far."""
    return asyncio.run(_read_topic(settings, topic))


def namespace_topics(settings: Settings) -> list[str]:
    """Every topic of this run's namespace."""
    from aiokafka.admin import AIOKafkaAdminClient

    async def names() -> list[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
        await admin.start()
        try:
            return sorted(t for t in await admin.list_topics() if t.startswith(settings.namespace))
        finally:
            await admin.close()

    return asyncio.run(names())


def eventually(check, timeout: float = 30, every: float = 0.3):
    """Poll ``check`` until it returns something truthy; return that, or fail with the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


def warrant(settings: Settings, topic: str, key: bytes, value: bytes) -> list[tuple[str, bytes]]:
    """The headers of a record on ``topic`` sent by a service holding the run's seal ring
    (``bus.warrants``): for tests of what the executor checks past the warrant, as if the
    policy itself had gone wrong."""
    from keyturn.bus.warrants import Warrants
    from keyturn.masking.protect import keyring_for

    return Warrants(keyring_for(settings.seal_keys, settings.keys_dir), (topic,)).signed(topic, key, value, [])


def produce(
    settings: Settings,
    topic: str,
    value: bytes,
    key: bytes | None = None,
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    """Publish raw bytes, as a misbehaving or external producer would."""
    from aiokafka import AIOKafkaProducer

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(topic, value, key=key, headers=headers or [])
        finally:
            await producer.stop()

    asyncio.run(send())
