"""A writer that keeps every value in a list: for tests and notebooks."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

from flowcollect.values import CollectedVariable, ValueBatch
from flowcollect.writers.base import DataWriter

__all__ = ["MemoryDataWriter"]


class MemoryDataWriter(DataWriter):
    """Appends every value to ``values``; thread-safe. Read ``snapshot()`` while collecting.

    It takes columnar batches (``write_batch``) and keeps them as ``CollectedVariable``s, the
    view tests compare; ``write`` takes per-value lists (and is what a subclass overrides to
    see them). A batch is stored when the call returns.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.values: list[CollectedVariable] = []
        self.writes = 0
        self.closed = False

    def write_batch(self, batch: ValueBatch) -> None:
        values = list(batch)  # built outside the lock: readers of snapshot() wait less
        with self._lock:
            self.values.extend(values)
            self.writes += 1

    def write(self, values: Sequence[CollectedVariable]) -> None:
        with self._lock:
            self.values.extend(values)
            self.writes += 1

    def snapshot(self) -> list[CollectedVariable]:
        """A copy of the values received so far, safe to iterate while collection goes on."""
        with self._lock:
            return list(self.values)

    def clear(self) -> None:
        with self._lock:
            self.values.clear()

    def close(self) -> None:
        self.closed = True

    def stats(self) -> Mapping[str, float]:
        with self._lock:
            return {"stored": len(self.values)}
