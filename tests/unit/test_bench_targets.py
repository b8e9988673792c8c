"""The bench's verdicts on the issue-14 targets and its cost model: a missed target reads missed,
a missing figure never reads met, and the audit writer caps what more cores can give."""

from __future__ import annotations

import math

from bench.targets import GENERATOR, CostModel, per_action_ms, system_ms, targets


def test_each_target_is_judged_beside_its_baseline() -> None:
    verdicts = targets(
        {
            "batched_per_second": 1200.0,
            "post_per_second": 350.0,
            "batched_cpu_ms": 1.9,
            "post_cpu_ms": 4.0,
            "healthz_per_second": 900.0,
            "p99_decided_ms": {200.0: 80.0, 500.0: 300.0},
            "p99_chain_ms": {200.0: 5.0, 500.0: 6.0},
            "audit": {"catch_up_s": 1.0, "audited_per_second": 3000, "events_per_second": 3100, "max_lag_events": 40},
        }
    )
    assert [t.met for t in verdicts] == [True, False, True, True, False, True]
    assert verdicts[0].baseline == 350.0 and verdicts[3].baseline == 5.0
    assert "MISSED" in verdicts[1].row() and "met" in verdicts[0].row()


def test_a_figure_that_was_not_measured_is_missed() -> None:
    assert not any(t.met for t in targets({}))


def test_cpu_per_action_leaves_the_load_generator_apart() -> None:
    per_action = per_action_ms({"intake": 1.0, "audit": 0.5, GENERATOR: 3.0}, 1000)
    assert per_action == {"intake": 1.0, "audit": 0.5, GENERATOR: 3.0}
    assert system_ms(per_action) == 1.5


def test_the_cost_model_names_the_stage_that_caps_it() -> None:
    model = CostModel({"intake": 0.5, "policy": 0.5, "audit": 0.4, "kafka": 0.6, GENERATOR: 5.0})
    rate, cap = model.predicted(2)
    assert math.isclose(rate, 2 * 1000 / 2.0) and "CPU" in cap
    rate, cap = model.predicted(16)
    assert math.isclose(rate, 1000 / 0.4) and "audit" in cap


def test_the_cost_model_caps_a_stage_at_one_worker_per_partition() -> None:
    """A slow executor on two partitions runs two workers at most, however many cores there are."""
    model = CostModel({"policy": 0.2, "executor": 1.0, "audit": 0.1}, partitions=2)
    rate, cap = model.predicted(32)
    assert math.isclose(rate, 2 * 1000 / 1.0) and "executor" in cap and "2 workers" in cap
    assert model.predicted(1)[1] == "CPU of all processes together"
