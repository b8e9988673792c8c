"""Every service's cycle collector: what was imported is frozen out of it, and the young
generation is collected after ``gc_young_threshold`` new objects (0 leaves Python's defaults)."""

from __future__ import annotations

import gc

import pytest

from keyturn.cli import _settle_gc
from keyturn.config import Settings


@pytest.fixture
def collector():
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_a_service_freezes_what_it_imported_and_collects_the_young_generation_less_often(collector) -> None:
    assert Settings().gc_young_threshold == 10_000
    gc.unfreeze()
    _, older, oldest = gc.get_threshold()
    _settle_gc(Settings().gc_young_threshold)
    assert gc.get_freeze_count() > 1000  # the modules and classes loaded so far: never traversed again
    assert gc.get_threshold() == (10_000, older, oldest)


def test_zero_leaves_the_collector_as_python_sets_it(collector) -> None:
    gc.unfreeze()
    before = gc.get_threshold()
    _settle_gc(0)
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before
