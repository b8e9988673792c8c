"""How each service process is set up before it serves: its cycle collector (what was imported
is frozen out of it, and the young generation is collected after ``gc_young_threshold`` new
objects; 0 leaves Python's defaults), and for the intake's spawned workers, the same set-up plus
the masking of every log line."""

from __future__ import annotations

import gc
import sys

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


def test_each_spawned_intake_worker_masks_its_logs_and_settles_its_collector(collector, monkeypatch) -> None:
    # uvicorn spawns intake workers as new interpreters: what `serve` set up in its own process
    # does not reach them, so their app factory sets it up again
    import logging

    from keyturn import cli

    factory, hook, raising = logging.getLogRecordFactory(), sys.excepthook, logging.raiseExceptions
    try:
        logging.setLogRecordFactory(logging.LogRecord)  # as a new interpreter starts
        gc.unfreeze()
        monkeypatch.setenv("KEYTURN_GC_YOUNG_THRESHOLD", "12345")
        app = cli.intake_worker_app()
        assert getattr(logging.getLogRecordFactory(), "keyturn_masking", False)
        assert gc.get_threshold()[0] == 12345 and gc.get_freeze_count() > 0
        assert app.title  # the intake's app, built from the environment (it connects only when served)
    finally:
        logging.setLogRecordFactory(factory)
        sys.excepthook, logging.raiseExceptions = hook, raising
        logging.captureWarnings(False)
