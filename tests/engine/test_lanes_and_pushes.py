"""The second design's seams in virtual time: shared lanes, plan changes, lane assignment, pushed
sources (sample and hold, staleness), report-by-exception, engineering units, the model's new
fields, and what the compiler reports."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta

import pytest

from flowcollect import (
    CollectedVariable,
    ConfigError,
    DataCollectionContext,
    DataCollector,
    DataWriter,
    IntervalLimitPolicy,
    Variable,
)
from flowcollect.compile import ReaderSchedule, compile_plan
from flowcollect.models import ValueType
from flowcollect.testing import (
    MemoryDataWriter,
    PushingDataReader,
    StaticDataReader,
    virtual_collector,
)
from flowcollect.values import ValueBatch, VariableSpec

T0 = 1_699_999_200_000  # a round hour


def at(v: CollectedVariable) -> int:
    assert v.time is not None
    return round(v.time.timestamp() * 1000) - T0


def var(vid: int, address: str, reader: str = "static", **fields: object) -> Variable:
    return Variable(id=vid, address=address, reader=reader, **fields)  # type: ignore[arg-type]


def context(
    cid: int, *variables: Variable, interval_ms: int = 100, **fields: object
) -> DataCollectionContext:
    fields.setdefault("min_interval_ms", 1)
    return DataCollectionContext(id=cid, variables=list(variables), interval_ms=interval_ms, **fields)  # type: ignore[arg-type]


class LaneReader(StaticDataReader):
    """A static reader on a named lane that records which reader read when, in one shared log."""

    def __init__(self, type: str, lane: str | None, log: list[tuple[int, str]]) -> None:  # noqa: A002
        super().__init__({"a": 1, "b": 2, "c": 3}, type=type)
        self._lane = lane
        self.log = log
        self.plans: list[list[str]] = []

    @property
    def lane(self) -> str | None:
        return self._lane

    def plan_changed(self, variables: Sequence[VariableSpec]) -> None:
        self.plans.append([v.address for v in variables])

    def read(self, variables: Sequence[CollectedVariable]) -> None:
        assert variables[0].time is not None
        self.log.append((round(variables[0].time.timestamp() * 1000) - T0, self.type))
        super().read(variables)


class BatchRecorder(DataWriter):
    """Keeps every batch it is given."""

    def __init__(self) -> None:
        self.got: list[ValueBatch] = []

    def write_batch(self, batch: ValueBatch) -> None:
        self.got.append(batch)


# -- lanes --------------------------------------------------------------------------------------


def test_readers_with_one_lane_key_share_a_lane_and_its_gcd_tick() -> None:
    log: list[tuple[int, str]] = []
    unit1 = LaneReader("unit1", "modbus+rtu:///dev/ttyUSB0", log)
    unit2 = LaneReader("unit2", "modbus+rtu:///dev/ttyUSB0", log)
    alone = LaneReader("alone", None, log)
    writer, batches = MemoryDataWriter(), BatchRecorder()
    collector, clock = virtual_collector([unit1, unit2, alone], [writer, batches], start_ms=T0)
    assert collector.lanes() == {
        "modbus+rtu:///dev/ttyUSB0": ("unit1", "unit2"),
        "reader:alone": ("alone",),
    }
    collector.start(context(1, var(1, "a", "unit1", interval_ms=200), var(2, "b", "unit2", interval_ms=300)))
    collector.start(context(2, var(1, "c", "alone", interval_ms=500)))
    schedules = collector.schedules()
    assert all(isinstance(s, ReaderSchedule) for s in schedules.values())
    # The line's tick is the GCD of both units' intervals; each unit keeps its own intervals.
    assert (schedules["unit1"].period_ms, schedules["unit1"].intervals) == (100, (200,))
    assert (schedules["unit2"].period_ms, schedules["unit2"].intervals) == (100, (300,))
    assert schedules["unit1"].lane == schedules["unit2"].lane == "modbus+rtu:///dev/ttyUSB0"
    assert schedules["alone"].period_ms == 500
    clock.advance_ms(600)
    line = [(t, r) for t, r in log if r != "alone"]
    # Due reads of one instant run one after another in reader order; never at empty GCD ticks.
    assert line == [(200, "unit1"), (300, "unit2"), (400, "unit1"), (600, "unit1"), (600, "unit2")]
    stats = collector.stats().readers
    assert stats["unit1"].lane == stats["unit2"].lane == "modbus+rtu:///dev/ttyUSB0"
    assert stats["unit1"].period_ms == 100
    # One batch per lane, instant and context: at 600 both units' values travel together.
    assert [(b.t_ms - T0, b.context_id, b.reader, [s.reader for s in b.variables]) for b in batches.got] == [
        (200, 1, "unit1", ["unit1"]),
        (300, 1, "unit2", ["unit2"]),
        (400, 1, "unit1", ["unit1"]),
        (500, 2, "alone", ["alone"]),
        (600, 1, "", ["unit1", "unit2"]),
    ]
    assert batches.got[-1].values == [1, 2]


def test_readers_hear_the_distinct_variables_they_must_serve_before_the_tick() -> None:
    log: list[tuple[int, str]] = []
    reader = LaneReader("static", None, log)
    collector, clock = virtual_collector([reader], [MemoryDataWriter()], start_ms=T0)
    collector.start(context(1, var(1, "a"), var(2, "b")))
    collector.start(context(2, var(7, "a")))  # "a" again: served once
    clock.advance_ms(100)
    assert reader.plans == [["a", "b"]]  # both starts landed before the first tick: one change
    collector.pause(1)
    clock.advance_ms(100)
    collector.resume(1)
    clock.advance_ms(100)
    collector.stop(2)
    collector.stop(1)
    clock.advance_ms(100)
    assert reader.plans == [["a", "b"], ["a"], ["a", "b"], []]


def test_a_pushing_reader_serves_a_shared_variable_as_finely_as_its_finest_context_asks() -> None:
    # One monitored item per node: it must sample at the shortest interval and filter no finer
    # than the smallest deadband, or one context's filter would thin another context's values.
    pusher = PushingDataReader()
    collector, clock = virtual_collector([pusher], [MemoryDataWriter()], start_ms=T0)
    change = {"report": "change", "deadband": 0.5}
    collector.start(context(1, var(1, "a", "pushing", **change), var(2, "b", "pushing", **change)))
    collector.start(context(2, var(3, "a", "pushing", report="change", deadband=0.2), interval_ms=50))
    collector.start(context(3, var(4, "b", "pushing", interval_ms=200)))  # every value of "b"
    clock.advance_ms(100)
    served = {spec.address: (spec.interval_ms, spec.deadband) for spec in pusher.serving}
    assert served == {"a": (50, 0.2), "b": (100, None)}
    collector.stop(2)
    collector.stop(3)
    clock.advance_ms(100)
    served = {spec.address: (spec.interval_ms, spec.deadband) for spec in pusher.serving}
    assert served == {"a": (100, 0.5), "b": (100, 0.5)}
    collector.close()


def test_a_lane_not_assigned_does_not_read_and_its_contexts_get_nothing_from_it() -> None:
    log: list[tuple[int, str]] = []
    mine = LaneReader("mine", "tcp://10.0.0.1:502", log)
    theirs = LaneReader("theirs", "tcp://10.0.0.2:502", log)
    writer = MemoryDataWriter()
    collector, clock = virtual_collector([mine, theirs], [writer], start_ms=T0)
    collector.start(context(1, var(1, "a", "mine"), var(2, "b", "theirs")))
    collector.assign_lanes(["tcp://10.0.0.1:502", "some-other-members-lane"])
    clock.advance_ms(300)
    assert {r for _, r in log} == {"mine"}
    assert theirs.plans == []  # never served: never told to prepare
    assert {v.address for v in writer.values} == {"a"}
    collector.assign_lanes(None)  # ownership comes back: reads from the next tick
    clock.advance_ms(100)
    assert sorted(r for t, r in log if t == 400) == ["mine", "theirs"]
    collector.assign_lanes([])
    clock.advance_ms(200)
    assert max(t for t, _ in log) == 400
    assert mine.plans[-1] == [] and theirs.plans[-1] == []


# -- pushed sources -----------------------------------------------------------------------------


def test_pushed_values_are_sampled_and_held_at_due_instants_with_their_source_time() -> None:
    pusher = PushingDataReader(stale_after_ms=1000)
    writer = MemoryDataWriter()
    collector, clock = virtual_collector([pusher], [writer], start_ms=T0)
    collector.start(context(1, var(1, "p", "pushing", value_type="float"), interval_ms=100))
    clock.advance_ms(50)
    assert pusher.opened == 1 and pusher.plans == [["p"]]
    clock.advance_ms(50)  # 100: nothing pushed yet
    pusher.push({"p": 1.5}, source_ms=T0 + 120, quality="Uncertain")
    clock.advance_ms(100)  # 200: the pushed value, held
    clock.advance_ms(100)  # 300: still held, same source time
    pusher.push({"p": 2.5}, source_ms=T0 + 350)
    clock.advance_ms(100)  # 400
    got = [(at(v), v.value, v.error, v.quality) for v in writer.values]
    assert got == [
        (100, None, "no value pushed yet", None),
        (120, 1.5, None, "Uncertain"),
        (120, 1.5, None, "Uncertain"),
        (350, 2.5, None, None),
    ]
    # Held while the reader is heard from (a keep-alive is enough), stale after stale_after_ms.
    for _ in range(10):
        clock.advance_ms(100)
        pusher.keep_alive()
    clock.advance_ms(1100)
    last = writer.values[-1]
    assert last.value is None and last.error is not None and last.error.startswith("stale")
    assert writer.values[-12].value == 2.5  # kept alive: the same value at every instant
    # A lost source says so at once, as errors held like values.
    pusher.fail("connection lost")
    clock.advance_ms(100)
    assert (writer.values[-1].value, writer.values[-1].error) == (None, "connection lost")


def test_pushed_changes_reach_change_mode_contexts_as_they_come_timed_by_the_source() -> None:
    pusher = PushingDataReader(stale_after_ms=None)
    writer = MemoryDataWriter()
    collector, clock = virtual_collector([pusher], [writer], start_ms=T0)
    collector.start(
        context(
            1,
            var(1, "p", "pushing", value_type="float", report="change", deadband=0.5, heartbeat_ms=1000),
            interval_ms=100,
        )
    )
    clock.advance_ms(10)
    pusher.push({"p": 10.0}, source_ms=T0 + 12)
    clock.advance_ms(5)  # delivered at once, between grid instants
    pusher.push({"p": 10.3}, source_ms=T0 + 20)  # within the deadband: not delivered
    clock.advance_ms(5)
    pusher.push({"p": 11.0}, source_ms=T0 + 25)
    clock.advance_ms(5)
    assert [(at(v), v.value) for v in writer.values] == [(12, 10.0), (25, 11.0)]
    # Nothing moves: the heartbeat delivers the held value (with its source time) at the first
    # due instant a second after the last delivery: 1100 and 2100.
    clock.advance_to_ms(T0 + 2100)
    beats = writer.values[2:]
    assert [(at(v), v.value) for v in beats] == [(25, 11.0), (25, 11.0)]
    # Paused: no change reaches the context; resumed: the current value comes at once.
    collector.pause(1)
    pusher.push({"p": 20.0}, source_ms=T0 + 2100)
    clock.advance_ms(100)
    n = len(writer.values)
    collector.resume(1)
    clock.advance_ms(100)
    assert [v.value for v in writer.values[n:]] == [20.0]


def test_polled_values_in_change_mode_pass_the_deadband_heartbeat_and_error_changes() -> None:
    series = iter([1.0, 1.2, 1.6, 1.6, 1.6, 1.6, 1.6, 1.6, None, None, 2.0])
    flags = iter([False, False, True, True, False, False, False, False, False, False, False])

    def value(address: str, _t: object) -> object:
        if address == "flag":
            return next(flags)
        if address == "every":
            return 5
        x = next(series)
        if x is None:
            raise KeyError("gone")  # becomes an error value
        return x

    class Reader(StaticDataReader):
        def read(self, variables: Sequence[CollectedVariable]) -> None:
            for v in variables:
                try:
                    v.value = value(v.address, v.time)
                except KeyError as exc:
                    v.error = str(exc)

    writer = MemoryDataWriter()
    collector, clock = virtual_collector([Reader({})], [writer], start_ms=T0)
    collector.start(
        context(
            1,
            var(1, "x", report="change", deadband=0.5, heartbeat_ms=500),
            var(2, "flag", value_type="bool", report="change"),
            var(3, "every", value_type="int"),
        )
    )
    clock.advance_ms(1100)
    xs = [(at(v), v.value, v.error) for v in writer.values if v.id == 1]
    assert xs == [
        (100, 1.0, None),  # the first value
        (300, 1.6, None),  # moved 0.6 > 0.5 (1.2 moved only 0.2)
        (800, 1.6, None),  # the heartbeat, 500 ms after the last delivery
        (900, None, "'gone'"),  # an error is a change
        (1100, 2.0, None),  # and so is its end
    ]
    flags_seen = [(at(v), v.value) for v in writer.values if v.id == 2]
    assert flags_seen == [(100, False), (300, True), (500, False)]
    assert len([v for v in writer.values if v.id == 3]) == 11  # report="every": every instant


def test_scale_and_offset_are_applied_per_context_on_a_shared_read() -> None:
    writer = MemoryDataWriter()
    collector, clock = virtual_collector([StaticDataReader({"raw": 200})], [writer], start_ms=T0)
    collector.start(
        context(1, var(1, "raw", value_type="int", scale=0.1, offset=-5, name="temp", tags={"u": "C"}))
    )
    collector.start(context(2, var(1, "raw", value_type="int")))
    clock.advance_ms(100)
    by_context = {v.context_id: v.value for v in writer.values}
    assert by_context == {1: pytest.approx(15.0), 2: 200}


# -- the model and the compiler -----------------------------------------------------------------


class TypedReader(StaticDataReader):
    def natural_value_type(self, address: str) -> ValueType | None:
        return {"coil": "bool", "hr": "int"}.get(address)

    def validate(self, variable: Variable) -> None:
        if variable.value_type is None:
            raise ValueError("the engine must resolve value_type before validate")


def test_value_type_defaults_to_the_readers_natural_type_else_float() -> None:
    writer = MemoryDataWriter()
    reader = TypedReader({"coil": True, "hr": 7, "other": 1.5})
    collector, clock = virtual_collector([reader], [writer], start_ms=T0)
    collector.start(
        context(1, var(1, "coil"), var(2, "hr"), var(3, "other"), var(4, "hr", value_type="float"))
    )
    clock.advance_ms(100)
    assert [v.value_type for v in writer.values] == ["bool", "int", "float", "float"]


def test_scale_on_a_bool_and_misplaced_report_fields_are_config_errors_naming_the_variable() -> None:
    collector, _ = virtual_collector([TypedReader({})])
    with pytest.raises(
        ConfigError, match=r"context 1, variable 2 .*scale applies to numbers; value_type is 'bool'"
    ):
        collector.start(context(1, var(1, "hr", scale=2), var(2, "coil", scale=2)))
    with pytest.raises(ConfigError, match=r"variables\.0: .*deadband applies only with report='change'"):
        collector.start(
            {"id": 1, "variables": [{"id": 1, "address": "a", "reader": "static", "deadband": 1}]}
        )  # type: ignore[arg-type]


def test_a_context_without_duration_runs_until_stopped() -> None:
    writer = MemoryDataWriter()
    collector, clock = virtual_collector([StaticDataReader({"a": 1})], [writer], start_ms=T0)
    collector.start(context(1, var(1, "a"), interval_ms=60_000, duration_s=None))
    clock.advance_ms(3 * 86_400_000)  # three days
    assert collector.is_context_running(1)
    assert len(writer.values) == 3 * 24 * 60
    stopped = collector.stop(1)
    assert stopped.end_date is not None


def test_writer_names_are_unique_in_a_collector() -> None:
    with pytest.raises(ConfigError, match="two writers have the name 'MemoryDataWriter'"):
        DataCollector([], [MemoryDataWriter(), MemoryDataWriter()])


def test_the_compiler_is_pure_and_reports_dropped_variables_once(caplog: pytest.LogCaptureFixture) -> None:
    reader = StaticDataReader({})
    ctx1 = context(1, var(1, "a"), var(2, "b", interval_ms=10), min_interval_ms=50)
    plan = compile_plan(
        [ctx1, context(2, var(1, "a", interval_ms=300))], [reader], IntervalLimitPolicy.IGNORE
    )
    assert (
        len(plan.warnings) == 1 and "variable 2" in plan.warnings[0] and "not collected" in plan.warnings[0]
    )
    assert plan.contexts[0].dropped == (2,)
    lane = plan.lanes["reader:static"]
    assert lane.schedule is not None and (lane.schedule.period_ms, lane.schedule.hyperperiod_ms) == (100, 300)
    assert (reader.opened, reader.reads) == (0, [])
    with pytest.raises(ConfigError) as info:
        compile_plan([context(1, var(1, "a", "nope")), context(1, var(1, "a"))], [reader])
    assert len(info.value.problems) == 2
    # check() says so too, and start logs it once.
    collector, _ = virtual_collector([reader])
    assert collector.check(ctx1).warnings == plan.contexts[0].warnings
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="flowcollect"):
        collector.start(ctx1)
    assert caplog.text.count("not collected") == 1


class SlowReader(StaticDataReader):
    """Each read takes 250 ms of virtual time: the instants at 100 ms pass while it reads."""

    def __init__(self, clock_sleep: object) -> None:
        super().__init__({"a": 1, "b": 2})
        self.sleep = clock_sleep

    def read(self, variables: Sequence[CollectedVariable]) -> None:
        self.sleep(timedelta(milliseconds=250))  # type: ignore[operator]
        super().read(variables)


def test_instants_a_reader_could_not_serve_are_counted_per_context() -> None:
    writer = MemoryDataWriter()
    slow = SlowReader(None)
    collector, clock2 = virtual_collector([slow], [writer], start_ms=T0)
    slow.sleep = clock2.scheduler.sleep
    collector.start(context(1, var(1, "a")))
    collector.start(context(2, var(1, "b", interval_ms=200)))
    clock2.advance_ms(1000)
    stats = collector.stats()
    one, two = stats.contexts[1], stats.contexts[2]
    reader = stats.readers["static"]
    assert reader.overruns > 0
    # Expected = delivered + missed, per context: every due instant is one or the other.
    assert one.delivered + one.missed_values == one.delivered + one.missed_instants
    assert one.missed_instants > 0 and two.missed_instants > 0
    # Reads at 100, 400, 700, 1000; the last ended at 1250, so the instants up to 1200 are
    # accounted for: 12 for context 1, 6 for context 2.
    assert (one.delivered, one.missed_instants) == (4, 8)
    assert two.delivered + two.missed_instants == 6


def test_a_blank_lane_key_is_a_config_error_naming_the_reader() -> None:
    with pytest.raises(ConfigError, match="reader 'bad': lane must be None or a non-blank text"):
        DataCollector([LaneReader("bad", "  ", [])], [])
