"""Two intake processes behind one port (SO_REUSEPORT): both serve, and one idempotency key
used on both gives one action."""

from __future__ import annotations

import dataclasses
import secrets

import httpx
import pytest

from tests.integration.conftest import eventually, mint
from tests.processes import ServiceProcesses, free_port

pytestmark = pytest.mark.integration


def test_two_intake_processes_share_a_port_and_an_idempotency_key_gives_one_action(settings, tmp_path) -> None:
    port = free_port()
    shared = dataclasses.replace(
        settings,
        namespace=f"kt{secrets.token_hex(4)}",  # its own consumer groups: the session's intake keeps its partitions
        intake_port=port,
        intake_url=f"http://127.0.0.1:{port}",
    )
    procs = ServiceProcesses(
        shared, log_dir=tmp_path, env={"KEYTURN_INTAKE_REUSE_PORT": "1", "KEYTURN_ACCESS_LOG": "1"}
    )
    headers = {"Authorization": f"Bearer {mint(shared, 'agent:reporter', ('human:alice',))}"}
    body = {
        "action": "read.table",
        "resource": "postgres://staging/analytics/orders",
        "parameters": {"limit": 1},
        "reason": "two intakes",
        "idempotency_key": f"shared-{secrets.token_hex(4)}",
    }
    served_by = ("intake-a", "intake-b")
    try:
        procs.start("intake-a", "intake")
        procs.start("intake-b", "intake")
        procs.wait_http(f"{shared.intake_url}/healthz", 120)
        ready = eventually(
            lambda: all("Application startup complete" in (tmp_path / f"{n}.log").read_text() for n in served_by),
            timeout=120,
        )
        assert ready, "both intake processes should have started on the shared port"
        answers = []
        served = dict.fromkeys(served_by, 0)
        for _ in range(60):  # a new connection each time: the kernel spreads them over both processes
            answers.append(httpx.post(f"{shared.intake_url}/v1/actions", json=body, headers=headers, timeout=30))
            served = {name: (tmp_path / f"{name}.log").read_text().count('"POST /v1/actions HTTP') for name in served}
            if len(answers) >= 10 and all(served.values()):
                break
        assert all(served.values()), f"one process served every connection: {served}"
        assert [a.status_code for a in answers].count(202) == 1, [a.status_code for a in answers]
        assert {a.status_code for a in answers} == {200, 202}
        assert len({a.json()["action_id"] for a in answers}) == 1

        procs.stop("intake-a")  # the other still serves the port, and knows the action
        again = httpx.post(f"{shared.intake_url}/v1/actions", json=body, headers=headers, timeout=30)
        assert again.status_code == 200 and again.json()["action_id"] == answers[0].json()["action_id"]
    finally:
        procs.stop_all()
