"""Tick sources on absolute wall-clock deadlines.

Every piece here takes its Rx scheduler from the caller: an ``EventLoopScheduler`` (one thread
per reader) in production, a ``TestScheduler`` in virtual-time tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from reactivex import Observable, abc
from reactivex.disposable import Disposable
from reactivex.subject import Subject

from flowcollect._schedule import ReaderSchedule

__all__ = ["EPOCH", "ScheduleRef", "instant", "now_ms", "ticks"]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def instant(t_ms: int) -> datetime:
    """The aware UTC datetime of an epoch-millisecond instant, exactly (no float rounding)."""
    return EPOCH + timedelta(milliseconds=t_ms)


def now_ms(scheduler: abc.SchedulerBase) -> float:
    """The scheduler's notion of now, in epoch milliseconds."""
    return (scheduler.now - EPOCH) / _MS


class ScheduleRef:
    """The current schedule of one reader, swapped whole when contexts change.

    Schedules are immutable and swapped by one attribute assignment, so readers of ``current``
    on other threads see either the old or the new one, never a mix; ``changes`` tells the tick
    source to re-arm.
    """

    def __init__(self) -> None:
        self.current: ReaderSchedule | None = None
        self.changes: Subject[int] = Subject()

    def set(self, schedule: ReaderSchedule | None, since_ms: int) -> None:
        """Swap the schedule; due instants after ``since_ms`` (the change's instant) are kept."""
        self.current = schedule
        self.changes.on_next(since_ms)


def ticks(
    ref: ScheduleRef,
    scheduler: abc.SchedulerBase,
    on_skipped: Callable[[int], None] = lambda _n: None,
    on_busy: Callable[[float], None] = lambda _ms: None,
) -> Observable[int]:
    """Emit the epoch-ms instants at which ``ref``'s schedule has something due, at those instants.

    Each tick is scheduled at its absolute deadline, so the grid never drifts. The observer's
    ``on_next`` runs on the scheduler's thread; when it returns after the next deadline (an
    overrun), the due instants it covered are skipped and counted, never piled up; ``on_busy``
    hears how long each ``on_next`` took. A change of
    schedule re-arms the source on the scheduler's thread, so all of its state has one owner; it
    re-arms from the instant of the change, so a due instant that passes while the thread is busy
    is fired late rather than lost, and never twice.
    """

    def subscribe(observer: abc.ObserverBase[int], _: abc.SchedulerBase | None = None) -> abc.DisposableBase:
        pending: abc.DisposableBase | None = None
        pending_due: int | None = None
        last_fired = -1
        disposed = False

        def arm(due: int) -> None:
            nonlocal pending, pending_due
            pending_due = due
            pending = scheduler.schedule_absolute(instant(due), fire, due)

        def fire(_: abc.SchedulerBase, due: Any) -> None:
            nonlocal pending, pending_due, last_fired
            if disposed:
                return
            pending, pending_due, last_fired = None, None, due
            began = now_ms(scheduler)
            observer.on_next(due)
            now = now_ms(scheduler)
            on_busy(now - began)
            schedule = ref.current
            if schedule is None or disposed:
                return
            following = schedule.next_due(due)
            if following <= now:
                on_skipped(schedule.count_due(due, now))
                following = schedule.next_due(now)
            arm(following)

        def retime(_: abc.SchedulerBase, since_ms: Any) -> None:
            nonlocal pending, pending_due
            if disposed:
                return
            if pending_due is not None and pending_due <= now_ms(scheduler):
                # That tick is due already and about to fire; it re-arms from the new schedule.
                return
            if pending is not None:
                pending.dispose()
                pending, pending_due = None, None
            schedule = ref.current
            if schedule is not None:
                arm(schedule.next_due(max(since_ms, last_fired)))

        def on_change(since_ms: int) -> None:
            scheduler.schedule(retime, since_ms)

        changes = ref.changes.subscribe(on_change)
        scheduler.schedule(retime, math.floor(now_ms(scheduler)))

        def dispose() -> None:
            nonlocal disposed
            disposed = True
            changes.dispose()
            if pending is not None:
                pending.dispose()

        return Disposable(dispose)

    return Observable(subscribe)
