"""The writer plugin base: where collected values go."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

from flowcollect.values import CollectedVariable

__all__ = ["DataWriter"]


class DataWriter(ABC):
    """Takes batches of collected values to a destination.

    The engine calls ``write`` from the writer's own thread, with batches (never one call per
    value), so a slow writer delays nobody but itself. ``write`` must not keep references to
    the batch list beyond the call unless it copies it; the values themselves are its to keep.
    """

    @property
    def name(self) -> str:
        """A label for logs and metrics."""
        return type(self).__name__

    @abstractmethod
    def write(self, values: Sequence[CollectedVariable]) -> None:
        """Take a batch of values (with or without ``error``)."""

    def flush(self) -> None:
        """Make everything written so far durable at the destination."""

    def close(self) -> None:
        """Flush and release resources; called once when the collector closes."""

    def stats(self) -> Mapping[str, float]:
        """The writer's own counters (buffered, dropped, failed...) for ``DataCollector.stats()``."""
        return {}
