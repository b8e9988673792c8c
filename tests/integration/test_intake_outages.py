"""The intake's own PostgreSQL restarts, or the broker does, while actions flow.

What an agent must notice: a request during the outage is told 503 (try again, same idempotency
key) rather than a server error; once the database is back the same intake accepts requests
again; and the status API ends up showing every action's true state, including the decisions
and executions that happened while the intake could not record them.

Only the intake's database is stopped: it is a private PostgreSQL (``PrivateServers``), while
the policy and the executor keep working on the shared servers, so lifecycle events keep
arriving during the outage, as they would in a deployment where each service has its own
database.

When the broker is down, the intake still has its database: a request is stored and answered
202 within a few seconds, and the outbox sweep publishes it once the broker is back.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from keyturn.config import REPO_ROOT, Settings
from tests.integration.conftest import mint
from tests.processes import PrivateServers, ServiceProcesses, run_settings, run_settings_on

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

# what each kind of request becomes with the policy and executor running and no approver
EXPECTED_HISTORY = {
    "allowed": ["requested", "allowed", "approved_external"],  # read.* is external: a receipt, nothing run
    "denied": ["requested", "denied"],
    "approval": ["requested", "needs_approval"],
}


def body(number: int, run: str) -> tuple[str, dict[str, Any]]:
    key = f"outage-{run}-n{number}"  # letters around the hex: digits alone can read as a phone number
    kind = ("allowed", "denied", "allowed", "approval")[number % 4]
    if kind == "denied":
        return kind, {
            "action": "secrets.delete",
            "resource": "vault://production/payments/api-key",
            "reason": "cleanup",
            "parameters": {"name": f"payments/api-key-{number}"},
            "idempotency_key": key,
        }
    if kind == "approval":
        return kind, {
            "action": "iam.role.grant",
            "resource": "iam://staging/roles/analyst",
            "reason": "onboarding",
            "parameters": {"principal": "bob", "role": "analyst"},
            "idempotency_key": key,
        }
    return kind, {
        "action": "read.table",
        "resource": "postgres://staging/analytics/orders",
        "reason": "report",
        "parameters": {"table": "orders", "limit": 10, "n": number},
        "idempotency_key": key,
    }


class Requester:
    """An agent submitting with idempotency keys and remembering what it was told."""

    def __init__(self, settings: Settings) -> None:
        token = mint(settings, "agent:reporter", ("human:alice",))
        self.http = httpx.Client(base_url=settings.intake_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        self.run = secrets.token_hex(3)
        self.accepted: dict[str, str] = {}  # action id -> kind
        self.unavailable: dict[int, httpx.Response] = {}  # submission number -> its 503
        self.unexpected: list[str] = []

    def submit_all(self, numbers: range | list[int]) -> None:
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda n: (n, *self._post(n)), numbers))
        for number, kind, response in answers:
            if response.status_code in (200, 202):
                self.accepted[response.json()["action_id"]] = kind
                self.unavailable.pop(number, None)
            elif response.status_code == 503:
                self.unavailable[number] = response
            else:
                self.unexpected.append(f"#{number}: HTTP {response.status_code} {response.text[:300]}")

    def _post(self, number: int) -> tuple[str, httpx.Response]:
        kind, payload = body(number, self.run)
        return kind, self.http.post("/v1/actions", json=payload)

    def states(self, action_id: str) -> list[str] | str:
        response = self.http.get(f"/v1/actions/{action_id}")
        if response.status_code != 200:
            return f"HTTP {response.status_code}"
        return [entry["state"] for entry in response.json()["history"]]

    def not_yet_right(self) -> dict[str, Any]:
        """Accepted actions whose history is not (yet) what the lifecycle topics carried."""
        found = {a: self.states(a) for a in self.accepted}
        return {a: s for a, s in found.items() if s != EXPECTED_HISTORY[self.accepted[a]]}


def wait_until_right(requester: Requester, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (wrong := requester.not_yet_right()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return wrong


@pytest.fixture
def intake_on_private_database(endpoints, tmp_path) -> Iterator[tuple[Settings, PrivateServers, ServiceProcesses]]:
    servers = PrivateServers(REPO_ROOT / ".run" / f"intake-db-{secrets.token_hex(3)}")
    shared = run_settings_on(endpoints, tmp_path / "run", policy_unavailable_after_s=10.0)
    workers = ServiceProcesses(shared)
    intake = ServiceProcesses(dataclasses.replace(shared, database_url=servers.database_url))
    try:
        servers.start("postgres")
        workers.start("policy")
        workers.start("executor")
        intake.start_all(("intake",))
        yield shared, servers, workers
    finally:
        for name in list(workers.procs):
            os.kill(workers.pid(name), signal.SIGCONT)  # a test that failed mid-way may leave one frozen
        intake.stop_all()
        workers.stop_all()
        servers.down(remove=True)


def test_a_restart_of_the_intake_database_loses_nothing_and_needs_no_intake_restart(intake_on_private_database) -> None:
    settings, servers, workers = intake_on_private_database
    requester = Requester(settings)

    requester.submit_all(range(0, 8))
    assert len(requester.accepted) == 8, requester.unexpected
    assert not wait_until_right(requester, 60), "the stack never got going"

    # Requests accepted now are decided and executed while the intake's database is down:
    # the policy is frozen until the database has stopped.
    os.kill(workers.pid("policy"), signal.SIGSTOP)
    requester.submit_all(range(8, 28))
    assert len(requester.accepted) == 28, requester.unexpected
    stopped_at = time.monotonic()
    servers.stop("postgres")
    os.kill(workers.pid("policy"), signal.SIGCONT)

    requester.submit_all(range(28, 32))
    during = requester.http.get(f"/v1/actions/{next(iter(requester.accepted))}")
    time.sleep(max(0.0, 3.0 - (time.monotonic() - stopped_at)))
    servers.start("postgres")

    assert not requester.unexpected, requester.unexpected
    assert sorted(requester.unavailable) == [28, 29, 30, 31], (
        "a request during the outage must be refused, not accepted"
    )
    refusal = requester.unavailable[28]
    assert refusal.json()["error"] == "unavailable"
    assert "idempotency key" in refusal.json()["detail"]
    assert refusal.headers.get("Retry-After")
    assert during.status_code == 503 and during.json()["error"] == "unavailable"

    # the same intake, not restarted: the refused requests go through on retry, new ones too
    deadline = time.monotonic() + 30
    while requester.unavailable and time.monotonic() < deadline:
        time.sleep(0.5)
        requester.submit_all(sorted(requester.unavailable))
    requester.submit_all(range(32, 40))
    assert not requester.unavailable and not requester.unexpected, (requester.unavailable, requester.unexpected)
    assert len(requester.accepted) == 40

    wrong = wait_until_right(requester, 30)
    assert not wrong, f"{len(wrong)} of {len(requester.accepted)} actions show the wrong history: {wrong}"


@pytest.fixture
def stack_on_private_broker(endpoints, tmp_path) -> Iterator[tuple[Settings, PrivateServers]]:
    servers = PrivateServers(REPO_ROOT / ".run" / f"intake-kafka-{secrets.token_hex(3)}")
    settings = run_settings(
        "kt",
        tmp_path / "run",
        kafka_bootstrap=servers.kafka_bootstrap,
        opa_url=endpoints.opa_url,
        database_url=endpoints.database_url,
    )
    procs = ServiceProcesses(settings)
    try:
        servers.start("kafka")
        procs.start_all(("intake", "policy", "executor"))
        yield settings, servers
    finally:
        procs.stop_all()
        servers.down(remove=True)


def test_while_the_broker_is_down_requests_are_accepted_and_published_when_it_is_back(stack_on_private_broker) -> None:
    settings, servers = stack_on_private_broker
    requester = Requester(settings)
    requester.submit_all(range(0, 4))
    assert len(requester.accepted) == 4, requester.unexpected
    assert not wait_until_right(requester, 60), "the stack never got going"

    servers.stop("kafka")
    started = time.monotonic()
    requester.submit_all(range(4, 12))
    answered_in = time.monotonic() - started
    assert not requester.unexpected and not requester.unavailable, (requester.unexpected, requester.unavailable)
    assert len(requester.accepted) == 12, "a request the intake could store must be accepted while the broker is down"
    # the first waits the intake's patience (5 s) for an ack; the rest are answered at once
    assert answered_in < 12, f"eight requests took {answered_in:.0f} s to be answered with the broker down"
    waiting = [a for a in requester.accepted if requester.states(a) == ["requested"]]
    assert len(waiting) == 8, "the requests taken during the outage wait, stored, for the broker"

    servers.start("kafka")
    wrong = wait_until_right(requester, 90)
    assert not wrong, (
        f"{len(wrong)} of {len(requester.accepted)} actions never went on after the broker came back: {wrong}"
    )
