"""Request planning: the fewest read requests covering a tick's addresses. Pure, no I/O.

Per table, the values' ranges are sorted by offset and merged while the merged request stays
within the size limit and the unused registers between two ranges (the gap) number at most
``max_gap``. On coil and discrete tables the gap is counted in bits, ``16 * max_gap`` of them:
the same bytes on the wire as ``max_gap`` registers.

What the device taught the reader (see ``ModbusDataReader``) enters as ``bad`` registers, which
no merged request may cover, and ``alone`` ranges, which are always read by themselves.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from flowcollect.readers.modbus.address import BIT_TABLES, TABLES, Table

__all__ = ["FUNCTION_CODES", "ModbusRequest", "Span", "gap_limit", "pack"]

FUNCTION_CODES: Final[dict[str, int]] = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}

Span = tuple[int, int]
"""A value's ``(start, end)`` registers (or bits) in one table, ``end`` exclusive."""


@dataclass(frozen=True, slots=True)
class ModbusRequest:
    """One read request: ``count`` registers (or bits) of ``table`` from ``start``."""

    table: Table
    start: int
    count: int
    spans: tuple[Span, ...] = field(default=(), compare=False, repr=False)
    """The distinct value ranges this request reads, sorted."""

    @property
    def end(self) -> int:
        return self.start + self.count

    @property
    def function_code(self) -> int:
        return FUNCTION_CODES[self.table]

    def __str__(self) -> str:
        unit = "bit" if self.table in BIT_TABLES else "register"
        plural = "" if self.count == 1 else "s"
        return f"{self.table} {self.start}..{self.end - 1} ({self.count} {unit}{plural})"


def gap_limit(table: str, max_gap: int) -> int:
    """The unused registers (bits, on bit tables) a merge may bridge."""
    return max_gap * 16 if table in BIT_TABLES else max_gap


def pack(
    spans: Iterable[tuple[Table, int, int]],
    *,
    max_gap: int,
    max_registers: int,
    max_bits: int,
    bad: Mapping[str, Sequence[int]] | None = None,
    alone: Collection[tuple[str, int, int]] = (),
    limits: Mapping[str, int] | None = None,
) -> list[ModbusRequest]:
    """Plan the requests reading every ``(table, start, end)`` span, fewest first.

    ``bad`` maps a table to the sorted registers no merged request may cover; a span touching
    one, or listed in ``alone``, gets a request of its own. ``limits`` lowers the size limit of
    a table below ``max_registers``/``max_bits``; a span wider than its table's limit (only
    possible once a limit was lowered) is read alone. Requests come sorted by table, then
    start.
    """
    by_table: dict[str, set[Span]] = {}
    for table, start, end in spans:
        if end <= start:
            raise ValueError(f"empty span {table}:{start}..{end}")
        by_table.setdefault(table, set()).add((start, end))
    requests: list[ModbusRequest] = []
    for table in TABLES:
        table_spans = by_table.get(table)
        if table_spans:
            limit = max_bits if table in BIT_TABLES else max_registers
            if limits and table in limits:
                limit = min(limit, limits[table])
            requests.extend(
                _pack_table(
                    table,
                    sorted(table_spans),
                    gap=gap_limit(table, max_gap),
                    limit=limit,
                    bad=(bad or {}).get(table, ()),
                    alone=alone,
                )
            )
    return requests


def _pack_table(
    table: Table,
    spans: list[Span],
    *,
    gap: int,
    limit: int,
    bad: Sequence[int],
    alone: Collection[tuple[str, int, int]],
) -> list[ModbusRequest]:
    def covers_bad(start: int, end: int) -> bool:
        i = bisect_left(bad, start)
        return i < len(bad) and bad[i] < end

    planned: list[ModbusRequest] = []
    members: list[Span] = []
    first = last = 0

    def flush() -> None:
        if members:
            planned.append(ModbusRequest(table, first, last - first, tuple(members)))

    for start, end in spans:
        if (table, start, end) in alone or covers_bad(start, end) or end - start > limit:
            planned.append(ModbusRequest(table, start, end - start, ((start, end),)))
            continue
        if (
            members
            and start - last <= gap
            and max(last, end) - first <= limit
            and not (start > last and covers_bad(last, start))
        ):
            members.append((start, end))
            last = max(last, end)
            continue
        flush()
        members = [(start, end)]
        first, last = start, end
    flush()
    planned.sort(key=lambda r: (r.start, r.end))
    return planned
