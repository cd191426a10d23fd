"""The spool's forwarder on its own: order, window, the capped retry pause, reset on success,
and a loop that no exception ends (issue 22 item 2, issue 21 item 2).

Virtual time: the forwarder takes a monotonic clock and a wait function, so thousands of failed
writes and their pauses run in milliseconds. ``step()`` is one round on the test's thread (as
``BufferedSender.pump()``); ``run()`` is the same loop the spool's thread runs.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from flowcollect.values import Receipt, ValueBatch, VariableSpec
from flowcollect.writers import DataWriter, SpooledWriter
from flowcollect.writers.spool._forward import RETRY, Forwarder, Handout, Sent
from tests.support.waiting import wait_until

SPEC = (VariableSpec(1, 1, "a", "float", "random", 10),)


def batch(k: int) -> ValueBatch:
    return ValueBatch(1_700_000_000_000 + 10 * k, SPEC, [float(k)], [None], context_id=1, reader="random")


class ListSource:
    """Records 0..n-1 of one segment, from memory; counts what the forwarder settles."""

    def __init__(self, batches: list[ValueBatch], fail_next: int = 0) -> None:
        self.batches = batches
        self.fail_next = fail_next  # next_locked raises this many times (a fault in the loop)
        self.fw: Forwarder | None = None
        self.settled: dict[str, int] = {"written": 0, "failed": 0, "dropped": 0, "done": 0}
        self.returned = 0

    def next_locked(self) -> Handout | None:
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("a fault inside the forwarder's loop")
        assert self.fw is not None
        i = self.fw.cursor[1]
        return Handout(0, i) if i < len(self.batches) else None

    def load(self, item: Handout) -> Handout | None:
        item.batch = item.origin = self.batches[item.start]
        item.end = item.start + 1
        return item

    def taken_locked(self, item: Handout) -> None:
        pass

    def returned_locked(self, entry: Sent) -> None:
        self.returned += 1

    def settled_locked(
        self, entry: Sent, written: int, failed: int, dropped: int, error: str | None, done: bool
    ) -> Receipt | None:
        self.settled["written"] += written
        self.settled["failed"] += failed
        self.settled["dropped"] += dropped
        self.settled["done"] += done
        return None

    def orphan_lost_locked(self, entry: Sent, why: str) -> Receipt | None:
        return None

    def send_receipts(self, receipts: list[Receipt]) -> None:
        pass


class DownThenUp(DataWriter):
    """Raises for the first ``fail`` writes (a destination down), then stores."""

    def __init__(self, fail: int) -> None:
        self.fail = fail
        self.calls = 0
        self.stored: list[ValueBatch] = []

    def write_batch(self, batch: ValueBatch) -> None:
        self.calls += 1
        if self.calls <= self.fail:
            raise ConnectionError("destination down")
        self.stored.append(batch)


class VirtualTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.waits: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def wait(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def forwarder(writer: DataWriter, source: ListSource, clock: VirtualTime, **options: Any) -> Forwarder:
    fw = Forwarder(
        "test",
        writer,
        source,
        threading.Condition(),
        max_in_flight_values=options.pop("max_in_flight_values", 100),
        monotonic=clock.monotonic,
        wait=clock.wait,
        rng=lambda: 1.0,  # no jitter: the pauses are exactly the backoff's
        **options,
    )
    source.fw = fw
    return fw


def test_more_than_2000_failures_in_a_row_pause_at_most_the_cap_and_reset_on_success() -> None:
    clock = VirtualTime()
    source = ListSource([batch(k) for k in range(5)])
    writer = DownThenUp(fail=2_500)
    fw = forwarder(writer, source, clock)
    pauses: list[float] = []
    rounds = 0
    while len(writer.stored) < 5:
        rounds += 1
        assert rounds < 10_000
        delay = fw.step()  # never raises: no OverflowError after ~1,025 failures
        assert delay is not None
        if delay > 0:
            pauses.append(delay)
            clock.now += delay
    assert writer.calls == 2_505 and fw.write_errors == 2_500
    assert max(pauses) == RETRY.max_s  # capped, however long the outage
    assert pauses[0] == RETRY.initial_s
    assert fw.failures == 0  # reset by the write that returned
    assert [b.t_ms for b in writer.stored] == [batch(k).t_ms for k in range(5)]  # in order
    assert source.settled == {"written": 5, "failed": 0, "dropped": 0, "done": 5}
    assert source.returned == 2_500  # each failed record was put back and handed again
    # After the success the next failure starts again from the initial pause, not the cap.
    source.batches.append(batch(5))
    writer.fail = writer.calls + 1
    fw.step()
    assert fw.failures == 1 and fw.retry_at - clock.now == RETRY.initial_s


def test_the_loop_on_its_thread_survives_2000_failures_in_virtual_time() -> None:
    clock = VirtualTime()
    source = ListSource([batch(k) for k in range(3)])
    writer = DownThenUp(fail=2_100)
    fw = forwarder(writer, source, clock)
    thread = fw.start("test-forwarder")
    wait_until(lambda: len(writer.stored) == 3, timeout_s=30)
    assert thread.is_alive()
    assert fw.loop_errors == 0 and fw.write_errors == 2_100
    assert max(clock.waits) <= RETRY.max_s
    with fw._cond:
        fw.stopping = True
        fw.wake_locked()
    thread.join(5)
    assert not thread.is_alive()


def test_a_raise_inside_the_loop_is_logged_counted_and_the_loop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = VirtualTime()
    source = ListSource([batch(k) for k in range(3)], fail_next=3)
    writer = DownThenUp(fail=0)
    fw = forwarder(writer, source, clock)
    with caplog.at_level(logging.ERROR, logger="flowcollect.writers.spool"):
        thread = fw.start("test-forwarder")
        wait_until(lambda: len(writer.stored) == 3, timeout_s=30)
    assert thread.is_alive()
    assert fw.loop_errors == 3
    assert "the spool's forwarder failed (RuntimeError: a fault inside the forwarder's loop)" in caplog.text
    assert "Traceback" in caplog.text  # a bug shows where it is
    # Each fault paused the loop on the backoff (not a busy spin), then it went on.
    assert clock.waits[:3] == [RETRY.initial_s, 2 * RETRY.initial_s, 4 * RETRY.initial_s]
    with fw._cond:
        fw.stopping = True
        fw.wake_locked()
    thread.join(5)
    assert not thread.is_alive()


def test_the_window_holds_at_most_max_in_flight_values_and_one_record_for_a_plain_writer() -> None:
    class Holding(DataWriter):
        acknowledges = True

        def __init__(self) -> None:
            self.got: list[ValueBatch] = []

        def write_batch(self, batch: ValueBatch) -> None:
            self.got.append(batch)

    clock = VirtualTime()
    source = ListSource([batch(k) for k in range(10)])
    holder = Holding()
    fw = forwarder(holder, source, clock, max_in_flight_values=4)
    for _ in range(20):
        fw.step()
    assert len(holder.got) == 4 and fw.in_flight == 4
    fw.on_receipt(Receipt(holder.got[0], 1, 0, 0, None))
    for _ in range(20):
        fw.step()
    assert len(holder.got) == 5
    assert fw.position_locked() == (0, 1)  # the first record not settled: where a restart resumes


# -- through the spool -----------------------------------------------------------------------------


class FaultyHandle(ValueBatch):
    """An engine batch whose ``handle()`` raises once: a fault inside the spool's forwarder."""

    faults = 1

    def handle(self) -> ValueBatch:
        if FaultyHandle.faults:
            FaultyHandle.faults -= 1
            raise RuntimeError("handle() broke")
        return super().handle()


def test_a_fault_in_the_spools_forwarder_is_counted_and_delivery_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer_behind = DownThenUp(fail=0)
    spool = SpooledWriter(writer_behind, tmp_path / "spool", max_bytes=1 << 20, sync_interval_s=0.05)
    receipts: list[Receipt] = []
    spool.attach(receipts.append)
    with caplog.at_level(logging.ERROR, logger="flowcollect.writers.spool"):
        spool.write_batch(FaultyHandle(1, SPEC, [1.0], [None], context_id=1, reader="random"))
        wait_until(lambda: len(writer_behind.stored) == 1, timeout_s=10)
    stats = spool.stats()
    assert stats["spool_thread_errors"] == 1
    assert stats["spool_written"] == 1 and stats["spool_values"] == 0
    assert sum(r.written for r in receipts) == 1
    assert "forwarder failed (RuntimeError: handle() broke)" in caplog.text
    spool.close()


def test_a_fault_in_the_maintenance_thread_is_counted_and_it_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flowcollect.writers.spool._store import Store

    real = Store.save_position
    faults = [1]

    def save_position(self: Store, position: tuple[int, int]) -> None:
        if faults[0]:
            faults[0] -= 1
            raise RuntimeError("a bug in saving")
        real(self, position)

    monkeypatch.setattr(Store, "save_position", save_position)
    writer_behind = DownThenUp(fail=0)
    spool = SpooledWriter(writer_behind, tmp_path / "spool", max_bytes=1 << 20, sync_interval_s=0.05)
    with caplog.at_level(logging.ERROR, logger="flowcollect.writers.spool"):
        spool.write_batch(batch(1))
        wait_until(lambda: spool.stats()["spool_thread_errors"] == 1, timeout_s=10)
        wait_until((tmp_path / "spool" / "position").exists, timeout_s=10)  # next round saved it
    assert "a maintenance round failed (RuntimeError: a bug in saving)" in caplog.text
    spool.close()
