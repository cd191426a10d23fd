"""The latest value of each variable, kept by a writer the service attaches to the collector.

Kept per batch, not per value: a lane's batches for one context and phase share one
``variables`` sequence, so the writer keeps a reference to the newest batch of each (one dict
assignment per batch, whatever its size) and only a query walks values. Measured: a copy per
value (an object each) made a lane of 10,000 variables at 100 ms overrun (bench/api_latency.py).
"""

from __future__ import annotations

import fnmatch
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

    def forget_context(self, context_id: int) -> None:
        """Drop a stopped context's values (so contexts with ever new ids do not grow memory)."""
        with self._lock:
            for key in [k for k in self._batches if k[0] == context_id]:
                del self._batches[key]
            for loose_key in [k for k in self._loose if k[0] == context_id]:
                del self._loose[loose_key]

    def _refs(
        self, context: int | None, reader: str | None, name: str | None
    ) -> list[tuple[ValueBatch | LatestValue, int]]:
        """Where each selected variable's latest value is (a batch and a position, or a value
        kept on its own), by context then variable id: nothing is built per value here."""
        with self._lock:
            batches = sorted(self._batches.values(), key=lambda b: b.t_ms)
            loose = list(self._loose.items())
        newest: dict[tuple[int, int], tuple[int, ValueBatch | LatestValue, int]] = {
            key: (t, value, -1) for key, (t, value) in loose
        }
        for batch in batches:
            if context is not None and batch.context_id not in (None, context):
                continue
            t = batch.t_ms
            for i, spec in enumerate(batch.variables):
                key = (spec.context_id, spec.id)
                held = newest.get(key)
                if held is None or held[0] <= t:
                    newest[key] = (t, batch, i)
        out: list[tuple[ValueBatch | LatestValue, int]] = []
        for key in sorted(newest):
            _, source, i = newest[key]
            spec = source.spec if isinstance(source, LatestValue) else source.variables[i]
            if context is not None and spec.context_id != context:
                continue
            if reader is not None and spec.reader != reader:
                continue
            if name is not None and not fnmatch.fnmatchcase(spec.name or "", name):
                continue
            out.append((source, i))
        return out

    def select(
        self, context: int | None = None, reader: str | None = None, name: str | None = None
    ) -> list[LatestValue]:
        """The latest values, by context then variable id; ``name`` is a glob (``temp*``)."""
        return [
            s if isinstance(s, LatestValue) else _value(s, i) for s, i in self._refs(context, reader, name)
        ]

    def page(
        self,
        context: int | None = None,
        reader: str | None = None,
        name: str | None = None,
        offset: int = 0,
        limit: int = 1000,
    ) -> tuple[int, list[dict[str, Any]]]:
        """How many match, and the rows ``offset`` to ``offset + limit`` as plain dicts (only
        those are built; a batch's instant is formatted once for all its values)."""
        refs = self._refs(context, reader, name)
        times: dict[int, str] = {}
        rows = []
        for source, i in refs[offset : offset + limit]:
            if isinstance(source, LatestValue):
                rows.append(source.as_dict())
                continue
            s = source.variables[i]
            ns = None if source.source_ns is None else source.source_ns[i]
            if ns is None:
                when = times.get(id(source))
                if when is None:
                    when = times[id(source)] = _iso(source.time)
            else:
                when = _iso(source.time_of(i))
            rows.append(
                {
                    "context": s.context_id,
                    "variable": s.id,
                    "name": s.name,
                    "reader": s.reader,
                    "address": s.address,
                    "value": source.values[i],
                    "time": when,
                    "quality": None if source.quality is None else source.quality[i],
                    "error": source.errors[i],
                }
            )
        return len(refs), rows

    def stats(self) -> dict[str, float]:
        with self._lock:  # cheap: every stats() snapshot asks
            return {"batches": len(self._batches), "loose": len(self._loose), "not_kept": self._not_kept}
