"""``Pipeline`` in-process: run, check, devices, stop requests, PauseSchedule, load_pipeline."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from flowcollect import ConfigError, DataCollectionContext, Pipeline, Variable
from flowcollect.pipeline import PauseSchedule, PipelineLoadError, load_pipeline
from flowcollect.testing import MemoryDataWriter, RecordingListener, StaticDataReader, virtual_collector
from tests.conftest import collector_threads

pytestmark = pytest.mark.realtime


class Device:
    def __init__(self, events: list[str], name: str, fail: bool = False) -> None:
        self.events = events
        self.name = name
        self.fail = fail

    def start(self) -> None:
        self.events.append(f"start {self.name}")
        if self.fail:
            raise OSError("port taken")

    def stop(self) -> None:
        self.events.append(f"stop {self.name}")


def ctx(
    cid: int, interval_ms: int = 100, duration_s: float = 3600, reader: str = "static"
) -> DataCollectionContext:
    return DataCollectionContext(
        id=cid,
        interval_ms=interval_ms,
        min_interval_ms=10,
        duration_s=duration_s,
        variables=[Variable(id=1, address="a", reader=reader)],
    )


def make(*contexts: DataCollectionContext, **fields: object) -> tuple[Pipeline, MemoryDataWriter]:
    writer = MemoryDataWriter()
    values = {"a": 1.0, "b": 2.0}
    settings: dict[str, object] = {
        "name": "api",
        "readers": [StaticDataReader(values)],
        "writers": [writer],
        "contexts": list(contexts) or [ctx(1)],
    }
    pipeline = Pipeline(**{**settings, **fields})  # type: ignore[arg-type]
    return pipeline, writer


def test_run_for_a_duration_starts_devices_first_and_stops_them_last(no_leftover_threads: None) -> None:
    events: list[str] = []
    listener = RecordingListener()
    pipeline, writer = make(
        ctx(1), ctx(2, 200), devices=[Device(events, "one"), Device(events, "two")], listeners=[listener]
    )
    summary = pipeline.run(0.55)
    assert summary.reason == "duration"
    assert events == ["start one", "start two", "stop two", "stop one"]
    assert listener.events[-1] == ("after_close", None)
    assert writer.closed
    assert summary.written == summary.delivered == len(writer.values) > 0
    assert summary.values_read <= summary.delivered
    assert summary.contexts == (1, 2)
    assert {c.state for c in summary.stats.contexts.values()} == {"stopped"}
    # The pipeline's own contexts are untouched: it can run again.
    assert pipeline.contexts[0].start_date is None
    assert pipeline.run(0.25).values_read > 0


def test_the_run_ends_when_the_contexts_end() -> None:
    pipeline, _ = make(ctx(1, duration_s=0.3), ctx(2, duration_s=0.5))
    began = time.monotonic()
    summary = pipeline.run()
    assert summary.reason == "ended"
    assert time.monotonic() - began < 3


def test_a_stop_request_from_another_thread_ends_the_run() -> None:
    pipeline, _ = make()
    stop = threading.Event()
    statuses = []
    timer = threading.Timer(0.4, stop.set)
    timer.start()
    summary = pipeline.run(stop=stop, on_status=statuses.append, status_every_s=0.1)
    timer.join()
    assert summary.reason == "stopped"
    assert len(statuses) >= 2
    assert statuses[-1].readers["static"].values > 0


def test_a_device_that_fails_to_start_stops_the_others_and_nothing_is_collected() -> None:
    events: list[str] = []
    pipeline, writer = make(devices=[Device(events, "one"), Device(events, "two", fail=True)])
    with pytest.raises(ConfigError, match="device two failed to start: OSError: port taken"):
        pipeline.run(1)
    assert events == ["start one", "start two", "stop two", "stop one"]
    assert writer.values == [] and not writer.closed


def test_invalid_contexts_start_nothing() -> None:
    events: list[str] = []
    pipeline, writer = make(ctx(1), ctx(2, reader="plc"), devices=[Device(events, "one")])
    problems = pipeline.check()
    assert len(problems) == 1
    assert problems[0] == "context 2, variable 1 (address 'a'): no reader of type 'plc' (readers: static)"
    assert pipeline.check([1]) == []
    with pytest.raises(ConfigError) as error:
        pipeline.run(1)
    assert error.value.problems == problems
    assert events == [] and writer.values == []
    assert pipeline.check([5]) == ["pipeline 'api' has no context with id 5 (its contexts: 1, 2)"]


def test_bad_run_arguments() -> None:
    pipeline, _ = make()
    with pytest.raises(ConfigError, match="duration_s"):
        pipeline.run(0)
    with pytest.raises(ConfigError, match="status_every_s"):
        pipeline.run(1, status_every_s=0)


def test_the_model_refuses_what_it_cannot_run() -> None:
    with pytest.raises(ValidationError, match=r"devices\.0"):
        make(devices=[object()])
    with pytest.raises(ValidationError, match="name"):
        make(name=" ")
    with pytest.raises(ValidationError, match="Extra inputs"):
        make(readrs=[])


def test_collector_gives_a_ready_collector(no_leftover_threads: None) -> None:
    pipeline, writer = make()
    with pipeline.collector() as collector:
        assert not collector.is_running()
        assert collector.writers == [writer]


def test_pause_schedule_pauses_and_resumes_and_leaves_no_thread() -> None:
    schedule = PauseSchedule(1, active_s=0.2, paused_s=0.2)
    pipeline, _ = make(ctx(1), listeners=[schedule])
    before = set(collector_threads())
    states: list[str] = []

    def watch(stats: object) -> None:
        states.append(stats.contexts[1].state)  # type: ignore[attr-defined]

    pipeline.run(1.1, on_status=watch, status_every_s=0.05)
    assert schedule.pauses >= 2 and schedule.resumes >= 1
    assert "paused" in states and "running" in states
    assert set(collector_threads()) <= before


def test_pause_schedule_refuses_bad_times() -> None:
    with pytest.raises(ValueError, match="positive"):
        PauseSchedule(1, active_s=0, paused_s=1)


def test_load_pipeline_names_the_file_and_keeps_each_module(tmp_path: Path) -> None:
    one = tmp_path / "one" / "p.py"
    two = tmp_path / "two" / "p.py"
    for path, name in ((one, "one"), (two, "two")):
        path.parent.mkdir()
        path.write_text(
            "from flowcollect import DataCollectionContext, Pipeline, Variable\n"
            "from flowcollect.testing import MemoryDataWriter, StaticDataReader\n"
            f"pipeline = Pipeline(name={name!r}, readers=[StaticDataReader({{}})],\n"
            "    writers=[MemoryDataWriter()],\n"
            "    contexts=[DataCollectionContext(id=1,\n"
            "        variables=[Variable(id=1, address='a', reader='static')])])\n"
        )
    assert load_pipeline(one).name == "one"
    assert load_pipeline(two).name == "two"
    with pytest.raises(PipelineLoadError, match="is not a file"):
        load_pipeline(tmp_path)
    with pytest.raises(PipelineLoadError, match="does not exist"):
        load_pipeline(tmp_path / "none.py")


def test_pause_schedule_runs_in_virtual_time_on_the_collectors_scheduler() -> None:
    schedule = PauseSchedule(1, active_s=1.0, paused_s=0.5)
    writer = MemoryDataWriter()
    collector, clock = virtual_collector(
        [StaticDataReader({"a": 1.0})], [writer], [schedule], start_ms=1_000_000
    )
    with collector:
        collector.start(ctx(1))
        clock.advance_ms(4_000)
        # Collecting for 1 s, paused 0.5 s, over and over, exactly on the virtual clock. Whether
        # an instant at a switch itself is collected is the engine's rule for pause and resume.
        offsets = {round(v.time.timestamp() * 1000) - 1_000_000 for v in writer.values if v.time}
        collecting = [(0, 1_000), (1_500, 2_500), (3_000, 4_000)]
        paused = [(1_000, 1_500), (2_500, 3_000)]
        for begin, end in collecting:
            assert set(range(begin + 100, end, 100)) <= offsets, (begin, end, sorted(offsets))
        for begin, end in paused:
            assert not set(range(begin + 100, end, 100)) & offsets, (begin, end, sorted(offsets))
        assert (schedule.pauses, schedule.resumes) == (3, 2)
        collector.stop(1)
        clock.advance_ms(10_000)
        assert (schedule.pauses, schedule.resumes) == (3, 2), "it switched a stopped context"
