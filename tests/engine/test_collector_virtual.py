"""The collector's semantics in virtual time: exact ticks, no threads, no waiting."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from datetime import datetime

import pytest

from flowcollect import (
    CollectedVariable,
    CollectorClosedError,
    ConfigError,
    ContextAlreadyRunningError,
    DataCollectionContext,
    DataCollectionListener,
    DataCollector,
    DataReader,
    IntervalLimitPolicy,
    UnknownContextError,
    Variable,
)
from flowcollect.testing import (
    MemoryDataWriter,
    PushingDataReader,
    RecordingListener,
    StaticDataReader,
    virtual_collector,
)

T0 = 1_699_999_200_000  # a round hour: every interval below divides it


def ctx(cid: int, *specs: tuple[int, str, int | None], **fields: object) -> DataCollectionContext:
    """A context of (variable id, address, interval) on the static reader."""
    variables = [Variable(id=vid, address=a, reader="static", interval_ms=i) for vid, a, i in specs]
    return DataCollectionContext(id=cid, variables=variables, **fields)  # type: ignore[arg-type]


def by_time(values: Sequence[CollectedVariable]) -> dict[int, list[tuple[int, int, str]]]:
    out: dict[int, list[tuple[int, int, str]]] = {}
    for v in values:
        assert v.time is not None
        t = round(v.time.timestamp() * 1000) - T0
        out.setdefault(t, []).append((v.context_id, v.id, v.address))
    return out


def reads_by_time(reader: StaticDataReader) -> dict[int, list[str]]:
    return {round(t.timestamp() * 1000) - T0: addresses for t, addresses in reader.reads if t is not None}


@pytest.fixture
def reader() -> StaticDataReader:
    return StaticDataReader({"a": 1.0, "b": 2.0, "c": 3.0})


@pytest.fixture
def writer() -> MemoryDataWriter:
    return MemoryDataWriter()


def test_gcd_ticks_read_only_what_is_due_and_once(reader: StaticDataReader, writer: MemoryDataWriter) -> None:
    collector, clock = virtual_collector([reader], [writer], start_ms=T0)
    collector.start(ctx(1, (1, "a", 200)))
    collector.start(ctx(2, (7, "a", 300), (8, "b", 300)))
    assert collector.schedules()["static"].period_ms == 100
    assert collector.schedules()["static"].hyperperiod_ms == 600
    clock.advance_ms(1200)

    # Read at 200, 300, 400, 600 ... never at the empty GCD ticks 100, 500, 700 ...; "a" once.
    assert reads_by_time(reader) == {
        200: ["a"],
        300: ["a", "b"],
        400: ["a"],
        600: ["a", "b"],
        800: ["a"],
        900: ["a", "b"],
        1000: ["a"],
        1200: ["a", "b"],
    }
    got = by_time(writer.values)
    assert got[600] == [(1, 1, "a"), (2, 7, "a"), (2, 8, "b")]
    assert got[300] == [(2, 7, "a"), (2, 8, "b")]
    assert got[400] == [(1, 1, "a")]
    assert sorted(got) == [200, 300, 400, 600, 800, 900, 1000, 1200]


def test_each_context_gets_its_own_values(reader: StaticDataReader, writer: MemoryDataWriter) -> None:
    collector, clock = virtual_collector([reader], [writer], start_ms=T0)
    collector.start(ctx(1, (1, "a", 100)))
    collector.start(ctx(2, (5, "a", 100)))
    clock.advance_ms(100)
    one, two = sorted(writer.values, key=lambda v: v.context_id)
    assert one is not two
    assert (one.context_id, one.id, two.context_id, two.id) == (1, 1, 2, 5)
    assert one.value == two.value == 1.0
    assert one.time == two.time
    assert one.time is not None and one.time.tzinfo is not None
    assert [(r[1]) for r in reader.reads] == [["a"]]


def test_values_carry_their_variable_and_an_exact_grid_time(
    reader: StaticDataReader, writer: MemoryDataWriter
) -> None:
    collector, clock = virtual_collector([reader], [writer], start_ms=T0 + 37)  # off the grid
    collector.start(ctx(3, (9, "c", None), interval_ms=250))
    clock.advance_ms(1000)
    assert [v.time.timestamp() * 1000 % 250 for v in writer.values if v.time] == [0, 0, 0, 0]
    v = writer.values[0]
    assert (v.id, v.context_id, v.address, v.value_type, v.reader, v.interval_ms, v.value, v.error) == (
        9,
        3,
        "c",
        "float",
        "static",
        250,
        3.0,
        None,
    )


def test_one_batch_per_writer_per_context_tick(reader: StaticDataReader, writer: MemoryDataWriter) -> None:
    collector, clock = virtual_collector([reader], [writer], start_ms=T0)
    collector.start(ctx(1, (1, "a", 100), (2, "b", 100), (3, "c", 100)))
    clock.advance_ms(500)
    assert writer.writes == 5
    assert len(writer.values) == 15


def test_pause_closes_the_gate_and_stops_exclusive_reads(
    reader: StaticDataReader, writer: MemoryDataWriter
) -> None:
    collector, clock = virtual_collector([reader], [writer], start_ms=T0)
    collector.start(ctx(1, (1, "a", 100)))
    collector.start(ctx(2, (1, "a", 100), (2, "b", 100)))
    clock.advance_ms(100)
    paused = collector.pause(2)
    assert paused.id == 2
    assert not collector.is_context_running(2)
    assert collector.is_context_running(1)
    assert collector.is_running()
    clock.advance_ms(200)
    collector.resume(2)
    assert collector.is_context_running(2)
    clock.advance_ms(100)

    assert reads_by_time(reader) == {100: ["a", "b"], 200: ["a"], 300: ["a"], 400: ["a", "b"]}
    got = by_time(writer.values)
    assert got[200] == [(1, 1, "a")]
    assert got[300] == [(1, 1, "a")]
    assert got[400] == [(1, 1, "a"), (2, 1, "a"), (2, 2, "b")]
    assert collector.stats().contexts[2].state == "running"


def test_pausing_the_only_context_idles_the_reader(
    reader: StaticDataReader, writer: MemoryDataWriter
) -> None:
    collector, clock = virtual_collector([reader], [writer], start_ms=T0)
    collector.start(ctx(1, (1, "a", 100)))
    collector.pause(1)
    collector.pause(1)  # idempotent
    clock.advance_ms(1000)
    assert reader.reads == [] and writer.values == []
    assert "static" not in collector.schedules()
    collector.resume(1)
    clock.advance_ms(200)
    assert sorted(by_time(writer.values)) == [1100, 1200]


def test_stop_fires_events_sets_end_date_and_forgets_the_id(
    reader: StaticDataReader, writer: MemoryDataWriter
) -> None:
    listener = RecordingListener()
    collector, clock = virtual_collector([reader], [writer], [listener], start_ms=T0)
    started = collector.start(ctx(1, (1, "a", 100)))
    assert started.start_date is not None and started.end_date is None
    clock.advance_ms(300)
    stopped = collector.stop(1)
    assert stopped is started
    assert stopped.end_date is not None
    assert round(stopped.end_date.timestamp() * 1000) == T0 + 300
    clock.advance_ms(300)
    assert len(writer.values) == 3
    assert not collector.is_running()
    assert not collector.is_context_running(1)
    with pytest.raises(UnknownContextError) as info:
        collector.stop(1)
    assert isinstance(info.value, KeyError)
    assert "1" in str(info.value)
    for call in (collector.pause, collector.resume):
        with pytest.raises(UnknownContextError):
            call(1)
    # The same id can be started again.
    collector.start(ctx(1, (1, "a", 100)))
    clock.advance_ms(100)
    assert len(writer.values) == 4
    assert listener.events == [
        ("before_start", 1),
        ("after_start", 1),
        ("before_stop", 1),
        ("after_stop", 1),
        ("before_start", 1),
        ("after_start", 1),
    ]
    assert collector.stats().contexts[1].delivered == 1


def test_duration_ends_the_context_by_itself(reader: StaticDataReader, writer: MemoryDataWriter) -> None:
    listener = RecordingListener()
    collector, clock = virtual_collector([reader], [writer], [listener], start_ms=T0)
    context = collector.start(ctx(1, (1, "a", 100), duration_s=0.5))
    clock.advance_ms(2000)
    # Ticks at 100..400 fall inside [start, start + 0.5 s); the one at 500 is the end instant.
    assert sorted(by_time(writer.values)) == [100, 200, 300, 400]
    assert not collector.is_running()
    assert context.end_date is not None
    assert round(context.end_date.timestamp() * 1000) == T0 + 500
    assert listener.events[-2:] == [("before_stop", 1), ("after_stop", 1)]
    assert collector.stats().contexts[1].state == "stopped"
    with pytest.raises(UnknownContextError):
        collector.stop(1)


def test_stop_before_duration_cancels_the_timer(reader: StaticDataReader) -> None:
    listener = RecordingListener()
    collector, clock = virtual_collector([reader], [], [listener], start_ms=T0)
    collector.start(ctx(1, (1, "a", 100), duration_s=0.5))
    collector.stop(1)
    collector.start(ctx(1, (1, "a", 100), duration_s=10))
    clock.advance_ms(1000)
    assert collector.is_context_running(1)
    assert [e for e, _ in listener.events].count("after_stop") == 1


def test_close_stops_everything_once_and_then_refuses_calls(
    reader: StaticDataReader, writer: MemoryDataWriter
) -> None:
    listener = RecordingListener()
    collector, clock = virtual_collector([reader], [writer], [listener], start_ms=T0)
    collector.start(ctx(1, (1, "a", 100)))
    collector.start(ctx(2, (1, "b", 100)))
    collector.pause(2)
    clock.advance_ms(100)
    collector.close()
    collector.close()
    assert collector.closed and not collector.is_running()
    assert writer.closed and reader.closed == 1
    assert listener.events[-6:] == [
        ("before_close", None),
        ("before_stop", 1),
        ("after_stop", 1),
        ("before_stop", 2),
        ("after_stop", 2),
        ("after_close", None),
    ]
    for call, arg in ((collector.start, ctx(3, (1, "a", 100))), (collector.stop, 1), (collector.pause, 1)):
        with pytest.raises(CollectorClosedError):
            call(arg)  # type: ignore[operator]
    clock.advance_ms(1000)
    assert len(writer.values) == 1


def test_context_manager_closes(reader: StaticDataReader) -> None:
    collector, _ = virtual_collector([reader], [])
    with collector as entered:
        assert entered is collector
    assert collector.closed


def test_starting_a_started_id_raises_and_keeps_the_running_one(
    reader: StaticDataReader, writer: MemoryDataWriter
) -> None:
    collector, clock = virtual_collector([reader], [writer], start_ms=T0)
    first = collector.start(ctx(1, (1, "a", 100)))
    with pytest.raises(ContextAlreadyRunningError, match="context 1"):
        collector.start(ctx(1, (1, "b", 100)))
    clock.advance_ms(100)
    assert [v.address for v in writer.values] == ["a"]
    assert collector.contexts() == {1: first}


def test_unknown_reader_fails_start_naming_variable_and_reader(
    reader: StaticDataReader, writer: MemoryDataWriter
) -> None:
    collector, clock = virtual_collector([reader], [writer], start_ms=T0)
    collector.start(ctx(1, (1, "a", 100)))
    bad = DataCollectionContext(
        id=2,
        variables=[
            Variable(id=1, address="a", reader="static"),
            Variable(id=4, address="x", reader="opcua"),
            Variable(id=5, address="y", reader="modbus"),
        ],
    )
    with pytest.raises(ConfigError) as info:
        collector.start(bad)
    assert len(info.value.problems) == 2
    assert "context 2, variable 4" in info.value.problems[0]
    assert "'opcua'" in info.value.problems[0]
    assert "readers: static" in info.value.problems[0]
    assert "variable 5" in info.value.problems[1]
    assert bad.start_date is None
    clock.advance_ms(200)
    assert collector.contexts().keys() == {1}
    assert len(writer.values) == 2


class PickyReader(StaticDataReader):
    def validate(self, variable: Variable) -> None:
        if not variable.address.startswith("ok"):
            raise ValueError("address must start with 'ok'")


def test_reader_validation_names_context_variable_reader_and_reason() -> None:
    collector, _ = virtual_collector([PickyReader({}, type="picky")])
    context = DataCollectionContext(id=7, variables=[Variable(id=3, address="nope", reader="picky")])
    with pytest.raises(
        ConfigError, match=r"context 7, variable 3 \(address 'nope'\), reader 'picky': address must"
    ):
        collector.start(context)
    with pytest.raises(ConfigError):
        collector.check(context)
    assert not collector.is_running()


def test_contexts_given_as_mappings_are_validated_naming_the_field(reader: StaticDataReader) -> None:
    collector, _ = virtual_collector([reader])
    with pytest.raises(ConfigError, match=r"variables\.0\.interval_ms"):
        collector.start(
            {"id": 1, "variables": [{"id": 1, "address": "a", "reader": "static", "interval_ms": -5}]}
        )  # type: ignore[arg-type]
    started = collector.start({"id": 1, "variables": [{"id": 1, "address": "a", "reader": "static"}]})  # type: ignore[arg-type]
    assert isinstance(started, DataCollectionContext)


def test_interval_limit_policy_ignore_warns_and_skips(
    reader: StaticDataReader, writer: MemoryDataWriter, caplog: pytest.LogCaptureFixture
) -> None:
    collector, clock = virtual_collector([reader], [writer], start_ms=T0)
    with caplog.at_level(logging.WARNING, logger="flowcollect"):
        collector.start(ctx(1, (1, "a", 50), (2, "b", 100), min_interval_ms=100))
    assert "variable 1" in caplog.text and "below the limit of 100 ms" in caplog.text
    clock.advance_ms(200)
    assert {v.address for v in writer.values} == {"b"}


def test_a_context_with_every_variable_below_its_limit_does_not_start(
    reader: StaticDataReader, writer: MemoryDataWriter
) -> None:
    collector, clock = virtual_collector([reader], [writer], start_ms=T0)
    collector.start(ctx(1, (1, "a", 100)))
    with pytest.raises(ConfigError, match=r"context 2 would collect nothing: .*interval_ms 50 < 100 ms"):
        collector.start(ctx(2, (1, "a", 50), (2, "b", 20)))
    # The running context is untouched, and context 2 is not running.
    assert list(collector.contexts()) == [1]
    clock.advance_ms(200)
    assert {v.context_id for v in writer.values} == {1}


def test_interval_limit_policy_use_limit_collects_at_the_limit(writer: MemoryDataWriter) -> None:
    slow = StaticDataReader({"a": 1}, min_interval_ms=250)
    collector, clock = virtual_collector(
        [slow], [writer], interval_limit_policy=IntervalLimitPolicy.USE_LIMIT, start_ms=T0
    )
    collector.start(ctx(1, (1, "a", 50), min_interval_ms=10))
    clock.advance_ms(1000)
    assert sorted(by_time(writer.values)) == [250, 500, 750, 1000]
    assert {v.interval_ms for v in writer.values} == {250}


def test_interval_limit_policy_error_names_variable_and_limit(reader: StaticDataReader) -> None:
    collector, _ = virtual_collector([reader], interval_limit_policy=IntervalLimitPolicy.ERROR)
    with pytest.raises(ConfigError, match=r"variable 2 .*interval_ms 20 is below the limit of 100 ms"):
        collector.start(ctx(1, (1, "a", 100), (2, "b", 20)))
    assert not collector.is_running()


class ExplodingReader(DataReader):
    def __init__(self) -> None:
        self.calls = 0

    @property
    def type(self) -> str:
        return "boom"

    def read(self, variables: Sequence[CollectedVariable]) -> None:
        self.calls += 1
        if self.calls % 2:
            raise ConnectionError("device unreachable")
        for v in variables:
            v.value = 42.0


def test_reader_exception_becomes_error_values_and_the_stream_goes_on(
    writer: MemoryDataWriter, caplog: pytest.LogCaptureFixture
) -> None:
    collector, clock = virtual_collector([ExplodingReader()], [writer], start_ms=T0)
    collector.start(
        DataCollectionContext(id=1, interval_ms=100, variables=[Variable(id=1, address="x", reader="boom")])
    )
    with caplog.at_level(logging.ERROR, logger="flowcollect"):
        clock.advance_ms(600)
    assert [(v.value, v.error) for v in writer.values] == [
        (None, "ConnectionError: device unreachable"),
        (42.0, None),
    ] * 3
    # Logged once, not once per tick.
    assert caplog.text.count("device unreachable") == 1
    stats = collector.stats().readers["boom"]
    assert (stats.ticks, stats.values, stats.errors) == (6, 6, 3)


def test_before_start_exception_aborts_the_start(reader: StaticDataReader) -> None:
    class Veto(DataCollectionListener):
        def before_start(self, collector: DataCollector, context: DataCollectionContext) -> None:
            if context.id == 2:
                raise PermissionError("not today")

    collector, _ = virtual_collector([reader], [], [Veto()])
    collector.start(ctx(1, (1, "a", 100)))
    with pytest.raises(PermissionError):
        collector.start(ctx(2, (1, "a", 100)))
    assert collector.contexts().keys() == {1}


def test_failing_after_listeners_are_logged_and_lifecycle_goes_on(
    reader: StaticDataReader, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(DataCollectionListener):
        def after_stop(self, collector: DataCollector, context: DataCollectionContext) -> None:
            raise RuntimeError("listener bug")

    collector, _ = virtual_collector([reader], [], [Broken()])
    collector.start(ctx(1, (1, "a", 100)))
    with caplog.at_level(logging.ERROR, logger="flowcollect"):
        collector.stop(1)
    assert "listener bug" in caplog.text
    assert not collector.is_running()


def test_constructor_rejects_duplicate_reader_types_and_non_plugins() -> None:
    with pytest.raises(ConfigError, match="two readers have the type 'static'"):
        DataCollector([StaticDataReader({}), StaticDataReader({})], [])
    with pytest.raises(ConfigError, match="is not a DataWriter"):
        DataCollector([], [object()])  # type: ignore[list-item]


def test_stats_count_ticks_values_and_deliveries(reader: StaticDataReader, writer: MemoryDataWriter) -> None:
    collector, clock = virtual_collector([reader], [writer], start_ms=T0)
    collector.start(ctx(1, (1, "a", 100), (2, "b", 200)))
    collector.start(ctx(2, (1, "a", 100)))
    clock.advance_ms(400)
    stats = collector.stats()
    r = stats.readers["static"]
    assert (r.ticks, r.values, r.errors, r.overruns, r.period_ms) == (4, 6, 0, 0, 100)
    assert r.lateness_ms_p99 == 0.0
    assert stats.contexts[1].delivered == 6
    assert stats.contexts[2].delivered == 4
    w = stats.writers["MemoryDataWriter"]
    assert (w.written, w.failed, w.dropped, w.queued) == (10, 0, 0, 0)


def test_same_address_with_another_value_type_is_a_separate_read(writer: MemoryDataWriter) -> None:
    reader = StaticDataReader(lambda address, _t: address)
    collector, clock = virtual_collector([reader], [writer], start_ms=T0)
    collector.start(
        DataCollectionContext(
            id=1,
            interval_ms=100,
            variables=[
                Variable(id=1, address="a", reader="static", value_type="float"),
                Variable(id=2, address="a", reader="static", value_type="str"),
            ],
        )
    )
    clock.advance_ms(100)
    assert reader.reads[0][1] == ["a", "a"]
    assert Counter(v.value_type for v in writer.values) == {"float": 1, "str": 1}


def test_stats_keep_the_figures_of_the_newest_stopped_contexts(
    reader: StaticDataReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("flowcollect.collector.MAX_ENDED", 2)
    collector, clock = virtual_collector([reader], [MemoryDataWriter()], start_ms=T0)
    for cid in range(1, 5):
        collector.start(ctx(cid, (1, "a", 100)))
        clock.advance_ms(100 * cid)
        collector.stop(cid)
        clock.advance_ms(100)  # lets the reader's thread (here, the virtual clock) retire the branch
    contexts = collector.stats().contexts
    assert sorted(contexts) == [3, 4]
    assert (contexts[3].state, contexts[3].delivered, contexts[4].delivered) == ("stopped", 3, 4)


class Ambiguous:
    """A value that refuses to be compared, as a numpy array does."""

    def __ne__(self, other: object) -> bool:
        raise ValueError("the truth value of an array with more than one element is ambiguous")

    __hash__ = object.__hash__


def test_a_step_that_raises_loses_one_batch_and_the_context_goes_on(
    writer: MemoryDataWriter, caplog: pytest.LogCaptureFixture
) -> None:
    # At 300 the device answers a list: scaling it (for_context, context 1) raises. Context 2
    # reads the same address unscaled, its branch after context 1's on the same lane.
    def value(_address: str, when: datetime) -> object:
        return [1, 2] if round(when.timestamp() * 1000) - T0 == 300 else 1.0

    collector, clock = virtual_collector([StaticDataReader(value)], [writer], start_ms=T0)
    scaled = Variable(id=1, address="a", reader="static", scale=2.0)
    collector.start(DataCollectionContext(id=1, interval_ms=100, variables=[scaled]))
    collector.start(ctx(2, (5, "a", 100)))
    with caplog.at_level(logging.ERROR, logger="flowcollect"):
        clock.advance_ms(600)

    got = by_time(writer.values)
    assert sorted(t for t, vs in got.items() if (1, 1, "a") in vs) == [100, 200, 400, 500, 600]
    assert sorted(t for t, vs in got.items() if (2, 5, "a") in vs) == [100, 200, 300, 400, 500, 600]
    assert [v.value for v in writer.values if v.context_id == 1] == [2.0] * 5
    one = collector.stats().contexts[1]
    assert (one.state, one.delivered, one.step_errors, one.step_error_values) == ("running", 5, 1, 1)
    assert collector.stats().contexts[2].step_errors == 0
    assert collector.is_context_running(1)
    assert "context 1" in caplog.text and "for_context" in caplog.text and "TypeError" in caplog.text
    assert "tick" not in caplog.text  # contained in the branch: the lane's tick went through


def test_report_changes_that_raises_loses_one_batch_and_the_context_goes_on(
    writer: MemoryDataWriter, caplog: pytest.LogCaptureFixture
) -> None:
    # Comparing the value of 200 with the last delivered raises inside report_changes: in Rx
    # that is an on_error, which would end the branch for good.
    by_instant: dict[int, object] = {100: 1.0, 200: Ambiguous(), 300: 2.0, 400: 2.0, 500: 3.0}

    def value(_address: str, when: datetime) -> object:
        return by_instant.get(round(when.timestamp() * 1000) - T0, 3.0)

    collector, clock = virtual_collector([StaticDataReader(value)], [writer], start_ms=T0)
    changed = Variable(id=1, address="a", reader="static", report="change")
    collector.start(DataCollectionContext(id=1, interval_ms=100, variables=[changed]))
    with caplog.at_level(logging.ERROR, logger="flowcollect"):
        clock.advance_ms(500)

    assert [(round(v.time.timestamp() * 1000) - T0, v.value) for v in writer.values if v.time] == [
        (100, 1.0),
        (300, 2.0),
        (500, 3.0),
    ]
    stats = collector.stats().contexts[1]
    assert (stats.state, stats.delivered, stats.step_errors, stats.step_error_values) == ("running", 3, 1, 1)
    assert "report_changes" in caplog.text and "ambiguous" in caplog.text
    collector.pause(1)
    collector.resume(1)
    clock.advance_ms(100)
    assert writer.values[-1].value == 3.0  # a resumed context hears the current value at once


def test_pause_and_resume_are_heard_in_pairs_only_when_the_state_changes(
    reader: StaticDataReader, writer: MemoryDataWriter
) -> None:
    class Seeing(DataCollectionListener):
        """What the collector says while each event is heard."""

        def __init__(self) -> None:
            self.seen: list[tuple[str, bool]] = []

        def before_pause(self, collector: DataCollector, context: DataCollectionContext) -> None:
            self.seen.append(("before_pause", collector.is_context_running(context.id)))

        def after_pause(self, collector: DataCollector, context: DataCollectionContext) -> None:
            self.seen.append(("after_pause", collector.is_context_running(context.id)))

        def before_resume(self, collector: DataCollector, context: DataCollectionContext) -> None:
            self.seen.append(("before_resume", collector.is_context_running(context.id)))

        def after_resume(self, collector: DataCollector, context: DataCollectionContext) -> None:
            self.seen.append(("after_resume", collector.is_context_running(context.id)))

    listener, seeing = RecordingListener(), Seeing()
    collector, clock = virtual_collector([reader], [writer], [listener, seeing], start_ms=T0)
    collector.start(ctx(1, (1, "a", 100)))
    clock.advance_ms(100)
    collector.pause(1)
    collector.pause(1)  # already paused: nothing to hear
    clock.advance_ms(100)
    collector.resume(1)
    collector.resume(1)
    clock.advance_ms(100)
    collector.pause(1)
    collector.stop(1)  # a paused context stops with the stop pair only
    assert listener.events == [
        ("before_start", 1),
        ("after_start", 1),
        ("before_pause", 1),
        ("after_pause", 1),
        ("before_resume", 1),
        ("after_resume", 1),
        ("before_pause", 1),
        ("after_pause", 1),
        ("before_stop", 1),
        ("after_stop", 1),
    ]
    # before_* hears the old state, after_* the new one.
    assert seeing.seen == [
        ("before_pause", True),
        ("after_pause", False),
        ("before_resume", False),
        ("after_resume", True),
        ("before_pause", True),
        ("after_pause", False),
    ]
    assert sorted(by_time(writer.values)) == [100, 300]


def test_a_listener_that_stops_the_context_before_its_pause_wins(
    reader: StaticDataReader, writer: MemoryDataWriter, caplog: pytest.LogCaptureFixture
) -> None:
    class Stopper(DataCollectionListener):
        def before_pause(self, collector: DataCollector, context: DataCollectionContext) -> None:
            if context.id == 1:
                collector.stop(context.id)

        def before_resume(self, collector: DataCollector, context: DataCollectionContext) -> None:
            raise RuntimeError("listener bug")

    listener = RecordingListener()
    collector, clock = virtual_collector([reader], [writer], [Stopper(), listener], start_ms=T0)
    collector.start(ctx(1, (1, "a", 100)))
    collector.pause(1)
    # The listeners after the Stopper hear no half pause: the context is gone.
    assert listener.events[-2:] == [("before_stop", 1), ("after_stop", 1)]
    assert not collector.is_running()
    clock.advance_ms(300)
    assert writer.values == []
    # An exception in before_resume is logged; the resume goes on.
    collector.start(ctx(2, (1, "a", 100)))
    collector.pause(2)
    with caplog.at_level(logging.ERROR, logger="flowcollect"):
        collector.resume(2)
    assert "listener bug" in caplog.text
    assert collector.is_context_running(2)
    assert listener.events[-2:] == [("before_resume", 2), ("after_resume", 2)]


class FlakyReader(DataReader):
    """Unreachable at the instants in ``down_at`` (ms after T0); at others ``b`` is always an
    error of its own while ``a`` reads (one good value is enough for the device to be up)."""

    def __init__(self, down_at: set[int]) -> None:
        self.down_at = down_at

    @property
    def type(self) -> str:
        return "flaky"

    def read(self, variables: Sequence[CollectedVariable]) -> None:
        t = round(variables[0].time.timestamp() * 1000) - T0 if variables[0].time else 0
        if t in self.down_at:
            raise ConnectionError("connection refused")
        for v in variables:
            if v.address == "a":
                v.value = 1.0
            else:
                v.error = "illegal data address"


def test_devices_going_down_and_coming_back_are_heard_once_each(
    writer: MemoryDataWriter, caplog: pytest.LogCaptureFixture
) -> None:
    class Devices(DataCollectionListener):
        def __init__(self) -> None:
            self.heard: list[tuple[str, str, str | None, int]] = []

        def device_down(self, collector: DataCollector, reader: str, error: str) -> None:
            self.heard.append(("down", reader, error, round(collector.scheduler.now.timestamp() * 1000) - T0))

        def device_up(self, collector: DataCollector, reader: str) -> None:
            self.heard.append(("up", reader, None, round(collector.scheduler.now.timestamp() * 1000) - T0))

    class Broken(DataCollectionListener):
        def device_down(self, collector: DataCollector, reader: str, error: str) -> None:
            raise RuntimeError("listener bug")

    devices, recording = Devices(), RecordingListener()
    collector, clock = virtual_collector(
        [FlakyReader({200, 300, 500}), StaticDataReader({"a": 1.0}, type="static")],
        [writer],
        [Broken(), devices, recording],
        start_ms=T0,
    )
    collector.start(
        DataCollectionContext(
            id=1,
            interval_ms=100,
            variables=[
                Variable(id=1, address="a", reader="flaky"),
                Variable(id=2, address="b", reader="flaky"),
                Variable(id=3, address="a", reader="static"),
            ],
        )
    )
    with caplog.at_level(logging.ERROR, logger="flowcollect"):
        clock.advance_ms(700)
    flaky = [h for h in devices.heard if h[1] == "flaky"]
    assert flaky == [
        ("up", "flaky", None, 100),
        ("down", "flaky", "ConnectionError: connection refused", 200),
        ("up", "flaky", None, 400),
        ("down", "flaky", "ConnectionError: connection refused", 500),
        ("up", "flaky", None, 600),
    ]
    assert [h for h in devices.heard if h[1] == "static"] == [("up", "static", None, 100)]
    assert recording.devices == [(f"device_{event}", reader) for event, reader, _, _ in devices.heard]
    assert caplog.text.count("failed in device_down") == 2  # logged; the others still heard it
    assert len(writer.values) == 7 * 3  # nothing of the collection changed


def test_a_device_unreachable_from_the_start_is_heard_down_and_a_silent_source_is_not(
    writer: MemoryDataWriter,
) -> None:
    listener = RecordingListener()
    pushing = PushingDataReader(stale_after_ms=250)
    collector, clock = virtual_collector(
        [FlakyReader(set(range(0, 1000, 100))), pushing], [writer], [listener], start_ms=T0
    )
    collector.start(
        DataCollectionContext(
            id=1,
            interval_ms=100,
            variables=[
                Variable(id=1, address="a", reader="flaky"),
                Variable(id=2, address="x", reader="pushing"),
            ],
        )
    )
    clock.advance_ms(200)  # "no value pushed yet" says nothing about the pushing reader's device
    assert listener.devices == [("device_down", "flaky")]
    pushing.push({"x": 1.0})
    clock.advance_ms(100)
    assert listener.devices[-1] == ("device_up", "pushing")
    clock.advance_ms(300)  # no word for longer than stale_after_ms: its values go stale
    assert listener.devices[-1] == ("device_down", "pushing")
    pushing.keep_alive()
    clock.advance_ms(100)
    assert listener.devices == [
        ("device_down", "flaky"),
        ("device_up", "pushing"),
        ("device_down", "pushing"),
        ("device_up", "pushing"),
    ]


def test_a_branch_that_ends_anyway_says_so(
    writer: MemoryDataWriter, caplog: pytest.LogCaptureFixture
) -> None:
    # No step passes an error on, so only the lane's own Subject could end a branch; were it to,
    # the context must not go quiet while its state says running.
    collector, _clock = virtual_collector([StaticDataReader({"a": 1.0})], [writer], start_ms=T0)
    collector.start(ctx(1, (1, "a", 100)))
    (lane,) = collector._lanes.values()  # the seam a test needs to break a lane
    with caplog.at_level(logging.ERROR, logger="flowcollect"):
        lane.subject.on_error(RuntimeError("lane broken"))
    assert "context 1: its branch on lane reader:static ended" in caplog.text
    assert collector.stats().contexts[1].step_errors == 1
