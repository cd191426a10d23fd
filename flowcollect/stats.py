"""Snapshots of the collector's counters (``DataCollector.stats()``)."""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

__all__ = ["CollectorStats", "ContextStats", "ReaderStats", "ReaderStatsView", "WriterStats", "percentile"]

SAMPLES = 512
"""Recent samples a reader keeps of each timing (lateness, read, tick, delivery): what its
percentiles in ``stats()`` are taken over. 512 keep five above the p99 (nearest rank), over the
last 8.5 minutes at 1 s or 51 s at 100 ms. Four timings per reader, 4 bytes a sample: 8 KiB per
reader at most, 16 MiB for 2,000 devices (it was 1,024 doubles, 32 KiB per reader, and before
that 4,096 samples in deques of floats, half a MiB per reader: a GiB for 2,000 devices an hour
into a run)."""


class Samples(array):  # type: ignore[type-arg]  # (array is not subscriptable before 3.12)
    """The last ``SAMPLES`` figures of one kind (milliseconds), as single-precision floats: seven
    significant digits, so a microsecond's resolution up to ten seconds (whole and half
    milliseconds exactly); grown as they come, then a ring. Appended by the reader's lane only;
    ``stats()`` copies it (one C call) from another thread. The array itself, not an object
    holding one: four per reader."""

    __slots__ = ("_next",)

    def __new__(cls) -> Samples:
        return cast("Samples", super().__new__(cls, "f"))

    def __init__(self) -> None:
        self._next = 0  # once full: the oldest sample's slot, the next to overwrite

    def append(self, value: float) -> None:
        if len(self) < SAMPLES:
            _append(self, value)
        else:
            at = self._next
            self[at] = value
            self._next = at + 1 if at + 1 < SAMPLES else 0


_append = array.append


def percentile(samples: Iterable[float], q: float) -> float | None:
    """The q-th percentile (0..100, nearest rank) of the samples, or None when there are none."""
    ordered = sorted(samples)
    if not ordered:
        return None
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def _rank(ordered: list[float], q: float) -> float | None:
    """``percentile`` of ``Samples`` sorted already, to the microsecond (what a single-precision
    sample holds up to ten seconds: 1.25, not 1.2500000476837158)."""
    if not ordered:
        return None
    return round(ordered[max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))], 3)


@dataclass(frozen=True, slots=True)
class ReaderStats:
    reader: str
    ticks: int
    """Ticks at which something was read."""
    values: int
    """Distinct values read (a value shared by several contexts counts once)."""
    errors: int
    """Values read with an error."""
    overruns: int
    """Due ticks skipped because the previous read was still running."""
    lateness_ms_p50: float | None
    """Request lateness: from the grid instant to the read starting (the request going out, for
    a device that samples when it arrives): what matters for a value's accuracy."""
    lateness_ms_p99: float | None
    lateness_ms_max: float | None
    read_ms_p50: float | None
    read_ms_p99: float | None
    """Building the tick's values and the reader's ``read``."""
    tick_ms_p50: float | None
    tick_ms_p99: float | None
    """The reader thread's whole time on a tick: read, split per context, hand-over to writers.
    Over the GCD period this is the reader's utilisation; near 100 % it starts skipping ticks."""
    period_ms: int | None
    """The GCD tick of the current schedule (None: nothing to read now)."""
    extra: Mapping[str, float] = field(default_factory=dict)
    """The reader's own counters (requests, reconnects...)."""
    lane: str = ""
    """The lane the reader runs on (readers of one lane share its thread, tick and overruns)."""
    clock_steps: int = 0
    """Wall-clock steps (NTP) the lane re-anchored its grid on."""
    delivery_ms_p50: float | None = None
    """Delivery time: from the grid instant to the instant's values handed to the writers'
    queues (request lateness + the read + the hand-over, on the engine's loop)."""
    delivery_ms_p99: float | None = None


@dataclass(frozen=True, slots=True)
class WriterStats:
    """One writer's figures, taken at one moment (under the sink's lock), so they always add up:
    ``received == written + failed + dropped + queued + in_flight``."""

    writer: str
    written: int
    """Values the writer said are stored: acknowledged by a receipt (writers that acknowledge),
    or in a ``write`` that returned (writers that do not)."""
    failed: int
    """Values refused for good: in a ``write`` that raised, or reported failed in a receipt."""
    queued: int
    """Values waiting in the engine's queue for this writer."""
    dropped: int
    """Values given up, for any reason: ``dropped_queue + dropped_writer + dropped_close``."""
    oldest_queued_s: float
    extra: Mapping[str, float] = field(default_factory=dict)
    """The writer's own counters (buffered, retries...)."""
    received: int = 0
    """Values routed to this writer (everything it was given, whatever became of it)."""
    in_flight: int = 0
    """Values handed to the writer and not yet acknowledged."""
    dropped_queue: int = 0
    """Dropped by the queue policy because the writer could not keep up."""
    dropped_writer: int = 0
    """Reported dropped by the writer itself (its own buffer limits), in receipts."""
    dropped_close: int = 0
    """Not stored by the close deadline: queued or in flight in a writer stuck in
    ``write``/``flush``/``close`` (its thread abandoned), never acknowledged by the end of
    ``close``, or arriving after the writer closed."""


@dataclass(frozen=True, slots=True)
class ContextStats:
    context_id: int
    state: str
    """``running``, ``paused`` or ``stopped``."""
    delivered: int
    """Values handed to the writers for this context."""
    missed_instants: int = 0
    """Due instants of this context its lanes could not serve (a read still running when they
    came): skipped and counted, never piled up."""
    missed_values: int = 0
    """The values those instants would have carried: values expected = delivered + missed +
    step_error_values (for ``report="every"`` variables of assigned lanes)."""
    step_errors: int = 0
    """Batches of this context lost to an exception inside a step of its branch (``for_context``
    scaling a value that is no number, ``report_changes`` comparing one that refuses to be
    compared): each is logged, and the context goes on with the next batch."""
    step_error_values: int = 0
    """The values those batches held."""


class ReaderStatsView(Mapping[str, ReaderStats]):
    """The readers of a ``stats()`` snapshot, each reader's figures computed when first looked
    at (then kept): the snapshot itself costs one entry per reader, not a sort of every
    reader's samples, so ``stats()`` stays cheap with thousands of lanes. A reader's figures
    are of the moment they are first looked at (counters are read racily anyway)."""

    __slots__ = ("_entries", "_made", "_make")

    def __init__(self, entries: Mapping[str, Any], make: Callable[[str, Any], ReaderStats]) -> None:
        # The readers' types, each with what ``make`` needs to compute its figures (made on the
        # caller's thread when first looked at): one dict entry per reader, no object per reader.
        self._entries = entries
        self._make = make
        self._made: dict[str, ReaderStats] = {}  # any thread may fill it: a race computes twice

    def __getitem__(self, key: str) -> ReaderStats:
        made = self._made.get(key)
        if made is None:
            made = self._made[key] = self._make(key, self._entries[key])
        return made

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"ReaderStatsView({dict(self.items())!r})"


@dataclass(frozen=True, slots=True)
class CollectorStats:
    readers: Mapping[str, ReaderStats]
    writers: Mapping[str, WriterStats]
    contexts: Mapping[int, ContextStats]


class ReaderCounters:
    """Mutated only by the reader's lane (its jobs, one at a time); read (racily, as counters
    are) by ``stats()``."""

    __slots__ = (
        "clock_steps",
        "delivery_ms",
        "errors",
        "lateness",
        "overruns",
        "read_ms",
        "tick_ms",
        "ticks",
        "values",
    )

    def __init__(self) -> None:
        self.clock_steps = 0
        self.ticks = 0
        self.values = 0
        self.errors = 0
        self.overruns = 0
        self.lateness = Samples()
        self.read_ms = Samples()
        self.tick_ms = Samples()
        self.delivery_ms = Samples()

    def skipped(self, n: int) -> None:
        self.overruns += n

    def snapshot(
        self, reader: str, period_ms: int | None, extra: Mapping[str, float], lane: str = ""
    ) -> ReaderStats:
        lateness = sorted(self.lateness)
        read_ms = sorted(self.read_ms)
        tick_ms = sorted(self.tick_ms)
        delivery = sorted(self.delivery_ms)
        return ReaderStats(
            reader=reader,
            ticks=self.ticks,
            values=self.values,
            errors=self.errors,
            overruns=self.overruns,
            lateness_ms_p50=_rank(lateness, 50),
            lateness_ms_p99=_rank(lateness, 99),
            lateness_ms_max=_rank(lateness, 100),
            read_ms_p50=_rank(read_ms, 50),
            read_ms_p99=_rank(read_ms, 99),
            tick_ms_p50=_rank(tick_ms, 50),
            tick_ms_p99=_rank(tick_ms, 99),
            period_ms=period_ms,
            extra=dict(extra),
            lane=lane,
            clock_steps=self.clock_steps,
            delivery_ms_p50=_rank(delivery, 50),
            delivery_ms_p99=_rank(delivery, 99),
        )
