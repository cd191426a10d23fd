"""Pure scheduling of one lane: which reads are due at which instant, and who receives them.

No threads, no I/O, no clock: everything here is a function of epoch milliseconds, so property
tests can hammer it. A variable with interval I is due at every instant t with t % I == 0.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from flowcollect.values import VariableSpec

__all__ = [
    "Delivery",
    "DuePattern",
    "DueWalk",
    "LanePhase",
    "LaneSchedule",
    "ReaderPhase",
    "distinct_reads",
    "due_patterns",
    "next_due",
]

# Phases are built eagerly at plan time when one hyperperiod has at most this many GCD ticks;
# beyond that (co-prime intervals such as 999 and 1000 ms) they are built on first use.
EAGER_PHASES = 4096
# Counting skipped ticks walks the due instants; past this many we estimate on the GCD grid.
MAX_COUNT_WALK = 10_000


@dataclass(frozen=True, slots=True)
class Delivery:
    """What one context receives from one reader at a phase.

    ``variables``: the context's own ``VariableSpec``s, in the context's order. ``index``: for
    each of them, the position of its value in the reader's distinct reads; ``None`` when the
    context receives the reads as they are (same variables, same order: no copy at all).
    ``scaled`` and ``changes``: positions (in ``variables``) with a scale/offset, and with
    ``report="change"``; both computed once, so the hot path never looks at a variable.
    """

    context_id: int
    variables: tuple[VariableSpec, ...]
    index: tuple[int, ...] | None
    scaled: tuple[int, ...] = ()
    changes: tuple[int, ...] = ()
    reader: str = ""
    """The reader type of every value, when they come from one reader ("" when from several)."""


@dataclass(frozen=True, slots=True)
class ReaderPhase:
    """The distinct reads one reader has due at an instant, and their deliveries per context.

    ``reads`` holds, per distinct (address, value type), the ``VariableSpec`` of the first
    context that wants it: that is what the reader is asked for.
    """

    reader: str
    reads: tuple[VariableSpec, ...]
    deliveries: tuple[Delivery, ...]
    by_context: dict[int, Delivery] = field(default_factory=dict, compare=False)

    @property
    def size(self) -> int:
        return len(self.reads)


@dataclass(frozen=True, slots=True)
class LanePhase:
    """What a lane has due at an instant: one ``ReaderPhase`` per reader with reads, in reader
    order, and per context its ``Delivery`` over all of them (indices into the readers' reads
    laid end to end): one batch per lane, instant and context."""

    readers: tuple[ReaderPhase, ...]
    by_context: dict[int, Delivery] = field(default_factory=dict, compare=False)

    @property
    def size(self) -> int:
        return sum(rp.size for rp in self.readers)


@dataclass(frozen=True, slots=True)
class DuePattern:
    """The instants of a walk at which the same set of intervals is due."""

    intervals: tuple[int, ...]
    """The intervals due, ascending."""
    first_ms: int
    """The first such instant, in ms from the start of the walk (0: every interval is due)."""
    gap_ms: int
    """From ``first_ms`` to the next due instant of the walked intervals: that tick's time."""
    instants: int
    """How many of the walked instants have this pattern."""
    offsets_ms: tuple[int, ...]
    """The first few of them (as many as the walk was asked to keep), ascending."""


@dataclass(frozen=True, slots=True)
class DueWalk:
    """The due patterns of a span, in the order of their first instant."""

    patterns: tuple[DuePattern, ...]
    instants: int
    """Due instants walked."""
    complete: bool
    """False when the limit stopped the walk before the end of the span."""


def next_due(after_ms: int | float, intervals: Collection[int]) -> int | None:
    """The first instant strictly after ``after_ms`` at which one of ``intervals`` is due, on
    the engine's grid (an interval I is due at every t with t % I == 0); None without intervals.
    """
    return _following(math.floor(after_ms), intervals) if intervals else None


def _following(t_ms: int, intervals: Iterable[int]) -> int:
    """The grid's one rule: the first instant after ``t_ms`` at which one of ``intervals`` (not
    empty) is due. Every walk over due instants steps with it."""
    return min((t_ms // i + 1) * i for i in intervals)


def due_patterns(
    intervals: Iterable[int], limit: int, span_ms: int | None = None, *, offsets: int = 1
) -> DueWalk:
    """Walk the due instants of ``intervals`` in ``[0, span_ms)`` (one hyperperiod, their LCM,
    for None), at most ``limit`` of them, and group them by which intervals are due.

    Only due instants are visited, never the empty GCD ticks between them: co-prime intervals
    such as 999 and 1000 ms have a hyperperiod of ~1,000 s but ~2,000 due instants. Each pattern
    keeps its first ``offsets`` instants.
    """
    ascending = tuple(sorted(set(intervals)))
    if not ascending:
        return DueWalk((), 0, True)
    if ascending[0] <= 0:
        raise ValueError(f"intervals must be positive, got {ascending[0]}")
    end = math.lcm(*ascending) if span_ms is None else span_ms
    # Dicts keep insertion order: patterns come out in the order of their first instant.
    first: dict[tuple[int, ...], tuple[int, int]] = {}  # pattern -> (first instant, its gap)
    counts: dict[tuple[int, ...], int] = {}
    kept: dict[tuple[int, ...], list[int]] = {}
    walked = 0
    t = 0  # every interval is due at 0
    while t < end and walked < limit:
        following = _following(t, ascending)
        due = tuple(i for i in ascending if t % i == 0)
        if due in first:
            counts[due] += 1
            if len(kept[due]) < offsets:
                kept[due].append(t)
        else:
            first[due] = (t, following - t)
            counts[due] = 1
            kept[due] = [t][:offsets]
        walked += 1
        t = following
    patterns = tuple(
        DuePattern(due, t0, gap, counts[due], tuple(kept[due])) for due, (t0, gap) in first.items()
    )
    return DueWalk(patterns, walked, t >= end)


def distinct_reads(specs: Iterable[VariableSpec]) -> list[VariableSpec]:
    """The first spec of each distinct (reader, address, value type): what is actually read."""
    seen: dict[tuple[str, str, str], VariableSpec] = {}
    for spec in specs:
        seen.setdefault((spec.reader, spec.address, spec.value_type), spec)
    return list(seen.values())


def served_specs(specs: Iterable[VariableSpec]) -> list[VariableSpec]:
    """What a reader must serve: one spec per distinct (reader, address, value type), asking for
    what every context wanting it needs. A source that samples or filters on its own (an OPC UA
    monitored item) must sample at the shortest of their intervals, and filter no finer than the
    smallest of their deadbands (none when one context reports every value): each context's own
    deadband is applied again by its ``report_changes`` step.
    """
    specs = list(specs)
    if len(dict.fromkeys(_read_keys(specs))) == len(specs):
        return specs  # every read distinct (the common case), found without a loop of ours
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


_READER = operator.attrgetter("reader")
_ADDRESS = operator.attrgetter("address")
_VALUE_TYPE = operator.attrgetter("value_type")
_INTERVAL = operator.attrgetter("interval_ms")
_CONTEXT = operator.attrgetter("context_id")
_SCALE = operator.attrgetter("scale")
_OFFSET = operator.attrgetter("offset")
_REPORT = operator.attrgetter("report")


def _read_keys(specs: Sequence[VariableSpec]) -> Iterable[tuple[str, str, str]]:
    """Each spec's (reader, address, value type): what identifies a read."""
    return zip(map(_READER, specs), map(_ADDRESS, specs), map(_VALUE_TYPE, specs), strict=True)


_ONE_INTERVAL: Mapping[int, tuple[Sequence[int], tuple[VariableSpec, ...]]] = MappingProxyType({})
"""``LaneSchedule._by_interval`` of a lane with one interval: none needed (read-only, shared)."""


class LaneSchedule:
    """The due plan of one lane over the variables of its running contexts.

    ``period_ms`` is the GCD of the intervals (the lane's tick grid) and ``hyperperiod_ms``
    their LCM (the due pattern repeats after it). What is due at an instant depends only on
    which intervals divide it, so phases are cached by that set: each is built once.
    """

    __slots__ = (
        "_by_interval",
        "_phases",
        "hyperperiod_ms",
        "intervals",
        "key",
        "period_ms",
        "reader_order",
        "served",
        "specs",
    )

    def __init__(self, key: str, specs: Iterable[VariableSpec], reader_order: Sequence[str] = ()) -> None:
        self.key = key
        self.specs = tuple(specs)
        if not self.specs:
            raise ValueError("a lane schedule needs at least one variable")
        # Per-variable work as C-level passes (attrgetter maps, sets, dicts): a lane of 100,000
        # variables is planned when its context starts, and that start waits for it.
        intervals = list(map(_INTERVAL, self.specs))
        self.intervals = tuple(sorted(set(intervals)))
        if self.intervals[0] <= 0:
            raise ValueError(f"intervals must be positive, got {self.intervals[0]}")
        self.period_ms = math.gcd(*self.intervals)
        self.hyperperiod_ms = math.lcm(*self.intervals)
        present = dict.fromkeys(map(_READER, self.specs))
        order = dict.fromkeys([*reader_order, *present])
        self.reader_order = tuple(r for r in order if r in present)
        # What each reader must serve (plan_changed), computed here, where the plan is built
        # before its context starts, not on the lane's thread before its first tick.
        served = served_specs(self.specs)
        if len(self.reader_order) == 1:
            # Every read distinct (the common case): what it serves is the specs themselves.
            self.served = {
                self.reader_order[0]: self.specs if len(served) == len(self.specs) else tuple(served)
            }
        else:
            self.served = {r: tuple(s for s in served if s.reader == r) for r in self.reader_order}
        # Positions in the plan keep batches in a stable order (context, then its variables):
        # per interval, its specs and their positions (ascending). One interval (a device
        # read at one rate, the common case): nothing to keep, its specs are all due at once.
        self._by_interval: Mapping[int, tuple[Sequence[int], tuple[VariableSpec, ...]]]
        if len(self.intervals) == 1:
            self._by_interval = _ONE_INTERVAL
        else:
            groups: dict[int, tuple[list[int], list[VariableSpec]]] = {i: ([], []) for i in self.intervals}
            # (a loop of ours: only when the lane has several intervals)
            for position, (interval, s) in enumerate(zip(intervals, self.specs, strict=True)):
                group = groups[interval]
                group[0].append(position)
                group[1].append(s)
            self._by_interval = {i: (tuple(ps), tuple(ss)) for i, (ps, ss) in groups.items()}
        self._phases: dict[int, LanePhase] = {}
        if self.hyperperiod_ms // self.period_ms <= EAGER_PHASES:
            for t in range(0, self.hyperperiod_ms, self.period_ms):
                self.phase_at(t)

    def __repr__(self) -> str:
        return (
            f"LaneSchedule(key={self.key!r}, variables={len(self.specs)}, "
            f"period_ms={self.period_ms}, hyperperiod_ms={self.hyperperiod_ms})"
        )

    def mask_at(self, t_ms: int) -> int:
        """Bit i is set when the i-th interval (ascending) is due at ``t_ms``."""
        mask = 0
        for i, interval in enumerate(self.intervals):
            if t_ms % interval == 0:
                mask |= 1 << i
        return mask

    def phase_at(self, t_ms: int) -> LanePhase | None:
        """What is due at ``t_ms``, or None when nothing is."""
        mask = self.mask_at(t_ms)
        if not mask:
            return None
        phase = self._phases.get(mask)
        if phase is None:
            phase = self._phases[mask] = self._build(mask)
        return phase

    def built_phases(self) -> list[LanePhase]:
        """The phases built so far (all of them for a hyperperiod built eagerly)."""
        return list(self._phases.values())

    def next_due(self, after_ms: int | float) -> int:
        """The first instant strictly after ``after_ms`` at which something is due."""
        return _following(math.floor(after_ms), self.intervals)

    def due_patterns(self, limit: int, reader: str | None = None, *, offsets: int = 1) -> DueWalk:
        """The due patterns of one hyperperiod of the lane, at most ``limit`` due instants walked:
        of every interval of the lane, or (``reader``) of that reader's own intervals only."""
        intervals = (
            self.intervals if reader is None else {s.interval_ms for s in self.specs if s.reader == reader}
        )
        return due_patterns(intervals, limit, self.hyperperiod_ms, offsets=offsets)

    def count_due(self, after_ms: int, until_ms: int | float) -> int:
        """How many due instants lie in ``(after_ms, until_ms]``."""
        due = self.due_between(after_ms, until_ms)
        if len(due) < MAX_COUNT_WALK:
            return len(due)
        # A lane stuck for a very long time: estimate on the grid rather than walk it.
        return max(len(due), int((until_ms - after_ms) // self.period_ms))

    def due_between(self, after_ms: int, until_ms: int | float) -> list[int]:
        """The due instants in ``(after_ms, until_ms]``, at most ``MAX_COUNT_WALK`` of them."""
        out: list[int] = []
        t = after_ms
        while len(out) < MAX_COUNT_WALK:
            t = self.next_due(t)
            if t > until_ms:
                break
            out.append(t)
        return out

    def _build(self, mask: int) -> LanePhase:
        due: Sequence[VariableSpec]
        if len(self.intervals) == 1:
            due = self.specs  # the lane's one interval is due (mask is not 0): all of it, in order
        else:
            groups = [self._by_interval[i] for n, i in enumerate(self.intervals) if mask >> n & 1]
            if len(groups) == 1:
                due = groups[0][1]  # one interval due: its specs, already in plan order
            else:
                pairs = sorted(
                    (pw for positions, specs in groups for pw in zip(positions, specs, strict=True)),
                    key=operator.itemgetter(0),
                )
                due = [s for _, s in pairs]
        per_reader: dict[str, Sequence[VariableSpec]]
        if len(self.reader_order) == 1:
            per_reader = {self.reader_order[0]: due}
        else:
            lists: dict[str, list[VariableSpec]] = {}
            for s in due:
                lists.setdefault(s.reader, []).append(s)
            per_reader = dict(lists)
        readers = tuple(
            _reader_phase(r, per_reader[r], self.served[r]) for r in self.reader_order if r in per_reader
        )
        if len(readers) == 1:  # its reader's deliveries (read-only, as every phase's)
            return LanePhase(readers, readers[0].by_context)
        phase = LanePhase(readers)
        phase.by_context.update(_lane_deliveries(readers))
        return phase


def _delivery(
    context_id: int, variables: tuple[VariableSpec, ...], index: tuple[int, ...] | None, reader: str
) -> Delivery:
    """A context's delivery from one reader, with the positions of its scaled and its
    report-on-change variables (found with C-level passes when there are none)."""
    return Delivery(context_id, variables, index, _scaled(variables), _changes(variables), reader)


def _scaled(variables: Sequence[VariableSpec]) -> tuple[int, ...]:
    n = len(variables)
    if list(map(_SCALE, variables)).count(None) == n and list(map(_OFFSET, variables)).count(None) == n:
        return ()
    return tuple(k for k, s in enumerate(variables) if s.scale is not None or s.offset is not None)


def _changes(variables: Sequence[VariableSpec]) -> tuple[int, ...]:
    if "change" not in map(_REPORT, variables):
        return ()
    return tuple(k for k, s in enumerate(variables) if s.report == "change")


def _lane_deliveries(readers: Sequence[ReaderPhase]) -> dict[int, Delivery]:
    """Each context's delivery over all the readers of a lane phase, reads laid end to end."""
    if len(readers) == 1:
        return dict(readers[0].by_context)
    parts: dict[int, list[tuple[int, Delivery]]] = {}
    offset = 0
    for rp in readers:
        for d in rp.deliveries:
            parts.setdefault(d.context_id, []).append((offset, d))
        offset += rp.size
    out: dict[int, Delivery] = {}
    for cid, pieces in parts.items():
        variables: list[VariableSpec] = []
        index: list[int] = []
        for start, d in pieces:
            variables.extend(d.variables)
            index.extend(start + n for n in (d.index if d.index is not None else range(len(d.variables))))
        whole = index == list(range(offset))
        out[cid] = Delivery(
            cid,
            tuple(variables),
            None if whole else tuple(index),
            tuple(k for k, s in enumerate(variables) if s.scale is not None or s.offset is not None),
            tuple(k for k, s in enumerate(variables) if s.report == "change"),
            pieces[0][1].reader if len(pieces) == 1 else "",
        )
    return out


def _reader_phase(reader: str, due: Sequence[VariableSpec], served: tuple[VariableSpec, ...]) -> ReaderPhase:
    contexts = dict.fromkeys(map(_CONTEXT, due))
    if len(contexts) == 1 and (
        (len(due) == len(served) and all(map(operator.is_, due, served)))  # all it serves is due
        or len(dict.fromkeys(_read_keys(due))) == len(due)
    ):
        # One context, every read distinct (a context alone on its lane): it receives the reads
        # as they are.
        reads: Sequence[VariableSpec] = due
        deliveries = [_delivery(next(iter(contexts)), tuple(due), None, reader)]
    else:
        index: dict[tuple[str, str], int] = {}
        listed: list[VariableSpec] = []
        per_context: dict[int, tuple[list[int], list[VariableSpec]]] = {}
        for s in due:
            key = (s.address, s.value_type)
            n = index.get(key)
            if n is None:
                n = index[key] = len(listed)
                listed.append(s)
            positions, wanted = per_context.setdefault(s.context_id, ([], []))
            positions.append(n)
            wanted.append(s)
        reads = listed
        deliveries = []
        for context_id, (positions, wanted) in per_context.items():
            whole = (
                len(wanted) == len(listed)
                and positions == list(range(len(listed)))
                and all(map(operator.is_, wanted, listed))
            )
            deliveries.append(
                _delivery(context_id, tuple(wanted), None if whole else tuple(positions), reader)
            )
    # When the reads are exactly what the reader serves (same specs, same order), they are the
    # very tuple plan_changed gave it: a reader may prepare per tuple there, off the hot path.
    same = len(reads) == len(served) and all(map(operator.is_, reads, served))
    phase = ReaderPhase(reader, served if same else tuple(reads), tuple(deliveries))
    phase.by_context.update((d.context_id, d) for d in deliveries)
    return phase
