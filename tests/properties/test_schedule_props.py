"""Property tests of the pure due plans (``flowcollect.compile``) against brute force.

The reference for everything here is the definition: a variable with interval I is due at every
instant t with t % I == 0. Each property builds the answer by scanning instants one by one.
"""

from __future__ import annotations

import math
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowcollect.compile import LaneSchedule, due_patterns, next_due
from flowcollect.compile._schedule import EAGER_PHASES, MAX_COUNT_WALK
from flowcollect.runtime._steps import LaneRead, batch_for
from flowcollect.values import CollectedVariable, VariableSpec


def spec(context_id: int, variable_id: int, address: str, value_type: str, interval_ms: int) -> VariableSpec:
    return VariableSpec(variable_id, context_id, address, value_type, "r", interval_ms)


def schedule_of(reader: str, wanted: list[VariableSpec]) -> LaneSchedule:
    return LaneSchedule(f"reader:{reader}", wanted)


def _deliver(schedule: LaneSchedule, t: int, read: object = None) -> dict[int, list[CollectedVariable]]:
    """Push one instant through the graph's own fan-out (``for_context``'s ``batch_for``), with
    each distinct read's value set to what a reader would have read for it."""
    phase = schedule.phase_at(t)
    if phase is None:
        return {}
    (rp,) = phase.readers
    values = [(s.address, s.value_type) for s in rp.reads]
    lane_read = LaneRead(t, "r", values, [None] * len(values), None, None, rp.by_context)
    return {cid: list(batch_for(lane_read, d, cid)) for cid, d in rp.by_context.items()}


# Real epoch instants (around 2023), so the modulo arithmetic is exercised on large numbers.
EPOCH_2023 = 1_700_000_000_000

ADDRESSES = ("a", "b", "c", "d")
VALUE_TYPES = ("float", "int")

PROPS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


@st.composite
def wanted_lists(draw: st.DrawFn, intervals: st.SearchStrategy[int]) -> list[VariableSpec]:
    """Up to 4 contexts of 1..6 variables each; addresses and types drawn from small pools so
    that contexts (and variables within one context) share reads."""
    out: list[VariableSpec] = []
    for cid in draw(st.lists(st.integers(1, 9), min_size=1, max_size=4, unique=True)):
        n = draw(st.integers(1, 6))
        vids = draw(st.lists(st.integers(1, 50), min_size=n, max_size=n, unique=True))
        for vid in vids:
            out.append(
                spec(
                    cid,
                    vid,
                    draw(st.sampled_from(ADDRESSES)),
                    draw(st.sampled_from(VALUE_TYPES)),
                    draw(intervals),
                )
            )
    return out


# Small intervals with common factors: short hyperperiods, the eager path.
small_intervals = st.sampled_from([1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 25, 50, 100, 200, 300, 500, 1000])
# Large co-prime-ish intervals: hyperperiods of millions of ms, the lazy path.
coprime_intervals = st.sampled_from([997, 999, 1000, 1001, 1009, 1013, 2003])


def due_at(wanted: list[VariableSpec], t: int) -> list[VariableSpec]:
    return [w for w in wanted if t % w.interval_ms == 0]


def check_phase(schedule: LaneSchedule, wanted: list[VariableSpec], t: int) -> None:
    """What the plan says at ``t`` is exactly what the definition says, read once, delivered right."""
    due = due_at(wanted, t)
    phase = schedule.phase_at(t)
    if not due:
        assert phase is None, (t, phase)
        return
    assert phase is not None, t

    # Each distinct (address, value type) due at t is read exactly once, and nothing else is.
    keys = [(s.address, s.value_type) for rp in phase.readers for s in rp.reads]
    assert Counter(keys) == Counter({(w.address, w.value_type) for w in due})

    # Pushed through the graph's own fan-out: each context receives exactly its due variables,
    # each once, with the value read for its (address, value type), in the plan's order.
    delivered = _deliver(schedule, t)
    expected_by_context: dict[int, list[VariableSpec]] = {}
    for w in due:  # ``wanted`` order is the plan's order
        expected_by_context.setdefault(w.context_id, []).append(w)
    assert set(delivered) == set(expected_by_context)
    for cid, values in delivered.items():
        expected = expected_by_context[cid]
        assert [(v.context_id, v.id, v.address, v.value_type, v.interval_ms) for v in values] == [
            (w.context_id, w.id, w.address, w.value_type, w.interval_ms) for w in expected
        ]
        assert all(v.value == (v.address, v.value_type) for v in values)
        assert all(round(v.time.timestamp() * 1000) == t for v in values if v.time is not None)
    # Read objects are never shared between contexts (a writer may keep what it gets).
    ids = Counter(id(v) for values in delivered.values() for v in values)
    assert set(ids.values()) == {1}


def brute_next_due(wanted: list[VariableSpec], after: float) -> int:
    t = math.floor(after) + 1
    while not due_at(wanted, t):
        t += 1
    return t


def brute_count_due(wanted: list[VariableSpec], after: int, until: float) -> int:
    return sum(1 for t in range(after + 1, math.floor(until) + 1) if due_at(wanted, t))


@PROPS
@given(wanted=wanted_lists(small_intervals), offset=st.integers(0, 10**6))
def test_every_instant_of_a_hyperperiod_matches_the_definition(
    wanted: list[VariableSpec], offset: int
) -> None:
    schedule = schedule_of("r", wanted)
    intervals = {w.interval_ms for w in wanted}
    assert schedule.period_ms == math.gcd(*intervals)
    assert schedule.hyperperiod_ms == math.lcm(*intervals)
    base = EPOCH_2023 + offset
    # One whole hyperperiod (capped) at every millisecond, so empty GCD ticks and off-grid
    # instants are checked too.
    for t in range(base, base + min(schedule.hyperperiod_ms, 3000) + 1):
        check_phase(schedule, wanted, t)


@PROPS
@given(wanted=wanted_lists(small_intervals), t=st.integers(EPOCH_2023, EPOCH_2023 + 10**9))
def test_a_variable_is_due_exactly_at_the_multiples_of_its_interval(
    wanted: list[VariableSpec], t: int
) -> None:
    schedule = schedule_of("r", wanted)
    phase = schedule.phase_at(t)
    delivered = _deliver(schedule, t) if phase is not None else {}
    got = {(v.context_id, v.id) for values in delivered.values() for v in values}
    for w in wanted:
        assert ((w.context_id, w.id) in got) == (t % w.interval_ms == 0)


@PROPS
@given(
    wanted=wanted_lists(small_intervals),
    after=st.integers(EPOCH_2023, EPOCH_2023 + 10**9) | st.floats(EPOCH_2023, EPOCH_2023 + 10**9),
)
def test_next_due_is_the_first_due_instant_strictly_after(wanted: list[VariableSpec], after: float) -> None:
    schedule = schedule_of("r", wanted)
    assert schedule.next_due(after) == brute_next_due(wanted, after)


@PROPS
@given(
    wanted=wanted_lists(small_intervals),
    after=st.integers(EPOCH_2023, EPOCH_2023 + 10**9),
    span=st.integers(0, 5000) | st.floats(0, 5000),
)
def test_count_due_counts_the_due_instants_in_the_half_open_span(
    wanted: list[VariableSpec], after: int, span: float
) -> None:
    schedule = schedule_of("r", wanted)
    until = after + span
    expected = brute_count_due(wanted, after, until)
    assert expected < MAX_COUNT_WALK  # within the exact walk, so no estimate is involved
    assert schedule.count_due(after, until) == expected


@PROPS
@given(wanted=wanted_lists(small_intervals), after=st.integers(EPOCH_2023, EPOCH_2023 + 10**9))
def test_next_due_and_count_due_agree(wanted: list[VariableSpec], after: int) -> None:
    # The tick source skips with one and re-arms with the other: they must describe the same set.
    schedule = schedule_of("r", wanted)
    first = schedule.next_due(after)
    second = schedule.next_due(first)
    assert schedule.count_due(after, first - 1) == 0
    assert schedule.count_due(after, first) == 1
    assert schedule.count_due(after, second) == 2
    assert schedule.phase_at(first) is not None and schedule.phase_at(second) is not None


@PROPS
@given(
    wanted=wanted_lists(coprime_intervals),
    offset=st.integers(0, 10**9),
    probes=st.lists(st.integers(0, 10**7), min_size=1, max_size=30),
)
def test_coprime_intervals_take_the_lazy_path_and_agree_with_brute_force(
    wanted: list[VariableSpec], offset: int, probes: list[int]
) -> None:
    schedule = schedule_of("r", wanted)
    base = EPOCH_2023 + offset
    # Walk due instant by due instant from a random start; check each against the definition.
    t = base
    for _ in range(40):
        following = schedule.next_due(t)
        assert following == brute_next_due(wanted, t)
        check_phase(schedule, wanted, following)
        t = following
    # And at arbitrary instants, due or not (mostly not: the lazy plan must say None there).
    for p in probes:
        check_phase(schedule, wanted, base + p)


def test_the_lazy_path_is_really_taken_for_coprime_intervals() -> None:
    # Guards the previous property: with 999 and 1000 ms the plan is built on first use.
    wanted = [spec(1, 1, "a", "float", 999), spec(1, 2, "b", "float", 1000)]
    schedule = schedule_of("r", wanted)
    assert schedule.hyperperiod_ms // schedule.period_ms > EAGER_PHASES
    t = 999 * 1000 * 1_700_000  # both due
    check_phase(schedule, wanted, t)
    check_phase(schedule, wanted, t + 999)
    check_phase(schedule, wanted, t + 1000)
    check_phase(schedule, wanted, t + 1)


@PROPS
@given(
    data=st.data(),
    t=st.integers(EPOCH_2023, EPOCH_2023 + 10**9),
)
def test_a_shared_lane_reads_each_readers_due_set_once_in_reader_order(data: st.DataObject, t: int) -> None:
    readers = ("u1", "u2", "u3")
    specs = [
        VariableSpec(
            data.draw(st.integers(1, 50)),
            cid,
            data.draw(st.sampled_from(ADDRESSES)),
            data.draw(st.sampled_from(VALUE_TYPES)),
            data.draw(st.sampled_from(readers)),
            data.draw(small_intervals),
        )
        for cid in range(1, data.draw(st.integers(2, 12)))
    ]
    schedule = LaneSchedule("modbus+rtu:///dev/ttyUSB0", specs, readers)
    assert schedule.period_ms == math.gcd(*{s.interval_ms for s in specs})
    phase = schedule.phase_at(t)
    due = [s for s in specs if t % s.interval_ms == 0]
    if not due:
        assert phase is None
        return
    assert phase is not None
    # Readers in the lane's order, each with exactly its own distinct due (address, type) pairs.
    assert [rp.reader for rp in phase.readers] == [r for r in readers if any(s.reader == r for s in due)]
    for rp in phase.readers:
        mine = {(s.address, s.value_type) for s in due if s.reader == rp.reader}
        assert sorted((s.address, s.value_type) for s in rp.reads) == sorted(mine)
        assert all(s.reader == rp.reader for s in rp.reads)


def brute_patterns(intervals: set[int], span: int) -> dict[tuple[int, ...], list[int]]:
    """Every due instant of ``[0, span)``, scanned millisecond by millisecond, by pattern."""
    out: dict[tuple[int, ...], list[int]] = {}
    for t in range(span):
        due = tuple(sorted(i for i in intervals if t % i == 0))
        if due:
            out.setdefault(due, []).append(t)
    return out


# Intervals whose hyperperiod stays short enough to scan millisecond by millisecond.
walk_intervals = st.sets(
    st.sampled_from([1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 40, 50, 60, 100]), min_size=1
)


@PROPS
@given(intervals=walk_intervals, offsets=st.integers(0, 5))
def test_due_patterns_of_a_hyperperiod_match_the_definition(intervals: set[int], offsets: int) -> None:
    span = math.lcm(*intervals)
    walk = due_patterns(intervals, limit=10**6, offsets=offsets)
    expected = brute_patterns(intervals, span)
    assert walk.complete
    assert walk.instants == sum(len(ts) for ts in expected.values())
    # Each pattern once, in the order of its first instant, with its count and first offsets.
    assert [p.intervals for p in walk.patterns] == sorted(expected, key=lambda due: expected[due][0])
    assert walk.patterns[0].first_ms == 0 and walk.patterns[0].intervals == tuple(sorted(intervals))
    for pattern in walk.patterns:
        instants = expected[pattern.intervals]
        assert pattern.first_ms == instants[0]
        assert pattern.instants == len(instants)
        assert pattern.offsets_ms == tuple(instants[:offsets])
        # The tick of the first instant lasts until the next due instant of the walk's intervals.
        assert (
            pattern.gap_ms
            == brute_next_due([spec(1, 1, "a", "int", i) for i in intervals], instants[0]) - instants[0]
        )


@PROPS
@given(intervals=walk_intervals, limit=st.integers(1, 200), span=st.integers(1, 2000))
def test_due_patterns_stop_at_the_limit_and_the_span(intervals: set[int], limit: int, span: int) -> None:
    walk = due_patterns(intervals, limit, span)
    walked = [t for ts in brute_patterns(intervals, span).values() for t in ts]
    assert walk.instants == min(limit, len(walked))
    assert walk.complete == (limit >= len(walked))
    seen = sorted(walked)[:limit]
    # What the walk saw is exactly the first ``limit`` due instants of the span.
    assert sum(p.instants for p in walk.patterns) == len(seen)
    assert {p.intervals for p in walk.patterns} == {
        tuple(sorted(i for i in intervals if t % i == 0)) for t in seen
    }


@PROPS
@given(intervals=walk_intervals, reader_intervals=walk_intervals)
def test_a_lane_walks_one_readers_due_instants_over_the_lanes_hyperperiod(
    intervals: set[int], reader_intervals: set[int]
) -> None:
    specs = [VariableSpec(n, 1, "a", "int", "other", i) for n, i in enumerate(sorted(intervals))]
    specs += [VariableSpec(100 + n, 1, "a", "int", "mine", i) for n, i in enumerate(sorted(reader_intervals))]
    schedule = LaneSchedule("lane", specs)
    mine = schedule.due_patterns(10**6, "mine", offsets=1)
    expected = brute_patterns(reader_intervals, schedule.hyperperiod_ms)
    assert {p.intervals: p.instants for p in mine.patterns} == {d: len(ts) for d, ts in expected.items()}
    whole = schedule.due_patterns(10**6)
    assert {p.intervals for p in whole.patterns} == set(
        brute_patterns(set(schedule.intervals), schedule.hyperperiod_ms)
    )


@PROPS
@given(
    intervals=st.sets(st.integers(1, 5000), max_size=5),
    after=st.integers(EPOCH_2023, EPOCH_2023 + 10**9) | st.floats(EPOCH_2023, EPOCH_2023 + 10**9),
)
def test_next_due_of_any_intervals_is_the_lanes_next_due(intervals: set[int], after: float) -> None:
    if not intervals:
        assert next_due(after, intervals) is None
        return
    schedule = LaneSchedule("lane", [spec(1, n, "a", "int", i) for n, i in enumerate(intervals)])
    assert next_due(after, intervals) == schedule.next_due(after)
    assert next_due(after, intervals) == brute_next_due([spec(1, 1, "a", "int", i) for i in intervals], after)


def test_count_due_estimates_on_the_grid_past_the_walk() -> None:
    schedule = schedule_of("r", [spec(1, 1, "a", "int", 2)])
    # Within the walk: exact (every even instant of (0, 2 * MAX_COUNT_WALK - 2]).
    assert schedule.count_due(0, 2 * MAX_COUNT_WALK - 2) == MAX_COUNT_WALK - 1
    # Past it: the span over the GCD tick, never less than what was walked.
    assert schedule.count_due(0, 10 * MAX_COUNT_WALK) == 5 * MAX_COUNT_WALK
    assert len(schedule.due_between(0, 10 * MAX_COUNT_WALK)) == MAX_COUNT_WALK
