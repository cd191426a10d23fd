"""What flows through the engine: columnar batches, and the per-value view plugins may ask for.

The hot path moves ``ValueBatch`` objects: one per lane, instant and context, holding the values
in plain lists. No object is made per value unless a plugin asks for one (iterating a batch
yields ``CollectedVariable``s, built on demand), because at hundreds of thousands of values a
second the garbage collector's walk over per-value objects costs more than the collection.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, overload

__all__ = ["CollectedVariable", "Receipt", "ValueBatch", "VariableSpec", "joined"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Report = Literal["every", "change"]


# A slotted dataclass, not a pydantic model: the engine builds hundreds of thousands of these
# per second for per-value plugins, and a pydantic instance costs about four times as much.
@dataclass(slots=True)
class CollectedVariable:
    """One value of one variable, read for one context at one scheduled instant.

    ``time`` is the scheduled tick (timezone-aware UTC, exactly on the wall-clock grid) unless the
    reader's source supplied its own timestamp. ``error`` is ``None`` or a short text saying why the
    read failed, in which case ``value`` is ``None``. ``quality`` is ``None`` for a good value, or
    the source's word for a doubtful one (an OPC UA ``Uncertain...`` status). ``source_time`` is
    the source's own timestamp of the value when the reader reports it beside the value (an OPC
    UA reader's default): ``time`` stays the instant, so values stay on the grid.
    """

    id: int
    context_id: int
    address: str
    value_type: str
    reader: str
    interval_ms: int
    value: Any = None
    time: datetime | None = None
    error: str | None = None
    quality: str | None = None
    source_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class VariableSpec:
    """A variable as compiled for one context: built once when the context starts, shared by
    every batch that carries its values.

    ``value_type`` is resolved (the variable's own, else its reader's natural type for the
    address), ``interval_ms`` is the effective interval (after the interval-limit policy).
    """

    id: int
    context_id: int
    address: str
    value_type: str
    reader: str
    interval_ms: int
    name: str | None = None
    tags: tuple[tuple[str, str], ...] = ()
    scale: float | None = None
    offset: float | None = None
    report: Report = "every"
    deadband: float | None = None
    heartbeat_ms: int | None = None


class ValueBatch(Sequence[CollectedVariable]):
    """Values of one lane at one instant for one context, in columns.

    - ``t_ms``: the grid instant (epoch milliseconds); ``time`` is the same as an aware datetime.
    - ``variables``: one ``VariableSpec`` per value (shared, never copied per tick).
    - ``values`` and ``errors``: parallel lists; ``errors[i]`` is ``None`` or a short text, and
      then ``values[i]`` is ``None``.
    - ``source_ns``: ``None``, or per value the source's own timestamp in epoch nanoseconds
      (``None`` where it gave none: the instant counts).
    - ``quality``: ``None``, or per value ``None`` (good) or the source's word for a doubtful value.
    - ``source_time_ns``: ``None``, or per value the source's own timestamp (epoch nanoseconds)
      carried *beside* the value: it does not stamp it (``source_ns`` does), writers store it in a
      field or column of its own (``source_time``).
    - ``context_id``: the receiving context (``None`` in a reader's batch: the distinct reads due).
    - ``reader``: the reader type the values come from (``""`` when from several readers of one
      lane: each value's ``VariableSpec.reader`` says).

    ``len(batch)`` is the number of values; iterating (or indexing: a batch is a
    ``Sequence[CollectedVariable]``) yields ``CollectedVariable``s made on demand, new each time;
    ``collected()`` makes them all at once. A batch handed to writers is shared by all of them:
    treat it as read-only. An acknowledging writer gets a ``handle()`` of its own instead (the
    same lists, a private object): it may ``release()`` that object's columns once it has
    stored them elsewhere, and keep the small object to acknowledge it.
    """

    __slots__ = (
        "context_id",
        "errors",
        "quality",
        "reader",
        "source_ns",
        "source_time_ns",
        "t_ms",
        "values",
        "variables",
    )

    def __init__(
        self,
        t_ms: int,
        variables: Sequence[VariableSpec],
        values: list[Any] | None = None,
        errors: list[str | None] | None = None,
        *,
        source_ns: list[int | None] | None = None,
        quality: list[str | None] | None = None,
        context_id: int | None = None,
        reader: str = "",
        source_time_ns: list[int | None] | None = None,
    ) -> None:
        n = len(variables)
        self.t_ms = t_ms
        self.variables = variables
        self.values: list[Any] = values if values is not None else [None] * n
        self.errors: list[str | None] = errors if errors is not None else [None] * n
        self.source_ns = source_ns
        self.quality = quality
        self.context_id = context_id
        self.reader = reader
        self.source_time_ns = source_time_ns

    @property
    def time(self) -> datetime:
        """The grid instant as an aware UTC datetime (exact: no float rounding)."""
        return _EPOCH + timedelta(milliseconds=self.t_ms)

    def __len__(self) -> int:
        return len(self.variables)

    def time_of(self, i: int) -> datetime:
        """The time of value ``i``: the source's when it gave one, else the instant."""
        if self.source_ns is not None:
            ns = self.source_ns[i]
            if ns is not None:
                return _EPOCH + timedelta(microseconds=ns // 1000)
        return self.time

    def source_time_of(self, i: int) -> datetime | None:
        """The source's own time of value ``i`` carried beside it (``source_time_ns``), or None."""
        column = self.source_time_ns
        if column is None:
            return None
        ns = column[i]
        return None if ns is None else _EPOCH + timedelta(microseconds=ns // 1000)

    def __iter__(self) -> Iterator[CollectedVariable]:
        # Lazily: a writer that looks at each value and lets it go keeps the garbage collector's
        # young generation small (a whole list of them, alive at once, is promoted and walked
        # again by full collections: measured six times slower on a realistic heap).
        cv = CollectedVariable
        when = self.time
        if self.source_ns is None and self.quality is None and self.source_time_ns is None:
            for s, value, error in zip(self.variables, self.values, self.errors, strict=True):
                yield cv(
                    s.id, s.context_id, s.address, s.value_type, s.reader, s.interval_ms, value, when, error
                )
            return
        for i in range(len(self.variables)):
            yield self._one(i)

    @overload
    def __getitem__(self, index: int) -> CollectedVariable: ...

    @overload
    def __getitem__(self, index: slice) -> list[CollectedVariable]: ...

    def __getitem__(self, index: int | slice) -> CollectedVariable | list[CollectedVariable]:
        if isinstance(index, slice):
            return [self._one(i) for i in range(*index.indices(len(self.variables)))]
        n = len(self.variables)
        if not -n <= index < n:
            raise IndexError(index)
        return self._one(index % n)

    def _one(self, i: int) -> CollectedVariable:
        spec = self.variables[i]
        quality = self.quality
        return CollectedVariable(
            spec.id,
            spec.context_id,
            spec.address,
            spec.value_type,
            spec.reader,
            spec.interval_ms,
            self.values[i],
            self.time_of(i),
            self.errors[i],
            None if quality is None else quality[i],
            self.source_time_of(i),
        )

    def collected(self) -> list[CollectedVariable]:
        """The values as ``CollectedVariable``s (new objects, yours to keep): the per-value view."""
        cv = CollectedVariable
        when = self.time
        source, quality = self.source_ns, self.quality
        if source is None and quality is None and self.source_time_ns is None:  # the common case
            return [
                cv(s.id, s.context_id, s.address, s.value_type, s.reader, s.interval_ms, value, when, error)
                for s, value, error in zip(self.variables, self.values, self.errors, strict=True)
            ]
        return [
            cv(
                spec.id,
                spec.context_id,
                spec.address,
                spec.value_type,
                spec.reader,
                spec.interval_ms,
                self.values[i],
                self.time_of(i) if source is not None else when,
                self.errors[i],
                None if quality is None else quality[i],
                self.source_time_of(i),
            )
            for i, spec in enumerate(self.variables)
        ]

    def handle(self) -> ValueBatch:
        """A new batch object over the same columns (no list is copied): private to whoever gets
        it, so it can be told apart by identity and have its columns released, while the lists
        themselves stay shared (never change them)."""
        return ValueBatch(
            self.t_ms,
            self.variables,
            self.values,
            self.errors,
            source_ns=self.source_ns,
            quality=self.quality,
            context_id=self.context_id,
            reader=self.reader,
            source_time_ns=self.source_time_ns,
        )

    def release(self) -> None:
        """Let go of this object's columns (``values``, ``errors``, ``source_ns``, ``quality``,
        ``source_time_ns``),
        for the owner of a ``handle()`` that keeps them elsewhere (on disk) and holds the object
        only to acknowledge it. ``len()``, ``t_ms``, ``variables``, ``context_id`` and ``reader``
        stay; the lists themselves are not touched (other writers may share them)."""
        self.values = []
        self.errors = []
        self.source_ns = None
        self.quality = None
        self.source_time_ns = None

    @property
    def released(self) -> bool:
        """True when the columns were let go (``release()``): only the counts are left."""
        return len(self.values) != len(self.variables)

    def error_count(self) -> int:
        """How many values of the batch are errors."""
        return len(self.errors) - self.errors.count(None)

    def __repr__(self) -> str:
        return (
            f"ValueBatch(t_ms={self.t_ms}, reader={self.reader!r}, context_id={self.context_id}, "
            f"values={len(self)}, errors={self.error_count()})"
        )


@dataclass(frozen=True, slots=True)
class Receipt:
    """A writer's word on (part of) a batch it was given: how many of its values are stored
    (``written``), refused for good (``failed``) or given up by the writer's own limits
    (``dropped``). ``error`` says why, for the failed and dropped ones.

    Every value of a batch handed to a writer is reported exactly once, in one receipt or
    several (a writer that splits a batch may report each part).
    """

    batch: ValueBatch
    written: int
    failed: int = 0
    dropped: int = 0
    error: str | None = None


class _Joined(Sequence[CollectedVariable]):
    """Several sequences of values as one, each value made on demand (see ``joined``)."""

    __slots__ = ("_len", "_parts")

    def __init__(self, parts: Sequence[Sequence[CollectedVariable]]) -> None:
        self._parts = parts
        self._len = sum(len(p) for p in parts)

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[CollectedVariable]:
        for part in self._parts:
            yield from part

    @overload
    def __getitem__(self, index: int) -> CollectedVariable: ...

    @overload
    def __getitem__(self, index: slice) -> list[CollectedVariable]: ...

    def __getitem__(self, index: int | slice) -> CollectedVariable | list[CollectedVariable]:
        if isinstance(index, slice):
            return list(self)[index]
        if not -self._len <= index < self._len:
            raise IndexError(index)
        index %= self._len
        for part in self._parts:
            if index < len(part):
                return part[index]
            index -= len(part)
        raise IndexError(index)  # pragma: no cover - the bounds were checked


def joined(parts: Sequence[Sequence[CollectedVariable]]) -> Sequence[CollectedVariable]:
    """Batches (or lists) of values as one sequence for a ``write(values)`` writer, lazily: each
    ``CollectedVariable`` of a ``ValueBatch`` is made when the writer reaches it and can be let go
    after. Building them all at once (a list of a backlog) is what the garbage collector then
    walks again and again: measured six times slower on a realistic heap."""
    if len(parts) == 1:
        return parts[0]
    return _Joined(parts)
