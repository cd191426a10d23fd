"""Pure scheduling: which reads are due at which instant, and who receives them.

No threads, no I/O, no clock: everything here is a function of epoch milliseconds, so property
tests can hammer it. A variable with interval I is due at every instant t with t % I == 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["Delivery", "Phase", "ReaderSchedule", "Wanted"]

# Phases are built eagerly at plan time when one hyperperiod has at most this many GCD ticks;
# beyond that (co-prime intervals such as 999 and 1000 ms) they are built on first use.
EAGER_PHASES = 4096
# Counting skipped ticks walks the due instants; past this many we estimate on the GCD grid.
MAX_COUNT_WALK = 10_000


@dataclass(frozen=True, slots=True)
class Wanted:
    """One variable of one running context, with the interval it is collected at."""

    context_id: int
    variable_id: int
    address: str
    value_type: str
    interval_ms: int


@dataclass(frozen=True, slots=True)
class Delivery:
    """What one context receives at a phase.

    ``whole``: the context receives the read batch itself, in order (no copies: the common case
    of one context per reader). Otherwise ``items`` holds ``(read index, variable id, interval,
    own)``: ``own`` reads are handed over as they are, the others are copied for this context.
    """

    context_id: int
    whole: bool
    items: tuple[tuple[int, int, int, bool], ...] = ()


@dataclass(frozen=True, slots=True)
class Phase:
    """The distinct reads due at one instant and their deliveries.

    ``reads`` holds ``(variable id, context id, address, value type, interval)`` of the first
    context that wants each distinct (address, value type): the read object is built for it.
    """

    reads: tuple[tuple[int, int, str, str, int], ...]
    deliveries: tuple[Delivery, ...]

    @property
    def size(self) -> int:
        return len(self.reads)


class ReaderSchedule:
    """The due plan of one reader over the contexts that currently want it.

    ``period_ms`` is the GCD of the intervals (the reader's tick grid) and ``hyperperiod_ms``
    their LCM (the due pattern repeats after it). What is due at an instant depends only on
    which intervals divide it, so phases are cached by that set: each is built once.
    """

    __slots__ = ("_by_interval", "_phases", "hyperperiod_ms", "intervals", "period_ms", "reader", "wanted")

    def __init__(self, reader: str, wanted: Iterable[Wanted]) -> None:
        self.reader = reader
        self.wanted = tuple(wanted)
        if not self.wanted:
            raise ValueError("a reader schedule needs at least one wanted variable")
        self.intervals = tuple(sorted({w.interval_ms for w in self.wanted}))
        if self.intervals[0] <= 0:
            raise ValueError(f"intervals must be positive, got {self.intervals[0]}")
        self.period_ms = math.gcd(*self.intervals)
        self.hyperperiod_ms = math.lcm(*self.intervals)
        # Positions in the plan keep batches in a stable order (context, then its variables).
        groups: dict[int, list[tuple[int, Wanted]]] = {i: [] for i in self.intervals}
        for position, w in enumerate(self.wanted):
            groups[w.interval_ms].append((position, w))
        self._by_interval = {i: tuple(ws) for i, ws in groups.items()}
        self._phases: dict[int, Phase] = {}
        if self.hyperperiod_ms // self.period_ms <= EAGER_PHASES:
            for t in range(0, self.hyperperiod_ms, self.period_ms):
                self.phase_at(t)

    def __repr__(self) -> str:
        return (
            f"ReaderSchedule(reader={self.reader!r}, variables={len(self.wanted)}, "
            f"period_ms={self.period_ms}, hyperperiod_ms={self.hyperperiod_ms})"
        )

    def mask_at(self, t_ms: int) -> int:
        """Bit i is set when the i-th interval (ascending) is due at ``t_ms``."""
        mask = 0
        for i, interval in enumerate(self.intervals):
            if t_ms % interval == 0:
                mask |= 1 << i
        return mask

    def phase_at(self, t_ms: int) -> Phase | None:
        """What is due at ``t_ms``, or None when nothing is."""
        mask = self.mask_at(t_ms)
        if not mask:
            return None
        phase = self._phases.get(mask)
        if phase is None:
            phase = self._phases[mask] = self._build(mask)
        return phase

    def next_due(self, after_ms: int | float) -> int:
        """The first instant strictly after ``after_ms`` at which something is due."""
        base = math.floor(after_ms)
        return min((base // i + 1) * i for i in self.intervals)

    def count_due(self, after_ms: int, until_ms: int | float) -> int:
        """How many due instants lie in ``(after_ms, until_ms]``."""
        count = 0
        t = after_ms
        while count < MAX_COUNT_WALK:
            t = self.next_due(t)
            if t > until_ms:
                return count
            count += 1
        # A reader stuck for a very long time: estimate on the grid rather than walk it.
        return max(count, int((until_ms - after_ms) // self.period_ms))

    def _build(self, mask: int) -> Phase:
        due = [
            pw
            for i, interval in enumerate(self.intervals)
            if mask >> i & 1
            for pw in self._by_interval[interval]
        ]
        due.sort(key=lambda pw: pw[0])
        index: dict[tuple[str, str], int] = {}
        reads: list[tuple[int, int, str, str, int]] = []
        per_context: dict[int, list[tuple[int, int, int, bool]]] = {}
        for _, w in due:
            key = (w.address, w.value_type)
            n = index.get(key)
            own = n is None
            if n is None:
                n = index[key] = len(reads)
                reads.append((w.variable_id, w.context_id, w.address, w.value_type, w.interval_ms))
            per_context.setdefault(w.context_id, []).append((n, w.variable_id, w.interval_ms, own))
        deliveries = []
        for context_id, items in per_context.items():
            whole = len(items) == len(reads) and all(own and n == k for k, (n, _, _, own) in enumerate(items))
            deliveries.append(Delivery(context_id, whole, () if whole else tuple(items)))
        return Phase(tuple(reads), tuple(deliveries))


def schedules_for(wanted: Sequence[tuple[str, Wanted]]) -> dict[str, ReaderSchedule]:
    """Group ``(reader type, wanted)`` pairs into one schedule per reader type."""
    by_reader: dict[str, list[Wanted]] = {}
    for reader, w in wanted:
        by_reader.setdefault(reader, []).append(w)
    return {reader: ReaderSchedule(reader, ws) for reader, ws in by_reader.items()}
