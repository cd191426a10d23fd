"""The collector on the real clock and its own threads: a few seconds, honest tolerances."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from itertools import pairwise

import pytest

from flowcollect import (
    CollectedVariable,
    DataCollectionContext,
    DataCollectionListener,
    DataCollector,
    DataWriter,
    Variable,
)
from flowcollect.readers import RandomDataReader
from flowcollect.testing import MemoryDataWriter, StaticDataReader
from tests.conftest import collector_threads

pytestmark = pytest.mark.realtime


def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def context(
    cid: int, addresses: Sequence[str], interval_ms: int, reader: str = "random"
) -> DataCollectionContext:
    return DataCollectionContext(
        id=cid,
        interval_ms=interval_ms,
        min_interval_ms=10,
        variables=[Variable(id=n, address=a, reader=reader) for n, a in enumerate(addresses, 1)],
    )


def ms(v: CollectedVariable) -> int:
    assert v.time is not None
    return round(v.time.timestamp() * 1000)


def test_ticks_land_on_the_wall_clock_grid_without_gaps_or_doubles(no_leftover_threads: None) -> None:
    writer = MemoryDataWriter()
    with DataCollector([RandomDataReader()], [writer]) as collector:
        collector.start(context(1, ["a", "b"], 100))
        collector.start(context(2, ["a"], 300))
        assert wait_until(lambda: len({ms(v) for v in writer.snapshot()}) >= 12)
    values = writer.values
    times = sorted({ms(v) for v in values})
    assert all(t % 100 == 0 for t in times)
    # Consecutive 100 ms ticks: none skipped, none doubled.
    assert [b - a for a, b in pairwise(times)] == [100] * (len(times) - 1)
    per_tick = Counter((ms(v), v.context_id, v.id) for v in values)
    assert set(per_tick.values()) == {1}
    assert {ms(v) % 300 for v in values if v.context_id == 2} == {0}
    # "a" is read once per instant: both contexts see the same value at the shared instants.
    shared = [t for t in times if t % 300 == 0]
    for t in shared:
        a_values = {v.value for v in values if ms(v) == t and v.address == "a"}
        assert len(a_values) == 1, (t, a_values)
    assert not collector_threads()


def test_lateness_is_measured_and_small_when_idle() -> None:
    with DataCollector([RandomDataReader()], [MemoryDataWriter()]) as collector:
        collector.start(context(1, ["a"], 50))
        assert wait_until(lambda: collector.stats().readers["random"].ticks >= 10)
        stats = collector.stats().readers["random"]
    assert stats.lateness_ms_p50 is not None
    # Not a speed claim (bench/engine.py measures that): a tick is not a whole interval late.
    assert 0 <= stats.lateness_ms_p50 < 50


class SlowReader(StaticDataReader):
    def __init__(self, delay_s: float) -> None:
        super().__init__({"x": 1.0}, type="slow")
        self.delay_s = delay_s

    def read(self, variables: Sequence[CollectedVariable]) -> None:
        time.sleep(self.delay_s)
        super().read(variables)


def test_an_overrunning_reader_skips_and_counts_ticks_and_never_delays_another() -> None:
    writer = MemoryDataWriter()
    slow = SlowReader(0.25)
    with DataCollector([slow, RandomDataReader()], [writer]) as collector:
        collector.start(context(1, ["x"], 100, reader="slow"))
        collector.start(context(2, ["a"], 100))
        assert wait_until(lambda: collector.stats().readers.get("slow") is not None)
        assert wait_until(lambda: collector.stats().readers["slow"].overruns >= 4)
        fast_before = collector.stats().readers["random"].ticks
        time.sleep(0.55)
        stats = collector.stats()
    slow_times = sorted(ms(v) for v in writer.values if v.context_id == 1)
    # No pile-up: every slow read starts at a fresh grid instant, at least 300 ms apart.
    assert all(b - a >= 300 for a, b in pairwise(slow_times))
    assert stats.readers["slow"].overruns >= 4
    # The random reader kept its 100 ms rhythm meanwhile.
    assert stats.readers["random"].ticks - fast_before >= 4
    assert stats.readers["random"].overruns == 0


class BlockingWriter(DataWriter):
    def __init__(self) -> None:
        self.release = threading.Event()
        self.values: list[CollectedVariable] = []

    def write(self, values: Sequence[CollectedVariable]) -> None:
        self.release.wait(10)
        self.values.extend(values)


class FailingWriter(DataWriter):
    def write(self, values: Sequence[CollectedVariable]) -> None:
        raise OSError("disk full")


def test_a_stuck_or_failing_writer_costs_only_itself() -> None:
    good, stuck, failing = MemoryDataWriter(), BlockingWriter(), FailingWriter()
    collector = DataCollector([RandomDataReader()], [good, stuck, failing], queue_limit=5)
    try:
        collector.start(context(1, ["a"], 50))
        assert wait_until(lambda: len(good.values) >= 10)
        stats = collector.stats().writers
        assert stats["FailingWriter"].failed >= 9
        assert stats["FailingWriter"].written == 0
        # The stuck writer holds one batch; the queue keeps the newest 5 values and counts the rest.
        assert stats["BlockingWriter"].queued <= 5
        assert stats["BlockingWriter"].dropped >= 3
        assert stats["BlockingWriter"].oldest_queued_s > 0
        ticks = {ms(v) for v in good.snapshot()}
        assert len(ticks) == len(good.snapshot())  # every tick reached the good writer once
    finally:
        stuck.release.set()
        collector.close()
    kept = [ms(v) for v in stuck.values]
    assert kept == sorted(kept)
    # Whatever was queued when the collector closed was written, newest included.
    assert kept[-1] == max(ms(v) for v in good.values)


def test_close_writes_what_is_queued_and_ends_every_thread(no_leftover_threads: None) -> None:
    writer = MemoryDataWriter()
    reader = StaticDataReader({"a": 1})
    collector = DataCollector([reader], [writer])
    collector.start(context(1, ["a"], 20, reader="static"))
    assert wait_until(lambda: len(writer.values) >= 3)
    # One loop thread for every lane and a pool worker for the synchronous reader's calls
    # (issue 23: no thread per lane any more).
    assert {t.name for t in collector_threads()} >= {
        "flowcollect-loop",
        "flowcollect-worker-1",
        "flowcollect-timer",
        "flowcollect-writer-MemoryDataWriter",
    }
    collector.close()
    assert not collector_threads()
    assert writer.closed and reader.opened == 1 and reader.closed == 1
    delivered = collector.stats().contexts[1].delivered
    assert delivered == len(writer.values)


def test_duration_on_the_real_clock() -> None:
    writer = MemoryDataWriter()
    with DataCollector([RandomDataReader()], [writer]) as collector:
        started = collector.start(
            DataCollectionContext(
                id=1,
                interval_ms=100,
                duration_s=0.5,
                variables=[Variable(id=1, address="a", reader="random")],
            )
        )
        assert wait_until(lambda: not collector.is_running(), timeout_s=3)
    assert started.start_date is not None and started.end_date is not None
    assert 0.4 <= (started.end_date - started.start_date).total_seconds() <= 0.6
    assert 4 <= len(writer.values) <= 5
    assert all(started.start_date <= v.time < started.end_date for v in writer.values if v.time)


class StuckReader(StaticDataReader):
    def __init__(self, name: str, release: threading.Event) -> None:
        super().__init__({"x": 1.0}, type=name)
        self.release = release
        self.entered = threading.Event()

    def read(self, variables: Sequence[CollectedVariable]) -> None:
        self.entered.set()
        self.release.wait(30)
        super().read(variables)


def test_close_waits_for_stuck_readers_once_not_once_each(caplog: pytest.LogCaptureFixture) -> None:
    release = threading.Event()
    stuck = [StuckReader(f"stuck{n}", release) for n in range(3)]
    collector = DataCollector(stuck, [MemoryDataWriter()], close_timeout_s=0.5)
    try:
        for n, reader in enumerate(stuck, 1):
            collector.start(context(n, ["x"], 50, reader=reader.type))
        assert all(r.entered.wait(5) for r in stuck)
        began = time.monotonic()
        with caplog.at_level("WARNING", logger="flowcollect"):
            collector.close()
        took = time.monotonic() - began
    finally:
        release.set()
    # One 0.5 s deadline for the three stuck threads, not 0.5 s each.
    assert took < 1.4, took
    assert caplog.text.count("did not end within") == 3
    assert wait_until(lambda: not collector_threads())


def test_device_events_come_on_the_timer_thread_never_a_lane(no_leftover_threads: None) -> None:
    class Unplugged(StaticDataReader):
        """Unreachable until ``plugged`` is set."""

        def __init__(self) -> None:
            super().__init__({"a": 1.0}, type="unplugged")
            self.plugged = threading.Event()

        def read(self, variables: Sequence[CollectedVariable]) -> None:
            if not self.plugged.is_set():
                raise ConnectionError("no route to host")
            super().read(variables)

    class Heard(DataCollectionListener):
        def __init__(self) -> None:
            self.heard: list[tuple[str, str, str]] = []

        def device_down(self, collector: DataCollector, reader: str, error: str) -> None:
            self.heard.append(("down", reader, threading.current_thread().name))

        def device_up(self, collector: DataCollector, reader: str) -> None:
            self.heard.append(("up", reader, threading.current_thread().name))

    reader, heard = Unplugged(), Heard()
    with DataCollector([reader], [MemoryDataWriter()], [heard]) as collector:
        collector.start(context(1, ["a"], 50, reader="unplugged"))
        assert wait_until(lambda: len(heard.heard) == 1)
        reader.plugged.set()
        assert wait_until(lambda: len(heard.heard) == 2)
    assert heard.heard == [
        ("down", "unplugged", "flowcollect-timer"),
        ("up", "unplugged", "flowcollect-timer"),
    ]
