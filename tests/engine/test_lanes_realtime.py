"""Lanes on the real clock: a blocked lane costs only itself, and close() is bounded whatever a
reader does, from any thread. Tolerances come from the contract (a lane never waits for another),
not from how fast this machine is."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest

from flowcollect import (
    CollectedVariable,
    DataCollectionContext,
    DataCollectionListener,
    DataCollector,
    Variable,
)
from flowcollect.testing import MemoryDataWriter, StaticDataReader
from flowcollect.values import VariableSpec
from tests.conftest import collector_threads
from tests.reliability.support import ms, wait_until

pytestmark = pytest.mark.realtime

BLOCK_S = 1.5


class BlockingReader(StaticDataReader):
    """Blocks in one read (the third) until released or BLOCK_S passes."""

    def __init__(self, type: str) -> None:  # noqa: A002
        super().__init__({"x": 1.0}, type=type)
        self.blocking = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def read(self, variables: Sequence[CollectedVariable]) -> None:
        self.calls += 1
        if self.calls == 3:
            self.blocking.set()
            self.release.wait(BLOCK_S)
        super().read(variables)


def context(cid: int, reader: str, interval_ms: int = 100, **fields: object) -> DataCollectionContext:
    return DataCollectionContext(
        id=cid,
        interval_ms=interval_ms,
        min_interval_ms=10,
        variables=[Variable(id=1, address="x", reader=reader)],
        **fields,  # type: ignore[arg-type]
    )


def test_a_blocked_lane_delays_neither_the_reads_nor_the_hand_over_of_another(
    no_leftover_threads: None,
) -> None:
    writer = MemoryDataWriter()
    steady, blocked = StaticDataReader({"x": 2.0}, type="steady"), BlockingReader("blocked")
    with DataCollector([steady, blocked], [writer]) as collector:
        collector.start(context(1, "steady"))
        collector.start(context(2, "blocked"))
        assert blocked.blocking.wait(5)
        began = round(time.time() * 1000)
        # While the other lane is stuck in a read, this one's values keep reaching the writer:
        # its reads and its hand-over take no lock the blocked lane holds.
        assert wait_until(
            lambda: len([v for v in writer.snapshot() if v.context_id == 1 and ms(v) > began]) >= 3,
            timeout_s=BLOCK_S * 0.8,
        )
        during = [ms(v) for v in writer.snapshot() if v.context_id == 1 and ms(v) > began]
        blocked.release.set()
        stats = collector.stats().readers
    # Every steady read started well within one interval of the block's length: it was never
    # queued behind the blocked read (that would make it BLOCK_S late).
    assert stats["steady"].lateness_ms_max is not None
    assert stats["steady"].lateness_ms_max < BLOCK_S * 1000 / 2
    assert stats["steady"].lane != stats["blocked"].lane
    assert during == sorted(set(during))


class HangingReader(StaticDataReader):
    """Hangs for ever in read() and close() (a device that never answers, a socket that never
    closes), until the test ends it."""

    def __init__(self, release: threading.Event) -> None:
        super().__init__({"x": 1.0}, type="hanging")
        self.release = release
        self.entered = threading.Event()

    def read(self, variables: Sequence[CollectedVariable]) -> None:
        self.entered.set()
        self.release.wait(30)

    def close(self) -> None:
        self.release.wait(30)


def test_close_is_bounded_whatever_a_reader_does() -> None:
    release = threading.Event()
    hanging = HangingReader(release)
    healthy = StaticDataReader({"x": 1.0})
    writer = MemoryDataWriter()
    collector = DataCollector([hanging, healthy], [writer], close_timeout_s=1.0)
    try:
        collector.start(context(1, "hanging"))
        collector.start(context(2, "static"))
        assert hanging.entered.wait(5)
        assert wait_until(lambda: len(writer.snapshot()) >= 2)
        began = time.monotonic()
        collector.close()
        took = time.monotonic() - began
    finally:
        release.set()
    assert took < 1.0 + 1.0, took  # close_timeout_s plus a small constant
    assert healthy.closed == 1 and writer.closed  # the healthy parts were closed
    assert wait_until(lambda: not collector_threads())  # the stuck one ends once released


def test_close_from_a_listener_callback_leaves_no_collector_thread(no_leftover_threads: None) -> None:
    closed = threading.Event()

    class CloseWhenDone(DataCollectionListener):
        def after_stop(self, collector: DataCollector, context: DataCollectionContext) -> None:
            collector.close()  # on the collector's timer thread: the context ended by its duration
            closed.set()

    writer = MemoryDataWriter()
    collector = DataCollector([StaticDataReader({"x": 1.0})], [writer], [CloseWhenDone()])
    collector.start(context(1, "static", duration_s=0.3))
    assert closed.wait(5)
    assert collector.closed and writer.closed
    assert wait_until(lambda: not collector_threads(), timeout_s=5), collector_threads()


class ThreadRecordingReader(StaticDataReader):
    """Notes the thread of every call the engine makes, and any two calls of its lane that
    overlapped (``inside``: the calls of its lane under way, shared by the lane's readers)."""

    def __init__(self, type: str, lane: str, inside: list[int]) -> None:  # noqa: A002
        super().__init__({"x": 1.0}, type=type)
        self._lane = lane
        self.calls: list[tuple[str, str]] = []
        self.inside = inside
        self.overlaps = 0

    @property
    def lane(self) -> str | None:
        return self._lane

    def _note(self, call: str) -> None:
        self.inside[0] += 1
        if self.inside[0] != 1:
            self.overlaps += 1
        time.sleep(0.001)  # a call that takes a while, so an overlap would be seen
        self.calls.append((call, threading.current_thread().name))
        self.inside[0] -= 1

    def open(self) -> None:
        self._note("open")

    def plan_changed(self, variables: Sequence[VariableSpec]) -> None:
        self._note("plan_changed")

    def read(self, variables: Sequence[CollectedVariable]) -> None:
        self._note("read")
        super().read(variables)

    def close(self) -> None:
        self._note("close")


def test_readers_of_one_lane_are_called_one_at_a_time_on_the_worker_pool(no_leftover_threads: None) -> None:
    # Issue 23: a lane no longer has a thread of its own; its synchronous readers' calls run on
    # the collector's worker pool (never the loop), one call at a time for the whole lane.
    inside = [0]
    unit1, unit2 = (
        ThreadRecordingReader("unit1", "line:/dev/ttyX", inside),
        ThreadRecordingReader("unit2", "line:/dev/ttyX", inside),
    )
    writer = MemoryDataWriter()
    with DataCollector([unit1, unit2], [writer]) as collector:
        collector.start(context(1, "unit1", interval_ms=50))
        collector.start(context(2, "unit2", interval_ms=50))
        assert wait_until(lambda: len({v.context_id for v in writer.snapshot()}) == 2)
        collector.pause(2)  # unit2 hears it has nothing to serve, then its variable again
        assert wait_until(lambda: [c for c, _ in unit2.calls].count("plan_changed") >= 2)
        collector.resume(2)
        assert wait_until(lambda: [c for c, _ in unit2.calls].count("plan_changed") >= 3)
    threads = {name for reader in (unit1, unit2) for _, name in reader.calls}
    assert threads and all(name.startswith("flowcollect-worker-") for name in threads), threads
    assert unit1.overlaps == unit2.overlaps == 0
    for reader in (unit1, unit2):
        calls = [c for c, _ in reader.calls]
        assert calls[:2] == ["open", "plan_changed"] and calls[-1] == "close" and "read" in calls
