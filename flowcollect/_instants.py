"""Instants on the collector's clock: epoch milliseconds <-> aware UTC datetimes.

Every time-based piece takes its Rx scheduler from the caller: the ``LoopScheduler`` (one event
loop thread for every lane) and a ``LaneScheduler`` (the timer's thread), both waiting on the
monotonic clock for wall-clock instants, in production; a ``VirtualScheduler`` in tests (all in
``flowcollect.runtime``; the clock itself is ``flowcollect.runtime.Clock``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from reactivex import abc

__all__ = ["EPOCH", "instant", "now_ms"]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def instant(t_ms: int) -> datetime:
    """The aware UTC datetime of an epoch-millisecond instant, exactly (no float rounding)."""
    return EPOCH + timedelta(milliseconds=t_ms)


def now_ms(scheduler: abc.SchedulerBase) -> float:
    """The scheduler's notion of now, in epoch milliseconds."""
    return (scheduler.now - EPOCH) / _MS
