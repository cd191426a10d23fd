"""The engine's event loop (one thread, one timer heap, every lane) and the bounded pool of worker
threads that synchronous plugins run in.

``LoopScheduler`` is an Rx scheduler on one asyncio loop: every lane's deadline waits are timers
on that loop, so the number of threads does not grow with the number of lanes, and the lanes due
at one instant are served in one pass of the loop (each one's request goes out before any answer
is handled). Like ``LaneScheduler`` it waits on the monotonic clock for wall-clock instants.

``Work`` is how a lane gets its readers' calls made: ``LoopWork`` runs a synchronous call on a
``WorkerPool`` thread and an asynchronous one as a task on the loop, each continuation back on
the loop thread; ``InlineWork`` (virtual time) runs both at once on the caller's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from reactivex import abc, typing
from reactivex.disposable import Disposable
from reactivex.internal.exceptions import DisposedException

from flowcollect._bulk import paused_gc
from flowcollect.readers.base import CLOSING_TASK_PREFIX, mark_engine_loop
from flowcollect.runtime._clock import Clock, SystemClock, _MonotonicQueue

__all__ = [
    "DEFAULT_WORKERS",
    "STUCK_S",
    "InlineWork",
    "InstantCall",
    "LoopScheduler",
    "LoopWork",
    "Work",
    "WorkerPool",
]

DEFAULT_WORKERS = 64
"""The worker pool's default size (``DataCollector(reader_workers=...)``): how many synchronous
plugin calls (``read``, ``read_batch``, ``open``, ``plan_changed``, ``close``) run at once. A
lane has at most one call in flight, so this also bounds how many sync lanes can be blocked in a
device at once before the others wait for a worker."""

_log = logging.getLogger("flowcollect")

Then = Callable[[Any, BaseException | None], None]
"""A continuation: the call's result (None when it raised) and what it raised."""


_STOP_MARGIN_S = 0.25
"""What a stopping loop keeps of its bound for cancelling and unwinding what is left."""

STUCK_S = 1.0
"""A worker inside one call for longer than this is stuck (a hung device): it no longer counts
against the pool's size, so hung synchronous readers cannot starve the other lanes."""


class WorkerPool:
    """Daemon threads (``flowcollect-worker-N``) for synchronous plugin calls, started only when
    every one already started is busy, at most ``size`` of them busy at once in calls shorter than
    ``STUCK_S``. A thread runs one call at a time; jobs wait in one FIFO. ``check()`` (every
    half second, on the collector's timer) starts a thread for waiting jobs in place of each
    stuck one, so the threads are at most ``size`` plus the calls hung at that moment (a lane
    has one call in flight at most: at most one per hung lane)."""

    def __init__(self, size: int, threads: list[threading.Thread]) -> None:
        self.size = size
        self._threads = threads  # the collector's list of its threads (close joins them)
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        # Guards every field below (workers and submitters are different threads). Jobs in the
        # queue = _idle workers' (each promised one) + _waiting (none promised yet).
        self._lock = threading.Lock()
        self._started = 0
        self._idle = 0
        self._waiting = 0
        self._busy: dict[int, float] = {}  # worker -> when its call began (time.monotonic)
        self._closed = False
        self._names = itertools.count(1)

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._closed:
                raise DisposedException()
            start = False
            if self._idle:
                self._idle -= 1  # that worker takes this job (the queue is FIFO)
            elif self._started < self.size:
                self._started += 1
                start = True  # the new worker takes it
            else:
                self._waiting += 1  # every worker is busy: the first one done takes it
        self._jobs.put(job)
        if start:
            self._start()

    def _start(self) -> None:
        thread = threading.Thread(
            target=self._work, name=f"flowcollect-worker-{next(self._names)}", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def check(self) -> None:
        """Start a worker for waiting jobs in place of each stuck one (any thread)."""
        now = time.monotonic()
        with self._lock:
            if self._closed or not self._waiting:
                return
            stuck = sum(1 for began in self._busy.values() if now - began > STUCK_S)
            more = min(self._waiting, self.size + stuck - self._started)
            if more <= 0:
                return
            self._started += more
            self._waiting -= more
        for _ in range(more):
            self._start()

    def _work(self) -> None:
        me = threading.get_ident()
        while True:
            job = self._jobs.get()
            if job is None:
                return
            with self._lock:
                self._busy[me] = time.monotonic()
            try:
                job()
            except BaseException:  # a job catches its own; this is a bug of ours: say it
                _log.exception("worker job failed")
            with self._lock:
                del self._busy[me]
                if self._waiting:
                    self._waiting -= 1  # it takes a waiting job next
                else:
                    self._idle += 1

    @property
    def threads(self) -> int:
        return self._started

    def shutdown(self) -> None:
        """Idle threads end now, busy ones after their call; nothing more is accepted."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            started = self._started
        for _ in range(started):
            self._jobs.put(None)


class InstantCall:
    """A call armed for an instant (``LoopScheduler.timer_wall_ms``); ``cancel()`` drops it."""

    __slots__ = ("arg", "cancelled", "first", "fn")

    def __init__(self, fn: Callable[[Any], None], arg: Any, first: Callable[[], None] | None) -> None:
        self.fn = fn
        self.arg = arg
        self.first = first
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def _wall_ms() -> float:
    return time.time_ns() / 1e6


def _monotonic_ms() -> float:
    return time.monotonic_ns() / 1e6


class LoopScheduler(_MonotonicQueue, abc.DisposableBase):
    """Runs actions at wall-clock instants on one asyncio loop thread (``flowcollect-loop``),
    waiting on the monotonic clock. Thread-safe: any thread may schedule; the actions run on the
    loop thread, in due order (ties in scheduling order)."""

    def __init__(self, threads: list[threading.Thread], clock: Clock | None = None) -> None:
        super().__init__()
        self._clock = clock or SystemClock()
        self.loop = asyncio.new_event_loop()
        self._threads = threads
        # _lock guards _thread and _disposed.
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._disposed = False
        self._ident: int | None = None  # the loop thread's, set once it runs
        # Posts from other threads: appended by any thread, drained on the loop thread; _woken
        # says a drain is posted (set by posters, cleared by the drain before it drains).
        self._inbox: deque[Callable[[], None]] = deque()
        self._woken = False
        self._stop_by = 0.0  # how long the loop may wind down: written by stop() before it posts
        # The loop thread only: per epoch-ms instant with a timer armed, the calls due then.
        self._instants: dict[float, list[InstantCall]] = {}
        self._later: list[Callable[[], None]] | None = None  # the instant running: after_instant's
        self._lane_paths: dict[str, Any] | None = None  # lane_paths's, made once
        self._fast_clocks()

    def wall_ms(self) -> float:
        return self._clock.time_ns() / 1e6

    def monotonic_ms(self) -> float:
        return self._clock.monotonic_ns() / 1e6

    def _fast_clocks(self) -> None:
        # The process's own clocks, read without the Clock object's extra call: every lane
        # reads them several times per tick.
        if type(self._clock) is SystemClock:
            self.wall_ms = _wall_ms  # type: ignore[method-assign]
            self.monotonic_ms = _monotonic_ms  # type: ignore[method-assign]

    def lane_paths(self, names: tuple[str, ...]) -> dict[str, Any]:
        """``{name: self.<name>}`` for a lane's cheap paths, made once (the loop thread, or the
        collector's under its lock) and shared by every lane: not six bound methods a lane."""
        paths = self._lane_paths
        if paths is None or tuple(paths) != names:
            paths = self._lane_paths = {name: getattr(self, name, None) for name in names}
        return paths

    def on_loop(self) -> bool:
        return threading.get_ident() == self._ident

    def _ensure(self) -> None:
        with self._lock:
            if self._disposed:
                raise DisposedException()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="flowcollect-loop", daemon=True)
                self._threads.append(self._thread)
                self._thread.start()

    def _run(self) -> None:
        self._ident = threading.get_ident()
        asyncio.set_event_loop(self.loop)
        mark_engine_loop(self.loop)  # readers' clients may live here (readers.base.engine_loop)
        try:
            self.loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                self._wind_down()
            self.loop.close()

    def _wind_down(self) -> None:
        """The loop has stopped: let the readers' closing tasks (``closing_task``: a goodbye to a
        server, each bounded by itself) end within the stop's bound, cancel whatever else is
        still running and let it unwind (bounded), so sockets close and nothing warns."""
        loop = self.loop
        closing = [
            t
            for t in asyncio.all_tasks(loop)
            if not t.done() and t.get_name().startswith(CLOSING_TASK_PREFIX)
        ]
        left = self._stop_by - time.monotonic() - _STOP_MARGIN_S
        if closing and left > 0:
            loop.run_until_complete(asyncio.wait(closing, timeout=left))
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            unwind = min(1.0, max(0.05, self._stop_by - time.monotonic() - _STOP_MARGIN_S))
            loop.run_until_complete(asyncio.wait(pending, timeout=unwind))
        # A pass more: what the unwinding scheduled (a transport's connection_lost closes its socket).
        loop.run_until_complete(asyncio.sleep(0))
        loop.run_until_complete(loop.shutdown_asyncgens())

    def post(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop thread soon (from any thread), in posting order; dropped once
        disposed. Posts from other threads share one wake-up of the loop (a start posting to
        2,000 lanes writes to the loop's self-pipe once, not 2,000 times)."""
        if self._ident is not None and threading.get_ident() == self._ident:
            self.loop.call_soon(self._call, fn)
            return
        self._inbox.append(fn)  # deque.append is atomic
        if self._woken:
            return  # the wake-up already posted drains this one too (it clears the flag first)
        self._woken = True
        # Disposed, or the loop closed meanwhile: nothing runs on it any more (a read that
        # outlived the close deadline comes back to nobody).
        with contextlib.suppress(DisposedException, RuntimeError):
            self._ensure()
            self.loop.call_soon_threadsafe(self._drain_inbox)

    def _drain_inbox(self) -> None:
        self._woken = False
        inbox = self._inbox
        while inbox:
            self._call(inbox.popleft())

    @staticmethod
    def _call(fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # never let one callback's bug end the loop (nor cost others their instant)
            _log.exception("flowcollect loop: a callback failed")

    def schedule(self, action: typing.ScheduledAction[Any], state: Any = None) -> abc.DisposableBase:
        return self._at(self.monotonic_ms(), action, state)

    def schedule_relative(
        self, duetime: typing.RelativeTime, action: typing.ScheduledAction[Any], state: Any = None
    ) -> abc.DisposableBase:
        return self._at(self.monotonic_ms() + max(0.0, self.to_seconds(duetime) * 1000), action, state)

    def schedule_absolute(
        self, duetime: typing.AbsoluteTime, action: typing.ScheduledAction[Any], state: Any = None
    ) -> abc.DisposableBase:
        return self._at(self._due_mono(duetime), action, state)

    def schedule_wall_ms(
        self, due_ms: float, action: typing.ScheduledAction[Any], state: Any = None
    ) -> abc.DisposableBase:
        """``schedule_absolute`` for an epoch-ms instant, without datetimes (a lane's tick)."""
        return self._at(self.monotonic_ms() + (due_ms - self.wall_ms()), action, state)

    def timer_wall_ms(
        self, due_ms: float, fn: Callable[[Any], None], arg: Any, first: Callable[[], None] | None = None
    ) -> InstantCall:
        """On the loop thread only: ``fn(arg)`` at the epoch-ms instant, ``first()`` before it;
        ``cancel()`` the handle (on the loop thread) to drop both. A lane's tick.

        Every call due at one instant runs in one callback of the loop, in the order they were
        armed: one timer per instant, not per lane. Every ``first`` runs before any ``fn``: a
        lane writes its request there (``DataReader.send_batch``), touching as few objects as
        it can, and its tick (``fn``) follows once every due request is out. With a timer per
        lane, the loop took answers between two lanes' timers, and the last lane of 2,000 was
        sampled hundreds of ms late. One small object per armed tick, where an Rx disposable
        costs six, all of which live until the tick (up to an interval) and so reach the
        collector's oldest generation."""
        instants = self._instants
        calls = instants.get(due_ms)
        if calls is None:
            calls = instants[due_ms] = []
            delay_s = (due_ms - self.wall_ms()) / 1000
            self.loop.call_at(self.loop.time() + max(0.0, delay_s), self._instant, due_ms)
        call = InstantCall(fn, arg, first)
        calls.append(call)
        return call

    def after_instant(self, fn: Callable[[], None]) -> None:
        """On the loop thread: within an instant's callback, run ``fn`` in the loop's next pass,
        after every call due at that instant has run and the answers already in are taken in (a
        lane starts its read's task only after every lane's request is written); elsewhere, now."""
        later = self._later
        if later is None:
            fn()
        else:
            later.append(fn)

    def _instant(self, due_ms: float) -> None:
        # Each lane leaves a few objects in flight (its task, its request's future and timer):
        # 2,000 lanes' would trigger young collections, or a full one (0.1-0.2 s over a plant's
        # objects), between two lanes' requests. Held off until every request is out.
        later: list[Callable[[], None]] = []
        self._later = later
        calls = self._instants.pop(due_ms, ())
        with paused_gc():
            try:
                for call in calls:
                    if call.first is not None and not call.cancelled:
                        self._call(call.first)
                for call in calls:
                    if not call.cancelled:
                        self._call(call.fn, call.arg)
            finally:
                self._later = None
        if later:
            # One pass of the loop later: the answers already in (every request went out a
            # while ago) are taken in first, so most reads find theirs and end without waiting.
            self.loop.call_soon(self._call_all, later)

    @classmethod
    def _call_all(cls, fns: list[Callable[[], None]]) -> None:
        for fn in fns:
            cls._call(fn)

    def _at(self, due_mono: float, action: typing.ScheduledAction[Any], state: Any) -> abc.DisposableBase:
        self._ensure()
        cancelled = [False]  # set by the disposable on any thread, read on the loop thread

        def run() -> None:
            if not cancelled[0]:
                action(self, state)

        # The loop's own timer heap waits on time.monotonic(); an injected clock's monotonic
        # time is turned into a delay from now, which both clocks agree on.
        delay_s = max(0.0, (due_mono - self.monotonic_ms()) / 1000)
        when = self.loop.time() + delay_s
        if self.on_loop():
            self.loop.call_at(when, self._call, run)
        else:
            try:
                self.loop.call_soon_threadsafe(self.loop.call_at, when, self._call, run)
            except RuntimeError:  # closed
                raise DisposedException() from None
        return Disposable(lambda: cancelled.__setitem__(0, True))

    def dispose(self) -> None:
        self.stop(0.0)

    def stop(self, timeout_s: float) -> bool:
        """Stop the loop (tasks still running are cancelled) and wait up to ``timeout_s`` for its
        thread to end; False if it did not (a callback blocking the loop)."""
        with self._lock:
            self._disposed = True
            thread = self._thread
        if thread is None:
            self.loop.close()
            return True
        # Read by the loop thread once the stop below reaches it (the post orders the two).
        self._stop_by = time.monotonic() + timeout_s
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.loop.stop)
        if thread is threading.current_thread():
            return True
        thread.join(timeout_s)
        return not thread.is_alive()

    @property
    def thread(self) -> threading.Thread | None:
        return self._thread


class Work(Protocol):
    """How a lane's reader calls are made; every continuation runs on the loop thread (in
    virtual time: the caller's, at once)."""

    def run_sync(self, fn: Callable[[], Any], then: Then) -> None: ...

    def run_async(self, factory: Callable[[], Awaitable[Any]], then: Then) -> asyncio.Future[Any] | None: ...


def _outcome(fn: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    try:
        return fn(), None
    except BaseException as exc:  # handed to the continuation, which decides
        return None, exc


class LoopWork:
    """Synchronous calls on the worker pool, asynchronous ones as tasks on the loop."""

    def __init__(self, scheduler: LoopScheduler, pool: WorkerPool) -> None:
        self._scheduler = scheduler
        self._pool = pool

    def run_sync(self, fn: Callable[[], Any], then: Then) -> None:
        post = self._scheduler.post

        def job() -> None:
            result, exc = _outcome(fn)
            post(lambda: then(result, exc))

        self._pool.submit(job)

    def run_async(self, factory: Callable[[], Awaitable[Any]], then: Then) -> asyncio.Future[Any] | None:
        # On the loop thread: the coroutine starts in this pass of the loop, after every timer
        # due now has fired (so every due lane's request goes out before any answer is handled).
        task = asyncio.ensure_future(factory(), loop=self._scheduler.loop)

        def done(task: asyncio.Future[Any]) -> None:
            if task.cancelled():
                then(None, asyncio.CancelledError())
            else:
                exc = task.exception()
                then(None if exc is not None else task.result(), exc)

        task.add_done_callback(done)
        return task


class InlineWork:
    """Virtual time: every call runs at once on the caller's thread; a coroutine runs to its end
    on a private loop (an asynchronous reader's read is, in virtual time, as instant as a
    synchronous one's unless it passes virtual time itself)."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    def run_sync(self, fn: Callable[[], Any], then: Then) -> None:
        result, exc = _outcome(fn)
        then(result, exc)

    def run_async(self, factory: Callable[[], Awaitable[Any]], then: Then) -> asyncio.Future[Any] | None:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        loop = self._loop

        async def whole() -> Any:
            return await factory()

        result, exc = _outcome(lambda: loop.run_until_complete(whole()))
        then(result, exc)
        return None

    def close(self) -> None:
        if self._loop is not None:
            self._loop.close()
            self._loop = None
