"""The collector's clock: wall-clock instants, waited for on the monotonic clock.

The grid is the wall clock's (values are stamped with wall-clock instants), but waiting is done on
the monotonic clock: an absolute wall deadline is turned into a monotonic one when it is
scheduled. So a step of the wall clock (NTP, an operator) never makes a lane sleep through the
step's length (backwards) nor wake for a burst of instants (forwards); the lane notices the
step (wall minus monotonic moved) and re-anchors its grid on the new time.

``LaneScheduler`` is a scheduler on one thread of its own (the collector's timer: durations,
listeners' events); every lane ticks on ``LoopScheduler`` (``flowcollect.runtime._loop``: one
asyncio loop for all lanes). ``VirtualScheduler`` is the same in virtual time, for tests, with
``step_wall_ms`` to make the wall clock jump.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Protocol

from reactivex import abc, typing
from reactivex.disposable import Disposable
from reactivex.internal.exceptions import DisposedException
from reactivex.scheduler.periodicscheduler import PeriodicScheduler

from flowcollect._instants import EPOCH

__all__ = ["BRACKET_MS", "Clock", "LaneScheduler", "SystemClock", "VirtualScheduler", "clock_offset"]

BRACKET_MS = 5.0
"""A wall-clock reading whose two monotonic brackets are further apart than this is discarded:
the thread was held up (the GIL, the OS scheduler) somewhere inside the reading, so wall minus
monotonic from it could be off by the hold-up, which a busy process makes longer than a step."""


class Clock(Protocol):
    """Where time comes from: the wall clock (epoch ns) and a monotonic clock (ns)."""

    def time_ns(self) -> int: ...

    def monotonic_ns(self) -> int: ...


class SystemClock:
    """The process's clocks."""

    def time_ns(self) -> int:
        return time.time_ns()

    def monotonic_ns(self) -> int:
        return time.monotonic_ns()


def clock_offset(scheduler: abc.SchedulerBase) -> float | None:
    """Wall minus monotonic time (ms) on ``scheduler``: constant while the wall clock only runs,
    a jump is a step. The wall clock is read between two monotonic reads and the reading kept
    only when they are at most ``BRACKET_MS`` apart (three tries); None when no reading was
    narrow enough, or the scheduler has no monotonic clock (a plain Rx scheduler)."""
    monotonic: Callable[[], float] | None = getattr(scheduler, "monotonic_ms", None)
    wall: Callable[[], float] | None = getattr(scheduler, "wall_ms", None)
    if monotonic is None or wall is None:
        return None
    for _ in range(3):
        before = monotonic()
        w = wall()
        after = monotonic()
        if after - before <= BRACKET_MS:
            return w - (before + after) / 2
    return None


class _Item:
    """A scheduled action. ``cancelled`` is set by its disposable on any thread (only ever to
    True) and read by the scheduler's thread before it runs the action."""

    __slots__ = ("action", "cancelled", "due", "state")

    def __init__(self, due: float, action: typing.ScheduledAction[Any], state: Any) -> None:
        self.due = due
        self.action = action
        self.state = state
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _MonotonicQueue(PeriodicScheduler):
    """Items keyed by monotonic ms; ``now`` is the wall clock. The shared part of both schedulers."""

    def __init__(self) -> None:
        super().__init__()
        # LaneScheduler: under its _cond; VirtualScheduler: the one thread that drives it.
        self._heap: list[tuple[float, int, _Item]] = []
        self._seq = itertools.count()

    def wall_ms(self) -> float:
        raise NotImplementedError

    def monotonic_ms(self) -> float:
        raise NotImplementedError

    @property
    def now(self) -> datetime:
        return EPOCH + timedelta(milliseconds=self.wall_ms())

    def _push(self, due_mono: float, action: typing.ScheduledAction[Any], state: Any) -> abc.DisposableBase:
        item = _Item(due_mono, action, state)
        heapq.heappush(self._heap, (due_mono, next(self._seq), item))
        return Disposable(item.cancel)

    def _due_mono(self, duetime: typing.AbsoluteTime) -> float:
        dt = self.to_datetime(duetime)
        # The wall clock read first: a pause between the two reads (this thread preempted, the
        # interpreter busy elsewhere) makes the action late by it, never early. Read the other
        # way round, a context's duration timer fired that much before its end, and the stop
        # cut the context's last instant (seen under load: 5 instants of 6).
        wall = self.now
        return self.monotonic_ms() + (dt - wall) / timedelta(milliseconds=1)

    def _run_item(self, item: _Item) -> None:
        if not item.cancelled:
            item.action(self, item.state)


class LaneScheduler(_MonotonicQueue, abc.DisposableBase):
    """Runs actions on one thread of its own at wall-clock instants, waiting on the monotonic clock."""

    def __init__(
        self, thread_factory: Callable[[Callable[[], None]], threading.Thread], clock: Clock | None = None
    ) -> None:
        super().__init__()
        self._clock = clock or SystemClock()
        self._factory = thread_factory
        # _cond guards _heap, _thread and _disposed; the scheduler's thread waits on it.
        self._thread: threading.Thread | None = None
        self._cond = threading.Condition(threading.Lock())
        self._disposed = False

    def wall_ms(self) -> float:
        return self._clock.time_ns() / 1e6

    def monotonic_ms(self) -> float:
        return self._clock.monotonic_ns() / 1e6

    def schedule(self, action: typing.ScheduledAction[Any], state: Any = None) -> abc.DisposableBase:
        return self._add(self.monotonic_ms(), action, state)

    def schedule_relative(
        self, duetime: typing.RelativeTime, action: typing.ScheduledAction[Any], state: Any = None
    ) -> abc.DisposableBase:
        delay = self.to_seconds(duetime) * 1000
        return self._add(self.monotonic_ms() + max(0.0, delay), action, state)

    def schedule_absolute(
        self, duetime: typing.AbsoluteTime, action: typing.ScheduledAction[Any], state: Any = None
    ) -> abc.DisposableBase:
        return self._add(self._due_mono(duetime), action, state)

    def _add(self, due: float, action: typing.ScheduledAction[Any], state: Any) -> abc.DisposableBase:
        with self._cond:
            if self._disposed:
                raise DisposedException()
            disposable = self._push(due, action, state)
            if self._thread is None:
                self._thread = self._factory(self._run)
                self._thread.start()
            self._cond.notify()
        return disposable

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._disposed:
                        return
                    if self._heap:
                        wait = self._heap[0][0] - self.monotonic_ms()
                        if wait <= 0:
                            _, _, item = heapq.heappop(self._heap)
                            break
                        self._cond.wait(wait / 1000)
                    else:
                        self._cond.wait()
            self._run_item(item)

    def dispose(self) -> None:
        """End the thread once the action it runs (if any) returns; queued actions are dropped.
        Safe from the scheduler's own thread."""
        with self._cond:
            self._disposed = True
            self._heap.clear()
            self._cond.notify()

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread


class VirtualScheduler(_MonotonicQueue):
    """The same in virtual time: nothing runs until ``advance_to``/``advance_by``; ``sleep``
    passes time without running anything (a slow read), ``step_wall_ms`` moves the wall clock
    alone (an NTP step)."""

    def __init__(self, start: datetime = EPOCH) -> None:
        super().__init__()
        # One thread drives virtual time (the test's): every field is that thread's.
        self._mono = 0.0
        self._offset = (start - EPOCH) / timedelta(milliseconds=1)
        self._running = False

    def wall_ms(self) -> float:
        return self._mono + self._offset

    def monotonic_ms(self) -> float:
        return self._mono

    def schedule(self, action: typing.ScheduledAction[Any], state: Any = None) -> abc.DisposableBase:
        return self._push(self._mono, action, state)

    def schedule_relative(
        self, duetime: typing.RelativeTime, action: typing.ScheduledAction[Any], state: Any = None
    ) -> abc.DisposableBase:
        return self._push(self._mono + max(0.0, self.to_seconds(duetime) * 1000), action, state)

    def schedule_absolute(
        self, duetime: typing.AbsoluteTime, action: typing.ScheduledAction[Any], state: Any = None
    ) -> abc.DisposableBase:
        return self._push(max(self._mono, self._due_mono(duetime)), action, state)

    def schedule_wall_ms(
        self, due_ms: float, action: typing.ScheduledAction[Any], state: Any = None
    ) -> abc.DisposableBase:
        """``schedule_absolute`` for an epoch-ms instant, without datetimes (a lane's tick)."""
        mono = self._mono
        return self._push(max(mono, mono + (due_ms - self.wall_ms())), action, state)

    def advance_to(self, duetime: typing.AbsoluteTime) -> None:
        """Run everything due up to the wall instant ``duetime`` (in due order), then stand there."""
        self._advance_mono(self._due_mono(duetime))

    def advance_by(self, duetime: typing.RelativeTime) -> None:
        self._advance_mono(self._mono + self.to_seconds(duetime) * 1000)

    def _advance_mono(self, target: float) -> None:
        if self._running:  # from an action: time passes with the outer advance
            return
        self._running = True
        try:
            while self._heap and self._heap[0][0] <= target:
                due, _, item = heapq.heappop(self._heap)
                self._mono = max(self._mono, due)
                self._run_item(item)
            self._mono = max(self._mono, target)
        finally:
            self._running = False

    def sleep(self, duetime: typing.RelativeTime) -> None:
        """Let time pass without running anything (what a read that takes this long does)."""
        self._mono += max(0.0, self.to_seconds(duetime) * 1000)

    def step_wall_ms(self, delta_ms: float) -> None:
        """Step the wall clock by ``delta_ms`` (negative: backwards); monotonic time goes on."""
        self._offset += delta_ms
