"""A lane: the readers that share a resource, ticking on the engine's event loop.

A lane's schedule, ticks and hand-over run on the loop thread (``LoopScheduler``; in virtual
time, the thread that advances the clock), with every other lane's. Its readers' calls are made
one at a time, in order, through the lane's job queue: a synchronous reader's (``read``,
``read_batch``, ``open``, ``plan_changed``, ``close``) on a worker of the bounded pool, an
asynchronous reader's (``read_batch_async``) awaited on the loop, and each call's outcome is
taken back on the loop thread. So a slow or blocking reader holds its own lane and one worker,
never the loop or another lane. What a lane reads goes out on its own ``Subject``, on the loop
thread. The few fields other threads write are named beside them in ``Lane.__init__``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import operator
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from datetime import datetime
from itertools import chain
from types import MappingProxyType
from typing import Any, Final

from reactivex import abc
from reactivex.internal.exceptions import DisposedException
from reactivex.subject import Subject

from flowcollect._instants import instant, now_ms
from flowcollect._logs import RateLimitedLog
from flowcollect.compile import Delivery, LaneSchedule, ReaderPhase
from flowcollect.readers.base import DataReader
from flowcollect.runtime._clock import BRACKET_MS, clock_offset
from flowcollect.runtime._loop import InlineWork, InstantCall, Work
from flowcollect.runtime._push import NO_VALUE_YET, PushStore
from flowcollect.runtime._steps import LaneRead
from flowcollect.stats import ReaderCounters
from flowcollect.values import CollectedVariable, ValueBatch, VariableSpec

__all__ = ["STEP_MS", "Lane", "asynchronous_reader"]

_Columns = tuple[
    list[Any], list[str | None], list[int | None] | None, list[str | None] | None, list[int | None] | None
]
"""A reader's values at an instant: values, errors, source times (stamping), quality, and
source times carried beside the values."""

_Read = tuple[ReaderPhase, list[Any], list[str | None], Any, Any, Any]

_NOTHING: Final[Mapping[Any, Any]] = MappingProxyType({})
"""An empty mapping that every lane may share: nobody can write into it."""

_CHEAP_PATHS = ("post", "schedule_wall_ms", "wall_ms", "monotonic_ms", "timer_wall_ms", "after_instant")

STEP_MS = 1000
"""A wall-clock jump larger than this between two ticks (beyond what the monotonic clock saw) is a
step (NTP, an operator): the lane re-anchors its grid on the new time instead of sleeping through
it (backwards) or firing the instants it jumped over (forwards). It takes two sightings, each a
bracketed reading (``clock_offset``), so a thread held up between its clock reads is no step."""


def _cheap_paths(scheduler: abc.SchedulerBase) -> dict[str, Any]:
    """The scheduler's cheap paths (``_CHEAP_PATHS``, None for those it lacks): the engine loop's
    are made once and shared by its lanes (six bound methods a lane were 0.4 KB a lane)."""
    shared = getattr(scheduler, "lane_paths", None)
    if shared is not None:
        paths: dict[str, Any] = shared(_CHEAP_PATHS)
        return paths
    return {name: getattr(scheduler, name, None) for name in _CHEAP_PATHS}


def _batch_reader(reader: DataReader) -> bool:
    """Whether the engine calls ``read_batch``: the class that defines ``read`` or ``read_batch``
    nearest to the reader's own class decides, so a subclass overriding ``read`` of a reader that
    has both (``RandomDataReader``) is read through its ``read``. Per class, answered once."""
    cls = type(reader)
    batchy = _BATCHY.get(cls)
    if batchy is None:
        batchy = _BATCHY[cls] = _defines_read_batch(cls)
    return batchy


def _defines_read_batch(reader_class: type[DataReader]) -> bool:
    for cls in reader_class.__mro__:
        if cls is DataReader:
            break
        if "read" in vars(cls):
            return "read_batch" in vars(cls)
        if "read_batch" in vars(cls):
            return True
    return False


def _sends(reader: DataReader) -> bool:
    """Whether the reader's class writes requests at the instant (``DataReader.send_batch``)."""
    return type(reader).send_batch is not DataReader.send_batch


_BATCHY: dict[type[DataReader], bool] = {}
"""``_batch_reader``'s answers by class (a class's methods do not change: a plain dict read and
written from any thread is enough; per lane, two dicts were 0.4 KB a lane)."""


def asynchronous_reader(reader: DataReader) -> bool:
    """A reader whose class defines ``read_batch_async``: its calls are made on the loop, its reads
    awaited there. A pushing one (an OPC UA subscription) is sampled from what it pushed, like
    any pushing reader; its ``open``, ``start_pushing``, ``plan_changed`` and ``close`` are made
    on the loop too, so its client can live there."""
    return type(reader).read_batch_async is not DataReader.read_batch_async


class _Readiness:
    """What asynchronous readers' ``plan_changed`` returned, for the lane to await on the loop:
    each awaited in turn, a failure logged (the plan goes ahead, as after a failed call)."""

    __slots__ = ("_errors", "_waits")

    def __init__(self, waits: list[tuple[str, Awaitable[None]]], errors: RateLimitedLog) -> None:
        self._waits = waits
        self._errors = errors

    async def wait(self) -> None:
        for rtype, ready in self._waits:
            try:
                await ready
            except Exception as exc:
                self._errors.error(
                    (rtype, "plan_changed", str(exc)), "reader %r: plan_changed failed: %r", rtype, exc
                )


class _Awaiting:
    """A lane's job awaiting a coroutine on the loop (``Lane._await``): what starts its task and
    what takes its outcome, one small object where two closures and their four cells were, for
    every lane at every instant (2,000 lanes' of them in flight at once)."""

    __slots__ = ("factory", "lane", "then")

    def __init__(
        self, lane: Lane, factory: Callable[[], Any], then: Callable[[Any, BaseException | None], None]
    ) -> None:
        self.lane = lane
        self.factory: Callable[[], Any] | None = factory
        self.then = then

    def start(self) -> None:
        lane = self.lane
        factory, self.factory = self.factory, None  # its coroutine made, nothing else needs it
        if factory is not None:
            lane._task = lane._work.run_async(factory, self.done)

    def done(self, result: Any, exc: BaseException | None) -> None:
        lane = self.lane
        lane._busy = False
        lane._task = None
        try:
            self.then(result, exc)
        finally:
            lane._drain()


class _AsyncTick:
    """The coroutine factory of one asynchronous tick (``Lane._tick``): a slotted object where a
    lambda and its five cells were, in flight for every lane at every instant."""

    __slots__ = ("due", "first", "lane", "opened", "schedule")

    def __init__(
        self,
        lane: Lane,
        schedule: LaneSchedule,
        due: int,
        opened: tuple[float, float | None, Any],
        first: tuple[ValueBatch, float] | None,
    ) -> None:
        self.lane = lane
        self.schedule = schedule
        self.due = due
        self.opened = opened
        self.first = first

    def __call__(self) -> Coroutine[Any, Any, None]:
        return self.lane._tick_async(self.schedule, self.due, self.opened, self.first)


class Lane:
    """The tick source, reads and hand-over of one lane."""

    # Slotted: a lane's 48 fields in a dict were 1.6 KB a lane (2,000 devices are 2,000 lanes).
    __slots__ = (
        "_abandoned",
        "_active",
        "_after_instant",
        "_anchor",
        "_applied",
        "_armed",
        "_assignments",
        "_at_wall_ms",
        "_busy",
        "_closed",
        "_counters_of",
        "_down",
        "_draining",
        "_errors",
        "_jobs",
        "_last_fired",
        "_mono_ms",
        "_on_clock_step",
        "_on_device",
        "_on_missed",
        "_opened",
        "_pending",
        "_pending_due",
        "_post",
        "_ready",
        "_reuse",
        "_routes",
        "_sent",
        "_served",
        "_stores",
        "_task",
        "_timer_at",
        "_wall_ms",
        "_work",
        "assigned",
        "asynchronous",
        "clock_steps",
        "counters",
        "key",
        "order",
        "planned",
        "readers",
        "scheduler",
        "subject",
        "touched",
        "used",
    )

    def __init__(
        self,
        key: str,
        readers: Sequence[DataReader],
        scheduler: abc.SchedulerBase,
        counters: Mapping[str, ReaderCounters],
        errors: RateLimitedLog,
        on_missed: Callable[[LaneSchedule, list[int]], None],
        on_clock_step: Callable[[float], None] = lambda _offset: None,
        on_device: Callable[[str, str | None], None] | None = None,
        work: Work | None = None,
    ) -> None:
        # Fixed at construction: key, readers, order, scheduler, counters (each ReaderCounters
        # is bumped only by the lane's jobs, one at a time), subject (on_next only on the loop
        # thread; the collector subscribes and disposes branches from others, under the
        # Subject's own lock), asynchronous, _work, _errors, _on_missed, _on_clock_step,
        # _on_device, _stores (the dict; each PushStore has its own lock, for the
        # pushing reader's threads).
        self.key = key
        self.readers = {r.type: r for r in readers}
        self.order = tuple(r.type for r in readers)
        self.scheduler = scheduler
        self.counters = counters
        self.subject: Subject[LaneRead] = Subject()
        self.asynchronous = bool(readers) and all(asynchronous_reader(r) for r in readers)
        """Every reader of the lane is asynchronous: its calls are made on the loop thread."""
        self._work: Work = work or InlineWork()
        self._bind(scheduler)
        self.planned: LaneSchedule | None = None
        """The schedule the collector wants: written under the collector's lock (``plan``), read
        whole on the loop thread and by ``schedules()``/``stats()``."""
        self.assigned = True
        """Written under the collector's lock (``assign``), read on the loop thread."""
        self.touched = False
        """Some context ever wanted this lane: its readers are closed at close. Set under the
        collector's lock (only ever to True)."""
        self.used = False
        """Work was ever handed to the lane. Set by ``post`` on any thread, only ever to True."""
        self.clock_steps = 0  # the loop thread
        self._errors = errors
        self._on_missed = on_missed
        self._on_clock_step = on_clock_step
        self._on_device = on_device
        # The lane's jobs, one at a time in order, on the loop thread (a job's reader calls may
        # run on a worker meanwhile: _busy until its outcome is back on the loop).
        # A list, not a deque: it holds a job or two, and an empty deque is 760 bytes a lane.
        self._jobs: list[Callable[[], None]] = []
        self._busy = False
        self._draining = False
        self._task: asyncio.Future[Any] | None = None  # the asynchronous read in flight
        # The loop thread only (ticks), from here to _last_fired.
        self._active: LaneSchedule | None = None
        self._pending: abc.DisposableBase | InstantCall | None = None
        self._pending_due: int | None = None
        self._anchor: float | None = None
        self._last_fired = -1
        self._counters_of: tuple[LaneSchedule, list[ReaderCounters]] | None = None
        self._armed: tuple[Any, ValueBatch] | None = None  # what _send_armed gives at the next instant
        self._sent: tuple[Any, ValueBatch, float] | None = None  # what it gave, and when
        # The lane's reader calls' state: touched only by the lane's current job (on a worker
        # or the loop; jobs never overlap, and each hand-over between threads goes through the
        # pool's queue or the loop's, which order it), except _routes: replaced whole there and
        # read (one attribute read) by a pushing reader's emit on the reader's own threads.
        self._ready: LaneSchedule | None = None
        self._served: dict[str, tuple[VariableSpec, ...]] = {}
        # The readers opened, in order: a lane has one or a few (a 1-tuple is 48 bytes, a set 216).
        self._opened: tuple[str, ...] = ()
        # A lane without pushing readers (most) shares one read-only empty for both: 64 bytes each.
        stores = {r.type: PushStore() for r in readers if r.pushes}
        self._stores: Mapping[str, PushStore] = stores or _NOTHING
        self._routes: Mapping[str, dict[tuple[str, str], list[VariableSpec]]] = _NOTHING
        # Made by their first write (64 bytes a lane each otherwise): _reuse, for per-value
        # readers only; _down (reader -> its last read gave no value), with listeners only.
        self._reuse: dict[int, tuple[ReaderPhase, list[CollectedVariable]]] | None = None
        self._down: dict[str, bool] | None = None
        # Only ever set to True: by close_readers (a job), or by abandon (close()'s thread, past
        # its deadline, the lane stuck in a read); read by the lane's jobs and by `stopped`.
        self._closed = False
        self._abandoned = False  # set by abandon only (close()'s thread), only ever to True
        self._assignments = 0  # assign() calls that changed the assignment: under the collector's lock
        self._applied = 0  # the last of them the lane has applied: the loop thread

    def _bind(self, scheduler: abc.SchedulerBase) -> None:
        # The loop's cheap paths when the scheduler has them (LoopScheduler; VirtualScheduler
        # for wall_ms, monotonic_ms and schedule_wall_ms): a plain post, epoch-ms timers, one
        # callback per instant and wall-clock reads without datetimes. Fixed from here on.
        cheap = _cheap_paths(scheduler)
        self._post: Callable[[Callable[[], None]], None] | None = cheap["post"]
        self._at_wall_ms: Callable[..., abc.DisposableBase] | None = cheap["schedule_wall_ms"]
        self._wall_ms: Callable[[], float] | None = cheap["wall_ms"]
        self._mono_ms: Callable[[], float] | None = cheap["monotonic_ms"]
        self._timer_at: Callable[..., InstantCall] | None = cheap["timer_wall_ms"]
        self._after_instant: Callable[[Callable[[], None]], None] | None = cheap["after_instant"]

    def _now(self) -> float:
        """The scheduler's wall clock in epoch ms."""
        wall = self._wall_ms
        return wall() if wall is not None else now_ms(self.scheduler)

    # -- from other threads ------------------------------------------------------------------

    def post(self, action: Callable[[], None]) -> None:
        """Run ``action`` on the loop thread as the lane's next job (after any read in flight)."""
        self.used = True
        if self._post is not None:
            self._post(lambda: self._enqueue(action))
            return
        with contextlib.suppress(DisposedException):  # closed: nothing is done here any more
            self.scheduler.schedule(lambda _s, _t: self._enqueue(action))

    def hand_over(self, since_ms: int, finish: Callable[[], None]) -> None:
        """Run ``finish`` as the lane's job once every instant due at or before ``since_ms`` is
        read (the lane replacing this one reads the instants after it): a tick whose timer was
        due but had not fired yet (the loop behind, or the hand-over's post ahead of the timer
        in the loop's pass) is read first, never left to neither lane."""

        def job() -> None:
            due = self._pending_due
            if not self._closed and self._active is not None and due is not None and due <= since_ms:
                self._drop_pending()
                self._tick(due)
                self._jobs.append(job)  # after that tick (a read in flight holds the queue)
                return
            finish()

        self.post(job)

    def plan(self, schedule: LaneSchedule | None, since_ms: int) -> None:
        """Set the wanted schedule; the lane takes it on its thread, telling its readers first.
        Instants due after ``since_ms`` (the change's instant) are read even if late."""
        self.planned = schedule
        if schedule is not None:
            self.touched = True
        if schedule is not None or self._active is not None or self.used:
            self.post(lambda: self._apply(since_ms))

    def prepare(self, schedule: LaneSchedule, ready: Callable[[], None]) -> None:
        """Get ready for ``schedule`` before it is applied (readers told, per-value objects
        built) while the current one keeps ticking; ``ready()`` is called once done (on the
        thread that did it)."""
        self.touched = True

        def run() -> None:
            if self._closed or not self.assigned:
                ready()
                return

            def then(_result: Any, exc: BaseException | None) -> None:
                ready()
                if exc is not None:
                    self._internal("prepare", exc)

            self._call(lambda: self._get_ready(schedule), then)

        self.post(run)

    def assign(self, assigned: bool, since_ms: int) -> None:
        if assigned != self.assigned:
            self.assigned = assigned
            self._assignments += 1
            assignment = self._assignments

            def apply() -> None:
                # Once applied (a job, after whatever read was in flight when this was posted).
                self._apply(since_ms, lambda: setattr(self, "_applied", assignment))

            self.post(apply)

    @property
    def stopped(self) -> bool:
        """No read runs and none will: the lane is closed (after its last read) or abandoned, or
        it is not assigned and it has taken that in."""
        if self._closed:
            return True
        return not self.assigned and self._applied == self._assignments

    def store(self, reader: str) -> PushStore | None:
        return self._stores.get(reader)

    # -- the job queue (loop thread) -----------------------------------------------------------

    def _enqueue(self, job: Callable[[], None]) -> None:
        self._jobs.append(job)
        self._drain()

    def _drain(self) -> None:
        if self._draining:
            return  # a job's outcome came back inline (virtual time): the outer drain goes on
        self._draining = True
        try:
            while self._jobs and not self._busy:
                job = self._jobs.pop(0)
                try:
                    job()
                except Exception as exc:  # never let one job end the lane
                    self._internal("job", exc)
        finally:
            self._draining = False

    def _call(self, fn: Callable[[], Any], then: Callable[[Any, BaseException | None], None]) -> None:
        """Within a job: make the lane's reader calls ``fn`` (a worker; the loop for an
        asynchronous lane, whose calls must not block) and continue with ``then`` on the loop
        thread; the lane's next job waits for it."""
        if self.asynchronous:
            try:
                result = fn()
            except Exception as exc:
                then(None, exc)
                return
            if isinstance(result, _Readiness):
                # Readers that get ready on the loop (plan_changed's awaitables): awaited there,
                # the lane's next job waiting for them as for a worker's call.
                self._await(result.wait, then)
                return
            then(result, None)
            return
        self._busy = True

        def done(result: Any, exc: BaseException | None) -> None:
            self._busy = False
            try:
                then(result, exc)
            finally:
                self._drain()

        try:
            self._work.run_sync(fn, done)
        except DisposedException:  # the pool is shut (closing): nothing runs any more
            self._busy = False

    def _await(
        self,
        factory: Callable[[], Any],
        then: Callable[[Any, BaseException | None], None],
        later: Callable[[Callable[[], None]], None] | None = None,
    ) -> None:
        """Within a job: await the coroutine ``factory()`` on the loop, then ``then``; its task
        started through ``later`` when given (after every lane due at this instant has sent)."""
        self._busy = True
        awaiting = _Awaiting(self, factory, then)
        if later is None:
            awaiting.start()
        else:
            later(awaiting.start)

    def _internal(self, what: str, exc: BaseException) -> None:
        self._errors.error(
            (self.key, "internal", what, str(exc)), "lane %s: %s failed: %r", self.key, what, exc
        )

    # -- jobs --------------------------------------------------------------------------------

    def _apply(self, since_ms: int, applied: Callable[[], None] | None = None) -> None:
        if self._closed:
            return
        wanted = self.planned if self.assigned else None

        def activate(_result: Any = None, exc: BaseException | None = None) -> None:
            if exc is not None:
                self._internal("plan", exc)
            self._active = wanted
            self._retime(since_ms)
            if applied is not None:
                applied()

        if wanted is not self._active and (wanted is not self._ready or wanted is None):
            self._call(lambda: self._get_ready(wanted), activate)
        else:
            activate()

    def _get_ready(self, schedule: LaneSchedule | None) -> _Readiness | None:
        self._ready = schedule
        self._reuse = None
        waits = self._tell_readers(schedule)
        self._prepare(schedule)
        return _Readiness(waits, self._errors) if waits else None

    def _prepare(self, schedule: LaneSchedule | None) -> None:
        # A per-value reader's objects for every phase known now, before the first tick needs
        # them (a tick then only resets them).
        if schedule is None:
            return
        for phase in schedule.built_phases():
            for rp in phase.readers:
                reader = self.readers[rp.reader]
                if not _batch_reader(reader) and not reader.pushes and not asynchronous_reader(reader):
                    reuse = self._reused()
                    if id(rp) not in reuse:
                        reuse[id(rp)] = (rp, self._objects(rp, instant(0)))

    def _reused(self) -> dict[int, tuple[ReaderPhase, list[CollectedVariable]]]:
        """The per-value readers' objects kept from tick to tick, by phase (made by the first)."""
        reuse = self._reuse
        if reuse is None:
            reuse = self._reuse = {}
        return reuse

    def _tell_readers(self, schedule: LaneSchedule | None) -> list[tuple[str, Awaitable[None]]]:
        """Tell each reader what it serves now; the awaitables asynchronous readers returned."""
        routes: dict[str, dict[tuple[str, str], list[VariableSpec]]] = {}
        waits: list[tuple[str, Awaitable[None]]] = []
        for rtype, reader in self.readers.items():
            served = schedule.served.get(rtype, ()) if schedule is not None else ()
            if reader.pushes:
                table: dict[tuple[str, str], list[VariableSpec]] = {}
                for s in schedule.specs if schedule is not None else ():
                    if s.reader == rtype and s.report == "change":
                        table.setdefault((s.address, s.value_type), []).append(s)
                routes[rtype] = table
            before = self._served.get(rtype, ())
            # The specs are the compiled contexts' own objects: identity says "unchanged" at C
            # speed, where comparing 100,000 dataclasses field by field would not.
            if len(served) == len(before) and all(map(operator.is_, served, before)):
                continue
            if served:
                self._open(reader)
            self._served[rtype] = served
            if rtype in self._opened:
                try:
                    ready = reader.plan_changed(served)
                except Exception as exc:
                    self._errors.error(
                        (rtype, "plan_changed", str(exc)), "reader %r: plan_changed failed: %r", rtype, exc
                    )
                else:
                    if ready is not None and self.asynchronous and inspect.isawaitable(ready):
                        waits.append((rtype, ready))
        self._routes = routes or _NOTHING
        return waits

    def _open(self, reader: DataReader) -> None:
        rtype = reader.type
        if rtype in self._opened:
            return
        self._opened = (*self._opened, rtype)
        try:
            reader.open()
        except Exception as exc:  # the reader retries in read(); say why once
            self._errors.error((rtype, "open", str(exc)), "reader %r failed to open: %s", rtype, exc)
        if reader.pushes:
            try:
                reader.start_pushing(self._emitter(rtype))
            except Exception as exc:
                self._errors.error(
                    (rtype, "start_pushing", str(exc)), "reader %r failed to start pushing: %s", rtype, exc
                )

    def _emitter(self, rtype: str) -> Callable[[ValueBatch], None]:
        store = self._stores[rtype]

        def emit(batch: ValueBatch) -> None:
            # Any thread: the store takes the values at once (the next due instant samples them);
            # changes go to their contexts on the loop thread, which owns the delivery state.
            store.update(batch, self._now())
            if len(batch) and self._routes.get(rtype):
                self.post(lambda: self._pushed(rtype, batch))

        return emit

    def _pushed(self, rtype: str, batch: ValueBatch) -> None:
        routes = self._routes.get(rtype)
        if not routes or self._closed:
            return
        per_context: dict[int, tuple[list[VariableSpec], list[int]]] = {}
        for i, spec in enumerate(batch.variables):
            for target in routes.get((spec.address, spec.value_type), ()):
                specs, index = per_context.setdefault(target.context_id, ([], []))
                specs.append(target)
                index.append(i)
        if not per_context:
            return
        by_context = {}
        for cid, (specs, index) in per_context.items():
            variables = tuple(specs)
            scaled = tuple(k for k, s in enumerate(variables) if s.scale is not None or s.offset is not None)
            by_context[cid] = Delivery(cid, variables, tuple(index), scaled, tuple(range(len(variables))))
        t = math.floor(self._now())
        self.subject.on_next(
            LaneRead(
                t,
                rtype,
                batch.values,
                batch.errors,
                batch.source_ns,
                batch.quality,
                by_context,
                True,
                batch.source_time_ns,
            )
        )

    def abandon(self, log: Callable[[str, str, Exception], None]) -> None:
        """The close deadline passed with this lane still busy: it reads nothing more, and every
        reader it touched releases its device connection now (``DataReader.abort``, on the
        caller's thread: the lane's call is stuck in a read); an asynchronous read in flight is
        cancelled on the loop."""
        self._abandoned = True
        self._closed = True
        if not self.touched:
            return
        for rtype, reader in self.readers.items():
            try:
                reader.abort()
            except Exception as exc:
                log(rtype, "abort", exc)
        task = self._task
        if task is not None:
            post = getattr(self.scheduler, "post", None)
            if post is not None:
                post(task.cancel)

    def close_readers(
        self, log: Callable[[str, str, Exception], None], done: Callable[[], None] | None = None
    ) -> None:
        """Stop ticking and close every reader this lane touched. Within a job (after the read in
        flight), or on the caller's thread for a lane that never had one; ``done()`` once over."""
        self._closed = True
        self._drop_pending()
        if not self.touched or self._abandoned:  # abandoned: abort was its readers' last call
            if done is not None:
                done()
            return

        def close_all() -> None:
            for rtype, reader in self.readers.items():
                try:
                    reader.close()
                except Exception as exc:
                    log(rtype, "close", exc)

        def then(_result: Any, exc: BaseException | None) -> None:
            if exc is not None:
                self._internal("close", exc)
            if done is not None:
                done()

        self._call(close_all, then)

    # -- ticks (the loop thread) ---------------------------------------------------------------

    def _offset(self) -> float | None:
        mono, wall = self._mono_ms, self._wall_ms
        if mono is None or wall is None:
            return clock_offset(self.scheduler)
        before = mono()  # clock_offset's reading, inline: it is taken twice per tick
        w = wall()
        after = mono()
        if after - before <= BRACKET_MS:
            return w - (before + after) / 2
        return clock_offset(self.scheduler)  # held up: up to three more tries

    def _stepped_by(self, base: float | None, first: float | None = None) -> float | None:
        """The wall clock's new offset when it stepped (by more than ``STEP_MS``) since ``base``:
        two bracketed readings (``first``, when taken already, and one more), one after the
        other, must both say so and agree; else None."""
        if base is None:
            return None
        if first is None:
            first = self._offset()
        if first is None or abs(first - base) <= STEP_MS:
            return None
        second = self._offset()
        if second is None or abs(second - base) <= STEP_MS or abs(second - first) > STEP_MS:
            return None
        return second

    def _arm(self, due: int, offset: float | None = None) -> None:
        self._pending_due = due
        if offset is None:
            offset = self._offset()
        # A reading held up is discarded, and one that disagrees with the anchor by a step is
        # not taken either: the anchor moves by a step only through _clock_stepped, after two
        # sightings (one odd reading must not become the base that makes the next look odd).
        if offset is not None and (self._anchor is None or abs(offset - self._anchor) <= STEP_MS):
            self._anchor = offset
        try:
            if self._timer_at is not None:
                first = self._first_at(due) if self.asynchronous else None
                self._pending = self._timer_at(due, self._fire_at, due, first)
            elif self._at_wall_ms is not None:
                self._pending = self._at_wall_ms(due, self._fire, due)
            else:
                self._pending = self.scheduler.schedule_absolute(instant(due), self._fire, due)
        except DisposedException:  # a read that outlived the close deadline came back
            self._closed = True

    def _first_at(self, due: int) -> Callable[[], None] | None:
        """What the lane writes at ``due`` before any lane's tick (``LoopScheduler.timer_wall_ms``):
        its first reader's ``send_batch``, with the batch built now, while the lane's objects
        are at hand; None when that reader does not write ahead."""
        schedule = self._active
        phase = schedule.phase_at(due) if schedule is not None else None
        self._armed = None if phase is None else self._first_batch(phase, due)
        return None if self._armed is None else self._send_armed

    def _first_batch(self, phase: Any, t_ms: int) -> tuple[Any, ValueBatch] | None:
        """The phase's first reader and a batch for it at ``t_ms``, when that reader writes at the
        instant (``send_batch``; a pushing reader's instants are sampled, never asked); else None."""
        rp = phase.readers[0]
        if not _sends(self.readers[rp.reader]) or rp.reader in self._stores:
            return None
        return rp, ValueBatch(t_ms, rp.reads, reader=rp.reader)

    def _send_armed(self) -> None:
        armed, self._armed = self._armed, None
        if armed is None or self._closed or self._busy or self._jobs:
            return  # a job holds the lane (a plan being prepared): its tick waits, so does its request
        rp, batch = armed
        self._sent = (rp, batch, self._give(rp.reader, batch))

    def _give(self, rtype: str, batch: ValueBatch) -> float:
        """``send_batch(batch)`` of reader ``rtype``; when it was called."""
        started = self._now()
        try:
            self.readers[rtype].send_batch(batch)
        except Exception as exc:  # its read goes ahead as if nothing was sent
            self._errors.error(
                (rtype, "send_batch", str(exc)), "reader %r: send_batch failed: %r", rtype, exc
            )
        return started

    def _drop_pending(self) -> None:
        self._armed = None
        pending = self._pending
        if pending is not None:
            if isinstance(pending, InstantCall):
                pending.cancel()
            else:
                pending.dispose()
            self._pending = None

    def _fire_at(self, due: int) -> None:
        self._fire(self.scheduler, due)

    def _fire(self, _scheduler: abc.SchedulerBase, due: Any) -> None:
        # The timer: the tick is the lane's next job (after a plan change being prepared, if
        # one is). _pending_due stays until it runs, so a retime meanwhile knows it is due.
        if self._closed:
            return
        self._pending = None
        self._enqueue(lambda: self._tick(due))

    def _tick(self, due: int) -> None:
        if self._closed:
            return
        if self._pending_due == due:
            self._pending_due = None
        schedule = self._active
        if schedule is None or self._pending is not None or self._pending_due is not None:
            return  # retimed meanwhile: the tick armed since is the one that counts
        if self.asynchronous:
            # The instant's callback (every lane due at it, LoopScheduler.timer_wall_ms) writes
            # each lane's first request now (send_batch) and starts a task for the rest of the
            # tick: every due request leaves in this one pass, before any answer is handled.
            opened = self._begin(schedule, due)
            if opened is None:
                return
            first = None if opened[2] is None else self._sent_first(opened[2], due)
            self._await(
                _AsyncTick(self, schedule, due, opened, first), self._tick_failed, self._after_instant
            )
            return
        began = self._begin(schedule, due)
        if began is None:
            return
        offset, phase = began[1], began[2]

        def then(reads: Any, exc: BaseException | None) -> None:
            self._ticked(schedule, due, began[0], offset, phase, reads, exc)

        if phase is None:
            then(None, None)
        else:
            self._call(lambda: self._read_phase(phase, due), then)

    def _begin(self, schedule: LaneSchedule, due: int) -> tuple[float, float | None, Any] | None:
        """The tick starts (the loop thread): None when the wall clock stepped while the lane
        waited (this instant belongs to the old timeline), else when it began, the clock offset
        read then and the phase due."""
        offset = self._offset()
        stepped = self._stepped_by(self._anchor, offset)
        if stepped is not None:
            self._clock_stepped(schedule, stepped)
            return None
        self._last_fired = due
        return self._now(), offset, schedule.phase_at(due)

    def _sent_first(self, phase: Any, t_ms: int) -> tuple[ValueBatch, float] | None:
        """The batch the phase's first reader was given at the instant and when (``_send_armed``),
        or, when that did not happen for this phase (the lane armed before a plan change, or on
        a scheduler without instants), given now (``_send_first``)."""
        sent, self._sent = self._sent, None
        if sent is not None and sent[0] is phase.readers[0] and sent[1].t_ms == t_ms:
            return sent[1], sent[2]
        return self._send_first(phase, t_ms)

    def _send_first(self, phase: Any, t_ms: int) -> tuple[ValueBatch, float] | None:
        """The phase's first reader writes its requests now, if its class does that
        (``send_batch``): the batch it was given and when, for its read to take up."""
        first = self._first_batch(phase, t_ms)
        if first is None:
            return None
        rp, batch = first
        return batch, self._give(rp.reader, batch)

    async def _tick_async(
        self,
        schedule: LaneSchedule,
        due: int,
        began: tuple[float, float | None, Any],
        first: tuple[ValueBatch, float] | None,
    ) -> None:
        phase = began[2]
        reads = None if phase is None else await self._read_async(phase, due, first)
        self._ticked(schedule, due, began[0], began[1], phase, reads, None)

    def _tick_failed(self, _result: Any, exc: BaseException | None) -> None:
        if exc is not None and not isinstance(exc, asyncio.CancelledError):
            self._internal("tick", exc)

    def _ticked(
        self,
        schedule: LaneSchedule,
        due: int,
        began: float,
        offset: float | None,
        phase: Any,
        reads: list[_Read] | None,
        exc: BaseException | None,
    ) -> None:
        """The tick's reads are back, on the loop thread: hand them over, count, arm the next."""
        if exc is not None and not isinstance(exc, asyncio.CancelledError):
            self._internal(f"tick {due}", exc)
        if reads and not self._closed:
            # Not when abandoned at the close deadline while this read hung: the writers are
            # closed and the collector has returned, so its values reach no context.
            try:
                self._emit(phase, due, reads)
            except Exception as err:  # never let one tick end the lane
                self._internal(f"tick {due}", err)
        now = self._now()
        for counters in self._tick_counters(schedule):
            counters.tick_ms.append(now - began)
        if reads:
            for read in reads:
                self.counters[read[0].reader].delivery_ms.append(now - due)
        if self._closed:
            return
        after = self._offset()
        stepped = self._stepped_by(self._anchor, after)
        if stepped is not None:
            self._clock_stepped(schedule, stepped)  # it stepped while we read
            return
        following = schedule.next_due(due)
        if following <= now:
            skipped = schedule.due_between(due, now)
            for counters in self._tick_counters(schedule):
                counters.overruns += len(skipped)
            self._on_missed(schedule, skipped)
            following = schedule.next_due(now)
        self._arm(following, after)

    def _tick_counters(self, schedule: LaneSchedule) -> list[ReaderCounters]:
        cached = self._counters_of
        if cached is not None and cached[0] is schedule:
            return cached[1]
        counters = [self.counters[r] for r in schedule.reader_order if r in self.counters]
        self._counters_of = (schedule, counters)
        return counters

    def _clock_stepped(self, schedule: LaneSchedule, offset: float) -> None:
        """Re-anchor on the new wall time: the next grid instant after now, neither the old
        timeline's next instant (a stall as long as a backward step) nor every instant a forward
        step jumped over (a burst)."""
        delta_ms = offset - self._anchor if self._anchor is not None else 0.0
        self.clock_steps += 1
        for counters in self._tick_counters(schedule):
            counters.clock_steps += 1
        self._errors.warning(
            (self.key, "step"),
            "lane %s: the wall clock stepped by %+.0f ms; the grid goes on from the new time",
            self.key,
            delta_ms,
        )
        self._on_clock_step(offset)
        self._last_fired = math.floor(self._now())
        self._arm(schedule.next_due(self._last_fired))
        self._anchor = offset

    def _retime(self, since_ms: int) -> None:
        pending = self._pending
        if pending is not None:
            stepped = self._stepped_by(self._anchor)
            if stepped is not None:
                # The wall clock stepped since the pending tick was armed: that tick and the
                # last fired instant belong to the old timeline.
                self._drop_pending()
                self._pending_due = None
                if self._active is not None:
                    self._clock_stepped(self._active, stepped)
                return
        if self._pending_due is not None and self._pending_due <= self._now():
            return  # that tick is due already and about to fire; it re-arms from the new schedule
        if self._pending is not None:
            self._drop_pending()
            self._pending_due = None
        if self._active is not None:
            self._arm(self._active.next_due(max(since_ms, self._last_fired)))

    # -- reads (a worker, or the loop for an asynchronous lane) ---------------------------------

    def _read_phase(self, phase: Any, t_ms: int) -> list[_Read]:
        reads: list[_Read] = []
        for rp in phase.readers:
            reader = self.readers[rp.reader]
            counters = self.counters[rp.reader]
            started = self._now()
            counters.lateness.append(started - t_ms)
            values, errors, source, quality, beside = self._read(reader, rp, t_ms)
            counters.read_ms.append(self._now() - started)
            self._count(rp.reader, counters, values, errors)
            reads.append((rp, values, errors, source, quality, beside))
        return reads

    async def _read_async(
        self, phase: Any, t_ms: int, first: tuple[ValueBatch, float] | None = None
    ) -> list[_Read]:
        reads: list[_Read] = []
        for rp in phase.readers:
            rtype = rp.reader
            reader = self.readers[rtype]
            counters = self.counters[rtype]
            sent = first if first is not None and first[0].variables is rp.reads else None
            started = self._now() if sent is None else sent[1]
            counters.lateness.append(started - t_ms)
            store = self._stores.get(rtype)
            cols: _Columns
            if store is not None:  # a pushing reader: what it pushed, held
                cols = store.sample(rp.reads, t_ms, reader.stale_after_ms)
                counters.read_ms.append(self._now() - started)
                self._count(rtype, counters, cols[0], cols[1])
                reads.append((rp, *cols))
                continue
            batch = ValueBatch(t_ms, rp.reads, reader=rtype) if sent is None else sent[0]
            try:
                await reader.read_batch_async(batch)
                cols = (
                    batch.values,
                    batch.errors,
                    batch.source_ns,
                    batch.quality,
                    batch.source_time_ns,
                )
            except Exception as exc:
                cols = self._failed(rtype, rp, t_ms, exc)
            counters.read_ms.append(self._now() - started)
            self._count(rtype, counters, cols[0], cols[1])
            reads.append((rp, *cols))
        return reads

    def _count(
        self, rtype: str, counters: ReaderCounters, values: list[Any], errors: list[str | None]
    ) -> None:
        counters.ticks += 1
        if self._on_device is not None:
            self._device(rtype, errors)
        counters.values += len(values)
        counters.errors += len(errors) - errors.count(None)

    def _emit(self, phase: Any, t_ms: int, reads: list[_Read]) -> None:
        if len(reads) == 1:
            rp, values, errors, source, quality, beside = reads[0]
            self.subject.on_next(
                LaneRead(t_ms, rp.reader, values, errors, source, quality, rp.by_context, False, beside)
            )
            return
        # One batch per lane, instant and context: the readers' columns laid end to end.
        values = list(chain.from_iterable(r[1] for r in reads))
        errors = list(chain.from_iterable(r[2] for r in reads))
        source = None
        if any(r[3] is not None for r in reads):
            source = list(
                chain.from_iterable(r[3] if r[3] is not None else [None] * len(r[1]) for r in reads)
            )
        quality = None
        if any(r[4] is not None for r in reads):
            quality = list(
                chain.from_iterable(r[4] if r[4] is not None else [None] * len(r[1]) for r in reads)
            )
        beside = None
        if any(r[5] is not None for r in reads):
            beside = list(
                chain.from_iterable(r[5] if r[5] is not None else [None] * len(r[1]) for r in reads)
            )
        self.subject.on_next(
            LaneRead(t_ms, "", values, errors, source, quality, phase.by_context, False, beside)
        )

    def _device(self, reader: str, errors: list[str | None]) -> None:
        """Tell ``on_device`` when a reader's reads went from some value to none, or back (or at
        its first read): a device down is one whose every value of a read failed."""
        if not errors or self._on_device is None:
            return
        down = errors.count(None) == 0
        known = self._down
        if known is None:
            known = self._down = {}
        if known.get(reader) is down:
            return
        if down and errors[0] == NO_VALUE_YET:
            return  # a pushing reader not heard from yet: nothing is known about its device
        known[reader] = down
        self._on_device(reader, errors[0] if down else None)

    def _read(self, reader: DataReader, rp: ReaderPhase, t_ms: int) -> _Columns:
        rtype = rp.reader
        store = self._stores.get(rtype)
        if store is not None:
            return store.sample(rp.reads, t_ms, reader.stale_after_ms)
        try:
            if _batch_reader(reader):
                batch = ValueBatch(t_ms, rp.reads, reader=rtype)
                reader.read_batch(batch)
                return batch.values, batch.errors, batch.source_ns, batch.quality, batch.source_time_ns
            return self._read_each(reader, rp, t_ms)
        except Exception as exc:
            return self._failed(rtype, rp, t_ms, exc)

    def _failed(self, rtype: str, rp: ReaderPhase, t_ms: int, exc: Exception) -> _Columns:
        text = f"{type(exc).__name__}: {exc}"
        self._errors.error(
            (rtype, text), "reader %r failed at %s: %s", rtype, instant(t_ms).isoformat(), text
        )
        n = rp.size
        return [None] * n, [text] * n, None, None, None

    @staticmethod
    def _objects(rp: ReaderPhase, when: datetime) -> list[CollectedVariable]:
        cv = CollectedVariable
        return [
            cv(s.id, s.context_id, s.address, s.value_type, s.reader, s.interval_ms, None, when)
            for s in rp.reads
        ]

    def _read_each(self, reader: DataReader, rp: ReaderPhase, t_ms: int) -> _Columns:
        # The phase's objects are kept and reset from tick to tick: a per-value reader costs no
        # allocation per value (the garbage collector's walk over them was most of the p99).
        reuse = self._reused()
        kept = reuse.get(id(rp))
        when = instant(t_ms)
        if kept is None or kept[0] is not rp:
            cv = CollectedVariable
            cvs = [
                cv(s.id, s.context_id, s.address, s.value_type, s.reader, s.interval_ms, None, when)
                for s in rp.reads
            ]
            reuse[id(rp)] = (rp, cvs)
        else:
            cvs = kept[1]
            for v in cvs:
                v.value = None
                v.error = None
                v.time = when
                v.quality = None
                v.source_time = None
        reader.read(cvs)
        n = len(cvs)
        values = [v.value for v in cvs]
        errors = [v.error for v in cvs]
        # list.count compares by identity first: two C loops, no Python per value.
        times = [v.time for v in cvs]
        source: list[int | None] | None = None
        if times.count(when) != n:
            source = [None if t is when or t is None else _ns(t) for t in times]
        quality: list[str | None] | None = [v.quality for v in cvs]
        if quality is not None and quality.count(None) == n:
            quality = None
        beside: list[int | None] | None = None
        if any(v.source_time is not None for v in cvs):
            beside = [None if v.source_time is None else _ns(v.source_time) for v in cvs]
        return values, errors, source, quality, beside


def _ns(when: datetime) -> int:
    delta = when - instant(0)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
