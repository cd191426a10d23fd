"""The collector: contexts' lifecycle, listeners and the lock.

Compiling is ``flowcollect.compile`` (pure); running is ``flowcollect.runtime`` (one lane per
shared resource, all of them on one event loop thread; synchronous reader calls on a bounded
worker pool).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal

from pydantic import ValidationError
from reactivex import abc
from reactivex.internal.exceptions import DisposedException
from reactivex.scheduler import CurrentThreadScheduler

from flowcollect._instants import instant, now_ms
from flowcollect._logs import RateLimitedLog
from flowcollect._sink import WriterSink
from flowcollect.compile import (
    CompiledContext,
    LaneSchedule,
    ReaderSchedule,
    compile_context,
    lane_keys,
    lane_problems,
    lane_schedule,
    reader_schedules,
)
from flowcollect.errors import (
    CollectorClosedError,
    ConfigError,
    ContextAlreadyRunningError,
    UnknownContextError,
)
from flowcollect.listeners import DataCollectionListener
from flowcollect.models import DataCollectionContext, IntervalLimitPolicy
from flowcollect.readers.base import DataReader
from flowcollect.runtime import (
    DEFAULT_WORKERS,
    STEP_MS,
    ChangeState,
    Clock,
    InlineWork,
    Lane,
    LaneScheduler,
    LoopScheduler,
    LoopWork,
    Window,
    WorkerPool,
    asynchronous_reader,
    clock_offset,
    tune_gc,
)
from flowcollect.runtime import branch as context_branch
from flowcollect.stats import (
    CollectorStats,
    ContextStats,
    ReaderCounters,
    ReaderStats,
    ReaderStatsView,
    WriterStats,
)
from flowcollect.values import ValueBatch
from flowcollect.writers.base import DataWriter, writer_problems

__all__ = ["DataCollector"]

State = Literal["running", "paused"]
THREAD_PREFIX = "flowcollect-"
MAX_ENDED = 10_000
"""Stopped contexts whose figures ``stats()`` keeps (the oldest go first)."""
CLOSE_SLACK_S = 0.5
"""How much longer than ``close_timeout_s`` a second ``close()`` (while another thread closes)
waits for the first to end: the bookkeeping after the deadline."""
LANE_READY_S = 1.0
"""How long ``start`` waits at most for its lanes to get ready for their new schedules before
taking its start instant (a lane busy in a read gets ready after the read)."""

UNTIL_STOPPED = 2**62
"""The end instant of a context with ``duration_s=None``: later than any clock reaches."""


def _summed(a: WriterStats, b: WriterStats) -> WriterStats:
    """One writer name's figures over two sinks (a writer replaced by a reload, and the new one)."""
    return WriterStats(
        writer=a.writer,
        written=a.written + b.written,
        failed=a.failed + b.failed,
        queued=a.queued + b.queued,
        dropped=a.dropped + b.dropped,
        oldest_queued_s=max(a.oldest_queued_s, b.oldest_queued_s),
        extra=a.extra,
        received=a.received + b.received,
        in_flight=a.in_flight + b.in_flight,
        dropped_queue=a.dropped_queue + b.dropped_queue,
        dropped_writer=a.dropped_writer + b.dropped_writer,
        dropped_close=a.dropped_close + b.dropped_close,
    )


class _Tally:
    """One run's figures on one lane. Bumped only on the loop thread (in virtual time, the test's) (a
    counter many lanes bumped would lose increments); ``_Run.figures`` sums the lanes' tallies,
    read racily as counters are."""

    __slots__ = ("delivered", "missed_instants", "missed_values", "step_error_values", "step_errors")

    def __init__(self) -> None:
        self.delivered = 0
        self.missed_instants = 0
        self.missed_values = 0
        self.step_errors = 0
        self.step_error_values = 0


_DeviceCall = Callable[[str, str | None], None]


class _Missed:
    """A lane's report of the instants it skipped, to its collector (``Lane``'s ``on_missed``):
    one small object a lane, where a ``functools.partial`` with its bound method, argument tuple
    and keyword dict was 256 bytes."""

    __slots__ = ("collector", "key")

    def __init__(self, collector: DataCollector, key: str) -> None:
        self.collector = collector
        self.key = key

    def __call__(self, schedule: LaneSchedule, instants: list[int]) -> None:
        self.collector._missed(self.key, schedule, instants)


class _Branch:
    """What one run's branch on one lane calls back: one small object with its methods, not a
    closure each (with their cells) for 2,000 lanes. The steps call them on the loop thread (in
    virtual time, the test's). The window and the gate are the run's (``_Run.current_window``,
    ``_Run.is_open``): the same for all its lanes."""

    __slots__ = ("collector", "key", "run", "tally")

    def __init__(self, collector: DataCollector, run: _Run, key: str) -> None:
        self.collector = collector
        self.run = run
        self.key = key
        self.tally = run.tallies[key]  # bumped only on the loop thread

    def deliver(self, batch: ValueBatch) -> None:
        self.collector._deliver(self.tally, batch)

    def fault(self, step: str, values: int, exc: Exception) -> None:
        # A step raised on one batch: that batch is lost, counted and logged; the branch (and so
        # the context) goes on with the next one.
        tally = self.tally
        tally.step_errors += 1
        tally.step_error_values += values
        cid = self.run.context.id
        self.collector._errors.error(
            ("step", cid, step, type(exc)),
            "context %s: %s failed on a batch of %d values from lane %s (lost; the context goes on): %r",
            cid,
            step,
            values,
            self.key,
            exc,
        )

    def ended(self, exc: Exception) -> None:
        # Never expected (every step contains its faults): say so rather than go quiet.
        self.tally.step_errors += 1
        self.collector._log.error(
            "context %s: its branch on lane %s ended: %r; it receives nothing more from it",
            self.run.context.id,
            self.key,
            exc,
        )


class _Run:
    """One started context: its compiled variables, its state and its branches on each lane.

    Who owns what: ``context`` is fixed at construction; ``compiled`` and ``tallies`` (the dict;
    each tally is its lane's) too, except that ``replace_readers`` re-keys both under the
    collector's ``_lock`` when a lane's key changes (after the old lane handed over).
    ``state``, ``changes``, ``branches`` and ``timer`` are written only under the collector's
    ``_lock`` (lanes read ``state`` through the gate, one attribute read). ``window`` is
    replaced whole under the collector's ``_window_lock``, read by lanes without a lock.
    """

    __slots__ = (
        "branches",
        "changes",
        "compiled",
        "context",
        "state",
        "tallies",
        "timer",
        "window",
    )

    def __init__(self, compiled: CompiledContext) -> None:
        self.compiled = compiled
        self.context = compiled.context
        self.window = Window(0, 0)  # nothing until start sets it
        self.state: State = "running"
        self.tallies = {key: _Tally() for key in compiled.specs}
        self.changes = ChangeState()
        self.branches: dict[str, abc.DisposableBase] = {}  # lane key -> this context's branch on it
        self.timer: abc.DisposableBase | None = None

    def current_window(self) -> Window:
        return self.window

    def is_open(self) -> bool:
        return self.state == "running"

    def figures(self, state: str | None = None) -> ContextStats:
        # One pass over the lanes' tallies (a context of 2,000 devices has 2,000 of them).
        delivered = missed = missed_values = step_errors = step_error_values = 0
        for t in list(self.tallies.values()):
            delivered += t.delivered
            missed += t.missed_instants
            missed_values += t.missed_values
            step_errors += t.step_errors
            step_error_values += t.step_error_values
        return ContextStats(
            self.context.id,
            state or self.state,
            delivered,
            missed,
            missed_values,
            step_errors,
            step_error_values,
        )


class _Countdown:
    """Calls ``then`` once, on the thread that counts the last of ``n`` (at once when ``n`` is 0).
    ``_left`` is guarded by ``_lock``; ``then`` runs outside it."""

    __slots__ = ("_left", "_lock", "_then")

    def __init__(self, n: int, then: Callable[[], None]) -> None:
        self._left = n
        self._lock = threading.Lock()
        self._then = then
        if n == 0:
            then()

    def done(self) -> None:
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:
            self._then()


def _thread_factory(
    name: str, threads: list[threading.Thread]
) -> Callable[[Callable[[], None]], threading.Thread]:
    # Named and recorded, so close() can join them and tests can see that none is left.
    def factory(target: Callable[[], None]) -> threading.Thread:
        thread = threading.Thread(target=target, name=name, daemon=True)
        threads.append(thread)
        return thread

    return factory


def _runtime_problems(readers: Mapping[str, DataReader], reader_workers: Any) -> list[str]:
    problems = []
    for key, types in lane_keys(readers.values()).items():
        kinds = {asynchronous_reader(readers[t]) for t in types}
        if len(kinds) > 1:
            problems.append(
                f"lane {key!r} mixes asynchronous readers (read_batch_async) with synchronous "
                f"ones ({', '.join(types)}): give them lanes of their own"
            )
    if isinstance(reader_workers, bool) or not isinstance(reader_workers, int) or reader_workers <= 0:
        problems.append(f"reader_workers must be a positive number of threads, got {reader_workers!r}")
    return problems


class DataCollector:
    """Runs data collection contexts: each variable is read once per due instant by its reader and
    delivered to every writer, for every context that wants it.

    Readers with the same ``lane`` share one lane: reads never overlap and run in deadline
    order. Every lane ticks on one event loop thread; a synchronous reader's calls run on a
    bounded pool of ``reader_workers`` threads (one call at a time per lane), an asynchronous
    reader's (``read_batch_async``) are awaited on the loop. ``scheduler`` (keyword only)
    replaces the real clock and threads, for tests in virtual time: every lane ticks on it and
    readers and writers are called inline. ``clock`` replaces the wall and monotonic clocks of
    the collector's own threads (``flowcollect.runtime.Clock``). ``close_timeout_s`` bounds
    ``close()`` as a whole (one deadline for every lane, reader and writer). ``gc_tuning``: from
    its first ``start`` to ``close`` a real-time collector gives the process's cyclic garbage
    collector larger young generations (``flowcollect.runtime.tune_gc``; process-wide, put back
    at ``close``; ``FLOWCOLLECT_GC=default`` or ``False`` here keeps the interpreter's own).
    """

    def __init__(
        self,
        readers: Iterable[DataReader],
        writers: Iterable[DataWriter],
        listeners: Iterable[DataCollectionListener] = (),
        interval_limit_policy: IntervalLimitPolicy = IntervalLimitPolicy.IGNORE,
        logger: logging.Logger | None = None,
        *,
        scheduler: abc.SchedulerBase | None = None,
        queue_limit: int = 1_000_000,
        close_timeout_s: float = 30.0,
        clock: Clock | None = None,
        reader_workers: int = DEFAULT_WORKERS,
        gc_tuning: bool = True,
    ) -> None:
        self._log = logger or logging.getLogger("flowcollect")
        self._errors = RateLimitedLog(self._log)
        readers = list(readers)
        problems = [f"reader {r!r} is not a DataReader" for r in readers if not isinstance(r, DataReader)]
        self._readers: dict[str, DataReader] = {}
        for reader in readers:
            if isinstance(reader, DataReader):
                if reader.type in self._readers:
                    problems.append(f"two readers have the type {reader.type!r}; each needs its own")
                self._readers[reader.type] = reader
        problems += lane_problems(self._readers.values())
        problems += _runtime_problems(self._readers, reader_workers)
        writers = list(writers)
        problems += [f"writer {w!r} is not a DataWriter" for w in writers if not isinstance(w, DataWriter)]
        names: set[str] = set()
        for writer in writers:
            if isinstance(writer, DataWriter):
                if writer.name in names:
                    problems.append(
                        f"two writers have the name {writer.name!r}; each needs its own (stats and "
                        "metrics name writers by it)"
                    )
                names.add(writer.name)
        if queue_limit <= 0:
            problems.append(f"queue_limit must be positive, got {queue_limit}")
        if not close_timeout_s >= 0:
            problems.append(f"close_timeout_s must be a number of seconds >= 0, got {close_timeout_s}")
        if problems:
            raise ConfigError(problems)
        # Who owns what. Fixed at construction (never rebound, their contents never change):
        # policy, _log, _listeners, _close_timeout_s, _virtual, _timer. Rebound whole (never
        # changed in place) only by replace_readers/replace_writers under _lock, read without it
        # as one attribute read: _readers, _counters (the dict; each ReaderCounters is bumped by
        # one lane at a time), _lane_readers, _lanes, _lane_of, _sinks (each sink guards its own
        # state). The rest says beside it.
        self.policy = IntervalLimitPolicy(interval_limit_policy)
        self._listeners = list(listeners)
        self._close_timeout_s = close_timeout_s
        # Appended by a scheduler when it starts its thread (under that scheduler's lock, on
        # whichever thread first schedules on it); close() iterates a copy. Append and copy are
        # single C calls, so no lock of ours is needed.
        self._threads: list[threading.Thread] = []
        # The lifecycle lock: start, stop, pause, resume, assign_lanes, the duration timer and
        # close take it. It guards _closed, _closing, _runs, _assigned and every run's state,
        # changes, branches and timer. Re-entrant: a listener may call back. The engine never
        # takes it on the loop or a worker (a lane must not wait for a start that waits for the lane).
        self._lock = threading.RLock()
        self._closed = False  # under _lock; read without it by `closed` (one attribute read)
        self._closing: threading.Thread | None = None  # under _lock
        self._closed_event = threading.Event()
        # Under _lock. Lanes read it without: _missed looks one id up, _stepped copies the values
        # (each a single C call on a dict only ever changed under _lock).
        self._runs: dict[int, _Run] = {}
        # Stopped contexts for stats(): the run itself while a read in flight may still deliver to
        # it, then only its figures, so a stopped plan's memory is not kept. Guarded by
        # _ended_lock: a stop adds to it (under _lock), the last lane to retire a run swaps it
        # for its figures (on the loop thread). Held only for the dict's operations.
        self._ended: dict[int, _Run | ContextStats] = {}
        self._ended_lock = threading.Lock()
        self._virtual = scheduler is not None
        self._gc_tuning = gc_tuning
        # Under _lock: set by the first start of a real-time collector, called once by close.
        self._restore_gc: Callable[[], None] | None = None
        self._timer: abc.SchedulerBase = scheduler or LaneScheduler(
            _thread_factory(f"{THREAD_PREFIX}timer", self._threads), clock
        )
        self._scheduler = scheduler  # the virtual one, or None; kept for lanes a reload adds
        self._clock = clock
        self._counters = {rtype: ReaderCounters() for rtype in self._readers}
        self._lane_readers = lane_keys(self._readers.values())
        self._lanes: dict[str, Lane] = {}
        self._lane_of: dict[str, str] = {}
        self._build_lanes(scheduler, clock, reader_workers)
        self._assigned: frozenset[str] | None = None  # under _lock
        # Guards every run's window (start, resume and stop replace it under _lock; a lane that
        # saw the wall clock step shifts them from its own thread) and _wall_offset. Held only
        # for those assignments, never while calling out; taken after _lock, never before it.
        self._window_lock = threading.Lock()
        self._wall_offset = self._offset()
        self._build_sinks(writers, queue_limit)

    def _build_sinks(self, writers: Iterable[DataWriter], queue_limit: int) -> None:
        self._queue_limit = queue_limit
        self._sinks = [
            WriterSink(w, self._log, limit=queue_limit, threaded=not self._virtual) for w in writers
        ]
        # The loop thread's batches waiting for the end of its pass (_deliver appends, the
        # hand-over pops; a deque, as close() drains it too once the loop has ended), and
        # whether a hand-over is posted: the loop thread's.
        self._outbox: deque[ValueBatch] = deque()
        self._outbox_posted = False
        # Sinks replace_writers took out: closing (their figures live), then closed. Appended
        # under _lock; stats() and close() iterate a copy. Their figures stay in stats() under
        # their writer's name (added to a new writer's of the same name): nothing counted is
        # ever lost from the totals.
        self._retired: list[WriterSink] = []

    def _build_lanes(
        self, scheduler: abc.SchedulerBase | None, clock: Clock | None, reader_workers: int
    ) -> None:
        self._loop: LoopScheduler | None = None
        self._pool: WorkerPool | None = None
        self._pool_watch: abc.DisposableBase | None = None  # under _lock
        # One loop thread for every lane's timers, ticks and hand-over, and one bounded pool for
        # the synchronous readers' calls; both start their threads when first given work. Lanes
        # a reload adds run on the same two.
        self._work: LoopWork | InlineWork
        if scheduler is None:
            self._loop = LoopScheduler(self._threads, clock)
            self._pool = WorkerPool(reader_workers, self._threads)
            self._work = LoopWork(self._loop, self._pool)
        else:
            self._work = InlineWork()
        self._lane_calls: tuple[Callable[[float], None], _DeviceCall | None] | None = None
        for key, types in self._lane_readers.items():
            self._lanes[key] = self._new_lane(key, types, self._readers, self._counters)
            for t in types:
                self._lane_of[t] = key

    def _new_lane(
        self,
        key: str,
        types: Sequence[str],
        readers: Mapping[str, DataReader],
        counters: Mapping[str, ReaderCounters],
    ) -> Lane:
        scheduler: abc.SchedulerBase = self._scheduler or self._loop  # type: ignore[assignment]
        calls = self._lane_calls
        if calls is None:  # one bound method of each for every lane (64 bytes a lane each)
            calls = self._lane_calls = (self._stepped, self._device_changed if self._listeners else None)
        return Lane(
            key,
            [readers[t] for t in types],
            scheduler,
            counters,
            self._errors,
            _Missed(self, key),
            calls[0],
            calls[1],
            self._work,
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def check(self, context: DataCollectionContext) -> CompiledContext:
        """Compile ``context`` as ``start`` would and return it (its ``warnings`` name variables
        the interval-limit policy drops); raise ``ConfigError`` listing every problem. Touches
        nothing."""
        compiled = self._compile(self._model(context))
        for warning in compiled.warnings:
            self._log.warning("%s", warning)
        return compiled

    def start(self, context: DataCollectionContext) -> DataCollectionContext:
        """Validate and start a context; return it with ``start_date`` set.

        Raises ``ConfigError`` (naming each bad field, variable or reader) or
        ``ContextAlreadyRunningError`` before anything changes: running contexts are untouched.
        """
        context = self._model(context)
        with self._lock:
            self._ensure_open()
            if context.id in self._runs:
                raise ContextAlreadyRunningError(context.id)
            compiled = self._compile(context)
            for warning in compiled.warnings:
                self._log.warning("%s", warning)
            self._watch_pool()
            if self._gc_tuning and not self._virtual and self._restore_gc is None:
                # Larger young generations for as long as this collector runs: a read's objects
                # in flight die young instead of filling the oldest one (runtime/_gc.py).
                self._restore_gc = tune_gc(freeze=False)
            for listener in self._listeners:
                listener.before_start(self, context)
            run = _Run(compiled)
            self._runs[context.id] = run
            try:
                schedules = self._plan(compiled.specs)
            except BaseException:
                del self._runs[context.id]
                raise
            # Its branches first, here, while the loop is idle: they take nothing before the plan
            # is applied (no lane read carries the context yet, and its window is empty), and
            # once the lanes are ready their lines connect on the loop, which this thread would
            # otherwise share the interpreter with (a start of 2,000 lanes 0.1 s longer).
            run.branches = self._branches(run)
            # Its lanes get ready (their readers hear plan_changed and prepare, per-value objects
            # are built) while they keep serving the running contexts; then the start instant
            # is taken and the plan applied, so the context's first due instant is never one its
            # lanes had no chance to read on time, and nothing is read for it before.
            try:
                self._await_lanes(schedules)
            except BaseException:
                del self._runs[context.id]
                for each in run.branches.values():
                    each.dispose()
                raise
            now = self._now_ms()
            duration = context.duration_s
            until = UNTIL_STOPPED if duration is None else math.ceil(now + duration * 1000)
            with self._window_lock:
                run.window = window = Window(math.floor(now), until)
            context.start_date = instant(window.since_ms)
            context.end_date = None
            with self._ended_lock:
                self._ended.pop(context.id, None)
            self._apply(schedules, window.since_ms)
            if duration is not None:
                run.timer = self._timer.schedule_absolute(instant(until), lambda _s, _t: self._expire(run))
            self._notify("after_start", context)
        return context

    def _watch_pool(self) -> None:
        """Under _lock, from the first start on: every half second the pool starts a worker in
        place of each stuck in a hung read, on the timer thread (the loop must never wait)."""
        pool = self._pool
        if pool is None or self._pool_watch is not None or not isinstance(self._timer, LaneScheduler):
            return
        timer = self._timer

        def watch(_scheduler: Any = None, _state: Any = None) -> None:
            pool.check()
            with contextlib.suppress(DisposedException):  # closed: the watch ends with the timer
                timer.schedule_relative(0.5, watch)

        with contextlib.suppress(DisposedException):
            self._pool_watch = timer.schedule_relative(0.5, watch)

    def _branches(self, run: _Run) -> dict[str, abc.DisposableBase]:
        """The run's branch on each of its lanes. Subscribed inside one trampoline run: Rx
        otherwise sets up and tears down a trampoline for every subscription, which was most
        of the cost of starting a context on 2,000 lanes."""
        branches: dict[str, abc.DisposableBase] = {}
        # Bound once for all the run's lanes: 64 bytes a lane each otherwise.
        window, is_open = run.current_window, run.is_open

        def build(_scheduler: Any = None, _state: Any = None) -> None:
            for key in run.compiled.specs:
                branches[key] = self._branch(run, self._lanes[key], window, is_open)

        trampoline = CurrentThreadScheduler.singleton()
        if trampoline.schedule_required():
            trampoline.schedule(build)
        else:  # already inside one: subscriptions run at once
            build()
        return branches

    def _branch(
        self,
        run: _Run,
        lane: Lane,
        window: Callable[[], Window] | None = None,
        is_open: Callable[[], bool] | None = None,
    ) -> abc.DisposableBase:
        """The run's branch on ``lane``: for_context -> gate -> report_changes, fused in one Rx
        operator (``runtime.branch``: each Rx layer costs a lane about 1.3 KB), into the sink."""
        calls = _Branch(self, run, lane.key)
        return lane.subject.pipe(
            context_branch(
                run.context.id, window or run.current_window, is_open or run.is_open, run.changes, calls.fault
            ),
        ).subscribe(on_next=calls.deliver, on_error=calls.ended)

    def stop(self, context_id: int) -> DataCollectionContext:
        """Stop a running or paused context; return it with ``end_date`` set."""
        with self._lock:
            self._ensure_open()
            return self._stop(self._run(context_id))

    def pause(self, context_id: int) -> DataCollectionContext:
        """Close the context's gate; its variables stop being read unless another context needs them."""
        return self._set_state(context_id, "paused")

    def resume(self, context_id: int) -> DataCollectionContext:
        """Open the context's gate again; its variables are read from the next due instant."""
        return self._set_state(context_id, "running")

    def assign_lanes(self, keys: Iterable[str] | None) -> None:
        """Run only these lanes' reads (``None``: all, the default). May change at any time: a
        lane no longer assigned stops reading from its next tick (its readers hear an empty
        ``plan_changed``), and its contexts simply get nothing from it; keys of lanes this
        collector does not have are ignored (another member's)."""
        with self._lock:
            self._ensure_open()
            self._assigned = None if keys is None else frozenset(keys)
            since = math.floor(self._now_ms())
            for key, lane in self._lanes.items():
                lane.assign(self._assigned is None or key in self._assigned, since)

    def lanes_stopped(self, keys: Iterable[str]) -> frozenset[str]:
        """Those of ``keys`` this collector reads nothing on any more: not assigned, and the read
        that was in flight when ``assign_lanes`` took them away has ended (``assign_lanes``
        returns at once; a group gives a lane's key back only once it is here). A lane closed
        with the collector counts once its last read has ended (or the close deadline abandoned
        it); a key of a lane this collector does not have counts as stopped."""
        lanes = self._lanes  # fixed at construction: no lock, so a close in progress never blocks this
        return frozenset(key for key in keys if key not in lanes or lanes[key].stopped)

    def lanes(self) -> dict[str, tuple[str, ...]]:
        """Lane key -> the types of the readers on it (every reader of the collector)."""
        return dict(self._lane_readers)

    # -- replacing readers and writers while running (a reload) ------------------------------

    def replace_writers(self, writers: Iterable[DataWriter], timeout_s: float | None = None) -> list[str]:
        """Make ``writers`` the collector's writers while it runs; return the names of those
        taken out.

        A writer object already in use keeps its sink as it is (queue, thread, figures, spool);
        a new object gets a sink of its own from the next batch on. One no longer listed is
        taken out: the lanes stop handing it batches (each batch goes to either the old writer
        or the new one, never both, never neither), then it writes what is queued, flushes and
        closes within ``timeout_s`` (default ``close_timeout_s``), what it could not store
        counted dropped as at close. Its figures stay in ``stats()`` under its name, added to a
        new writer's of the same name: every value is still counted once. A new writer with
        the name of one taken out is told first (``DataWriter.take_over``): a CSV writer on the
        same file continues it; a spooled writer on the same folder opens it once the old one
        has closed and sends what it left there, acknowledged to the old one's figures.

        Raises ``ConfigError`` before anything changes: not a writer, two writers with one
        name, or a running context a new writer refuses (``writer_problems``).
        """
        writers = list(writers)
        with self._lock:
            self._ensure_open()
            problems = [f"writer {w!r} is not a DataWriter" for w in writers if not isinstance(w, DataWriter)]
            names = [w.name for w in writers if isinstance(w, DataWriter)]
            problems += [
                f"two writers have the name {n!r}; each needs its own"
                for n in sorted({n for n in names if names.count(n) > 1})
            ]
            if not problems:
                specs = [s for run in self._runs.values() for ss in run.compiled.specs.values() for s in ss]
                problems += writer_problems(writers, specs)
            if problems:
                raise ConfigError(problems)
            kept = {id(sink.writer): sink for sink in self._sinks}
            wanted = {id(w) for w in writers}
            out = [sink for sink in self._sinks if id(sink.writer) not in wanted]
            # A new writer replacing one of its name is told before it gets a batch (a CSV
            # writer then continues the file instead of replacing it at its first write).
            leaving = {sink.name: sink.writer for sink in out}
            for w in writers:
                if id(w) not in kept and w.name in leaving:
                    w.take_over(leaving[w.name])
            self._sinks = [
                kept.get(id(w))
                or WriterSink(w, self._log, limit=self._queue_limit, threaded=not self._virtual)
                for w in writers
            ]
            self._retired.extend(out)
            # A hand-over of the loop's pass running now may hold the old list: once the loop has
            # run what is posted now, none does, and the sinks taken out get nothing more.
            self._await_loop()
        deadline = time.monotonic() + (self._close_timeout_s if timeout_s is None else timeout_s)
        for sink in out:
            sink.begin_close()
        for sink in out:
            sink.close(deadline)
        return [sink.name for sink in out]

    def replace_readers(self, readers: Iterable[DataReader]) -> list[str]:
        """Make ``readers`` the collector's readers while it runs; return the keys of the lanes
        replaced, added or removed.

        A lane whose readers are the very objects it has now is not touched (its connections,
        its schedule, its thread). A lane with any other reader (a new object for one of its
        types, a type added to it or gone) is replaced whole: a new lane with the given readers
        gets ready (readers opened and told their plan) while the old one ticks on; then the old
        lane hands over on its own thread, after every tick due before the hand-over (a read in
        flight delivers first), and closes its readers; the new lane reads the instants after
        it. So a running context on a replaced lane gets each instant once: from the old readers
        up to the hand-over, from the new ones after it (a new reader slow to answer makes its
        first instants late, or counted missed, as any read would). A reader's figures go on
        under its type.

        Raises ``ConfigError`` before anything changes: not readers, two of one type, a bad lane
        key, a reader object of a replaced lane given again (that lane closes it), or a running
        context the new readers would not collect as now (a variable refused, or compiled
        otherwise: another interval limit, natural type or lane): stop it first, start it after.
        """
        with self._lock:
            self._ensure_open()
            new, lanes, changed, moved = self._readers_plan(list(readers))
            if not changed:
                return []
            # A type's figures go on (its old lane has handed over before the new one reads).
            counters = {t: self._counters[t] if t in self._counters else ReaderCounters() for t in new}
            fresh = {key: self._new_lane(key, lanes[key], new, counters) for key in changed if key in lanes}
            old = {key: self._lanes[key] for key in changed if key in self._lanes}
            self._readers, self._counters, self._lane_readers = new, counters, lanes
            self._lane_of = {t: key for key, types in lanes.items() for t in types}
            self._lanes = {key: fresh.get(key) or self._lanes[key] for key in lanes}
            since = math.floor(self._now_ms())
            for key, lane in fresh.items():
                if self._assigned is not None and key not in self._assigned:
                    lane.assign(False, since)
            schedules = self._plan(fresh)
            self._await_lanes(schedules)  # the new lanes get ready while the old ones tick on
            since = math.floor(self._now_ms())
            for key, lane in old.items():
                branches = [run.branches[key] for run in self._runs.values() if key in run.branches]
                self._retire_lane(lane, branches, since)
            for run in self._runs.values():
                if moved:
                    self._move_run(run, moved)
                for key, lane in fresh.items():
                    if key in run.branches:
                        run.branches[key] = self._branch(run, lane)
            self._apply(schedules, since)
        self._log.info("lanes replaced, added or removed: %s", ", ".join(changed))
        return changed

    def _readers_plan(
        self, readers: list[DataReader]
    ) -> tuple[dict[str, DataReader], dict[str, tuple[str, ...]], list[str], dict[str, str]]:
        """Under the lock: the readers by type, their lanes, the keys of the lanes to replace,
        add or remove, and the keys that change (old -> new: the same reader types on a lane
        with another key); ``ConfigError`` with every problem (see ``replace_readers``)."""
        problems = [f"reader {r!r} is not a DataReader" for r in readers if not isinstance(r, DataReader)]
        new: dict[str, DataReader] = {}
        for reader in readers:
            if isinstance(reader, DataReader):
                if reader.type in new:
                    problems.append(f"two readers have the type {reader.type!r}; each needs its own")
                new[reader.type] = reader
        problems += lane_problems(new.values())
        if problems:
            raise ConfigError(problems)
        lanes = lane_keys(new.values())
        before = {key: [self._readers[t] for t in types] for key, types in self._lane_readers.items()}
        after = {key: [new[t] for t in types] for key, types in lanes.items()}
        changed = sorted(
            key
            for key in before.keys() | after.keys()
            if len(before.get(key, ())) != len(after.get(key, ()))
            or any(a is not b for a, b in zip(before[key], after[key], strict=True))
        )
        # A replaced lane with the same reader types under another key (a Modbus port changed):
        # its running contexts move to the new key.
        new_key = {types: key for key, types in lanes.items()}
        moved = {
            key: new_key[types]
            for key, types in self._lane_readers.items()
            if key in changed and new_key.get(types, key) != key
        }
        closing = {id(r) for key in changed for r in before.get(key, ())}
        problems += [
            f"reader {r.type!r}: this object is the running reader of lane {key!r}, which is "
            "replaced (and closes it): give a new object"
            for key in changed
            for r in after.get(key, ())
            if id(r) in closing
        ]
        for run in self._runs.values():
            cid = run.context.id
            try:
                again = compile_context(run.context, new, self.policy)
            except ConfigError as exc:
                problems += [f"context {cid} (running): {p}" for p in exc.problems]
                continue
            now = {moved.get(k, k): specs for k, specs in run.compiled.specs.items()}
            if dict(again.specs) != now or again.dropped != run.compiled.dropped:
                problems.append(
                    f"context {cid} (running): the new readers would collect it otherwise (its "
                    "variables' lanes, types or interval limits): stop it first, start it after"
                )
        if problems:
            raise ConfigError(problems)
        return new, lanes, changed, moved

    @staticmethod
    def _move_run(run: _Run, moved: Mapping[str, str]) -> None:
        """Under the lock, after the old lanes handed over: a run's lanes under their new keys
        (its variables, its tallies and its branches; the specs stay the very objects)."""
        run.compiled = dataclasses.replace(
            run.compiled, specs={moved.get(k, k): specs for k, specs in run.compiled.specs.items()}
        )
        run.tallies = {moved.get(k, k): tally for k, tally in run.tallies.items()}
        run.branches = {moved.get(k, k): branch for k, branch in run.branches.items()}

    def _retire_lane(self, lane: Lane, branches: list[abc.DisposableBase], since_ms: int) -> None:
        """A replaced lane's end: on the loop, as the lane's job, once every instant due at or
        before ``since_ms`` is read (a read in flight delivers first; a tick due but not yet
        fired is read then, ``Lane.hand_over``), its contexts' branches go and its readers
        close; past a bound (a read hung) it is abandoned (nothing more from it) and its readers
        let go. The new lane reads the instants after ``since_ms``: each instant is read by
        exactly one of the two."""

        def failed(rtype: str, step: str, exc: Exception) -> None:
            self._log.error("reader %r failed to %s: %s", rtype, step, exc)

        done = threading.Event()

        def finish() -> None:
            try:
                for branch in branches:
                    branch.dispose()
            finally:
                lane.close_readers(failed, done.set)

        if self._virtual or not lane.used:
            finish()  # nothing ever posted to it: nothing in flight
        else:
            lane.hand_over(since_ms, finish)
            if not done.wait(max(LANE_READY_S, self._close_timeout_s / 2)):
                lane.abandon(failed)
                for branch in branches:
                    branch.dispose()

    def _await_loop(self) -> None:
        """Wait (bounded) until the loop has run an action posted now: what it was doing before
        (a pass's hand-over to the sinks) is over. Deliveries happen only on the loop."""
        loop = self._loop
        if loop is None or threading.current_thread().name.startswith(THREAD_PREFIX):
            return
        event = threading.Event()
        with contextlib.suppress(DisposedException):  # closed: nothing delivers any more
            loop.post(event.set)
            event.wait(LANE_READY_S)

    @property
    def scheduler(self) -> abc.SchedulerBase:
        """The collector's Rx scheduler (its timer: durations, and anything a pipeline times on
        the collector's clock, such as a pause schedule). Virtual in virtual-time tests."""
        return self._timer

    def close(self) -> None:
        """Stop every context, write what is queued, close writers and readers, end every thread.

        Returns within ``close_timeout_s`` (plus a small constant) whatever a reader or writer
        does: one deadline for the whole collector. A writer still busy at the deadline is left
        behind and the values it had not stored are counted dropped. Idempotent (a call while
        another is closing returns when that one is done); every other call raises
        ``CollectorClosedError`` afterwards.
        """
        with self._lock:
            if self._closed:
                closing = self._closing
            else:
                closing = None
                self._closing = threading.current_thread()
                self._notify("before_close")
                for run in list(self._runs.values()):
                    self._stop(run)
                self._closed = True
        if closing is not None:
            # Closed by another call: return once it is done, as it does. Not when that call is on
            # this thread (a listener or signal handler within it) or one of the collector's own
            # threads, which it may be waiting for.
            me = threading.current_thread()
            if closing is not me and not me.name.startswith(THREAD_PREFIX):
                self._closed_event.wait(self._close_timeout_s + CLOSE_SLACK_S)
            return
        try:
            self._end_threads()
        finally:
            with self._lock:
                restore, self._restore_gc = self._restore_gc, None
            if restore is not None:
                restore()
            self._closed_event.set()

    def _end_threads(self) -> None:
        # One deadline for the whole close, whatever any plugin does: lanes still reading get the
        # first half of it (the values of a read in flight must reach the writers), writers the
        # rest to write what is queued, flush and close; they keep writing their queues meanwhile.
        timeout = self._close_timeout_s
        begun = time.monotonic()
        deadline = begun + timeout
        readers_deadline = begun + timeout / 2

        def failed(rtype: str, step: str, exc: Exception) -> None:
            self._log.error("reader %r failed to %s: %s", rtype, step, exc)

        me = threading.current_thread()
        if isinstance(self._timer, LaneScheduler):
            self._timer.dispose()
        self._close_lanes(readers_deadline, failed)
        if self._pool is not None:
            self._pool.shutdown()
        # The loop itself ends at once (nothing on it blocks); the whole deadline is its bound.
        if self._loop is not None and not self._loop.stop(max(0.0, deadline - time.monotonic())):
            self._log.warning(
                "the flowcollect loop did not end within %s s (a callback blocking it?)", timeout / 2
            )
        if isinstance(self._work, InlineWork):
            self._work.close()
        self._hand_over()  # what the loop's last pass delivered, before the writers close
        # One deadline for all of them: several stuck readers must not multiply the wait.
        for thread in list(self._threads):
            if thread is not me and thread.ident is not None:
                thread.join(max(0.0, readers_deadline - time.monotonic()))
                if thread.is_alive():
                    self._log.warning(
                        "%s did not end within %s s (a reader stuck in a read?)", thread.name, timeout / 2
                    )
        # Every sink is asked first, then awaited: a stuck writer costs the others nothing.
        sinks = [*self._sinks, *self._retired]  # a retired one still closing: the same deadline
        for sink in sinks:
            sink.begin_close()
        for sink in sinks:
            sink.close(deadline)
        self._notify("after_close")

    def _close_lanes(self, deadline: float, failed: Callable[[str, str, Exception], None]) -> None:
        # Each lane closes its readers as its last job, after the read in flight (its values
        # pass through first); one event for all of them, set by the last.
        finishing = [lane for lane in self._lanes.values() if not self._virtual and lane.used]
        for lane in self._lanes.values():
            if self._virtual or not lane.used:
                lane.close_readers(failed)
        done: set[str] = set()  # keys of the lanes closed: added on the loop thread
        all_done = threading.Event()
        countdown = _Countdown(len(finishing), all_done.set)
        for lane in finishing:

            def finished(lane: Lane = lane) -> None:
                done.add(lane.key)
                countdown.done()

            lane.post(lambda lane=lane, finished=finished: lane.close_readers(failed, finished))  # type: ignore[misc]
        all_done.wait(max(0.0, deadline - time.monotonic()))
        for lane in finishing:
            # Past the deadline a lane still busy is abandoned: it reads nothing more, and its
            # readers let go of their devices from here.
            if lane.key not in done:
                lane.abandon(failed)

    def flush(self, timeout_s: float | None = None) -> bool:
        """Hand everything queued to the writers, flush them and wait until they acknowledged it;
        False if ``timeout_s`` (one bound for all writers) passed first."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for sink in self._sinks:
            sink.begin_flush()
        return all([sink.flush(deadline=deadline) for sink in self._sinks])

    def __enter__(self) -> DataCollector:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- state -------------------------------------------------------------------------------

    def is_running(self) -> bool:
        """True while the collector is open and has a started context (running or paused)."""
        with self._lock:
            return not self._closed and bool(self._runs)

    def is_context_running(self, context_id: int) -> bool:
        """True while the context is started and not paused."""
        with self._lock:
            run = self._runs.get(context_id)
            return run is not None and run.state == "running"

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def readers(self) -> Mapping[str, DataReader]:
        return dict(self._readers)

    @property
    def writers(self) -> Sequence[DataWriter]:
        return [sink.writer for sink in self._sinks]

    def contexts(self) -> dict[int, DataCollectionContext]:
        """The started contexts (running or paused) by id."""
        with self._lock:
            return {cid: run.context for cid, run in self._runs.items()}

    def schedules(self) -> dict[str, ReaderSchedule]:
        """Each reader's current due plan (its lane's GCD tick and hyperperiod, its intervals),
        for the readers with something to read now."""
        with self._lock:
            out: dict[str, ReaderSchedule] = {}
            for lane in self._lanes.values():
                out.update(reader_schedules(lane.planned))
            return out

    def stats(self) -> CollectorStats:
        """A snapshot of every counter: per reader, per writer, per context."""
        with self._lock:
            with self._ended_lock:
                ended_runs = list(self._ended.items())
            contexts = {
                cid: ended if isinstance(ended, ContextStats) else ended.figures("stopped")
                for cid, ended in ended_runs
            }
            for cid, run in self._runs.items():
                contexts[cid] = run.figures()
            # One consistent set of tables (replace_readers rebinds them under the lock).
            all_counters, lanes, lane_of = self._counters, self._lanes, self._lane_of
            all_readers = self._readers
        # Each reader's figures (percentiles, the plugin's own counters, its lane's period) are
        # computed when first looked at, outside the lock (a scrape must not hold up a start or
        # a stop): stats() of 2,000 lanes costs one dict entry per reader here, not a snapshot.
        touched = {rtype: lane for rtype in all_counters if (lane := lanes[lane_of[rtype]]).touched}

        def make(rtype: str, lane: Lane) -> ReaderStats:
            return self._reader_stats(all_readers[rtype], all_counters[rtype], rtype, lane)

        writers = {s.name: s.snapshot() for s in self._sinks}
        for sink in list(self._retired):
            before = sink.snapshot()
            now = writers.get(sink.name)
            writers[sink.name] = before if now is None else _summed(now, before)
        return CollectorStats(ReaderStatsView(touched, make), writers, contexts)

    @staticmethod
    def _reader_stats(reader: DataReader, counters: ReaderCounters, rtype: str, lane: Lane) -> ReaderStats:
        try:
            extra = reader.stats()
        except Exception:
            extra = {}
        schedule = lane.planned  # one attribute read: the schedule whole
        return counters.snapshot(rtype, schedule.period_ms if schedule else None, extra, lane.key)

    # -- internals ---------------------------------------------------------------------------

    def _ensure_open(self) -> None:
        if self._closed:
            raise CollectorClosedError()

    def _run(self, context_id: int) -> _Run:
        run = self._runs.get(context_id)
        if run is None:
            raise UnknownContextError(context_id)
        return run

    def _now_ms(self) -> float:
        return now_ms(self._timer)

    @staticmethod
    def _model(context: Any) -> DataCollectionContext:
        if isinstance(context, DataCollectionContext):
            return context
        try:
            return DataCollectionContext.model_validate(context)
        except ValidationError as exc:
            raise ConfigError(
                [f"context field {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
            ) from None

    def _compile(self, context: DataCollectionContext) -> CompiledContext:
        compiled = compile_context(context, self._readers, self.policy)
        # The writers see the compiled variables too (a topic template a variable cannot fill):
        # refused here, before anything starts.
        problems = writer_problems(
            [sink.writer for sink in self._sinks], [s for specs in compiled.specs.values() for s in specs]
        )
        if problems:
            raise ConfigError(problems)
        return compiled

    def _plan(self, touched: Iterable[str]) -> dict[str, LaneSchedule | None]:
        """The schedule of each touched lane over the running contexts (None: nothing to read)."""
        running = [run.compiled for run in self._runs.values() if run.state == "running"]
        return {key: lane_schedule(key, running, self._lane_readers.get(key, ())) for key in set(touched)}

    def _apply(self, schedules: Mapping[str, LaneSchedule | None], since_ms: int) -> None:
        """Hand each lane its new schedule; instants due after ``since_ms`` are read even if a
        busy lane makes them late."""
        for key, schedule in schedules.items():
            self._lanes[key].plan(schedule, since_ms)

    def _await_lanes(self, schedules: Mapping[str, LaneSchedule | None]) -> None:
        # Bounded: a lane busy in a long read (or a reader slow to prepare) delays a start by
        # at most LANE_READY_S. Never on the collector's own threads (a lane cannot wait for
        # itself), nor in virtual time (nothing runs until the clock is advanced).
        # One event for all of them (the last lane ready sets it): a start of many lanes waits
        # once, not once per lane.
        if self._virtual or threading.current_thread().name.startswith(THREAD_PREFIX):
            return
        wanted = [(self._lanes[key], s) for key, s in schedules.items() if s is not None]
        if not wanted:
            return
        event = threading.Event()
        countdown = _Countdown(len(wanted), event.set)
        for lane, schedule in wanted:
            lane.prepare(schedule, countdown.done)
        event.wait(LANE_READY_S)

    def _replan(self, touched: Iterable[str]) -> None:
        self._apply(self._plan(touched), math.floor(self._now_ms()))

    def _missed(self, key: str, schedule: LaneSchedule, instants: list[int]) -> None:
        """On lane ``key``'s thread: due instants it could not serve (still busy), per context."""
        runs = self._runs
        for t in instants:
            phase = schedule.phase_at(t)
            if phase is None:
                continue
            counted: set[int] = set()
            for rp in phase.readers:
                for d in rp.deliveries:
                    run = runs.get(d.context_id)
                    if run is None or run.state != "running":
                        continue
                    window = run.window
                    tally = run.tallies.get(key)
                    if tally is None or not window.since_ms < t < window.until_ms:
                        continue
                    tally.missed_values += len(d.variables)
                    if d.context_id not in counted:
                        counted.add(d.context_id)
                        tally.missed_instants += 1

    def _offset(self) -> float | None:
        return clock_offset(self._timer)

    def _stepped(self, offset: float) -> None:
        """A lane saw the wall clock step to ``offset`` (wall minus monotonic ms, seen twice):
        move every run's bounds by the step, once (the first lane to notice), so contexts keep
        their values on the new timeline."""
        with self._window_lock:
            before = self._wall_offset
            if before is None or abs(offset - before) <= STEP_MS:
                return
            self._wall_offset = offset
            delta = round(offset - before)
            for run in list(self._runs.values()):
                w = run.window
                until = w.until_ms if w.until_ms == UNTIL_STOPPED else w.until_ms + delta
                run.window = Window(w.since_ms + delta, until)

    def _deliver(self, tally: _Tally, batch: ValueBatch) -> None:
        # On the loop thread (in virtual time: the test's). The batches of one pass of the loop
        # go to the sinks together, once the pass has run (``_hand_over``).
        tally.delivered += len(batch)
        loop = self._loop
        if loop is None:
            self._put((batch,))
            return
        self._outbox.append(batch)
        if not self._outbox_posted:
            self._outbox_posted = True
            loop.post(self._hand_over)

    def _hand_over(self) -> None:
        """Everything delivered since the last hand-over, to every sink at once. On the loop
        thread; once more on close()'s after the loop has ended (what its last pass left)."""
        self._outbox_posted = False
        outbox = self._outbox
        batches = []
        while outbox:
            batches.append(outbox.popleft())
        if batches:
            self._put(batches)

    def _put(self, batches: Sequence[ValueBatch]) -> None:
        for sink in self._sinks:
            try:
                sink.put_many(batches)
            except Exception as exc:  # never let one sink's bug end the stream for the others
                self._errors.error(("sink", sink.name, str(exc)), "writer %s: %s", sink.name, exc)

    def _set_state(self, context_id: int, state: State) -> DataCollectionContext:
        with self._lock:
            self._ensure_open()
            run = self._run(context_id)
            if run.state != state:
                change = "resume" if state == "running" else "pause"

                def pending() -> bool:
                    # A listener may have stopped the context, closed the collector or made
                    # the change itself: the others then hear no half of a pair.
                    return not self._closed and self._runs.get(context_id) is run and run.state != state

                self._notify(f"before_{change}", run.context, pending)
                if not pending():
                    return run.context
                if state == "running":
                    # A late tick of an instant at or before the resume is not the context's.
                    since = math.floor(self._now_ms())
                    with self._window_lock:
                        run.window = Window(since, run.window.until_ms)
                    run.changes = ChangeState()
                    self._resubscribe(run)
                run.state = state
                self._replan(run.compiled.specs)
                self._notify(f"after_{change}", run.context)
            return run.context

    def _resubscribe(self, run: _Run) -> None:
        # A fresh change state means fresh branches: report_changes holds its state object.
        old = run.branches
        run.branches = self._branches(run)
        for branch in old.values():
            branch.dispose()

    def _stop(self, run: _Run) -> DataCollectionContext:
        context = run.context
        self._notify("before_stop", context)
        if run.timer is not None:
            run.timer.dispose()
        del self._runs[context.id]
        with self._ended_lock:
            self._ended[context.id] = run
            while len(self._ended) > MAX_ENDED:  # contexts with ever new ids must not grow memory
                del self._ended[next(iter(self._ended))]
        # run.state stays as it was: the gate of a paused run stays closed after the stop (a
        # late tick under a new run of the same id must not reach it); a running one's stays
        # open for the read in flight.
        self._replan(run.compiled.specs)
        now = math.floor(self._now_ms())
        # No instant after this one; a read in flight is of an instant inside the run, so its
        # values are still delivered, and the branch goes once each lane has finished it.
        with self._window_lock:
            w = run.window
            run.window = Window(w.since_ms, min(w.until_ms, now + 1))
        context.end_date = instant(min(now, w.until_ms))
        self._retire(run)
        self._notify("after_stop", context)
        return context

    def _retire(self, run: _Run) -> None:
        """Each lane of a stopped run disposes its branch on its own thread, after the read in
        flight; the last of them swaps the run in ``_ended`` for its figures (final by then)."""
        cid = run.context.id

        def finish() -> None:
            with self._ended_lock:
                if self._ended.get(cid) is run:  # not evicted, nor replaced by a later run's
                    self._ended[cid] = run.figures("stopped")

        # Fixed since the stop: only a resume, of a run still started, replaces them.
        branches = run.branches
        retired = _Countdown(len(branches), finish)
        for key, branch in branches.items():

            def dispose(branch: abc.DisposableBase = branch) -> None:
                branch.dispose()
                retired.done()

            self._lanes[key].post(dispose)

    def _expire(self, run: _Run) -> None:
        with self._lock:
            if self._closed or self._runs.get(run.context.id) is not run:
                return  # stopped already, or a new run under the same id
            early_ms = run.window.until_ms - self._now_ms()
            if early_ms > 0:
                # Before its end on the wall clock (the timer waits on the monotonic one; a clock
                # slewed or stepped since): stopped now, the stop would cut the last instant.
                run.timer = self._timer.schedule_relative(early_ms / 1000, lambda _s, _t: self._expire(run))
                return
            self._log.info("context %s reached its duration of %s s", run.context.id, run.context.duration_s)
            self._stop(run)

    def _device_changed(self, reader: str, error: str | None) -> None:
        """On the lane's job (a worker, or the loop): ``reader``'s reads went from some value to
        none (``error`` set) or back. The listeners hear it on the timer thread: a listener never
        runs on the loop or a worker."""
        event = "device_up" if error is None else "device_down"
        args: tuple[Any, ...] = (self, reader) if error is None else (self, reader, error)

        def tell(_scheduler: abc.SchedulerBase, _state: Any) -> None:
            for listener in self._listeners:
                try:
                    getattr(listener, event)(*args)
                except Exception:
                    self._log.exception("listener %r failed in %s", listener, event)

        with contextlib.suppress(DisposedException):  # closed: nobody to tell any more
            self._timer.schedule(tell)

    def _notify(
        self,
        event: str,
        context: DataCollectionContext | None = None,
        still: Callable[[], bool] | None = None,
    ) -> None:
        """Tell every listener, in order (each exception logged); with ``still``, only while it
        holds."""
        args: tuple[Any, ...] = (self,) if context is None else (self, context)
        for listener in self._listeners:
            if still is not None and not still():
                return
            try:
                getattr(listener, event)(*args)
            except Exception:
                self._log.exception("listener %r failed in %s", listener, event)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._runs)} contexts"
        writers = [s.name for s in self._sinks]
        return f"DataCollector(readers={sorted(self._readers)}, writers={writers}, {state})"
