"""The named steps of the running graph, as Rx operators. ``flowcollect plan`` draws these names.

The way of one lane's values::

    ticks (lane schedule)           one tick source per lane, absolute deadlines, timers on
                                    the engine's loop
      -> read_due                   each reader of the lane reads its due variables, in order
                                    (awaited on the loop, or on a pool worker; a pushing
                                    reader: the latest values it pushed, held)
      -> LaneRead                   on the lane's Subject, on the loop thread
      -> for_context(id)            this context's values at this instant: a ValueBatch built
                                    by index lists computed once; scale/offset applied per batch
      -> gate(is_open)              closed while the context is paused
      -> report_changes             variables with report="change": only what moved (deadband),
                                    or a heartbeat
      -> WriterSink.put_many        once per pass of the loop; one bounded queue and thread
                                    per writer

The steps are Rx operators (``for_context``, ``gate``, ``report_changes``), each built from its
per-item step (``ForContext``, ``Gate``, ``ReportChanges``: one definition of what a step does).
On a lane, the collector subscribes a context's three steps fused as one operator, ``branch``:
the same steps in the same order, the same faults by the same names, in one Rx layer, because
each layer costs a lane about 1.3 KB (an ``AutoDetachObserver``, its two disposables with an
RLock each, the closures) and a hop per read: 4.9 KB a branch chained, 2.1 KB fused, on each of
2,000 lanes and more.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from reactivex import Observable, abc
from reactivex import operators as ops

from flowcollect.compile import Delivery
from flowcollect.values import ValueBatch

__all__ = [
    "STEPS",
    "ChangeState",
    "Fault",
    "ForContext",
    "Gate",
    "LaneRead",
    "ReportChanges",
    "Window",
    "branch",
    "for_context",
    "gate",
    "report_changes",
]

Operator = Callable[[Observable[Any]], Observable[Any]]
Counted = tuple[ValueBatch, tuple[int, ...]]
"""A context's batch and the positions of its ``report="change"`` values."""

Fault = Callable[[str, int, Exception], None]
"""Told when a step raised on one batch: the step's name, how many values the batch held, the
exception. The batch is lost; the branch goes on. A step never passes such an exception on as
``on_error``: in Rx that ends the branch, and the context would silently receive nothing more."""

STEPS = ("ticks", "read_due", "for_context", "gate", "report_changes", "sink")
"""The steps of the running graph, in order (what ``flowcollect plan`` draws)."""


@dataclass(frozen=True, slots=True)
class Window:
    """The instants a context takes: strictly after ``since_ms`` (its start, then its last resume)
    and strictly before ``until_ms`` (its end; a stop brings it forward).

    Immutable: the collector replaces a run's window in one assignment (under its window lock),
    and a lane reads it in one, so a lane never sees the start of one change and the end of
    another.
    """

    since_ms: int
    until_ms: int


@dataclass(slots=True)
class LaneRead:
    """One reader's values at one instant (or one push), with who receives which of them.

    Built on the loop thread for each read and never changed after: the branches read it on
    that thread, and a batch that shares its columns shares them read-only."""

    t_ms: int
    reader: str
    values: list[Any]
    errors: list[str | None]
    source_ns: list[int | None] | None
    quality: list[str | None] | None
    by_context: Mapping[int, Delivery]
    pushed: bool = False
    """A push delivered as it came (only to ``report="change"`` variables), not a due instant."""
    source_time_ns: list[int | None] | None = None
    """The source's own times, carried beside the values (``ValueBatch.source_time_ns``)."""


def _pick(column: list[Any] | None, index: tuple[int, ...] | None) -> list[Any] | None:
    if column is None or index is None:
        return column
    return [column[i] for i in index]


def _scale(values: list[Any], variables: tuple[Any, ...], positions: tuple[int, ...]) -> None:
    for k in positions:
        x = values[k]
        if x is None or isinstance(x, (bool, str)):
            continue
        spec = variables[k]
        if spec.scale is not None:
            x = x * spec.scale
        if spec.offset is not None:
            x = x + spec.offset
        values[k] = x


def batch_for(read: LaneRead, d: Delivery, context_id: int) -> ValueBatch:
    """The context's ``ValueBatch`` of a lane read: shared columns when it gets the reads as they
    are, index lists otherwise; scale and offset applied on a copy."""
    index = d.index
    if index is None:
        values = list(read.values) if d.scaled else read.values
        errors = read.errors
    else:
        src = read.values
        values = [src[i] for i in index]
        errs = read.errors
        errors = [errs[i] for i in index]
    if d.scaled:
        _scale(values, d.variables, d.scaled)
    return ValueBatch(
        read.t_ms,
        d.variables,
        values,
        errors,
        source_ns=_pick(read.source_ns, index),
        quality=_pick(read.quality, index),
        context_id=context_id,
        reader=d.reader or read.reader,
        source_time_ns=_pick(read.source_time_ns, index),
    )


class ForContext:
    """The ``for_context`` step, one lane read at a time: this context's ``(batch, positions of its
    report="change" values)`` of the read, or ``None`` (none of its variables in the read, an
    instant outside its ``window()``, or a fault, told to ``on_fault``). See ``for_context``.

    A small object rather than a closure: a context has one on each of its lanes (2,000 of them
    and more), and three slots cost less than a function with its cells."""

    __slots__ = ("context_id", "on_fault", "window")

    def __init__(self, context_id: int, window: Callable[[], Window], on_fault: Fault) -> None:
        self.context_id = context_id
        self.window = window
        self.on_fault = on_fault

    def __call__(self, read: LaneRead) -> Counted | None:
        context_id = self.context_id
        d = read.by_context.get(context_id)
        if d is None:
            return None
        w = self.window()  # one immutable value: both bounds of the same moment
        if not w.since_ms < read.t_ms < w.until_ms:
            return None
        try:
            batch = batch_for(read, d, context_id)
        except Exception as exc:
            self.on_fault("for_context", len(d.variables), exc)
            return None
        return batch, d.changes


class Gate:
    """The ``gate`` step, one item at a time: whether ``is_open()`` (the context is not paused)."""

    __slots__ = ("is_open",)

    def __init__(self, is_open: Callable[[], bool]) -> None:
        self.is_open = is_open

    def __call__(self, _item: Any) -> bool:
        return self.is_open()


def _operator(step: Callable[[Any], Any]) -> Operator:
    """The Rx operator of a per-item step: passes on what ``step`` returns, drops ``None``."""

    def operator(source: Observable[Any]) -> Observable[Any]:
        def subscribe(observer: Any, scheduler: Any = None) -> Any:
            def on_next(item: Any) -> None:
                out = step(item)
                if out is not None:
                    observer.on_next(out)

            return source.subscribe(on_next, observer.on_error, observer.on_completed, scheduler=scheduler)

        return Observable(subscribe)

    return operator


def for_context(context_id: int, window: Callable[[], Window], on_fault: Fault) -> Operator:
    """This context's values from each lane read that has some, at instants inside its current
    ``window()`` (strictly after its start or last resume, before its end), as one ``ValueBatch``
    per read, with the positions of its ``report="change"`` variables (computed once, at compile
    time).

    The bounds matter when a tick is late: a tick due at or before the start (or resume) that
    fires after the context's plan was applied would otherwise carry its variables; and a
    stopped run's branch, kept for its reads in flight, must not take a new run's instants.
    A read it cannot make a batch of (scaling a value that is no number) goes to ``on_fault``.
    """
    return _operator(ForContext(context_id, window, on_fault))


def gate(is_open: Callable[[], bool]) -> Operator:
    """Let values through only while ``is_open()``: the pause switch of a context."""
    return ops.filter(Gate(is_open))


class ChangeState:
    """What was last delivered to one context, per variable with ``report="change"``.

    Owned by the context's run; a resumed context gets a new one, so it hears every value at once.
    ``last`` is shared by the run's branches on all its lanes, but each key (reader, variable)
    is read and written only by the branch of the lane its reader is on: one thread per key.
    """

    __slots__ = ("last",)

    def __init__(self) -> None:
        # (reader, variable id) -> [value, error, t_ms of the last delivery]
        self.last: dict[tuple[str, int], list[Any]] = {}


def _moved(spec: Any, value: Any, last: Any) -> bool:
    if value is None or last is None or isinstance(value, (bool, str)) or isinstance(last, (bool, str)):
        return bool(value != last)
    band = spec.deadband or 0.0
    try:
        return bool(abs(value - last) > band) if band else bool(value != last)
    except TypeError:
        return bool(value != last)


def _kept(counted: Counted, last: dict[tuple[str, int], list[Any]]) -> ValueBatch | None:
    batch, positions = counted
    if not positions:
        return batch
    t = batch.t_ms
    variables, values, errors = batch.variables, batch.values, batch.errors
    dropped: set[int] = set()
    for k in positions:
        spec = variables[k]
        key = (spec.reader, spec.id)
        seen = last.get(key)
        value, error = values[k], errors[k]
        if seen is not None and error == seen[1] and not _moved(spec, value, seen[0]):
            beat = spec.heartbeat_ms
            if beat is None or t - seen[2] < beat:
                dropped.add(k)
                continue
        last[key] = [value, error, t]
    if not dropped:
        return batch
    if len(dropped) == len(batch):
        return None
    index = [i for i in range(len(batch)) if i not in dropped]
    return ValueBatch(
        t,
        tuple(variables[i] for i in index),
        [values[i] for i in index],
        [errors[i] for i in index],
        source_ns=None if batch.source_ns is None else [batch.source_ns[i] for i in index],
        quality=None if batch.quality is None else [batch.quality[i] for i in index],
        context_id=batch.context_id,
        reader=batch.reader,
        source_time_ns=None if batch.source_time_ns is None else [batch.source_time_ns[i] for i in index],
    )


class ReportChanges:
    """The ``report_changes`` step, one batch at a time: the batch with what is to be reported of
    it, or ``None`` (nothing left, or a fault, told to ``on_fault``). See ``report_changes``."""

    __slots__ = ("on_fault", "state")

    def __init__(self, state: ChangeState, on_fault: Fault) -> None:
        self.state = state
        self.on_fault = on_fault

    def __call__(self, counted: Counted) -> ValueBatch | None:
        try:
            return _kept(counted, self.state.last)
        except Exception as exc:
            self.on_fault("report_changes", len(counted[0]), exc)
            return None


def report_changes(state: ChangeState, on_fault: Fault) -> Operator:
    """Pass ``report="every"`` values as they are; of the ``report="change"`` ones only those that
    moved by more than their ``deadband`` since the last delivered to this context (any change for
    bool and str, and any change of error), or whose ``heartbeat_ms`` has passed since then.
    A batch left empty is not delivered. A batch whose values cannot be compared (a value that
    refuses ``!=``) goes to ``on_fault``; what it had compared so far stays remembered."""
    return _operator(ReportChanges(state, on_fault))


class _BranchObserver(abc.ObserverBase[LaneRead]):
    """A context's three steps on one lane as one observer of the lane's reads (see ``branch``).
    Only ever called on the thread that emits the reads (the loop's)."""

    __slots__ = ("gate", "keep", "observer", "on_fault", "take")

    def __init__(
        self, take: ForContext, gate: Gate, keep: ReportChanges, on_fault: Fault, observer: Any
    ) -> None:
        self.take = take
        self.gate = gate
        self.keep = keep
        self.on_fault = on_fault
        self.observer = observer

    def on_next(self, value: LaneRead) -> None:
        counted = self.take(value)
        if counted is None:
            return
        try:
            is_open = self.gate(counted)
        except Exception as exc:  # alone, the gate would end the branch (on_error): not fused
            self.on_fault("gate", len(counted[0]), exc)
            return
        if not is_open:
            return
        batch = self.keep(counted)
        if batch is not None:
            self.observer.on_next(batch)

    def on_error(self, error: Exception) -> None:
        self.observer.on_error(error)

    def on_completed(self) -> None:
        self.observer.on_completed()


def branch(
    context_id: int,
    window: Callable[[], Window],
    is_open: Callable[[], bool],
    state: ChangeState,
    on_fault: Fault,
) -> Operator:
    """A context's branch on one lane in one Rx operator: ``for_context``, ``gate`` and
    ``report_changes``, in that order, the same steps (and the same faults, by the same names)
    as the three chained, in one layer where each of three costs a lane about 1.3 KB (see the
    module's docstring) and a hop per read. One difference: a ``gate`` whose ``is_open`` raises
    loses that batch (``on_fault("gate", ...)``) where the operator alone would end the branch."""
    take = ForContext(context_id, window, on_fault)
    open_ = Gate(is_open)
    keep = ReportChanges(state, on_fault)

    def operator(source: Observable[LaneRead]) -> Observable[ValueBatch]:
        def subscribe(observer: Any, scheduler: Any = None) -> Any:
            return source.subscribe(
                _BranchObserver(take, open_, keep, on_fault, observer), scheduler=scheduler
            )

        return Observable(subscribe)

    return operator
