"""The latest value of each variable, kept by a writer the service attaches to the collector."""

from __future__ import annotations

import fnmatch
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flowcollect.values import ValueBatch, VariableSpec
from flowcollect.writers.base import DataWriter

__all__ = ["LatestValue", "LatestValues"]

MAX_ENTRIES = 200_000
"""Variables (per context) kept at most: a context with new variables beyond this is not kept,
and counted in ``stats()['not_kept']``. Bounds memory whatever the API is asked to start."""


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
            "time": self.time.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "quality": self.quality,
            "error": self.error,
        }


class LatestValues(DataWriter):
    """A writer that stores each variable's last value in memory (per context and variable id),
    for ``GET /api/v1/values`` and the console. Stored means kept here: its figures are as honest
    as any writer's (and it never fails nor falls behind, one dict assignment per value)."""

    def __init__(self, name: str = "api:latest") -> None:
        self._name = name
        self._lock = threading.Lock()
        """Guards ``_latest`` and ``_not_kept``: the writer's thread puts, API threads read."""
        self._latest: dict[tuple[int, int], LatestValue] = {}
        self._not_kept = 0
        self.on_error: Callable[[LatestValue], None] | None = None
        """Called on the writer's thread when a variable's error begins or changes."""

    @property
    def name(self) -> str:
        return self._name

    def write_batch(self, batch: ValueBatch) -> None:
        quality = batch.quality
        entries = []
        for i, spec in enumerate(batch.variables):
            entries.append(
                (
                    (spec.context_id, spec.id),
                    LatestValue(
                        spec,
                        batch.values[i],
                        batch.time_of(i),
                        None if quality is None else quality[i],
                        batch.errors[i],
                    ),
                )
            )
        began: list[LatestValue] = []
        with self._lock:
            latest = self._latest
            for key, entry in entries:
                before = latest.get(key)
                if before is not None or len(latest) < MAX_ENTRIES:
                    latest[key] = entry
                else:
                    self._not_kept += 1
                if entry.error is not None and (before is None or before.error != entry.error):
                    began.append(entry)
        on_error = self.on_error
        if on_error is not None:
            for entry in began:
                on_error(entry)

    def forget_context(self, context_id: int) -> None:
        """Drop a stopped context's values (so contexts with ever new ids do not grow memory)."""
        with self._lock:
            for key in [k for k in self._latest if k[0] == context_id]:
                del self._latest[key]

    def select(
        self, context: int | None = None, reader: str | None = None, name: str | None = None
    ) -> list[LatestValue]:
        """The latest values, by context then variable id; ``name`` is a glob (``temp*``)."""
        with self._lock:
            entries = list(self._latest.items())
        entries.sort(key=lambda item: item[0])
        out = []
        for _, entry in entries:
            spec = entry.spec
            if context is not None and spec.context_id != context:
                continue
            if reader is not None and spec.reader != reader:
                continue
            if name is not None and not fnmatch.fnmatchcase(spec.name or "", name):
                continue
            out.append(entry)
        return out

    def stats(self) -> dict[str, float]:
        with self._lock:
            return {"kept": len(self._latest), "not_kept": self._not_kept}
