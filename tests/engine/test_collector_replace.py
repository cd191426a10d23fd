"""Readers and writers replaced while the collector runs (a reload), in virtual time: each
instant reaches the writers once, from the old part before the hand-over and the new one
after; the figures of a replaced writer stay counted."""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest

from flowcollect import CollectedVariable, ConfigError, DataCollectionContext, DataCollector, Variable
from flowcollect.testing import AsyncDataReader, MemoryDataWriter, StaticDataReader, virtual_collector
from flowcollect.values import ValueBatch, VariableSpec
from flowcollect.writers.base import DataWriter

T0 = 1_699_999_200_000


def ctx(
    cid: int, reader: str = "static", interval_ms: int = 100, address: str = "a"
) -> DataCollectionContext:
    return DataCollectionContext(
        id=cid,
        interval_ms=interval_ms,
        min_interval_ms=10,
        duration_s=None,
        variables=[Variable(id=1, address=address, reader=reader)],
    )


def instants(writer: MemoryDataWriter, cid: int = 1) -> list[int]:
    return [
        round(v.time.timestamp() * 1000) - T0
        for v in writer.values
        if v.context_id == cid and v.time is not None
    ]


def test_a_replaced_reader_serves_from_the_hand_over_on_and_no_instant_is_read_twice() -> None:
    old = StaticDataReader({"a": 1.0})
    writer = MemoryDataWriter()
    collector, clock = virtual_collector([old], [writer], start_ms=T0)
    with collector:
        collector.start(ctx(1))
        clock.advance_ms(450)
        new = StaticDataReader({"a": 2.0})
        assert collector.replace_readers([new]) == ["reader:static"]
        assert old.closed == 1 and collector.readers["static"] is new
        clock.advance_ms(500)
        # Every 100 ms instant once; the old reader's values before, the new one's after.
        assert instants(writer) == list(range(100, 1000, 100))
        assert [v.value for v in writer.values] == [1.0] * 4 + [2.0] * 5
        stats = collector.stats()
        assert stats.contexts[1].missed_instants == 0
        assert stats.readers["static"].ticks == 9  # the reader's figures go on under its type


def test_the_same_reader_objects_change_nothing_and_a_reader_type_is_added() -> None:
    static = StaticDataReader({"a": 1.0})
    writer = MemoryDataWriter()
    collector, clock = virtual_collector([static], [writer], start_ms=T0)
    with collector:
        collector.start(ctx(1))
        clock.advance_ms(250)
        assert collector.replace_readers([static]) == []
        other = StaticDataReader({"b": 5.0}, type="other")
        assert collector.replace_readers([static, other]) == ["reader:other"]
        assert static.closed == 0
        collector.start(ctx(2, reader="other", address="b"))
        clock.advance_ms(300)
        assert instants(writer, 1) == [100, 200, 300, 400, 500]
        assert instants(writer, 2) == [300, 400, 500]


def test_replacing_readers_is_refused_with_nothing_changed() -> None:
    static = StaticDataReader({"a": 1.0})
    collector, _clock = virtual_collector([static], [MemoryDataWriter()], start_ms=T0)
    with collector:
        collector.start(ctx(1))
        with pytest.raises(ConfigError) as removed:
            collector.replace_readers([StaticDataReader({}, type="other")])
        assert "context 1 (running)" in str(removed.value)
        with pytest.raises(ConfigError) as slower:
            collector.replace_readers([StaticDataReader({"a": 1.0}, min_interval_ms=500)])
        assert "context 1 (running)" in str(slower.value) and "interval" in str(slower.value)
        assert collector.readers["static"] is static and static.closed == 0


def test_a_replaced_writer_gets_each_batch_once_and_its_figures_stay_counted() -> None:
    static = StaticDataReader({"a": 1.0})
    first = MemoryDataWriter()
    collector, clock = virtual_collector([static], [first], start_ms=T0)
    with collector:
        collector.start(ctx(1))
        clock.advance_ms(350)
        second = MemoryDataWriter()  # the same name: its figures add up with the first's
        assert collector.replace_writers([second]) == ["MemoryDataWriter"]
        clock.advance_ms(400)
        assert instants(first) == [100, 200, 300]
        assert instants(second) == [400, 500, 600, 700]
        figures = collector.stats().writers["MemoryDataWriter"]
        assert (figures.received, figures.written, figures.queued, figures.dropped) == (7, 7, 0, 0)
        assert collector.stats().contexts[1].delivered == 7


class _Plain(DataWriter):
    def write(self, values: Sequence[CollectedVariable]) -> None:
        pass


class _Refusing(_Plain):
    """A writer that refuses every variable (as a topic template a variable cannot fill)."""

    def check_variables(self, variables: Sequence[VariableSpec]) -> list[str]:
        return [f"writer refusing: variable {s.id} has no topic" for s in variables]


def test_a_writer_removed_keeps_its_figures_and_a_refused_writer_changes_nothing() -> None:
    static = StaticDataReader({"a": 1.0})
    keep, gone = MemoryDataWriter(), _Plain()
    collector, clock = virtual_collector([static], [keep, gone], start_ms=T0)
    with collector:
        collector.start(ctx(1))
        clock.advance_ms(200)
        assert collector.replace_writers([keep]) == ["_Plain"]
        clock.advance_ms(200)
        writers = collector.stats().writers
        assert writers["_Plain"].written == 2 and writers["MemoryDataWriter"].written == 4
        assert [w.name for w in collector.writers] == ["MemoryDataWriter"]
        with pytest.raises(ConfigError, match="two writers have the name"):
            collector.replace_writers([keep, MemoryDataWriter()])
        with pytest.raises(ConfigError, match="variable 1 has no topic"):
            collector.replace_writers([_Refusing()])
        assert collector.writers == [keep]
        clock.advance_ms(100)
        assert instants(keep) == [100, 200, 300, 400, 500]


@pytest.mark.realtime
def test_on_real_threads_hand_overs_neither_double_nor_lose_an_instant_uncounted(
    no_leftover_threads: None,
) -> None:
    # Readers and writers replaced ten times while a 20 ms context runs: every instant from the
    # start to the last is in the writers once, or counted missed (a loaded machine is late).
    writers = [MemoryDataWriter()]
    with DataCollector([StaticDataReader({"a": 1.0})], writers) as collector:
        collector.start(ctx(1, interval_ms=20))
        for n in range(10):
            time.sleep(0.05 + 0.013 * n)
            collector.replace_readers([StaticDataReader({"a": float(n)})])
            writers.append(MemoryDataWriter())
            collector.replace_writers([writers[-1]])
        time.sleep(0.1)
        collector.stop(1)
        missed = collector.stats().contexts[1].missed_instants
    times = [ms for w in writers for ms in (round(v.time.timestamp() * 1000) for v in w.values if v.time)]
    assert len(times) == len(set(times)), "an instant delivered twice"
    assert (max(times) - min(times)) // 20 + 1 == len(times) + missed, (len(times), missed)
    figures = collector.stats().writers["MemoryDataWriter"]
    assert figures.received == figures.written == len(times)


@pytest.mark.realtime
def test_a_hand_over_behind_a_late_loop_reads_the_overdue_instant_first(
    no_leftover_threads: None,
) -> None:
    # A blocking reader on another lane holds the loop most of the time, so the replaced lane's
    # next tick is often overdue (its timer not yet fired) when the hand-over's job runs: that
    # instant is the old lane's (the new one reads only those after the hand-over), so the job
    # reads it first. Every instant is still delivered once or counted missed.
    class Blocking(AsyncDataReader):
        async def read_batch_async(self, batch: ValueBatch) -> None:
            time.sleep(0.015)  # a badly written plugin: it blocks the engine's loop
            await super().read_batch_async(batch)

    writers = [MemoryDataWriter()]
    blocker = Blocking({"b": 0.0})
    with DataCollector([StaticDataReader({"a": 1.0}), blocker], writers, close_timeout_s=5) as collector:
        collector.start(ctx(1, interval_ms=20))
        collector.start(ctx(2, reader="async", interval_ms=20, address="b"))
        for n in range(12):
            time.sleep(0.04 + 0.007 * n)
            collector.replace_readers([StaticDataReader({"a": float(n)}), blocker])
        time.sleep(0.1)
        collector.stop(1)
        missed = collector.stats().contexts[1].missed_instants
    times = sorted(
        round(v.time.timestamp() * 1000) for w in writers for v in w.values if v.time and v.context_id == 1
    )
    assert len(times) == len(set(times)), "an instant delivered twice"
    assert (max(times) - min(times)) // 20 + 1 == len(times) + missed, (len(times), missed)
