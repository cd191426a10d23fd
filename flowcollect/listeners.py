"""Listeners hear the collector's lifecycle: start, stop and close."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flowcollect.collector import DataCollector
    from flowcollect.models import DataCollectionContext

__all__ = ["DataCollectionListener"]


class DataCollectionListener:
    """Override the events you need; every one is a no-op by default.

    Events are called on the thread that caused them (a context that ends by its duration is
    stopped on the collector's timer thread). An exception from ``before_start`` aborts the
    start; any other exception is logged and the lifecycle goes on.
    """

    def before_start(self, collector: DataCollector, context: DataCollectionContext) -> None:
        """The context is valid and about to start."""

    def after_start(self, collector: DataCollector, context: DataCollectionContext) -> None:
        """The context runs; ``context.start_date`` is set."""

    def before_stop(self, collector: DataCollector, context: DataCollectionContext) -> None:
        """The context is about to stop (by ``stop``, its duration, or ``close``)."""

    def after_stop(self, collector: DataCollector, context: DataCollectionContext) -> None:
        """The context has stopped; ``context.end_date`` is set."""

    def before_close(self, collector: DataCollector) -> None:
        """The collector is about to stop every context and close."""

    def after_close(self, collector: DataCollector) -> None:
        """Every thread has ended; writers are flushed and closed."""
