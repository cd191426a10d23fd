"""The observable graph: reader operators, per-context filters, gates and writer sinks.

The way of one value::

    ticks(reader schedule)            one source per reader, absolute deadlines, own thread
      -> read_due(reader)             read each due (address, type) once; fan out per context
      -> merge of all readers         (the collector's hub)
      -> for_context(id, since, until) this context's values at this instant, if it is due
      -> gate(is_open)                closed while the context is paused
      -> WriterSink.put               one bounded queue and thread per writer

The objects that flow between readers and sinks are batches: one ``TickBatch`` per reader
tick, one list of ``CollectedVariable`` per context per tick.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

from reactivex import Observable, abc
from reactivex import operators as ops

from flowcollect._clock import ScheduleRef, instant, now_ms
from flowcollect._logs import RateLimitedLog
from flowcollect._schedule import Phase
from flowcollect.readers.base import DataReader
from flowcollect.stats import ReaderCounters, WriterStats
from flowcollect.values import CollectedVariable
from flowcollect.writers.base import DataWriter

__all__ = ["TickBatch", "WriterSink", "for_context", "gate", "read_due"]

Operator = Callable[[Observable[Any]], Observable[Any]]


@dataclass(frozen=True, slots=True)
class TickBatch:
    """What one reader read at one instant, already split per receiving context."""

    reader: str
    t_ms: int
    by_context: dict[int, list[CollectedVariable]]


def _build_reads(phase: Phase, reader: str, t_ms: int) -> list[CollectedVariable]:
    when = instant(t_ms)
    cv = CollectedVariable
    return [
        cv(vid, cid, address, vt, reader, ims, None, when, None) for vid, cid, address, vt, ims in phase.reads
    ]


def _deliver(phase: Phase, reads: list[CollectedVariable]) -> dict[int, list[CollectedVariable]]:
    # Built after the read, not before: the read starts right at the tick.
    out: dict[int, list[CollectedVariable]] = {}
    cv = CollectedVariable
    for d in phase.deliveries:
        if d.whole:
            out[d.context_id] = reads
            continue
        values = []
        cid = d.context_id
        for n, vid, ims, own in d.items:
            src = reads[n]
            if own:
                values.append(src)
            else:
                values.append(
                    cv(vid, cid, src.address, src.value_type, src.reader, ims, src.value, src.time, src.error)
                )
        out[cid] = values
    return out


def read_due(
    reader: DataReader,
    ref: ScheduleRef,
    scheduler: abc.SchedulerBase,
    counters: ReaderCounters,
    errors: RateLimitedLog,
) -> Operator:
    """Turn ticks into ``TickBatch``es: read what ``ref``'s schedule has due, once per (address, type).

    A reader exception marks every value of the tick with its text and is logged at most once a
    minute per distinct text; it never ends the stream.
    """
    rtype = reader.type
    opened = False

    def read_tick(t_ms: int) -> TickBatch | None:
        nonlocal opened
        schedule = ref.current
        phase = schedule.phase_at(t_ms) if schedule is not None else None
        if phase is None:
            return None
        started = now_ms(scheduler)
        counters.lateness.append(started - t_ms)
        if not opened:
            opened = True
            try:
                reader.open()
            except Exception as exc:  # the reader retries in read(); say why once
                errors.error((rtype, "open", str(exc)), "reader %r failed to open: %s", rtype, exc)
        reads = _build_reads(phase, rtype, t_ms)
        try:
            reader.read(reads)
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}"
            for v in reads:
                v.value, v.error = None, text
            errors.error((rtype, text), "reader %r failed at %s: %s", rtype, instant(t_ms).isoformat(), text)
        counters.read_ms.append(now_ms(scheduler) - started)
        counters.ticks += 1
        counters.values += len(reads)
        counters.errors += sum(v.error is not None for v in reads)
        return TickBatch(rtype, t_ms, _deliver(phase, reads))

    def guarded(t_ms: int) -> TickBatch | None:
        # An error escaping here would end the merged stream for every reader: log it instead.
        try:
            return read_tick(t_ms)
        except Exception as exc:
            errors.error((rtype, "internal", str(exc)), "reader %r: tick %s failed: %r", rtype, t_ms, exc)
            return None

    def _read_due(source: Observable[int]) -> Observable[TickBatch]:
        batches: Observable[TickBatch | None] = source.pipe(ops.map(guarded))
        return batches.pipe(ops.filter(lambda batch: batch is not None))  # type: ignore[arg-type]

    return _read_due


def for_context(
    context_id: int, readers: frozenset[str], since_ms: Callable[[], int], until_ms: Callable[[], int]
) -> Operator:
    """This context's values from each tick of its ``readers`` that has some, strictly after
    ``since_ms()`` (its start, then its last resume) and before ``until_ms()`` (its end; a stop
    brings it forward).

    The bounds matter when a tick is late: a tick due at or before the start (or resume) that
    fires after the context's plan was applied would otherwise carry its variables; and a
    stopped run's branch, kept for its reads in flight, must not take a new run's instants.
    """

    def due(batch: TickBatch) -> bool:
        return (
            since_ms() < batch.t_ms < until_ms()
            and context_id in batch.by_context
            and batch.reader in readers
        )

    def values(batch: TickBatch) -> list[CollectedVariable]:
        return batch.by_context[context_id]

    def _for_context(source: Observable[TickBatch]) -> Observable[list[CollectedVariable]]:
        return source.pipe(ops.filter(due), ops.map(values))

    return _for_context


def gate(is_open: Callable[[], bool]) -> Operator:
    """Let values through only while ``is_open()``: the pause switch of a context."""
    return ops.filter(lambda _values: is_open())


class WriterSink:
    """One writer behind a bounded queue and its own thread.

    ``put`` never blocks the reader that calls it: when the queue holds ``limit`` values the
    oldest batches are dropped and counted, so a stuck writer costs its own data, never another
    writer's or the collection's rhythm. The thread hands the writer everything queued in one
    call (up to ``max_batch`` values), so a writer that falls behind catches up in large batches.
    Without a thread (``threaded=False``, for virtual-time tests) ``put`` writes inline.
    """

    def __init__(
        self,
        writer: DataWriter,
        logger: logging.Logger,
        limit: int = 1_000_000,
        max_batch: int = 100_000,
        threaded: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.writer = writer
        self.name = writer.name
        self._log = logger
        self._errors = RateLimitedLog(logger)
        self._limit = limit
        self._max_batch = max_batch
        self._clock = clock
        self._cond = threading.Condition()
        self._queue: deque[tuple[Sequence[CollectedVariable], float]] = deque()
        self._queued = 0
        self._busy = False
        self._stopping = False
        self.written = 0
        self.failed = 0
        self.dropped = 0
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(
                target=self._run, name=f"flowcollect-writer-{self.name}", daemon=True
            )
            self._thread.start()

    def put(self, values: Sequence[CollectedVariable]) -> None:
        if self._thread is None:
            self._write(values)
            return
        n = len(values)
        dropped = 0
        with self._cond:
            while self._queue and self._queued + n > self._limit:
                old, _ = self._queue.popleft()
                self._queued -= len(old)
                dropped += len(old)
            if n > self._limit:  # a single batch larger than the whole queue: keep its newest part
                dropped += n - self._limit
                values = values[n - self._limit :]
                n = self._limit
            self._queue.append((values, self._clock()))
            self._queued += n
            self.dropped += dropped
            self._cond.notify()
        if dropped:
            self._errors.warning(
                "queue-full",
                "writer %s cannot keep up: dropped %d oldest values (queue limit %d)",
                self.name,
                dropped,
                self._limit,
            )

    def _write(self, values: Sequence[CollectedVariable]) -> None:
        try:
            self.writer.write(values)
        except Exception as exc:
            self.failed += len(values)
            text = f"{type(exc).__name__}: {exc}"
            self._errors.error(
                ("write", text), "writer %s failed to write %d values: %s", self.name, len(values), text
            )
        else:
            self.written += len(values)

    def _take(self) -> list[Sequence[CollectedVariable]]:
        batches: list[Sequence[CollectedVariable]] = []
        taken = 0
        while self._queue and (not batches or taken + len(self._queue[0][0]) <= self._max_batch):
            values, _ = self._queue.popleft()
            batches.append(values)
            taken += len(values)
        self._queued -= taken
        return batches

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return
                batches = self._take()
                self._busy = True
            self._write(batches[0] if len(batches) == 1 else list(chain.from_iterable(batches)))
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def drain(self, timeout_s: float | None = None) -> bool:
        """Wait until everything queued has been handed to the writer; False on timeout."""
        if self._thread is None:
            return True
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and not self._busy, timeout_s)

    def flush(self, timeout_s: float | None = None) -> bool:
        drained = self.drain(timeout_s)
        try:
            self.writer.flush()
        except Exception as exc:
            self._log.error("writer %s failed to flush: %s", self.name, exc)
        return drained

    def close(self, timeout_s: float | None = 30.0) -> None:
        """Write what is queued (within ``timeout_s``), stop the thread, flush and close the writer."""
        if not self.drain(timeout_s):
            self._log.warning(
                "writer %s did not take its queue within %s s; closing anyway", self.name, timeout_s
            )
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                self._log.warning("writer %s is still busy; its thread is left to finish", self.name)
        for step in (self.writer.flush, self.writer.close):
            try:
                step()
            except Exception as exc:
                self._log.error("writer %s failed to %s: %s", self.name, step.__name__, exc)

    def snapshot(self) -> WriterStats:
        with self._cond:
            queued = self._queued
            oldest = self._clock() - self._queue[0][1] if self._queue else 0.0
        try:
            extra = dict(self.writer.stats())
        except Exception:
            extra = {}
        return WriterStats(self.name, self.written, self.failed, queued, self.dropped, oldest, extra)
