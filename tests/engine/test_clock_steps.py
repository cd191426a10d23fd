"""Wall-clock steps (NTP, an operator) in virtual time: the lane waits on the monotonic clock and
re-anchors its grid on the new wall time, so a step neither stalls reads nor fires a burst."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import pytest

from flowcollect import CollectedVariable, DataCollectionContext, Variable
from flowcollect.testing import MemoryDataWriter, StaticDataReader, VirtualScheduler, virtual_collector

T0 = 1_699_999_200_000


def times(values: Sequence[CollectedVariable]) -> list[int]:
    return [round(v.time.timestamp() * 1000) - T0 for v in values if v.time is not None]


def start(step_ms: int) -> tuple[MemoryDataWriter, object, object]:
    writer = MemoryDataWriter()
    collector, clock = virtual_collector([StaticDataReader({"a": 1})], [writer], start_ms=T0)
    collector.start(
        DataCollectionContext(
            id=1, interval_ms=100, duration_s=None, variables=[Variable(id=1, address="a", reader="static")]
        )
    )
    clock.advance_ms(1000)
    assert times(writer.values) == list(range(100, 1001, 100))
    clock.advance_ms(50)  # between two instants: the tick at 1100 is armed
    clock.step_wall_ms(step_ms)
    return writer, collector, clock


@pytest.mark.parametrize("step_ms", [10_000, 3_600_000])
def test_a_forward_step_fires_no_burst(step_ms: int) -> None:
    writer, collector, clock = start(step_ms)
    clock.advance_ms(1000)  # one second of real (monotonic) time
    after = times(writer.values)[10:]
    # About ten reads in one real second, on the new wall clock's grid; not the step's worth.
    assert 9 <= len(after) <= 10, after
    assert all(t % 100 == 0 and t > step_ms for t in after)
    assert after == sorted(set(after))
    stats = collector.stats().readers["static"]  # type: ignore[attr-defined]
    assert stats.clock_steps == 1
    assert stats.overruns == 0  # instants the wall jumped over are not instants the lane missed


@pytest.mark.parametrize("step_ms", [-10_000, -3_600_000])
def test_a_backward_step_does_not_stall_reads(step_ms: int) -> None:
    writer, collector, clock = start(step_ms)
    clock.advance_ms(1000)
    after = times(writer.values)[10:]
    # Reads go on at once on the new (earlier) wall time; they do not wait for the old one.
    assert 9 <= len(after) <= 10, after
    assert all(t % 100 == 0 and t < 1000 + step_ms + 1200 for t in after)
    assert not [t for t, n in Counter(after).items() if n > 1]
    assert collector.stats().readers["static"].clock_steps == 1  # type: ignore[attr-defined]


def test_small_wall_adjustments_are_not_steps() -> None:
    writer, collector, clock = start(20)  # a slew-sized correction
    clock.advance_ms(1000)
    assert collector.stats().readers["static"].clock_steps == 0  # type: ignore[attr-defined]
    assert times(writer.values)[10:] == list(range(1100, 2001 + 20, 100))[: len(times(writer.values)) - 10]


def test_the_virtual_scheduler_waits_on_monotonic_time() -> None:
    scheduler = VirtualScheduler()
    ran: list[float] = []
    scheduler.schedule_relative(1.0, lambda s, _: ran.append(s.now.timestamp()))
    scheduler.step_wall_ms(-60_000)  # the due action keeps its monotonic due time
    scheduler.advance_by(1.0)
    assert ran == [pytest.approx(-59.0)]


def test_a_plan_change_right_after_a_backward_step_does_not_stall_either() -> None:
    writer, collector, clock = start(-10_000)
    # A second context starts before the lane's next tick: its plan change re-arms the lane,
    # which must see the step then, not wait for the old timeline's next instant.
    collector.start(  # type: ignore[attr-defined]
        DataCollectionContext(
            id=2, interval_ms=100, duration_s=None, variables=[Variable(id=1, address="a", reader="static")]
        )
    )
    clock.advance_ms(1000)
    after = [v for v in writer.values[10:] if v.context_id == 1]
    assert 9 <= len(after) <= 10, times(after)
    assert len([v for v in writer.values if v.context_id == 2]) >= 9


def test_a_duration_ends_on_the_wall_clock_even_when_its_timer_fires_before() -> None:
    # The timer waits on the monotonic clock; the wall clock stepped back 150 ms meanwhile, so
    # it fires when the wall says 850 ms of the 1,000. Stopped then, the context would lose its
    # instant at 900; it is stopped at its end instead.
    writer = MemoryDataWriter()
    collector, clock = virtual_collector([StaticDataReader({"a": 1})], [writer], start_ms=T0)
    ctx = collector.start(
        DataCollectionContext(
            id=1, interval_ms=100, duration_s=1.0, variables=[Variable(id=1, address="a", reader="static")]
        )
    )
    clock.advance_ms(550)
    clock.step_wall_ms(-150)
    clock.advance_ms(1000)
    assert ctx.end_date is not None
    assert round(ctx.end_date.timestamp() * 1000) - T0 == 1000
    assert times(writer.values)[-1] == 900
    assert not collector.is_running()
