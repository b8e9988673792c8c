"""Scale-out on paper: every keyed topic has the configured partition count, by default enough
for eight or more workers in each service's consumer group; the audit chain stays one log."""

from __future__ import annotations

from keyturn.bus.topics import Topics, topic_specs
from keyturn.config import Settings


def test_the_default_lets_eight_workers_per_group_each_hold_partitions() -> None:
    topics = Topics("unit", Settings().partitions)
    specs = {spec.name: spec.num_partitions for spec in topic_specs(topics)}
    keyed = [topics.submissions, *topics.lifecycle, topics.votes, topics.dlq]
    assert all(specs[name] >= 8 for name in keyed)
    assert len({specs[name] for name in keyed}) == 1  # one count: an action's events stay on one partition number
    assert specs[topics.audit] == 1


def test_the_partition_count_is_a_setting() -> None:
    settings = Settings.from_env({"KEYTURN_PARTITIONS": "32"})
    specs = {spec.name: spec.num_partitions for spec in topic_specs(Topics("unit", settings.partitions))}
    assert specs["unit.actions.decided"] == 32


def test_the_long_fault_drill_defaults_to_ten_thousand_actions_at_two_hundred_a_second() -> None:
    from tests.chaos.scenario import long_drill

    default = long_drill({})
    assert (default.rate, default.min_actions) == (200, 10_000)
    assert long_drill({"KEYTURN_CHAOS_RATE": "300", "KEYTURN_CHAOS_ACTIONS": "20000"}).min_actions == 20_000


def test_only_the_submissions_topic_rolls_its_segments_every_minute() -> None:
    """Parameters in clear leave the disk with their segment (bus.topics.SUBMISSIONS_CONFIGS)."""
    topics = Topics("unit", Settings().partitions)
    configs = {spec.name: spec.topic_configs for spec in topic_specs(topics)}
    assert int(configs[topics.submissions]["segment.ms"]) <= 60_000
    assert int(configs[topics.submissions]["file.delete.delay.ms"]) <= 1_000
    assert "retention.ms" not in configs[topics.submissions]  # untaken submissions wait for the intake
    assert all("segment.ms" not in configs[name] for name in (*topics.lifecycle, topics.votes, topics.dlq))
