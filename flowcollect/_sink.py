"""Writer sinks: one bounded queue and thread per writer, between the lanes and the writer.

A sink owns everything between the engine's hand-over and its writer: routing (what the writer
receives), the queue and its policy when the writer falls behind, the writer's own thread (the
only thread that ever calls its ``write``/``write_batch``, ``flush`` and ``close``), the
acknowledgements, and the figures. Every value routed to the writer is, at every moment, exactly
one of: queued, in flight (handed over, not acknowledged), written, failed or dropped.

The caller's interface (the collector's): ``put(batch)``, ``begin_flush()`` then
``flush(timeout_s, deadline=)``, ``begin_close()`` then ``close(deadline)``, ``snapshot()``.
``begin_*`` only post a request, so a collector posts to every sink before waiting on any: a
stuck writer costs the others none of the shared deadline.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from flowcollect._logs import RateLimitedLog
from flowcollect.errors import ConfigError
from flowcollect.stats import WriterStats
from flowcollect.values import CollectedVariable, Receipt, ValueBatch, VariableSpec, joined
from flowcollect.writers.base import QUEUE_POLICIES, DataWriter, Routing

__all__ = ["WriterSink"]

Item = ValueBatch | Sequence[CollectedVariable]

_US = timedelta(microseconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class _Pending:
    """A batch handed to an acknowledging writer, with how many of its values are unreported.

    Only its identity and counts are used: the writer may have released its columns meanwhile.
    """

    __slots__ = ("batch", "left", "seq")

    def __init__(self, batch: ValueBatch, left: int, seq: int) -> None:
        self.batch = batch
        self.left = left
        self.seq = seq


def _epoch_us(when: datetime, epoch: datetime) -> int:
    return (when - epoch) // _US


_SPECS: dict[tuple[int, int, str, str, str, int], VariableSpec] = {}
_SPECS_MAX = 200_000


def as_batch(values: Sequence[CollectedVariable]) -> ValueBatch:
    """A columnar batch of per-value objects (the engine's lists, until it hands batches).

    The instant is the first value's time; values at another time carry it as their source time.
    Specs are shared through a bounded cache: a tick's list holds the same variables as the last.
    """
    cache = _SPECS
    if len(cache) > _SPECS_MAX:
        cache.clear()
    specs = []
    for v in values:
        key = (v.id, v.context_id, v.address, v.value_type, v.reader, v.interval_ms)
        spec = cache.get(key)
        if spec is None:
            spec = cache[key] = VariableSpec(*key)
        specs.append(spec)
    first = values[0].time if values else None
    t_us = 0 if first is None else _epoch_us(first, _EPOCH)
    source_ns: list[int | None] | None = None
    if any(v.time != first for v in values):
        source_ns = [None if v.time is None else _epoch_us(v.time, _EPOCH) * 1000 for v in values]
    quality = [v.quality for v in values]
    beside: list[int | None] | None = None
    if any(v.source_time is not None for v in values):
        beside = [None if v.source_time is None else _epoch_us(v.source_time, _EPOCH) * 1000 for v in values]
    contexts = {v.context_id for v in values}
    return ValueBatch(
        t_us // 1000,
        specs,
        [v.value for v in values],
        [v.error for v in values],
        source_ns=source_ns,
        quality=quality if any(q is not None for q in quality) else None,
        context_id=contexts.pop() if len(contexts) == 1 else None,
        reader=values[0].reader if values else "",
        source_time_ns=beside,
    )


def _subset(batch: ValueBatch, keep: Sequence[int], specs: Sequence[VariableSpec]) -> ValueBatch:
    values, errors, source, quality = batch.values, batch.errors, batch.source_ns, batch.quality
    beside = batch.source_time_ns
    return ValueBatch(
        batch.t_ms,
        specs,
        [values[i] for i in keep],
        [errors[i] for i in keep],
        source_ns=None if source is None else [source[i] for i in keep],
        quality=None if quality is None else [quality[i] for i in keep],
        context_id=batch.context_id,
        reader=batch.reader,
        source_time_ns=None if beside is None else [beside[i] for i in keep],
    )


def _slice(item: Item, start: int, stop: int) -> Item:
    if isinstance(item, ValueBatch):
        keep = range(start, stop)
        return _subset(item, keep, [item.variables[i] for i in keep])
    return item[start:stop]


def _route(item: Item, routing: Routing) -> Item | None:
    """The part of ``item`` the writer receives (the item itself when all of it), or None."""
    if isinstance(item, ValueBatch):
        if item.context_id is not None:
            if not routing.wants_context(item.context_id):
                return None
            if routing.variables is None:
                return item  # a context-only routing costs one set lookup per batch
        keep, specs = routing.select(item.variables)
        if len(keep) == len(item):
            return item
        return _subset(item, keep, specs) if keep else None
    # Per-value objects carry no name: a list is routed by context and variable id.
    kept = [v for v in item if routing.wants_variable(v.context_id, v.id, None)]
    if len(kept) == len(item):
        return item
    return kept or None


def _queue_settings(writer: DataWriter, limit: int) -> tuple[bool, int, float | None]:
    """The writer's queue policy, queue limit and flush interval, checked (``ConfigError``)."""
    name = writer.name
    policy = getattr(writer, "queue_policy", "drop_oldest")
    own_limit = getattr(writer, "queue_limit", None)
    interval = getattr(writer, "flush_interval_s", None)
    problems = []
    if policy not in QUEUE_POLICIES:
        problems.append(f"writer {name}: queue_policy must be one of {list(QUEUE_POLICIES)}, got {policy!r}")
    if own_limit is not None and (
        isinstance(own_limit, bool) or not isinstance(own_limit, int) or own_limit <= 0
    ):
        problems.append(f"writer {name}: queue_limit must be a positive number of values, got {own_limit!r}")
    if interval is not None and (
        isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval <= 0
    ):
        problems.append(f"writer {name}: flush_interval_s must be positive seconds or None, got {interval!r}")
    if problems:
        raise ConfigError(problems)
    return (
        policy == "drop_newest",
        own_limit if own_limit is not None else limit,
        None if interval is None else float(interval),
    )


class WriterSink:
    """One writer behind a bounded queue and its own thread.

    ``put`` never blocks the reader that calls it: when the queue would hold more than its limit,
    the writer's ``queue_policy`` drops the oldest queued batches (``drop_oldest``, the default;
    a single batch larger than the whole queue keeps its last ``limit`` values) or the batch that
    came (``drop_newest``), counted as ``dropped_queue``. A writer that falls behind catches up
    in large rounds (up to ``max_batch`` values): a ``write(values)`` writer gets them joined in
    one list; a ``write_batch`` writer gets each batch as it came, since its receipts name
    batches and the batch is already its unit of work. Without a thread (``threaded=False``, for
    virtual-time tests) ``put``, ``flush`` and ``close`` call the writer inline.
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
        self._drop_newest, self._limit, self._flush_every = _queue_settings(writer, limit)
        self._max_batch = max_batch
        self._clock = clock
        self._batches = writer.uses_batches
        self._acks = writer.acknowledges and self._batches
        self._cond = threading.Condition()
        self._queue: deque[tuple[Item, int, float]] = deque()  # (item, put sequence, put time)
        self._pending: dict[int, _Pending] = {}  # id(batch) -> unreported values (acknowledging writers)
        self._seq = 0  # batches put so far
        # Figures, all under _cond; received == written + failed + dropped + queued + in_flight.
        self._received = 0
        self._written = 0
        self._failed = 0
        self._queued = 0
        self._in_flight = 0
        self._dropped_queue = 0
        self._dropped_writer = 0
        self._dropped_close = 0
        # Requests to the writer's thread, and what it is doing.
        self._flush_req = 0  # flush requests posted
        self._flush_target = 0  # the put sequence the latest request covers
        self._flush_done = 0  # requests served
        self._dirty = False  # written since the last flush
        self._last_flush = clock()
        self._stopping = False
        self._finished = False  # the writer is closed, the thread ended
        self._abandoned = False  # the close deadline passed first: figures are final
        self._phase = "idle"  # write, flush or close: what a stuck writer is stuck in
        self._close_called = False
        if self._acks:
            writer.attach(self._on_receipt)
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(
                target=self._run, name=f"flowcollect-writer-{self.name}", daemon=True
            )
            self._thread.start()

    # -- the hand-over (the engine's loop thread) ------------------------------------------------

    def put(self, batch: Item) -> None:
        """Queue a batch (a ``ValueBatch``, or a sequence of ``CollectedVariable``) for the
        writer; never blocks beyond a short lock."""
        self.put_many((batch,))

    def put_many(self, batches: Sequence[Item]) -> None:
        """Queue several batches under one taking of the lock and one wake-up of the writer's
        thread: the engine's loop hands over everything its lanes read in one pass at once, so
        a lane's hand-over shares no lock with another's and the writer is woken once per pass,
        not once per lane."""
        items = []
        for batch in batches:
            item = self._routed(batch)
            if item is not None and len(item):
                items.append(item)
        if not items:
            return
        if self._thread is None:
            for item in items:
                self._put_inline(item)
            return
        dropped = 0
        with self._cond:
            queued = False
            for item in items:
                more, added = self._enqueue(item)
                dropped += more
                queued = queued or added
            if queued:
                self._cond.notify_all()
        if dropped:
            self._errors.warning(
                "queue-full",
                "writer %s cannot keep up: dropped %d %s values (queue limit %d)",
                self.name,
                dropped,
                "newest" if self._drop_newest else "oldest",
                self._limit,
            )

    def _enqueue(self, item: Item) -> tuple[int, bool]:
        """Under the lock: one routed item into the queue, by the queue policy. Returns the
        values the policy dropped and whether anything was queued."""
        n = len(item)
        self._received += n
        if self._finished or self._abandoned:
            self._dropped_close += n  # the writer is closed: nothing more can be stored
            return 0, False
        dropped = 0
        if self._drop_newest:
            if self._queued + n > self._limit:
                dropped, n = n, 0
        else:
            while self._queue and self._queued + n > self._limit:
                old, _, _ = self._queue.popleft()
                self._queued -= len(old)
                dropped += len(old)
            if n > self._limit:  # larger than the whole queue: keep its last part
                dropped += n - self._limit
                item = _slice(item, n - self._limit, n)
                n = self._limit
        if n:
            self._seq += 1
            self._queue.append((item, self._seq, self._clock()))
            self._queued += n
        self._dropped_queue += dropped
        return dropped, n > 0

    def _routed(self, batch: Item) -> Item | None:
        """What the writer gets of ``batch`` (None: nothing). An acknowledging writer gets a
        batch object of its own (the same lists): receipts name it alone, and the writer may
        release its columns while it holds it for a receipt (a spool, during a long outage)."""
        routing = self.writer.routing
        item = batch if routing is None else _route(batch, routing)
        if item is None or not self._acks:
            return item
        if not isinstance(item, ValueBatch):
            return as_batch(item)
        return item.handle() if item is batch else item  # a routed part is a new object already

    def _put_inline(self, item: Item) -> None:
        # No thread (virtual time): the writer is called on the caller's thread, at once.
        with self._cond:
            self._received += len(item)
            if self._finished:
                self._dropped_close += len(item)
                return
            self._seq += 1
            entries = [(item, self._seq)]
            self._handing(entries)
        self._hand(entries)

    # -- the writer's thread -------------------------------------------------------------------

    def _handing(self, entries: list[tuple[Item, int]]) -> None:
        """Under the lock: these entries go to the writer now (in flight, awaited if acknowledged)."""
        for item, seq in entries:
            n = len(item)
            self._in_flight += n
            if self._acks and isinstance(item, ValueBatch):  # put made every item a batch
                entry = self._pending.get(id(item))
                if entry is not None and entry.batch is item:
                    entry.left += n  # the same batch object twice: reported values count against both
                else:
                    self._pending[id(item)] = _Pending(item, n, seq)
        self._dirty = True

    def _take(self) -> list[tuple[Item, int]]:
        entries: list[tuple[Item, int]] = []
        taken = 0
        while self._queue and (not entries or taken + len(self._queue[0][0]) <= self._max_batch):
            item, seq, _ = self._queue.popleft()
            entries.append((item, seq))
            taken += len(item)
        self._queued -= taken
        self._handing(entries)
        return entries

    def _settle(self, written: int, failed: int) -> None:
        """Under the lock: a non-acknowledging writer's call returned (or raised)."""
        if self._abandoned:
            return  # figures were made final at the close deadline
        self._written += written
        self._failed += failed
        self._in_flight -= written + failed

    def _fail_pending(self, batch: ValueBatch) -> int:
        """Under the lock: what an acknowledging writer left unreported of a batch whose write
        raised counts as failed; its later receipts for it are ignored."""
        entry = self._pending.get(id(batch))
        if entry is None or entry.batch is not batch or self._abandoned:
            return 0
        del self._pending[id(batch)]
        self._failed += entry.left
        self._in_flight -= entry.left
        self._cond.notify_all()
        return entry.left

    def _hand(self, entries: list[tuple[Item, int]]) -> None:
        """On the writer's thread, without the lock: the writer's call(s) and their outcome."""
        writer = self.writer
        if not self._batches:
            items = [item for item, _ in entries]
            values: Sequence[CollectedVariable] = joined(items)  # lazy: see values.joined
            n = len(values)
            try:
                writer.write(values)
            except Exception as exc:
                with self._cond:
                    self._settle(0, n)
                self._write_failed(n, exc)
            else:
                with self._cond:
                    self._settle(n, 0)
            return
        for item, _ in entries:
            batch = item if isinstance(item, ValueBatch) else as_batch(item)
            try:
                writer.write_batch(batch)
            except Exception as exc:
                with self._cond:
                    if self._acks:
                        failed = self._fail_pending(batch)
                    else:
                        failed = len(batch)
                        self._settle(0, failed)
                self._write_failed(failed, exc)
            else:
                if not self._acks:
                    with self._cond:
                        self._settle(len(batch), 0)

    def _write_failed(self, n: int, exc: Exception) -> None:
        text = f"{type(exc).__name__}: {exc}"
        self._errors.error(("write", text), "writer %s failed to write %d values: %s", self.name, n, text)

    def _on_receipt(self, receipt: Receipt) -> None:
        """A writer's word on (part of) a batch: from any thread, any number per batch."""
        problem = None
        with self._cond:
            if self._abandoned:
                return
            batch = receipt.batch
            entry = self._pending.get(id(batch))
            if entry is None or entry.batch is not batch:
                problem = "a receipt for a batch it has no values of left to report (ignored)"
            else:
                counts = []
                for n in (receipt.written, receipt.failed, receipt.dropped):
                    take = min(max(n, 0), entry.left)
                    entry.left -= take
                    counts.append(take)
                written, failed, dropped = counts
                self._written += written
                self._failed += failed
                self._dropped_writer += dropped
                self._in_flight -= written + failed + dropped
                if min(receipt.written, receipt.failed, receipt.dropped) < 0:
                    problem = "a receipt with a negative count (taken as 0)"
                elif written + failed + dropped < receipt.written + receipt.failed + receipt.dropped:
                    problem = "a receipt for more values than it had left to report (the excess is ignored)"
                if entry.left == 0:
                    del self._pending[id(batch)]
                    self._cond.notify_all()
        if problem is not None:
            self._errors.error(("receipt", problem), "writer %s sent %s", self.name, problem)

    def _flush_due_in(self) -> float | None:
        """Under the lock: seconds until the periodic flush is due (<= 0: now), None: not needed."""
        if self._flush_every is None or not self._dirty:
            return None
        return self._last_flush + self._flush_every - self._clock()

    def _run(self) -> None:
        while True:
            gen = 0
            entries: list[tuple[Item, int]] = []
            with self._cond:
                while True:
                    if self._abandoned:
                        action = "abandoned"
                        break
                    due = self._flush_due_in()
                    if due is not None and due <= 0:
                        action, gen = "flush", 0
                        break
                    if self._flush_req > self._flush_done and (
                        not self._queue or self._queue[0][1] > self._flush_target
                    ):
                        action, gen = "flush", self._flush_req
                        break
                    if self._queue:
                        action, entries = "write", self._take()
                        break
                    if self._stopping:
                        action = "close"
                        break
                    self._cond.wait(due)
                self._phase = action
            if action == "abandoned":
                self._late_close()
                return
            if action == "write":
                self._hand(entries)
            elif action == "flush":
                self._flush_writer()
                with self._cond:
                    self._flush_done = max(self._flush_done, gen)
                    self._cond.notify_all()
            else:
                self._close_writer()
                return
            with self._cond:
                self._phase = "idle"

    def _flush_writer(self) -> None:
        with self._cond:
            self._phase = "flush"
            self._dirty = False
            self._last_flush = self._clock()
        try:
            self.writer.flush()
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}"
            self._errors.error(("flush", text), "writer %s failed to flush: %s", self.name, text)

    def _close_writer(self) -> None:
        """On the writer's thread: flush, close, and settle what the writer left unreported."""
        self._flush_writer()
        with self._cond:
            self._phase = "close"
            self._close_called = True
        try:
            self.writer.close()
        except Exception as exc:
            self._log.error("writer %s failed to close: %s", self.name, exc)
        with self._cond:
            if self._abandoned:
                return
            unreported = sum(entry.left for entry in self._pending.values())
            # A writer that keeps what it did not acknowledge (a spool on disk) has not lost it:
            # those values stay in flight, to be sent by the next run, not counted dropped. Its
            # batches stay pending: a writer taking over its spool (a reload) sends them and
            # acknowledges them here, so they count once, as written, failed or dropped.
            keeps = getattr(self.writer, "keeps_unacknowledged", False)
            kept = unreported if keeps else 0
            late = self._queued  # put while the writer was closing
            if not keeps:
                self._pending.clear()
            self._queue.clear()
            self._queued = 0
            self._in_flight -= unreported - kept
            self._dropped_close += unreported - kept + late
            self._finished = True
            self._phase = "closed"
            self._cond.notify_all()
        if kept:
            self._log.warning(
                "writer %s closed with %d values not yet acknowledged; it keeps them for the next run",
                self.name,
                kept,
            )
        elif unreported:
            self._log.warning(
                "writer %s closed without acknowledging %d values; they are counted dropped",
                self.name,
                unreported,
            )

    def _late_close(self) -> None:
        # The collector gave up on this thread; the writer came back after all. Release its
        # resources (still on its own thread, alone); its figures are final and stay as they are.
        if self._close_called:
            return
        self._close_called = True
        try:
            self.writer.flush()
            self.writer.close()
        except Exception as exc:
            self._log.debug("writer %s failed to close after being abandoned: %s", self.name, exc)

    # -- flush and close (the collector's thread) ---------------------------------------------

    def _end(self, timeout_s: float | None, deadline: float | None) -> float | None:
        """Seconds left until the earlier of a timeout and an absolute deadline (None: no bound)."""
        ends = [
            t for t in (deadline, None if timeout_s is None else self._clock() + timeout_s) if t is not None
        ]
        return None if not ends else max(0.0, min(ends) - self._clock())

    def _post_flush(self) -> tuple[int, int]:
        """Under the lock: post a flush request, or join the outstanding one that covers every put."""
        if not (self._flush_req > self._flush_done and self._flush_target == self._seq):
            self._flush_req += 1
            self._flush_target = self._seq
            self._cond.notify_all()
        return self._flush_req, self._flush_target

    def begin_flush(self) -> None:
        """Ask the writer's thread to hand over everything put so far and flush; do not wait."""
        if self._thread is not None:
            with self._cond:
                self._post_flush()

    def flush(self, timeout_s: float | None = None, *, deadline: float | None = None) -> bool:
        """Hand the writer everything put so far, flush it (on its thread) and wait until every
        value of those is acknowledged; False when the timeout or deadline (absolute, on the
        sink's monotonic clock) came first, or the writer is closed."""
        if self._thread is None:
            if not self._finished:
                self._flush_writer()
            return not self._finished
        with self._cond:
            if self._finished or self._abandoned:
                return False
            gen, target = self._post_flush()

            def done() -> bool:
                if self._abandoned or self._finished:
                    return True
                if self._flush_done < gen:
                    return False
                oldest = next(iter(self._pending.values()), None)
                return oldest is None or oldest.seq > target

            return self._cond.wait_for(done, self._end(timeout_s, deadline)) and not self._abandoned

    def begin_close(self) -> None:
        """Ask the writer's thread to write what is queued, flush and close; do not wait."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def close(self, deadline: float | None = None) -> bool:
        """Write what is queued, flush and close the writer, all on its thread, by ``deadline``
        (absolute, on the sink's clock: ``time.monotonic``; None: no bound). True when the writer
        closed in time. Otherwise the thread is abandoned (a daemon, left to finish or hang), the
        values still queued or in flight count as ``dropped_close``, and the figures are final.
        """
        if self._thread is None:
            if not self._finished:
                self._close_writer()
            return True
        self.begin_close()
        with self._cond:
            if self._cond.wait_for(lambda: self._finished, self._end(None, deadline)):
                return True
            if self._abandoned:
                return False
            self._abandoned = True
            queued, in_flight, phase = self._queued, self._in_flight, self._phase
            # A writer that keeps what it did not acknowledge (a spool: what it took is on its
            # disk, for the next run) has not lost its values in flight, unless it is stuck
            # taking a batch (then whether that one was kept is unknown).
            kept = (
                in_flight if getattr(self.writer, "keeps_unacknowledged", False) and phase != "write" else 0
            )
            self._dropped_close += queued + in_flight - kept
            self._queue.clear()
            self._pending.clear()
            self._queued = 0
            self._in_flight = kept
            self._cond.notify_all()
        if kept:
            self._log.warning(
                "writer %s is still in %s at the close deadline: its thread is left behind; %d values "
                "it had taken stay with it for the next run, %d queued are counted dropped",
                self.name,
                phase,
                kept,
                queued,
            )
            return False
        self._log.warning(
            "writer %s is stuck in %s at the close deadline: its thread is left behind and "
            "%d values it had not stored (%d queued, %d in flight) are counted dropped",
            self.name,
            phase,
            queued + in_flight,
            queued,
            in_flight,
        )
        return False

    # -- figures -------------------------------------------------------------------------------

    def snapshot(self) -> WriterStats:
        """The writer's figures at one moment: they always add up (see ``WriterStats``)."""
        with self._cond:
            oldest = self._clock() - self._queue[0][2] if self._queue else 0.0
            dropped = self._dropped_queue + self._dropped_writer + self._dropped_close
            figures = (
                self._received,
                self._written,
                self._failed,
                self._queued,
                self._in_flight,
                dropped,
                self._dropped_queue,
                self._dropped_writer,
                self._dropped_close,
            )
        try:
            extra = dict(self.writer.stats())
        except Exception:
            extra = {}
        received, written, failed, queued, in_flight, dropped, by_queue, by_writer, at_close = figures
        return WriterStats(
            writer=self.name,
            written=written,
            failed=failed,
            queued=queued,
            dropped=dropped,
            oldest_queued_s=oldest,
            extra=extra,
            received=received,
            in_flight=in_flight,
            dropped_queue=by_queue,
            dropped_writer=by_writer,
            dropped_close=at_close,
        )
