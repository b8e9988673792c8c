"""A service whose seal keys disagree with the deployment's refuses to start, and says why.

Two hosts without ``KEYTURN_SEAL_KEYS`` each make a local key of their own: the executor would
then refuse every order as unwarranted and every action wait for good. Here the executor starts
with a run directory of its own (so a key of its own) in the namespace of a running intake.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import secrets
import subprocess

import pytest

from keyturn.masking.agreement import EXIT_CONFIG
from keyturn.masking.protect import keyring_for
from tests.integration.conftest import Agent
from tests.processes import ServiceProcesses, run_settings_on

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def test_a_service_with_a_key_of_its_own_refuses_to_start_and_names_key_ids_only(endpoints, tmp_path) -> None:
    settings = run_settings_on(endpoints, tmp_path / "host-a")
    elsewhere = dataclasses.replace(settings, run_dir=str(tmp_path / "host-b"))
    first, second = ServiceProcesses(settings), ServiceProcesses(elsewhere, log_dir=tmp_path / "host-b-logs")
    try:
        first.start_all(("intake",))  # records its ring as it starts
        second.start("executor")
        second.start("audit")  # keeps no state in the database, and checks all the same
        codes = {}
        for name in ("executor", "audit"):
            try:
                codes[name] = second.procs[name].wait(90)
            except subprocess.TimeoutExpired:
                pytest.fail(f"the {name}, whose keys disagree with the intake's, went on running")
        log = (tmp_path / "host-b-logs" / "executor.log").read_text()
        audit_log = (tmp_path / "host-b-logs" / "audit.log").read_text()

        assert codes == {"executor": EXIT_CONFIG, "audit": EXIT_CONFIG}, (log[-2000:], audit_log[-2000:])
        assert "audit refuses to start: KEYTURN_SEAL_KEYS of the audit service disagrees" in audit_log
        ours = keyring_for("", elsewhere.keys_dir)
        theirs = keyring_for("", settings.keys_dir)
        assert "executor refuses to start: KEYTURN_SEAL_KEYS of the executor service disagrees" in log
        assert "the intake service (started " in log and f"seals and warrants with key {theirs.current_key_id!r}" in log
        assert f"would seal and warrant with key {ours.current_key_id!r}" in log
        for ring in (ours, theirs):  # ids only: no key, in any spelling
            for key in ring.keys.values():
                for written in (log, audit_log):
                    assert key.hex() not in written.lower()
                    assert base64.b64encode(key).decode() not in written

        # an executor with the intake's keys starts, and runs what the policy allows: the refusal was the keys'
        first.start("policy")
        first.start("executor")
        agent = Agent(settings, "agent:reporter", ("human:alice",))
        action_id = agent.submit_ok("sql.query", "postgres://staging/shop", {"statement": "SELECT 1 AS one"})
        view = agent.wait(action_id, 90)
        assert view["state"] == "succeeded", view
    finally:
        second.stop_all()
        first.stop_all()


async def test_services_starting_together_on_a_new_schema_all_agree(endpoints) -> None:
    """Every service creates the keyring tables through its pool's migration and then checks
    under the same lock: made in the check under another lock, services started at once on a
    schema nobody used failed on the tables' creation (a unique violation) and exited."""
    from keyturn.db import open_pool, schema_name
    from keyturn.masking.agreement import DDL, agree_on_keyring
    from keyturn.masking.sealing import Keyring

    ring = Keyring.generate("k1")
    for _ in range(3):
        schema = schema_name(f"kt{secrets.token_hex(4)}")

        async def start(service: str, schema: str = schema) -> None:
            pool = await open_pool(endpoints.database_url, DDL, schema=schema)
            try:
                await agree_on_keyring(pool, service, ring)
            finally:
                await pool.close()

        await asyncio.gather(*(start(service) for service in ("intake", "policy", "executor", "approval", "audit")))
