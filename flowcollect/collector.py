"""The collector: contexts' lifecycle, listeners and the lock; the graph lives in ``_graph``."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal

from pydantic import ValidationError
from reactivex import Observable, abc
from reactivex import operators as ops
from reactivex.scheduler import EventLoopScheduler
from reactivex.subject import Subject

from flowcollect._clock import ScheduleRef, instant, now_ms, ticks
from flowcollect._graph import TickBatch, for_context, gate, read_due
from flowcollect._logs import RateLimitedLog
from flowcollect._schedule import ReaderSchedule, Wanted
from flowcollect._sink import WriterSink
from flowcollect.errors import (
    CollectorClosedError,
    ConfigError,
    ContextAlreadyRunningError,
    UnknownContextError,
)
from flowcollect.listeners import DataCollectionListener
from flowcollect.models import DataCollectionContext, IntervalLimitPolicy
from flowcollect.readers.base import DataReader
from flowcollect.stats import CollectorStats, ContextStats, ReaderCounters
from flowcollect.values import CollectedVariable
from flowcollect.writers.base import DataWriter

__all__ = ["DataCollector"]

State = Literal["running", "paused"]
THREAD_PREFIX = "flowcollect-"
MAX_ENDED = 10_000
"""Stopped contexts whose figures ``stats()`` keeps (the oldest go first)."""


class _Run:
    """One started context: what it wants from each reader, its state and its graph branch."""

    __slots__ = ("context", "delivered", "since_ms", "state", "subscription", "timer", "until_ms", "wanted")

    def __init__(
        self, context: DataCollectionContext, wanted: dict[str, list[Wanted]], until_ms: int
    ) -> None:
        self.context = context
        self.wanted = wanted
        self.until_ms = until_ms
        self.since_ms = 0  # the instant of the start, then of the last resume: only later ones count
        self.state: State = "running"
        self.delivered = 0
        self.subscription: abc.DisposableBase | None = None
        self.timer: abc.DisposableBase | None = None


class _Lane:
    """One reader with its schedule, its thread (an Rx scheduler) and its counters."""

    def __init__(self, reader: DataReader, scheduler: abc.SchedulerBase, owned: bool) -> None:
        self.reader = reader
        self.scheduler = scheduler
        self.owned = owned
        self.ref = ScheduleRef()
        self.counters = ReaderCounters()


def _thread_factory(
    name: str, threads: list[threading.Thread]
) -> Callable[[Callable[[], None]], threading.Thread]:
    # Named and recorded, so close() can join them and tests can see that none is left.
    def factory(target: Callable[[], None]) -> threading.Thread:
        thread = threading.Thread(target=target, name=name, daemon=True)
        threads.append(thread)
        return thread

    return factory


class DataCollector:
    """Runs data collection contexts: each variable is read once per due instant by its reader and
    delivered to every writer, for every context that wants it.

    ``scheduler`` (keyword only) replaces the real clock and threads, for tests in virtual time:
    every reader ticks on it and writers are called inline.
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
        writers = list(writers)
        problems += [f"writer {w!r} is not a DataWriter" for w in writers if not isinstance(w, DataWriter)]
        if queue_limit <= 0:
            problems.append(f"queue_limit must be positive, got {queue_limit}")
        if problems:
            raise ConfigError(problems)
        self.policy = IntervalLimitPolicy(interval_limit_policy)
        self._listeners = list(listeners)
        self._scheduler = scheduler
        self._close_timeout_s = close_timeout_s
        self._threads: list[threading.Thread] = []
        self._lock = threading.RLock()
        self._closed = False
        self._closing: threading.Thread | None = None
        self._closed_event = threading.Event()
        self._runs: dict[int, _Run] = {}
        # Stopped contexts for stats(): the run itself while a read in flight may still deliver to
        # it, then only its figures, so a stopped plan's memory is not kept.
        self._ended: dict[int, _Run | ContextStats] = {}
        self._lanes: dict[str, _Lane] = {}
        self._timer: abc.SchedulerBase = scheduler or EventLoopScheduler(
            _thread_factory(f"{THREAD_PREFIX}timer", self._threads)
        )
        self._sinks = [
            WriterSink(w, self._log, limit=queue_limit, threaded=scheduler is None) for w in writers
        ]
        # Readers join the merge as they are first used; contexts tap the hub.
        self._hub: Subject[TickBatch] = Subject()
        self._lane_streams: Subject[Observable[TickBatch]] = Subject()
        self._merge = self._lane_streams.pipe(ops.merge_all()).subscribe(self._hub)

    # -- lifecycle ---------------------------------------------------------------------------

    def check(self, context: DataCollectionContext) -> None:
        """Raise ``ConfigError`` listing every problem ``start`` would find; touch nothing."""
        self._resolve(self._model(context))

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
            wanted = self._resolve(context)
            for listener in self._listeners:
                listener.before_start(self, context)
            run = _Run(context, wanted, until_ms=0)
            self._runs[context.id] = run
            try:
                # The plan of a large context takes a while to build; the context starts once it
                # is ready, so its first due instant is never one it had no chance to read.
                schedules = self._plan(wanted)
                now = self._now_ms()
                run.until_ms = until_ms = math.ceil(now + context.duration_s * 1000)
                end = instant(until_ms)
            except BaseException:
                del self._runs[context.id]
                raise
            run.since_ms = math.floor(now)
            context.start_date = instant(run.since_ms)
            context.end_date = None
            self._ended.pop(context.id, None)
            run.subscription = self._hub.pipe(
                for_context(context.id, frozenset(wanted), lambda: run.since_ms, lambda: run.until_ms),
                gate(lambda: run.state == "running"),
            ).subscribe(on_next=lambda values: self._deliver(run, values))
            self._apply(schedules, run.since_ms)
            run.timer = self._timer.schedule_absolute(end, lambda _s, _t: self._expire(run))
            self._notify("after_start", context)
        return context

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

    def close(self) -> None:
        """Stop every context, write what is queued, close writers and readers, end every thread.

        Returns within ``close_timeout_s`` (one deadline for everything) whatever a plugin does: a
        writer still busy at the deadline is left behind and its unstored values counted dropped.

        Idempotent (a call while another is closing returns when that one is done); every other
        call raises ``CollectorClosedError`` afterwards.
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
                self._closed_event.wait()
            return
        try:
            self._end_threads()
        finally:
            self._closed_event.set()

    def _end_threads(self) -> None:
        # One deadline for the whole close, whatever any plugin does: readers still reading get
        # the first half of it (their last values must reach the writers), writers the rest to
        # write what is queued, flush and close. Writers keep writing their queues meanwhile.
        timeout = self._close_timeout_s
        begun = time.monotonic()
        deadline = begun + timeout
        readers_deadline = begun + timeout / 2
        for lane in self._lanes.values():
            if lane.owned and isinstance(lane.scheduler, EventLoopScheduler):
                lane.scheduler.dispose()
        if isinstance(self._timer, EventLoopScheduler):
            self._timer.dispose()
        for thread in self._threads:
            if thread is not threading.current_thread() and thread.ident is not None:
                thread.join(max(0.0, readers_deadline - time.monotonic()))
                if thread.is_alive():
                    self._log.warning(
                        "%s did not end within %s s (a reader stuck in a read?)", thread.name, timeout / 2
                    )
        # After the reader threads: the values of a read in flight at close pass through.
        self._merge.dispose()
        for lane in self._lanes.values():
            try:
                lane.reader.close()
            except Exception as exc:
                self._log.error("reader %r failed to close: %s", lane.reader.type, exc)
        # Every sink is asked first, then awaited: a stuck writer costs the others nothing.
        for sink in self._sinks:
            sink.begin_close()
        for sink in self._sinks:
            sink.close(deadline)
        self._notify("after_close")

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
        """Each reader's current due plan (GCD tick, hyperperiod, phases)."""
        with self._lock:
            return {
                rtype: lane.ref.current for rtype, lane in self._lanes.items() if lane.ref.current is not None
            }

    def stats(self) -> CollectorStats:
        """A snapshot of every counter: per reader, per writer, per context."""
        with self._lock:
            lanes = list(self._lanes.items())
            contexts = {
                cid: ended
                if isinstance(ended, ContextStats)
                else ContextStats(cid, "stopped", ended.delivered)
                for cid, ended in self._ended.items()
            }
            for cid, run in self._runs.items():
                contexts[cid] = ContextStats(cid, run.state, run.delivered)
        # Percentiles and the plugins' own counters are computed outside the lock: a scrape must
        # not hold up a start or a stop.
        readers = {}
        for rtype, lane in lanes:
            try:
                extra = lane.reader.stats()
            except Exception:
                extra = {}
            schedule = lane.ref.current
            readers[rtype] = lane.counters.snapshot(rtype, schedule.period_ms if schedule else None, extra)
        return CollectorStats(readers, {s.name: s.snapshot() for s in self._sinks}, contexts)

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

    def _resolve(self, context: DataCollectionContext) -> dict[str, list[Wanted]]:
        """Every variable's reader and effective interval, or ``ConfigError`` with every problem."""
        problems: list[str] = []
        wanted: dict[str, list[Wanted]] = {}
        for variable in context.variables:
            where = f"context {context.id}, variable {variable.id} (address {variable.address!r})"
            reader = self._readers.get(variable.reader)
            if reader is None:
                known = ", ".join(sorted(self._readers)) or "none"
                problems.append(f"{where}: no reader of type {variable.reader!r} (readers: {known})")
                continue
            try:
                reader.validate(variable)
            except ValueError as exc:
                problems.append(f"{where}, reader {reader.type!r}: {exc}")
                continue
            interval = context.interval_of(variable)
            limit = max(context.min_interval_ms, reader.min_interval_ms)
            if interval < limit:
                why = (
                    f"{where}: interval_ms {interval} is below the limit of {limit} ms (the larger of "
                    f"the context's min_interval_ms ({context.min_interval_ms}) and the "
                    f"min_interval_ms of reader {reader.type!r} ({reader.min_interval_ms}))"
                )
                if self.policy is IntervalLimitPolicy.ERROR:
                    problems.append(why)
                    continue
                if self.policy is IntervalLimitPolicy.IGNORE:
                    self._log.warning("%s; not collected (interval_limit_policy=ignore)", why)
                    continue
                interval = limit
            wanted.setdefault(reader.type, []).append(
                Wanted(context.id, variable.id, variable.address, variable.value_type, interval)
            )
        if problems:
            raise ConfigError(problems)
        if not wanted:
            self._log.warning("context %s has no variable left to collect", context.id)
        return wanted

    def _lane(self, rtype: str) -> _Lane:
        lane = self._lanes.get(rtype)
        if lane is None:
            reader = self._readers[rtype]
            owned = self._scheduler is None
            scheduler = self._scheduler or EventLoopScheduler(
                _thread_factory(f"{THREAD_PREFIX}reader-{rtype}", self._threads)
            )
            lane = self._lanes[rtype] = _Lane(reader, scheduler, owned)
            stream = ticks(lane.ref, scheduler, lane.counters.skipped, lane.counters.tick_ms.append).pipe(
                read_due(reader, lane.ref, scheduler, lane.counters, self._errors)
            )
            self._lane_streams.on_next(stream)
        return lane

    def _plan(self, touched: Iterable[str]) -> dict[str, ReaderSchedule | None]:
        """The schedule of each touched reader over the running contexts (None: nothing to read)."""
        schedules: dict[str, ReaderSchedule | None] = {}
        for rtype in set(touched):
            wanted = [
                w for run in self._runs.values() if run.state == "running" for w in run.wanted.get(rtype, ())
            ]
            schedules[rtype] = ReaderSchedule(rtype, wanted) if wanted else None
        return schedules

    def _apply(self, schedules: Mapping[str, ReaderSchedule | None], since_ms: int) -> None:
        """Hand each reader its new schedule; instants due after ``since_ms`` are read even if a
        busy reader thread makes them late."""
        for rtype, schedule in schedules.items():
            self._lane(rtype).ref.set(schedule, since_ms)

    def _replan(self, touched: Iterable[str]) -> None:
        schedules = self._plan(touched)
        self._apply(schedules, math.floor(self._now_ms()))

    def _deliver(self, run: _Run, values: list[CollectedVariable]) -> None:
        run.delivered += len(values)
        for sink in self._sinks:
            try:
                sink.put(values)
            except Exception as exc:  # never let one sink's bug end the stream for the others
                self._errors.error(("sink", sink.name, str(exc)), "writer %s: %s", sink.name, exc)

    def _set_state(self, context_id: int, state: State) -> DataCollectionContext:
        with self._lock:
            self._ensure_open()
            run = self._run(context_id)
            if run.state != state:
                if state == "running":
                    # A late tick of an instant at or before the resume is not the context's.
                    run.since_ms = math.floor(self._now_ms())
                run.state = state
                self._replan(run.wanted)
            return run.context

    def _stop(self, run: _Run) -> DataCollectionContext:
        context = run.context
        self._notify("before_stop", context)
        if run.timer is not None:
            run.timer.dispose()
        del self._runs[context.id]
        self._ended[context.id] = run
        while len(self._ended) > MAX_ENDED:  # contexts with ever new ids must not grow memory
            del self._ended[next(iter(self._ended))]
        # run.state stays as it was: the gate of a paused run stays closed after the stop (a
        # late tick under a new run of the same id must not reach it); a running one's stays
        # open for the read in flight.
        self._replan(run.wanted)
        now = math.floor(self._now_ms())
        context.end_date = instant(min(now, run.until_ms))
        # No instant after this one; a read in flight is of an instant inside the run, so its
        # values are still delivered, and the branch goes once each reader has finished it.
        run.until_ms = min(run.until_ms, now + 1)
        self._retire(run)
        self._notify("after_stop", context)
        return context

    def _retire(self, run: _Run) -> None:
        """Dispose a stopped run's branch on each of its readers' threads, after the read in flight."""
        subscription = run.subscription
        lanes = [self._lanes[rtype] for rtype in run.wanted if rtype in self._lanes]
        left = [len(lanes)]
        lock = threading.Lock()

        def finish() -> None:
            if subscription is not None:
                subscription.dispose()
            cid = run.context.id
            if self._ended.get(cid) is run:  # a plain swap of one key's value: no lock needed
                self._ended[cid] = ContextStats(cid, "stopped", run.delivered)

        def done(_scheduler: abc.SchedulerBase, _state: Any) -> None:
            with lock:
                left[0] -= 1
                if left[0]:
                    return
            finish()

        if not lanes:
            finish()
        for lane in lanes:
            lane.scheduler.schedule(done)

    def _expire(self, run: _Run) -> None:
        with self._lock:
            if self._closed or self._runs.get(run.context.id) is not run:
                return  # stopped already, or a new run under the same id
            self._log.info("context %s reached its duration of %s s", run.context.id, run.context.duration_s)
            self._stop(run)

    def _notify(self, event: str, context: DataCollectionContext | None = None) -> None:
        args: tuple[Any, ...] = (self,) if context is None else (self, context)
        for listener in self._listeners:
            try:
                getattr(listener, event)(*args)
            except Exception:
                self._log.exception("listener %r failed in %s", listener, event)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._runs)} contexts"
        writers = [s.name for s in self._sinks]
        return f"DataCollector(readers={sorted(self._readers)}, writers={writers}, {state})"
