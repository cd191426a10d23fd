"""Listeners hear the collector's lifecycle: start, pause, resume, stop, close, and devices going
down and coming back."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flowcollect.collector import DataCollector
    from flowcollect.models import DataCollectionContext

__all__ = ["DataCollectionListener"]


class DataCollectionListener:
    """Override the events you need; every one is a no-op by default.

    Context events come in pairs (``before_*`` then ``after_*``) and are called on the thread
    that caused them, holding the collector's lifecycle lock (a context that ends by its duration
    is stopped on the collector's timer thread; a listener may call the collector back). Pause
    and resume events come only when the state changes: pausing a paused context says nothing.
    Device events are called on the collector's timer thread, never on a lane's, so a slow
    listener delays no read. An exception from ``before_start`` aborts the start; any other
    exception is logged and the lifecycle goes on.
    """

    def before_start(self, collector: DataCollector, context: DataCollectionContext) -> None:
        """The context is valid and about to start."""

    def after_start(self, collector: DataCollector, context: DataCollectionContext) -> None:
        """The context runs; ``context.start_date`` is set."""

    def before_pause(self, collector: DataCollector, context: DataCollectionContext) -> None:
        """The running context is about to be paused."""

    def after_pause(self, collector: DataCollector, context: DataCollectionContext) -> None:
        """The context is paused: it receives nothing, and its variables are not read unless
        another running context needs them."""

    def before_resume(self, collector: DataCollector, context: DataCollectionContext) -> None:
        """The paused context is about to be resumed."""

    def after_resume(self, collector: DataCollector, context: DataCollectionContext) -> None:
        """The context runs again: it receives the due instants after now."""

    def before_stop(self, collector: DataCollector, context: DataCollectionContext) -> None:
        """The context is about to stop (by ``stop``, its duration, or ``close``)."""

    def after_stop(self, collector: DataCollector, context: DataCollectionContext) -> None:
        """The context has stopped; ``context.end_date`` is set."""

    def before_close(self, collector: DataCollector) -> None:
        """The collector is about to stop every context and close."""

    def after_close(self, collector: DataCollector) -> None:
        """Every thread has ended; writers are flushed and closed."""

    def device_down(self, collector: DataCollector, reader: str, error: str) -> None:
        """Every value of a read by ``reader`` (its type) failed: its device or source gives
        nothing (unreachable, refusing, silent; for a pushing reader, stale or disconnected).
        ``error`` is the first value's error. Said once, when it happens (or at the first read,
        if that already fails), until ``device_up``."""

    def device_up(self, collector: DataCollector, reader: str) -> None:
        """A read by ``reader`` gave a value again (or gave one at its first read): its device
        answers."""
