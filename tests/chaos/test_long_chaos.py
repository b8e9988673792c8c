"""The long fault drill, for `make chaos` (tens of minutes): the same faults as the short one,
longer — services down for seconds, the broker down 10 s, OPA down 30 s, PostgreSQL down
10 s — under at least 10,000 actions at 200/s (KEYTURN_CHAOS_ACTIONS, KEYTURN_CHAOS_RATE;
`make chaos CHAOS_ACTIONS=… CHAOS_RATE=…`). Skipped unless KEYTURN_CHAOS=long (set by `make chaos`).
"""

from __future__ import annotations

import os

import pytest

from tests.chaos.scenario import LONG, assert_survived, drill_stack, run_drill

pytestmark = [
    pytest.mark.integration,
    pytest.mark.chaos,
    pytest.mark.skipif(os.environ.get("KEYTURN_CHAOS") != "long", reason="the long drill runs with `make chaos`"),
    pytest.mark.timeout(3600),
]


def test_every_action_survives_long_outages_exactly_once() -> None:
    with drill_stack(LONG) as (settings, servers, procs):
        report = run_drill(LONG, settings, servers, procs)
    assert_survived(report)
