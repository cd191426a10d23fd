"""``LaneSchedule``'s fast paths (one interval, one reader, one context, every read distinct: found
with C-level passes) build exactly the phases of the straightforward algorithm, kept here as the
reference: the one the schedule used before those paths."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowcollect import DataCollectionContext, Variable
from flowcollect.compile import Delivery, LanePhase, LaneSchedule, ReaderPhase, compile_plan
from flowcollect.compile._schedule import served_specs
from flowcollect.readers import RandomDataReader
from flowcollect.values import VariableSpec

PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def lanes(draw: st.DrawFn) -> list[VariableSpec]:
    """1..3 contexts on one lane of one or two readers; small pools of addresses, types and
    intervals, so that reads repeat within and across contexts, or not at all."""
    readers = draw(st.sampled_from([("r1",), ("r1", "r2")]))
    intervals = draw(st.sampled_from([(1000,), (100, 200), (100, 300, 1000)]))
    out: list[VariableSpec] = []
    for cid in draw(st.lists(st.integers(1, 9), min_size=1, max_size=3, unique=True)):
        for vid in draw(st.lists(st.integers(1, 40), min_size=1, max_size=8, unique=True)):
            out.append(
                VariableSpec(
                    vid,
                    cid,
                    draw(st.sampled_from(["a", "b", "c", "d", "e", "f"])),
                    draw(st.sampled_from(["float", "int"])),
                    draw(st.sampled_from(readers)),
                    draw(st.sampled_from(intervals)),
                    scale=draw(st.sampled_from([None, None, 2.0])),
                    offset=draw(st.sampled_from([None, None, 1.0])),
                    report=draw(st.sampled_from(["every", "every", "change"])),
                    deadband=draw(st.sampled_from([None, 0.5])),
                )
            )
    return out


def reference_served(specs: Sequence[VariableSpec]) -> list[VariableSpec]:
    merged: dict[tuple[str, str, str], VariableSpec] = {}
    for spec in specs:
        key = (spec.reader, spec.address, spec.value_type)
        first = merged.get(key)
        if first is None:
            merged[key] = spec
            continue
        interval = min(first.interval_ms, spec.interval_ms)
        deadband = (
            None if first.deadband is None or spec.deadband is None else min(first.deadband, spec.deadband)
        )
        if interval != first.interval_ms or deadband != first.deadband:
            merged[key] = replace(first, interval_ms=interval, deadband=deadband)
    return list(merged.values())


def reference_reader_phase(
    reader: str, due: Sequence[VariableSpec], served: tuple[VariableSpec, ...]
) -> ReaderPhase:
    index: dict[tuple[str, str], int] = {}
    reads: list[VariableSpec] = []
    per_context: dict[int, list[tuple[int, VariableSpec]]] = {}
    for s in due:
        key = (s.address, s.value_type)
        n = index.get(key)
        if n is None:
            n = index[key] = len(reads)
            reads.append(s)
        per_context.setdefault(s.context_id, []).append((n, s))
    deliveries = []
    for context_id, items in per_context.items():
        variables = tuple(s for _, s in items)
        whole = len(items) == len(reads) and all(n == k and s is reads[k] for k, (n, s) in enumerate(items))
        deliveries.append(
            Delivery(
                context_id,
                variables,
                None if whole else tuple(n for n, _ in items),
                tuple(k for k, s in enumerate(variables) if s.scale is not None or s.offset is not None),
                tuple(k for k, s in enumerate(variables) if s.report == "change"),
                reader,
            )
        )
    same = len(reads) == len(served) and all(map(operator.is_, reads, served))
    phase = ReaderPhase(reader, served if same else tuple(reads), tuple(deliveries))
    phase.by_context.update((d.context_id, d) for d in deliveries)
    return phase


def reference_readers(schedule: LaneSchedule, t: int) -> tuple[ReaderPhase, ...]:
    due = [(p, s) for p, s in enumerate(schedule.specs) if t % s.interval_ms == 0]
    per_reader: dict[str, list[VariableSpec]] = {}
    for _, s in due:
        per_reader.setdefault(s.reader, []).append(s)
    return tuple(
        reference_reader_phase(r, per_reader[r], schedule.served[r])
        for r in schedule.reader_order
        if r in per_reader
    )


def shape(phase: LanePhase | None) -> object:
    if phase is None:
        return None
    return [(rp.reader, rp.reads, rp.deliveries, rp.by_context) for rp in phase.readers]


@PROPS
@given(lanes())
def test_every_phase_is_the_reference_ones(specs: list[VariableSpec]) -> None:
    schedule = LaneSchedule("lane", specs)
    served = {r: tuple(s for s in reference_served(specs) if s.reader == r) for r in schedule.reader_order}
    assert schedule.served == served
    assert served_specs(specs) == reference_served(specs)
    for t in range(0, schedule.hyperperiod_ms, schedule.period_ms):
        phase = schedule.phase_at(t)
        expected = reference_readers(schedule, t)
        assert shape(phase) == (
            [(rp.reader, rp.reads, rp.deliveries, rp.by_context) for rp in expected] or None
        )
        if phase is not None:
            # The reads a reader serves whole are the very tuple plan_changed gave it.
            for rp, ref in zip(phase.readers, expected, strict=True):
                assert (rp.reads is schedule.served[rp.reader]) == (ref.reads is schedule.served[ref.reader])


def test_a_device_alone_on_its_lane_keeps_one_tuple_of_specs() -> None:
    """2,000 devices are 2,000 lanes of one context each: the schedule, what the reader serves,
    its reads and the context's delivery are the compiled tuple itself, not copies of it, and
    the lane phase's deliveries are its reader phase's (each copy was ~200 bytes a lane)."""
    variables = [Variable(id=n, address=f"sine:{n}", reader="plc", interval_ms=1000) for n in range(1, 21)]
    context = DataCollectionContext(id=1, variables=variables)
    plan = compile_plan([context], [RandomDataReader("plc")])
    schedule = plan.lanes["reader:plc"].schedule
    assert schedule is not None
    compiled = plan.contexts[0].specs["reader:plc"]
    assert schedule.specs is compiled and schedule.served["plc"] is compiled
    phase = schedule.phase_at(0)
    assert phase is not None
    (reader_phase,) = phase.readers
    assert reader_phase.reads is compiled and reader_phase.by_context[1].variables is compiled
    assert phase.by_context is reader_phase.by_context
