"""The latest value of each variable, kept by a writer the service attaches to the collector.

Kept per batch, not per value: a lane's batches for one context and phase share one
``variables`` sequence, so the writer keeps a reference to the newest batch of each (one dict
assignment per batch, whatever its size) and only a query walks values. Measured: a copy per
value (an object each) made a lane of 10,000 variables at 100 ms overrun (bench/api_latency.py).

A query costs the lanes nothing measurable either (bench/api_latency.py): where each variable's
value is (which batch shape, which position) is an index built once per set of batch shapes,
not per query (the shapes change when contexts start or stop, not at every tick); a page walks
only its own rows, and is written straight to JSON text, one string per row with the
variable's part made once per index, so neither a dict per value (the garbage collector's
walks) nor one long ``json.dumps`` (the interpreter held for the whole page) competes with the
lanes for the interpreter.
"""

from __future__ import annotations

import fnmatch
import json
import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flowcollect.values import ValueBatch, VariableSpec
from flowcollect.writers.base import DataWriter

__all__ = ["LatestValue", "LatestValues"]

MAX_BATCHES = 256
"""Batch shapes (context and variables sequence) kept by reference; beyond, the oldest's values
are copied out one by one (report="change" batches, made anew for each change, end up there)."""
MAX_LOOSE = 200_000
"""Variables kept one by one at most: beyond, new ones are not kept and counted (``not_kept``)."""


@dataclass(frozen=True, slots=True)
class LatestValue:
    spec: VariableSpec
    value: Any
    time: datetime
    quality: str | None
    error: str | None

    def as_dict(self) -> dict[str, Any]:
        s = self.spec
        return {
            "context": s.context_id,
            "variable": s.id,
            "name": s.name,
            "reader": s.reader,
            "address": s.address,
            "value": self.value,
            "time": _iso(self.time),
            "quality": self.quality,
            "error": self.error,
        }


def _iso(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _value(batch: ValueBatch, i: int) -> LatestValue:
    quality = batch.quality
    return LatestValue(
        batch.variables[i],
        batch.values[i],
        batch.time_of(i),
        None if quality is None else quality[i],
        batch.errors[i],
    )


_Shape = tuple[int | None, int]
"""A batch shape: its context (None: several) and the identity of its variables sequence."""

MAX_FILTERS = 16
"""Filtered selections kept per index (the console's filter as the user types)."""

_encode = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


def _scalar(value: Any) -> str:
    """One value as JSON text (the common types without the encoder's machinery)."""
    kind = type(value)
    if value is None:
        return "null"
    if kind is float:
        return repr(value) if math.isfinite(value) else "null"
    if kind is int:
        return str(value)
    if kind is bool:
        return "true" if value else "false"
    try:
        return _encode(value)
    except (TypeError, ValueError):  # not JSON (bytes, an object): its text
        return _encode(str(value))


class _Entry:
    """One variable in the index: its spec, the start of its JSON row, and where its value is
    (a batch shape and a position; or a value kept on its own). Built once per index."""

    __slots__ = ("places", "prefix", "spec")

    def __init__(self, spec: VariableSpec, places: list[tuple[_Shape | LatestValue, int]]) -> None:
        self.spec = spec
        self.places = places
        s = spec
        self.prefix = (
            f'{{"context":{s.context_id},"variable":{s.id},"name":{_scalar(s.name)},'
            f'"reader":{_scalar(s.reader)},"address":{_scalar(s.address)},'
        )

    def newest(self, batches: dict[_Shape, ValueBatch]) -> tuple[ValueBatch | LatestValue | None, int]:
        """Where the newest value is now (a variable in several shapes: the latest batch)."""
        places = self.places
        if len(places) == 1:
            where, i = places[0]
            if isinstance(where, LatestValue):
                return where, -1
            return batches.get(where), i
        best: tuple[ValueBatch | LatestValue | None, int] = (None, -1)
        best_t = -math.inf
        for where, i in places:
            if isinstance(where, LatestValue):
                t = where.time.timestamp() * 1000
                found: ValueBatch | LatestValue | None = where
            else:
                found = batches.get(where)
                t = -math.inf if found is None else found.t_ms
            if found is not None and t >= best_t:
                best, best_t = (found, i), t
        return best


class _Index:
    """Every kept variable by context then variable id, for one set of batch shapes."""

    __slots__ = ("entries", "version")

    def __init__(self, version: int, entries: list[_Entry]) -> None:
        self.version = version
        self.entries = entries

    @staticmethod
    def build(version: int, batches: dict[_Shape, ValueBatch], loose: list[LatestValue]) -> _Index:
        places: dict[tuple[int, int], tuple[VariableSpec, list[tuple[_Shape | LatestValue, int]]]] = {}
        for value in loose:
            spec = value.spec
            places[(spec.context_id, spec.id)] = (spec, [(value, -1)])
        for shape, batch in batches.items():
            for i, spec in enumerate(batch.variables):
                held = places.get((spec.context_id, spec.id))
                if held is None:
                    places[(spec.context_id, spec.id)] = (spec, [(shape, i)])
                else:
                    held[1].append((shape, i))
        return _Index(version, [_Entry(*places[key]) for key in sorted(places)])


class LatestValues(DataWriter):
    """A writer that keeps each variable's last value in memory (per context and variable id),
    for ``GET /api/v1/values`` and the console. Stored means kept here: its figures are as honest
    as any writer's (it never fails, and costs one dict assignment per batch)."""

    def __init__(self, name: str = "api:latest") -> None:
        self._name = name
        self._lock = threading.Lock()
        """Guards ``_batches``, ``_loose`` and ``_not_kept``: the writer's thread puts, API
        threads read."""
        self._batches: OrderedDict[tuple[int | None, int], ValueBatch] = OrderedDict()
        self._loose: dict[tuple[int, int], tuple[int, LatestValue]] = {}
        self._not_kept = 0
        self._version = 0
        """Bumped under ``_lock`` whenever the set of batch shapes or the loose values change:
        the query index (``_index``) is rebuilt for the next query then, not before."""
        self._index_lock = threading.Lock()
        """Guards ``_index`` and ``_filtered``: API threads only."""
        self._index: _Index | None = None
        self._filtered: dict[tuple[int | None, str | None, str | None], list[_Entry]] = {}
        self._last_errors: dict[str, LatestValue] = {}
        """The newest error of each reader (its variables'), for the status."""
        self.on_error: Callable[[LatestValue], None] | None = None
        """Called on the writer's thread when a variable's error begins or changes."""

    @property
    def name(self) -> str:
        return self._name

    def write_batch(self, batch: ValueBatch) -> None:
        # The key holds the batch, and the batch its variables: the id is not reused meanwhile.
        key = (batch.context_id, id(batch.variables))
        errors = batch.errors
        with self._lock:
            before = self._batches.get(key)
            self._batches[key] = batch
            self._batches.move_to_end(key)
            if before is None:
                self._version += 1
            while len(self._batches) > MAX_BATCHES:
                _, old = self._batches.popitem(last=False)
                self._loosen(old)
        if errors.count(None) == len(errors):
            return
        # Only batches with errors are walked: the reader's newest error, and a transition from
        # the same shape's last batch for the events.
        on_error = self.on_error
        was = before.errors if before is not None else None
        newest: dict[str, LatestValue] = {}
        began: list[LatestValue] = []
        for i, error in enumerate(errors):
            if error is None:
                continue
            value = _value(batch, i)
            newest[value.spec.reader] = value
            if was is None or was[i] != error:
                began.append(value)
        with self._lock:
            self._last_errors.update(newest)
        if on_error is not None:  # after the update: whoever hears the event finds it in status
            for value in began:
                on_error(value)

    def last_errors(self) -> dict[str, LatestValue]:
        """Each reader's newest error (of any of its variables, in any context), kept past its
        recovery: when and what it was."""
        with self._lock:
            return dict(self._last_errors)

    def _loosen(self, batch: ValueBatch) -> None:
        loose = self._loose
        t = batch.t_ms
        for i, spec in enumerate(batch.variables):
            key = (spec.context_id, spec.id)
            held = loose.get(key)
            if held is not None and held[0] > t:
                continue
            if held is None and len(loose) >= MAX_LOOSE:
                self._not_kept += 1
                continue
            loose[key] = (t, _value(batch, i))
        self._version += 1

    def forget_context(self, context_id: int) -> None:
        """Drop a stopped context's values (so contexts with ever new ids do not grow memory)."""
        with self._lock:
            for key in [k for k in self._batches if k[0] == context_id]:
                del self._batches[key]
            for loose_key in [k for k in self._loose if k[0] == context_id]:
                del self._loose[loose_key]
            self._version += 1

    def _snapshot(self) -> tuple[_Index, dict[_Shape, ValueBatch]]:
        """The index for the current batch shapes (built when they changed), and the newest
        batch of each shape: together, where every variable's latest value is."""
        with self._lock:
            batches = dict(self._batches)
            version = self._version
            loose = list(self._loose.values())  # empty unless more shapes than MAX_BATCHES
        with self._index_lock:
            index = self._index
            if index is None or index.version != version:
                index = self._index = _Index.build(version, batches, [value for _, value in loose])
                self._filtered.clear()
        return index, batches

    def _select(
        self, index: _Index, context: int | None, reader: str | None, name: str | None
    ) -> list[_Entry]:
        if context is None and reader is None and name is None:
            return index.entries
        key = (context, reader, name)
        with self._index_lock:
            found = self._filtered.get(key) if self._index is index else None
        if found is not None:
            return found
        found = [
            e
            for e in index.entries
            if (context is None or e.spec.context_id == context)
            and (reader is None or e.spec.reader == reader)
            and (name is None or fnmatch.fnmatchcase(e.spec.name or "", name))
        ]
        with self._index_lock:
            if self._index is index:
                if len(self._filtered) >= MAX_FILTERS:
                    self._filtered.clear()
                self._filtered[key] = found
        return found

    def select(
        self, context: int | None = None, reader: str | None = None, name: str | None = None
    ) -> list[LatestValue]:
        """The latest values, by context then variable id; ``name`` is a glob (``temp*``)."""
        index, batches = self._snapshot()
        out = []
        for entry in self._select(index, context, reader, name):
            source, i = entry.newest(batches)
            if source is not None:
                out.append(source if isinstance(source, LatestValue) else _value(source, i))
        return out

    def page(
        self,
        context: int | None = None,
        reader: str | None = None,
        name: str | None = None,
        offset: int = 0,
        limit: int = 1000,
    ) -> tuple[int, list[dict[str, Any]]]:
        """How many match, and the rows ``offset`` to ``offset + limit`` as plain dicts."""
        total, body = self.page_json(context, reader, name, offset, limit)
        rows: list[dict[str, Any]] = json.loads(body)["values"]
        return total, rows

    def page_json(
        self,
        context: int | None = None,
        reader: str | None = None,
        name: str | None = None,
        offset: int = 0,
        limit: int = 1000,
    ) -> tuple[int, bytes]:
        """How many match, and ``{"total":..,"offset":..,"values":[..]}`` as JSON bytes with the
        rows ``offset`` to ``offset + limit`` (by context then variable id; ``name`` is a glob).
        Only those rows are touched; a value JSON cannot carry (NaN, infinity) is ``null``."""
        index, batches = self._snapshot()
        selected = self._select(index, context, reader, name)
        times: dict[int, str] = {}
        rows = []
        for entry in selected[offset : offset + limit]:
            source, i = entry.newest(batches)
            if source is None:
                continue
            if isinstance(source, LatestValue):
                value, when, quality, error = source.value, _iso(source.time), source.quality, source.error
            else:
                ns = None if source.source_ns is None else source.source_ns[i]
                if ns is None:
                    when = times.get(id(source)) or times.setdefault(id(source), _iso(source.time))
                else:
                    when = _iso(source.time_of(i))
                value = source.values[i]
                quality = None if source.quality is None else source.quality[i]
                error = source.errors[i]
            rows.append(
                f'{entry.prefix}"value":{_scalar(value)},"time":"{when}",'
                f'"quality":{_scalar(quality)},"error":{_scalar(error)}}}'
            )
        head = f'{{"total":{len(selected)},"offset":{offset},"values":['
        return len(selected), (head + ",".join(rows) + "]}").encode()

    def stats(self) -> dict[str, float]:
        with self._lock:  # cheap: every stats() snapshot asks
            return {"batches": len(self._batches), "loose": len(self._loose), "not_kept": self._not_kept}
