"""A writer that keeps every value in a list: for tests and notebooks."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

from flowcollect.values import CollectedVariable
from flowcollect.writers.base import DataWriter

__all__ = ["MemoryDataWriter"]


class MemoryDataWriter(DataWriter):
    """Appends every value to ``values``; thread-safe. Read ``snapshot()`` while collecting."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.values: list[CollectedVariable] = []
        self.writes = 0
        self.closed = False

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
