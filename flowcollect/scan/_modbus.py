"""A polite Modbus scan: which units answer, which addresses read, the largest request accepted.

The walk is pure logic over one seam, ``Probe`` (read ``count`` items of ``table`` at ``address``
from ``unit``: ``OK``, an exception code, or ``None`` for no answer), so it is the same over TCP,
RTU over TCP and a serial line. It only ever reads (function codes 1 to 4): a scan never writes.

Politeness: one request at a time, ``pause_s`` after each, a timeout per request (a unit that
does not answer its first request is not asked again), and one deadline for the whole scan
(``max_time_s``); a scan cut by it says so and where it stopped.

The walk per answering unit and table: read blocks of the protocol's largest request (125
registers, 2000 bits); a block answered with an exception ("illegal data address" for one
address in it, "illegal data value" for its size, ...) is split in halves until the readable runs
inside it are found (a run read whole is never split); a block with no answer is not split. Then the
largest request: from the longest readable run, the largest count the unit accepts, by halving
from the protocol's limit (an exception 3, "illegal data value", or any refusal says "too many").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

__all__ = [
    "MAX_COUNT",
    "OK",
    "Outcome",
    "Probe",
    "ScanReport",
    "TableScan",
    "UnitScan",
    "scan_units",
]

Table = Literal["holding", "input", "coil", "discrete"]
OK: Final = 0
Outcome = int | None
"""``OK``, a Modbus exception code (1..11), or None: no answer within the timeout."""
Probe = Callable[[Table, int, int, int], Outcome]
"""``probe(table, unit, address, count)``: one read request."""
MAX_COUNT: Final[dict[str, int]] = {"holding": 125, "input": 125, "coil": 2000, "discrete": 2000}


@dataclass
class TableScan:
    """One table of one unit: readable runs, refused runs, and the largest request accepted."""

    table: Table
    readable: list[tuple[int, int]] = field(default_factory=list)
    """Inclusive (first, last) addresses that read."""
    refused: list[tuple[int, int, int]] = field(default_factory=list)
    """Inclusive (first, last, exception code) runs that answered with an exception."""
    silent: list[tuple[int, int]] = field(default_factory=list)
    """Runs whose request got no answer (after the unit had answered before)."""
    largest_request: int | None = None
    """The largest count one request may carry here (None: no readable run to try it on)."""
    largest_is_lower_bound: bool = False
    """The longest readable run was shorter than the protocol's limit: the unit may take more."""


@dataclass
class UnitScan:
    unit: int
    answers: bool
    tables: list[TableScan] = field(default_factory=list)


@dataclass
class ScanReport:
    units: list[UnitScan]
    requests: int
    elapsed_s: float
    complete: bool
    stopped_at: str = ""
    """Where the deadline stopped the scan, when it did."""
    resolution: int = 1

    @property
    def answering(self) -> list[int]:
        return [u.unit for u in self.units if u.answers]


class _Deadline(Exception):  # noqa: N818 - control flow inside this module
    pass


class _Walk:
    def __init__(
        self,
        probe: Probe,
        pause_s: float,
        max_time_s: float,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
    ) -> None:
        self.probe = probe
        self.pause_s = pause_s
        self.clock = clock
        self.sleep = sleep
        self.started = clock()
        self.deadline = self.started + max_time_s
        self.requests = 0
        self.where = ""
        self.resolution = 1

    def ask(self, table: Table, unit: int, address: int, count: int) -> Outcome:
        if self.clock() >= self.deadline:
            raise _Deadline
        self.where = f"unit {unit} {table} {address}"
        self.requests += 1
        outcome = self.probe(table, unit, address, count)
        if self.pause_s > 0:
            self.sleep(self.pause_s)
        return outcome

    def runs(self, table: Table, unit: int, first: int, last: int, result: TableScan) -> None:
        """Find the readable runs in ``first..last`` (inclusive)."""
        limit = MAX_COUNT[table]
        address = first
        while address <= last:
            end = min(last, address + limit - 1)
            self._split(table, unit, address, end, result)
            address = end + 1

    def _split(self, table: Table, unit: int, first: int, last: int, result: TableScan) -> None:
        outcome = self.ask(table, unit, first, last - first + 1)
        if outcome == OK:
            _add(result.readable, first, last)
        elif outcome is not None and last - first + 1 > self.resolution:
            # One address of the block, or its size, made the unit refuse it: the halves tell.
            middle = (first + last) // 2
            self._split(table, unit, first, middle, result)
            self._split(table, unit, middle + 1, last, result)
        elif outcome is None:
            _add(result.silent, first, last)
        else:
            _add_refused(result.refused, first, last, outcome)

    def largest(self, table: Table, unit: int, result: TableScan) -> None:
        if not result.readable:
            return
        first, last = max(result.readable, key=lambda run: run[1] - run[0])
        high = min(MAX_COUNT[table], last - first + 1)
        # A run shorter than the protocol's limit shows only that the unit takes at least that.
        result.largest_is_lower_bound = high < MAX_COUNT[table]
        if self.ask(table, unit, first, high) == OK:
            result.largest_request = high
            return
        low = 1  # the run was read, so one item always works
        while high - low > 1:
            middle = (low + high) // 2
            if self.ask(table, unit, first, middle) == OK:
                low = middle
            else:
                high = middle
        result.largest_request = low
        result.largest_is_lower_bound = False


def _add(runs: list[tuple[int, int]], first: int, last: int) -> None:
    if runs and runs[-1][1] + 1 == first:
        runs[-1] = (runs[-1][0], last)
    else:
        runs.append((first, last))


def _add_refused(runs: list[tuple[int, int, int]], first: int, last: int, code: int) -> None:
    if runs and runs[-1][1] + 1 == first and runs[-1][2] == code:
        runs[-1] = (runs[-1][0], last, code)
    else:
        runs.append((first, last, code))


def scan_units(
    probe: Probe,
    units: Sequence[int],
    tables: Sequence[Table],
    first: int,
    last: int,
    *,
    pause_s: float = 0.02,
    max_time_s: float = 300.0,
    resolution: int = 1,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ScanReport:
    """Scan ``units`` over ``tables`` from ``first`` to ``last`` (inclusive) through ``probe``.

    ``resolution``: a refused block is split down to this many addresses (1: exact). Certifying
    that an address does not read takes a request of its own, so an exact scan of a sparse map
    costs about two requests per address; ``resolution=16`` costs about a tenth of that but may
    miss a readable island shorter than 16 inside a refused block (reported as refused).
    """
    walk = _Walk(probe, pause_s, max_time_s, clock, sleep)
    walk.resolution = max(1, resolution)
    found: list[UnitScan] = []
    complete = True
    try:
        for unit in units:
            scan = UnitScan(unit, answers=False)
            found.append(scan)
            # Any answer, an exception too, says the unit is there; silence says it is not.
            if walk.ask(tables[0], unit, first, 1) is None:
                continue
            scan.answers = True
            for table in tables:
                result = TableScan(table)
                scan.tables.append(result)
                walk.runs(table, unit, first, last, result)
                walk.largest(table, unit, result)
    except _Deadline:
        complete = False
    return ScanReport(
        units=found,
        requests=walk.requests,
        elapsed_s=round(clock() - walk.started, 3),
        complete=complete,
        stopped_at="" if complete else walk.where,
        resolution=walk.resolution,
    )
