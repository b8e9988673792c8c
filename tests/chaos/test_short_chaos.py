"""The short fault drill `make test` runs (``make chaos`` runs the long one): under load, every
service is SIGKILLed and restarted in turn, the broker restarted, OPA and PostgreSQL stopped for
a few seconds. Afterwards every accepted action has exactly one terminal state, the requester
sees it, nothing was decided or executed twice, the audit has every event once, and
`keyturn audit verify` passes.
"""

from __future__ import annotations

import pytest

from tests.chaos.scenario import SHORT, assert_survived, drill_stack, run_drill

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.timeout(900)]


def test_every_action_survives_killed_services_and_restarted_servers_exactly_once() -> None:
    with drill_stack(SHORT) as (settings, servers, procs):
        report = run_drill(SHORT, settings, servers, procs)
    assert_survived(report)
