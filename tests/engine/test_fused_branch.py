"""The collector subscribes a context's steps on a lane fused in one Rx operator (``branch``): it
must give what ``for_context -> gate -> report_changes`` chained give, for the same reads, with
the same faults, at the same virtual times."""

from __future__ import annotations

from typing import Any

import pytest
from reactivex import Observable
from reactivex.subject import Subject
from reactivex.testing import ReactiveTest, TestScheduler

from flowcollect.compile import Delivery
from flowcollect.runtime import ChangeState, Window, branch, for_context, gate, report_changes
from flowcollect.runtime._steps import LaneRead
from flowcollect.values import ValueBatch, VariableSpec

CID = 7


class Ambiguous:
    """A value that refuses to be compared, as a numpy array does."""

    def __ne__(self, other: object) -> bool:
        raise ValueError("ambiguous")

    __hash__ = object.__hash__


def spec(vid: int, **kw: Any) -> VariableSpec:
    return VariableSpec(vid, CID, f"a{vid}", "float", "dev", 100, **kw)


EVERY = spec(1)
SCALED = spec(2, scale=2.0, offset=1.0)
BAND = spec(3, report="change", deadband=0.5)
BEAT = spec(4, report="change", heartbeat_ms=300)
TEXT = spec(5, report="change")
VARIABLES = (EVERY, SCALED, BAND, BEAT, TEXT)
# The reader reads one more value than the context takes (position 5), in another order.
DELIVERY = Delivery(CID, VARIABLES, (0, 1, 2, 3, 4), scaled=(1,), changes=(2, 3, 4), reader="dev")
OTHER = Delivery(CID + 1, (spec(9),), (5,), reader="dev")


def read(t_ms: int, values: list[Any], errors: list[str | None] | None = None, **kw: Any) -> LaneRead:
    values = [*values, 99.0]
    return LaneRead(
        t_ms,
        "dev",
        values,
        errors or [None] * len(values),
        None,
        None,
        kw.get("by_context", {CID: DELIVERY, CID + 1: OTHER}),
    )


# (virtual time of the read, the read): the lane's Subject, hot.
READS = [
    (110, read(0, [1.0, 1.0, 1.0, 1.0, "a"])),  # at the window's start: not the context's
    (210, read(100, [1.0, 1.0, 1.0, 1.0, "a"])),  # the first: every change variable reported
    (310, read(200, [1.1, 2.0, 1.4, 1.0, "a"])),  # within the deadband, no heartbeat yet
    (410, read(300, [1.2, 3.0, 1.6, 1.0, "b"])),  # out of the band; text changed
    (510, read(400, [1.3, [1, 2], 1.6, 1.0, "b"])),  # scaling a list: for_context faults
    (610, read(500, [1.4, 4.0, 1.6, 1.0, "b"])),  # paused (from 550)
    (710, read(600, [1.5, 5.0, 9.0, 1.0, "c"])),  # paused
    (760, read(700, [1.6, 6.0, 9.0, 1.0, "c"])),  # late, of before the resume (at 750, since 720)
    (810, read(730, [1.7, 7.0, 9.0, 1.0, "c"])),  # a fresh change state: everything reported
    (910, read(800, [1.8, 8.0, Ambiguous(), 1.0, "c"])),  # report_changes faults
    (1010, read(900, [1.9, 8.0, 9.2, 1.0, "c"], [None, None, "timeout", None, None, None])),
    (1110, read(1000, [2.0, 9.0, 9.2, 1.0, "c"], by_context={CID + 1: OTHER})),  # not its read
    (1210, read(1100, [2.1, 9.0, 9.2, 1.0, "c"])),  # the heartbeat of BEAT (last at 730)
    (1310, read(1200, [2.2, 9.0, 9.2, 1.0, "c"])),  # at the window's end: not the context's
]


def run(make: Any) -> tuple[list[tuple[Any, ...]], list[tuple[str, int, str]], list[Exception]]:
    """Drive ``make(window, is_open, state, on_fault)`` (an operator) with READS in virtual time,
    with a pause at 550 and a resume at 750 (a new window and a new change state, as the collector
    does it); what it delivered, the faults it told, the errors it passed on."""
    scheduler = TestScheduler()
    source: Observable[LaneRead] = scheduler.create_hot_observable(
        [ReactiveTest.on_next(at, r) for at, r in READS]
    )
    current = {"window": Window(0, 1200), "open": True}
    out: list[tuple[Any, ...]] = []
    faults: list[tuple[str, int, str]] = []
    errors: list[Exception] = []

    def on_fault(step: str, values: int, exc: Exception) -> None:
        faults.append((step, values, type(exc).__name__))

    def deliver(batch: ValueBatch) -> None:
        out.append(
            (
                scheduler.clock,
                batch.t_ms,
                batch.context_id,
                batch.reader,
                tuple(v.id for v in batch.variables),
                tuple(batch.values),
                tuple(batch.errors),
            )
        )

    subscriptions = []

    def subscribe() -> None:
        operator = make(lambda: current["window"], lambda: current["open"], ChangeState(), on_fault)
        subscriptions.append(source.pipe(operator).subscribe(deliver, errors.append))

    def pause(*_: Any) -> None:
        current["open"] = False

    def resume(*_: Any) -> None:
        current["window"] = Window(720, 1200)
        subscriptions.pop().dispose()
        current["open"] = True
        subscribe()

    subscribe()
    scheduler.schedule_absolute(550, pause)
    scheduler.schedule_absolute(750, resume)
    scheduler.advance_to(2000)
    return out, faults, errors


def chained(window: Any, is_open: Any, state: ChangeState, on_fault: Any) -> Any:
    steps = (for_context(CID, window, on_fault), gate(is_open), report_changes(state, on_fault))
    return lambda source: source.pipe(*steps)


def fused(window: Any, is_open: Any, state: ChangeState, on_fault: Any) -> Any:
    return branch(CID, window, is_open, state, on_fault)


def test_the_fused_branch_gives_what_the_three_chained_steps_give() -> None:
    want = run(chained)
    assert run(fused) == want
    out, faults, errors = want
    # What the chain gives, so the comparison above compares something.
    assert [(at, t, ids) for at, t, _cid, _r, ids, _v, _e in out] == [
        (210, 100, (1, 2, 3, 4, 5)),
        (310, 200, (1, 2)),
        (410, 300, (1, 2, 3, 5)),
        (810, 730, (1, 2, 3, 4, 5)),
        (1010, 900, (1, 2, 3)),  # BAND's error is a change
        (1210, 1100, (1, 2, 3, 4)),  # BAND back from its error; the heartbeat of BEAT
    ]
    assert out[2][5] == (1.2, 7.0, 1.6, "b")  # scaled: 3.0 * 2 + 1
    assert all(cid == CID and reader == "dev" for _at, _t, cid, reader, *_ in out)
    assert faults == [("for_context", 5, "TypeError"), ("report_changes", 5, "ValueError")]
    assert errors == []


def test_a_raising_gate_in_the_fused_branch_loses_one_batch() -> None:
    # The gate alone (Rx filter) would end the branch with on_error; fused, it is a step fault.
    calls = iter([RuntimeError("gate"), True])

    def is_open() -> bool:
        answer = next(calls)
        if isinstance(answer, Exception):
            raise answer
        return answer

    faults: list[tuple[str, int, str]] = []
    out: list[ValueBatch] = []
    errors: list[Exception] = []
    subject: Subject[LaneRead] = Subject()
    subject.pipe(
        branch(
            CID,
            lambda: Window(0, 1000),
            is_open,
            ChangeState(),
            lambda s, n, e: faults.append((s, n, repr(e))),
        )
    ).subscribe(out.append, errors.append)
    subject.on_next(read(100, [1.0, 1.0, 1.0, 1.0, "a"]))
    subject.on_next(read(200, [1.0, 1.0, 1.0, 1.0, "a"]))
    assert faults == [("gate", 5, "RuntimeError('gate')")]
    assert [b.t_ms for b in out] == [200]
    assert errors == []


@pytest.mark.parametrize("make", [chained, fused])
def test_nothing_outside_the_window_or_of_another_context(make: Any) -> None:
    out, faults, _errors = run(make)
    assert {t for _at, t, *_ in out}.isdisjoint({0, 400, 500, 600, 700, 800, 1000, 1200})
    assert len(faults) == 2
