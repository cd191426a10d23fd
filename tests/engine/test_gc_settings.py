"""``tune_gc``: the garbage collector's settings for a collecting process; a real-time collector
sets the thresholds from its first start and puts the process's own back at close."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from flowcollect import DataCollectionContext, DataCollector, Pipeline, Variable
from flowcollect.runtime import GC_ENV, THRESHOLDS, VirtualScheduler, tune_gc
from flowcollect.testing import MemoryDataWriter, StaticDataReader

OWN = (900, 11, 12)
"""Settings no interpreter defaults to: whatever a test sees afterwards came from these."""


@pytest.fixture
def own_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(GC_ENV, raising=False)
    before = gc.get_threshold()
    frozen = gc.get_freeze_count()
    gc.set_threshold(*OWN)
    yield
    gc.unfreeze()
    gc.set_threshold(*before)
    assert frozen == 0, "a frozen heap before the test: its checks of the freeze count mean nothing"


def test_tune_gc_sets_larger_young_generations_freezes_and_restores(own_settings: None) -> None:
    kept = [object() for _ in range(100)]  # tracked, and alive: frozen below
    restore = tune_gc()
    assert gc.get_threshold() == THRESHOLDS
    assert gc.get_freeze_count() >= len(kept)
    restore()
    assert gc.get_threshold() == OWN
    assert gc.get_freeze_count() == 0


def test_tune_gc_without_freezing_only_sets_the_thresholds(own_settings: None) -> None:
    restore = tune_gc(freeze=False)
    assert gc.get_threshold() == THRESHOLDS
    assert gc.get_freeze_count() == 0
    restore()
    assert gc.get_threshold() == OWN


def test_the_environment_keeps_the_interpreters_settings(
    own_settings: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(GC_ENV, "Default ")
    restore = tune_gc()
    assert gc.get_threshold() == OWN
    assert gc.get_freeze_count() == 0
    restore()
    assert gc.get_threshold() == OWN


def _context() -> DataCollectionContext:
    return DataCollectionContext(
        id=1, interval_ms=50, min_interval_ms=10, variables=[Variable(id=1, address="a", reader="static")]
    )


def _collector(**options: object) -> tuple[DataCollector, DataCollectionContext]:
    collector = DataCollector([StaticDataReader({"a": 1.0})], [MemoryDataWriter()], **options)  # type: ignore[arg-type]
    return collector, _context()


@pytest.mark.realtime
def test_a_collector_tunes_from_its_first_start_to_its_close(own_settings: None) -> None:
    collector, context = _collector()
    try:
        assert gc.get_threshold() == OWN, "tuned before anything started"
        collector.start(context)
        assert gc.get_threshold() == THRESHOLDS
        assert gc.get_freeze_count() == 0, "the library froze the program's objects"
    finally:
        collector.close()
    assert gc.get_threshold() == OWN


@pytest.mark.realtime
def test_a_collector_told_not_to_keeps_the_settings(own_settings: None) -> None:
    collector, context = _collector(gc_tuning=False)
    try:
        collector.start(context)
        assert gc.get_threshold() == OWN
    finally:
        collector.close()
    assert gc.get_threshold() == OWN


def test_a_collector_in_virtual_time_keeps_the_settings(own_settings: None) -> None:
    collector, context = _collector(scheduler=VirtualScheduler())
    try:
        collector.start(context)
        assert gc.get_threshold() == OWN
    finally:
        collector.close()


def test_overlapping_runs_restore_when_the_last_one_ends(own_settings: None) -> None:
    first = tune_gc()
    second = tune_gc(freeze=False)
    first()
    first()  # a second call of the same restore changes nothing
    assert gc.get_threshold() == THRESHOLDS, "restored while a run still held the settings"
    assert gc.get_freeze_count() > 0
    second()
    assert gc.get_threshold() == OWN
    assert gc.get_freeze_count() == 0


@pytest.mark.realtime
def test_a_pipeline_passes_its_choice_to_the_collector(own_settings: None) -> None:
    seen: list[tuple[int, int, int]] = []
    for tuning in (True, False):
        pipeline = Pipeline(
            name="gc",
            readers=[StaticDataReader({"a": 1.0})],
            writers=[MemoryDataWriter()],
            contexts=[_context()],
            gc_tuning=tuning,
        )
        summary = pipeline.run(0.3, on_status=lambda _s: seen.append(gc.get_threshold()), status_every_s=0.1)
        assert summary.written > 0
        assert seen and set(seen) == {THRESHOLDS if tuning else OWN}, (tuning, seen)
        assert gc.get_threshold() == OWN
        seen.clear()
