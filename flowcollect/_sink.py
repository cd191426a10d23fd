"""Writer sinks: one bounded queue and thread per writer, between the lanes and the writer."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from itertools import chain

from flowcollect._logs import RateLimitedLog
from flowcollect.stats import WriterStats
from flowcollect.values import CollectedVariable, ValueBatch
from flowcollect.writers.base import DataWriter

__all__ = ["WriterSink"]


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
        self._queue: deque[tuple[Sequence[CollectedVariable] | ValueBatch, float]] = deque()
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

    def put(self, values: Sequence[CollectedVariable] | ValueBatch) -> None:
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
                values = list(values)[n - self._limit :]
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

    def _write(self, values: Sequence[CollectedVariable] | ValueBatch) -> None:
        try:
            if isinstance(values, ValueBatch):
                self.writer.write_batch(values)
            else:
                self.writer.write(values)
        except Exception as exc:
            self.failed += len(values)
            text = f"{type(exc).__name__}: {exc}"
            self._errors.error(
                ("write", text), "writer %s failed to write %d values: %s", self.name, len(values), text
            )
        else:
            self.written += len(values)

    def _take(self) -> list[Sequence[CollectedVariable] | ValueBatch]:
        batches: list[Sequence[CollectedVariable] | ValueBatch] = []
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
            if type(self.writer).write_batch is not DataWriter.write_batch:
                for batch in batches:
                    self._write(batch)
            else:
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
