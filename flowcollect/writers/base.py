"""The writer plugin base: where collected values go, and how a writer says they are stored."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from flowcollect.values import CollectedVariable, Receipt, ValueBatch

__all__ = ["DataWriter", "OnReceipt"]

OnReceipt = Callable[[Receipt], None]
"""Where a writer's receipts go (set by the engine, or by a spool in front of the writer)."""


class DataWriter:
    """Takes batches of collected values to a destination.

    A writer implements ``write`` (a sequence of ``CollectedVariable``) or ``write_batch`` (a
    columnar ``ValueBatch``); when it defines ``write_batch`` the engine calls that instead.
    The engine calls them from the writer's own thread, so a slow writer delays nobody but
    itself. Batches are shared between writers: read them, never change them.

    Acknowledgement: a writer whose ``acknowledges`` is False has stored a batch when its write
    returns (an exception: every value failed). A writer that stores later (its own buffer and
    sender) sets ``acknowledges = True`` and calls ``self.acknowledge(...)`` for every value of
    every batch it took, once stored or given up, from any thread. Only acknowledged values count
    as written, and a spool deletes only what was acknowledged.
    """

    acknowledges: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if inspect.isabstract(cls):
            return
        if cls.write is DataWriter.write and cls.write_batch is DataWriter.write_batch:
            raise TypeError(f"{cls.__name__} must implement write() or write_batch()")

    @property
    def name(self) -> str:
        """A label for logs and metrics; unique among a collector's writers."""
        return type(self).__name__

    def write(self, values: Sequence[CollectedVariable]) -> None:
        """Take a batch of values (with or without ``error``)."""
        raise NotImplementedError

    def write_batch(self, batch: ValueBatch) -> None:
        """Take a columnar batch; by default, its values through ``write`` (the batch is a
        ``Sequence[CollectedVariable]`` making each on demand, so a writer that lets each go
        leaves the garbage collector little to do)."""
        self.write(batch)

    def attach(self, on_receipt: OnReceipt) -> None:
        """Where ``acknowledge`` sends receipts; set by whoever hands this writer its batches,
        before the first write."""
        self._on_receipt = on_receipt

    def acknowledge(
        self, batch: ValueBatch, written: int, failed: int = 0, dropped: int = 0, error: str | None = None
    ) -> None:
        """Report (part of) ``batch`` as stored, refused or given up (for ``acknowledges`` writers)."""
        on_receipt: OnReceipt | None = getattr(self, "_on_receipt", None)
        if on_receipt is not None:
            on_receipt(Receipt(batch, written, failed, dropped, error))

    def preflight(self) -> None:
        """Check, before collection starts, that the destination can work (a path that can be
        created and written, a server that answers and accepts the credentials). Raise
        ``PreflightError`` with one line naming the problem; the writer's name is added by the
        caller. The default checks nothing.
        """

    def flush(self) -> None:
        """Make everything written so far durable at the destination."""

    def close(self) -> None:
        """Flush and release resources; called once when the collector closes."""

    def stats(self) -> Mapping[str, float]:
        """The writer's own counters (buffered, retries...) for ``DataCollector.stats()``."""
        return {}
