"""The writer sink on real threads: figures that add up at every moment, receipts counted
exactly, the queue policy, routing, and flush/close bounded whatever the writer does.

Every figure is checked against the invariant ``received == written + failed + dropped + queued
+ in_flight`` (``snapshot`` takes them all under one lock), and against what the writer really
got.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from flowcollect import CollectedVariable, DataWriter, WriterStats
from flowcollect._sink import WriterSink
from flowcollect.errors import ConfigError
from flowcollect.testing import StuckDataWriter
from flowcollect.values import ValueBatch, VariableSpec
from flowcollect.writers import MemoryDataWriter
from tests.reliability.support import wait_until

LOG = logging.getLogger("flowcollect.test.sink")
T0 = 1_764_158_400_000  # an instant on the 100 ms grid


def specs(cid: int, n: int, names: Sequence[str | None] | None = None) -> list[VariableSpec]:
    return [
        VariableSpec(i, cid, f"a{i}", "float", "static", 100, name=None if names is None else names[i - 1])
        for i in range(1, n + 1)
    ]


def batch(cid: int, n: int, k: int = 0, variables: Sequence[VariableSpec] | None = None) -> ValueBatch:
    """The k-th batch of context ``cid``: ``n`` values, ``k + i / 1000`` each, at ``T0 + 100 k``."""
    variables = variables if variables is not None else specs(cid, n)
    return ValueBatch(
        T0 + 100 * k,
        variables,
        [k + i / 1000 for i in range(len(variables))],
        [None] * len(variables),
        context_id=cid,
        reader="static",
    )


def adds_up(s: WriterStats) -> WriterStats:
    assert s.dropped == s.dropped_queue + s.dropped_writer + s.dropped_close, s
    assert s.received == s.written + s.failed + s.dropped + s.queued + s.in_flight, s
    assert min(s.written, s.failed, s.queued, s.in_flight, s.dropped) >= 0, s
    return s


def figures(s: WriterStats) -> tuple[int, ...]:
    """(received, written, failed, queued, in_flight, dropped_queue, dropped_writer, dropped_close)"""
    adds_up(s)
    return (
        s.received,
        s.written,
        s.failed,
        s.queued,
        s.in_flight,
        s.dropped_queue,
        s.dropped_writer,
        s.dropped_close,
    )


@pytest.fixture
def sinks() -> Iterator[list[WriterSink]]:
    """Sinks made by a test are closed at its end (bounded), so no thread outlives it."""
    made: list[WriterSink] = []
    yield made
    for sink in made:
        sink.close(time.monotonic() + 2)


def make_sink(made: list[WriterSink], writer: DataWriter, **kwargs: object) -> WriterSink:
    sink = WriterSink(writer, LOG, **kwargs)  # type: ignore[arg-type]
    made.append(sink)
    return sink


class AckWriter(DataWriter):
    """Keeps the batches it is given; the test acknowledges them, from its own threads."""

    acknowledges = True

    def __init__(self, ack_on_flush: bool = False) -> None:
        self.batches: list[ValueBatch] = []
        self.ack_on_flush = ack_on_flush
        self.got = threading.Event()
        self._lock = threading.Lock()

    def write_batch(self, batch: ValueBatch) -> None:
        with self._lock:
            self.batches.append(batch)
        self.got.set()

    def flush(self) -> None:
        if self.ack_on_flush:
            with self._lock:
                done, self.batches = self.batches, []
            for b in done:
                self.acknowledge(b, len(b))


class FlakyWriter(DataWriter):
    """A batch writer that stores every batch but those of context 2, which it refuses."""

    def __init__(self) -> None:
        self.stored: list[ValueBatch] = []

    def write_batch(self, batch: ValueBatch) -> None:
        if batch.context_id == 2:
            raise OSError("refused")
        self.stored.append(batch)


class GatedWriter(MemoryDataWriter):
    """A per-value writer whose first call waits for ``release``: a writer that fell behind."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def write(self, values: Sequence[CollectedVariable]) -> None:
        self.entered.set()
        self.release.wait(10)
        super().write(values)


# -- acknowledgement and counting -------------------------------------------------------------


def test_a_plain_writer_has_written_what_returned_and_failed_what_raised(sinks: list[WriterSink]) -> None:
    writer = FlakyWriter()
    sink = make_sink(sinks, writer)
    for k in range(10):
        sink.put(batch(1 + k % 2, 5, k))  # contexts 1, 2, 1, 2...
    assert sink.flush(5)
    assert figures(sink.snapshot()) == (50, 25, 25, 0, 0, 0, 0, 0)
    assert [b.t_ms for b in writer.stored] == [T0 + 100 * k for k in range(0, 10, 2)]


def test_receipts_late_partial_and_in_pieces_are_counted_exactly(
    sinks: list[WriterSink], caplog: pytest.LogCaptureFixture
) -> None:
    writer = AckWriter()
    sink = make_sink(sinks, writer)
    for x in (batch(1, 6, 0), batch(1, 5, 1), batch(2, 4, 2)):
        sink.put(x)
    assert wait_until(lambda: len(writer.batches) == 3)
    a, b, c = writer.batches  # receipts name the objects the writer was given (its own)
    # Handed over, nothing acknowledged: all in flight, none written.
    assert figures(sink.snapshot()) == (15, 0, 0, 0, 15, 0, 0, 0)

    def ack(*args: object, **kwargs: object) -> None:
        # Receipts come from the writer's own threads (a sender's), never the sink's.
        t = threading.Thread(target=writer.acknowledge, args=args, kwargs=kwargs)  # type: ignore[arg-type]
        t.start()
        t.join()

    ack(a, 2)  # a in three pieces: 2 written, then 1 written + 2 failed, then 1 dropped
    assert figures(sink.snapshot()) == (15, 2, 0, 0, 13, 0, 0, 0)
    ack(a, 1, failed=2, error="refused")
    ack(a, 0, dropped=1, error="buffer full")
    assert figures(sink.snapshot()) == (15, 3, 2, 0, 9, 0, 1, 0)
    ack(b, 3, failed=1)  # b partly: one value never reported
    assert figures(sink.snapshot()) == (15, 6, 3, 0, 5, 0, 1, 0)
    with caplog.at_level(logging.ERROR, logger=LOG.name):
        ack(c, 9)  # more than c holds: only its 4 count
        ack(c, 1)  # c is settled: a receipt for it is a writer bug, ignored
        ack(batch(1, 3, 9), 3)  # a batch it was never given
    assert figures(sink.snapshot()) == (15, 10, 3, 0, 1, 0, 1, 0)
    problems = [r.getMessage() for r in caplog.records if r.name == LOG.name]
    assert len(problems) == 2, problems  # one line per kind of problem
    assert "more values than it had left" in problems[0]
    assert "no values of left" in problems[1]
    # Closing: b's unreported value is dropped at close, named in the log.
    assert sink.close(time.monotonic() + 5)
    assert figures(sink.snapshot()) == (15, 10, 3, 0, 0, 0, 1, 1)


def test_receipts_from_many_threads_add_up_at_every_moment(sinks: list[WriterSink]) -> None:
    writer = AckWriter()
    sink = make_sink(sinks, writer)
    batches = [batch(1, 3, k) for k in range(400)]
    for b in batches:
        sink.put(b)
    assert wait_until(lambda: len(writer.batches) == 400)

    def acker(part: list[ValueBatch]) -> None:
        for b in part:  # each batch in two receipts
            writer.acknowledge(b, 2)
            writer.acknowledge(b, 0, failed=1, error="no")

    given = writer.batches  # receipts name the objects the writer was given (its own)
    threads = [threading.Thread(target=acker, args=(given[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    while True:  # sample while the receipts come in, and once after
        adds_up(sink.snapshot())
        if not any(t.is_alive() for t in threads):
            break
    for t in threads:
        t.join()
    assert figures(sink.snapshot()) == (1200, 800, 400, 0, 0, 0, 0, 0)


def test_flush_waits_for_the_acknowledgement_and_is_bounded_without_it(sinks: list[WriterSink]) -> None:
    acking = AckWriter(ack_on_flush=True)
    sink = make_sink(sinks, acking)
    for k in range(5):
        sink.put(batch(1, 4, k))
    assert sink.flush(5)
    assert figures(sink.snapshot()) == (20, 20, 0, 0, 0, 0, 0, 0)

    silent = AckWriter()  # never acknowledges
    sink2 = make_sink(sinks, silent)
    sink2.put(batch(1, 4))
    started = time.monotonic()
    assert not sink2.flush(0.3)
    assert 0.25 <= time.monotonic() - started < 2
    assert figures(sink2.snapshot()) == (4, 0, 0, 0, 4, 0, 0, 0)


def test_a_per_value_writer_behind_gets_the_backlog_joined_a_batch_writer_batch_by_batch(
    sinks: list[WriterSink],
) -> None:
    gated = GatedWriter()
    sink = make_sink(sinks, gated)
    sink.put(batch(1, 2, 0))
    assert gated.entered.wait(5)
    for k in range(1, 6):
        sink.put(batch(1, 2, k))
    gated.release.set()
    assert sink.flush(5)
    assert gated.writes == 2  # the first batch, then the five queued behind it in one call
    assert [v.value for v in gated.values] == [k + i / 1000 for k in range(6) for i in range(2)]
    assert figures(sink.snapshot()) == (12, 12, 0, 0, 0, 0, 0, 0)


# -- the queue policy --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "kept"),
    [("drop_oldest", [0, 2, 3]), ("drop_newest", [0, 1, 2])],
)
def test_a_full_queue_drops_by_the_writers_policy_and_counts_it(
    sinks: list[WriterSink], policy: str, kept: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    gated = GatedWriter()
    gated.queue_policy = policy  # type: ignore[assignment]
    gated.queue_limit = 10
    sink = make_sink(sinks, gated, limit=1_000_000)  # the writer's own limit wins
    sink.put(batch(1, 4, 0))
    assert gated.entered.wait(5)  # batch 0 is in the writer: the queue is empty again
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        for k in (1, 2, 3):  # 4 + 4 fit in 10; the third does not
            sink.put(batch(1, 4, k))
    assert figures(sink.snapshot()) == (16, 0, 0, 8, 4, 4, 0, 0)
    gated.release.set()
    assert sink.flush(5)
    assert figures(sink.snapshot()) == (16, 12, 0, 0, 0, 4, 0, 0)
    assert sorted({int(v.value) for v in gated.values}) == kept
    word = policy.split("_")[1]
    assert [r.getMessage() for r in caplog.records] == [
        f"writer GatedWriter cannot keep up: dropped 4 {word} values (queue limit 10)"
    ]


def test_a_batch_larger_than_the_whole_queue_keeps_its_last_values(sinks: list[WriterSink]) -> None:
    gated = GatedWriter()
    sink = make_sink(sinks, gated, limit=10)
    sink.put(batch(1, 1, 0))
    assert gated.entered.wait(5)
    sink.put(batch(1, 15, 1))
    gated.release.set()
    assert sink.flush(5)
    assert figures(sink.snapshot()) == (16, 11, 0, 0, 0, 5, 0, 0)
    assert [v.id for v in gated.values[1:]] == list(range(6, 16))


def test_queue_settings_are_checked_naming_the_writer() -> None:
    writer = MemoryDataWriter()
    writer.queue_policy = "block"  # type: ignore[assignment]
    writer.queue_limit = 0
    with pytest.raises(ConfigError) as caught:
        WriterSink(writer, LOG)
    assert caught.value.problems == [
        "writer MemoryDataWriter: queue_policy must be one of ['drop_oldest', 'drop_newest'], got 'block'",
        "writer MemoryDataWriter: queue_limit must be a positive number of values, got 0",
    ]


# -- routing -----------------------------------------------------------------------------------


def test_a_writer_receives_only_its_contexts_and_variables(sinks: list[WriterSink]) -> None:
    by_context = MemoryDataWriter().receive(contexts=[1, 3])
    named = specs(2, 4, names=["temp", None, "flow", None])
    by_variable = MemoryDataWriter().receive(variables=[2, "flow"])
    both = MemoryDataWriter().receive(contexts=[2], variables=["temp"])
    everything = MemoryDataWriter()
    group = [make_sink(sinks, w) for w in (by_context, by_variable, both, everything)]
    for k in range(3):
        for b in (batch(1, 3, k), batch(2, 4, k, named), batch(3, 2, k)):
            for sink in group:
                sink.put(b)
    for sink in group:
        assert sink.flush(5)

    def got(w: MemoryDataWriter) -> set[tuple[int, int]]:
        return {(v.context_id, v.id) for v in w.values}

    assert got(by_context) == {(1, 1), (1, 2), (1, 3), (3, 1), (3, 2)}
    assert got(by_variable) == {(1, 2), (2, 2), (2, 3), (3, 2)}
    assert got(both) == {(2, 1)}
    assert len(everything.values) == 27
    # Values routed elsewhere are not the writer's: they are in none of its figures.
    assert [figures(s.snapshot())[:2] for s in group] == [(15, 15), (12, 12), (3, 3), (27, 27)]
    # A sub-batch keeps the values' own columns.
    first = [(v.context_id, v.id, v.value) for v in by_variable.values if v.context_id == 2][:2]
    assert first == [(2, 2, 0.001), (2, 3, 0.002)]


def test_per_value_lists_are_routed_by_context_and_variable_id(sinks: list[WriterSink]) -> None:
    writer = MemoryDataWriter().receive(contexts=[2], variables=[1])
    sink = make_sink(sinks, writer)
    sink.put(list(batch(1, 2)))
    sink.put(list(batch(2, 2)))
    assert sink.flush(5)
    assert [(v.context_id, v.id) for v in writer.values] == [(2, 1)]
    assert figures(sink.snapshot())[:2] == (1, 1)


def test_receive_checks_its_arguments_and_can_be_reset() -> None:
    writer = MemoryDataWriter()
    assert writer.receive(contexts=[1]) is writer
    with pytest.raises(ConfigError) as caught:
        writer.receive(contexts=["1"], variables=[])  # type: ignore[list-item]
    assert caught.value.problems == [
        "writer MemoryDataWriter: receive(contexts=...) takes context ids (int), got ['1']",
        "writer MemoryDataWriter: receive(variables=[]) would receive nothing; "
        "leave variables out to receive every variable",
    ]
    assert writer.routing is not None and writer.routing.contexts == {1}  # unchanged by the error
    writer.receive()
    assert writer.routing is None


# -- bounded flush and close -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        # stuck in its first write: that batch in flight, the rest queued, all dropped at close
        ("write", (12, 0, 0, 0, 0, 0, 0, 12)),
        # every write returned, never flushed: all in flight, dropped at close
        ("flush", (12, 0, 0, 0, 0, 0, 0, 12)),
        # flushed (all acknowledged), then stuck closing: nothing lost
        ("close", (12, 12, 0, 0, 0, 0, 0, 0)),
    ],
)
def test_close_returns_by_its_deadline_whatever_the_writer_does(
    where: str, expected: tuple[int, ...], caplog: pytest.LogCaptureFixture
) -> None:
    writer = StuckDataWriter(where)
    sink = WriterSink(writer, LOG)
    took_in = {"write": 3, "flush": 12, "close": 0}[where]  # in flight at the deadline
    try:
        sink.put(batch(1, 3, 0))
        if where == "write":
            assert writer.entered.wait(5)  # batch 0 is in the writer; the others queue behind it
        for k in range(1, 4):
            sink.put(batch(1, 3, k))
        if where == "write":
            assert not sink.flush(0.2)  # flush is bounded too, and leaves the stuck writer alone
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger=LOG.name):
            assert sink.close(started + 0.5) is False
        took = time.monotonic() - started
        assert 0.45 <= took < 1.5, took
        assert figures(sink.snapshot()) == expected
        lines = [r.getMessage() for r in caplog.records if r.name == LOG.name]
        assert lines == [
            f"writer {writer.name} is stuck in {where} at the close deadline: its thread is left "
            f"behind and {expected[-1]} values it had not stored "
            f"({expected[-1] - took_in} queued, {took_in} in flight) are counted dropped"
        ], lines
    finally:
        writer.release.set()
    # The writer comes back after all: its late receipts change nothing, its thread ends.
    assert wait_until(
        lambda: not any(t.name == f"flowcollect-writer-{writer.name}" for t in threading.enumerate())
    )
    assert figures(sink.snapshot()) == expected
    sink.put(batch(1, 3, 9))  # after close: counted, as dropped
    assert figures(sink.snapshot())[0] == 15
    assert sink.snapshot().dropped_close == expected[-1] + 3


class NamedMemory(MemoryDataWriter):
    def __init__(self, label: str) -> None:
        super().__init__()
        self.label = label

    @property
    def name(self) -> str:
        return self.label


def test_a_collector_routes_each_context_to_its_writers(tmp_path: Path) -> None:
    # Through the collector, in virtual time (its sinks call the writers inline).
    from flowcollect import DataCollectionContext, Variable
    from flowcollect.testing import StaticDataReader, virtual_collector
    from flowcollect.writers import CsvFileDataWriter

    line1 = CsvFileDataWriter(tmp_path / "line1.csv").receive(contexts=[1])
    temps = NamedMemory("temps").receive(variables=[2])
    everything = NamedMemory("everything")
    collector, clock = virtual_collector([StaticDataReader({"a": 1.5, "b": 2.5})], [line1, temps, everything])
    with collector:
        for cid in (1, 2):
            collector.start(
                DataCollectionContext(
                    id=cid,
                    interval_ms=100,
                    variables=[
                        Variable(id=1, address="a", reader="static"),
                        Variable(id=2, address="b", reader="static"),
                    ],
                )
            )
        clock.advance_ms(1_000)
    stats = collector.stats()
    assert len(everything.values) == 40
    assert {(v.context_id, v.id) for v in temps.values} == {(1, 2), (2, 2)} and len(temps.values) == 20
    with (tmp_path / "line1.csv").open(encoding="utf-8") as file:
        assert {line.split(",")[1] for line in list(file)[1:]} == {"1"}
    assert [
        (stats.writers[w.name].received, stats.writers[w.name].written) for w in (line1, temps, everything)
    ] == [
        (20, 20),
        (20, 20),
        (40, 40),
    ]
