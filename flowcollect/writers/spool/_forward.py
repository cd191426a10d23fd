"""The spool's forwarder: hands spooled records to the writer behind, in order.

It owns the send cursor, the in-flight window (records handed to the writer and not yet
settled) and the retry pause, on the capped ``sender.Backoff``: ``failures`` counts the failures
in a row and is reset by every write that returns, so the pause never grows past ``max_s``
however long the destination stays down. Where the records come from (memory, segment files)
and what a settlement means for the backlog is the store side's business: a ``Source``.

Threads: ``step()`` is one round, callable on any one thread (tests call it in virtual time,
as ``BufferedSender.pump()``); ``start()`` runs it on a thread of its own, which never dies
silently: an exception in a round is logged, counted (``loop_errors``) and followed by a
backoff pause, and the loop goes on. Receipts (``settle``) come from any thread.

Every mutable field is guarded by the lock given as ``cond`` (the spool's ``SpooledWriter._cond``,
shared with the store side: a drop of a segment moves the cursor and orphans its in-flight
records in one step with the segment list), except ``_thread``, written once by ``start()``.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from flowcollect._logs import RateLimitedLog
from flowcollect.values import Receipt, ValueBatch
from flowcollect.writers.base import DataWriter
from flowcollect.writers.sender import Backoff

__all__ = ["RETRY", "Forwarder", "Handout", "Sent", "Source"]

logger = logging.getLogger("flowcollect.writers.spool")

RETRY = Backoff(initial_s=0.5, max_s=30.0)
"""The pause after a failed write: 0.5 s doubling to 30 s, less up to half (jitter)."""


class Handout:
    """A record to hand out: where it is (``seq``, ``start``), the batch once loaded, and the
    batch its receipts go to (``origin``: the engine's, or None for a replay of an earlier run).

    ``end`` is where the next record starts (known once loaded); ``held``: ``origin`` still has its
    columns; ``pending``: the store side's own note for it.
    """

    __slots__ = ("batch", "end", "held", "origin", "pending", "seq", "start")

    def __init__(
        self,
        seq: int,
        start: int,
        end: int = 0,
        batch: ValueBatch | None = None,
        origin: ValueBatch | None = None,
        held: bool = False,
        pending: Any = None,
    ) -> None:
        self.seq = seq
        self.start = start
        self.end = end
        self.batch = batch
        self.origin = origin
        self.held = held
        self.pending = pending


class Sent:
    """A record handed to the writer and not yet (wholly) settled."""

    __slots__ = (
        "dropped",
        "end",
        "failed",
        "handed",
        "held",
        "keep",
        "n",
        "origin",
        "orphan",
        "seq",
        "settled",
        "start",
        "t_ms",
        "written",
    )

    def __init__(
        self, seq: int, start: int, end: int, handed: ValueBatch, origin: ValueBatch | None, held: bool
    ) -> None:
        self.seq = seq
        self.start = start
        self.end = end
        self.handed = handed
        self.origin = origin  # the batch the engine gave (or its copy from disk); None: a replay
        self.held = held  # the origin still has its columns (it was handed from memory)
        self.n = len(handed)
        self.t_ms = handed.t_ms
        self.written = 0
        self.failed = 0
        self.dropped = 0  # reported dropped (not kept): with written and failed, what its origin heard
        self.settled = 0
        self.keep = False  # given up by the writer while closing: stays spooled for the next run
        self.orphan = False  # its segment was dropped (or moved aside) while it was with the writer


class Source(Protocol):
    """The store side, as the forwarder sees it. ``*_locked`` methods run under the shared lock."""

    def next_locked(self) -> Handout | None:
        """The record at the cursor (moving the cursor past gaps), or None if there is none yet."""
        ...

    def load(self, item: Handout) -> Handout | None:
        """Outside the lock: the record with its batch and ``end``; None when there is nothing to
        hand for it now (dropped meanwhile, damaged, or a table record the cursor moved past)."""
        ...

    def taken_locked(self, item: Handout) -> None:
        """The record is being handed to the writer."""
        ...

    def returned_locked(self, entry: Sent) -> None:
        """The writer did not take the record; the cursor is back at it, to hand it again."""
        ...

    def settled_locked(
        self, entry: Sent, written: int, failed: int, dropped: int, error: str | None, done: bool
    ) -> Receipt | None:
        """Count what the writer said of part of a record (``done``: all of it is settled now);
        the receipt to pass on to whoever is attached, if any."""
        ...

    def orphan_lost_locked(self, entry: Sent, why: str) -> Receipt | None:
        """Count the unsettled values of an orphan (its segment is gone) as dropped; the receipt
        to pass on, if any. Takes the entry out of the window if it is still there."""
        ...

    def send_receipts(self, receipts: list[Receipt]) -> None:
        """Outside the lock: pass receipts on."""
        ...


class Forwarder:
    """Hands records from ``source`` to ``writer`` in order, at most ``max_in_flight_values``
    unsettled at a time (one record for a writer that does not acknowledge)."""

    def __init__(
        self,
        name: str,
        writer: DataWriter,
        source: Source,
        cond: threading.Condition,
        *,
        max_in_flight_values: int,
        idle_s: float = 1.0,
        backoff: Backoff = RETRY,
        monotonic: Callable[[], float] = time.monotonic,
        wait: Callable[[float], object] | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.name = name
        self.writer = writer
        self.max_in_flight_values = max_in_flight_values
        self.idle_s = idle_s
        self.backoff = backoff
        self._source = source
        self._cond = cond
        self._monotonic = monotonic
        self._wait = wait if wait is not None else self._wait_for_wake
        self._rng = rng
        self._errors = RateLimitedLog(logger, clock=monotonic)
        # Guarded by _cond:
        self.cursor: tuple[int, int] = (0, 0)  # the next record to hand out
        self.sent: deque[Sent] = deque()  # handed out, in order, not yet settled (or kept)
        self.by_batch: dict[int, Sent] = {}  # id(handed batch) -> its entry, for receipts
        self.in_flight = 0  # values of ``sent`` not yet settled
        self.failures = 0  # failed writes in a row; 0 after every write that returns
        self.retry_at = 0.0  # no record is handed before this (monotonic)
        self.write_errors = 0  # writes that raised
        self.loop_errors = 0  # rounds that raised (a bug or a fault): logged, paused, carried on
        self.closing = False  # the writer is closing: hand nothing more, keep what it gives up
        self.stopping = False
        self._wakes = 0  # bumped by wake_locked(): something changed since the round began
        self._seen = 0  # _wakes when the current round looked
        self._thread: threading.Thread | None = None  # written once, by start()

    # -- the loop --------------------------------------------------------------------------------

    def start(self, thread_name: str) -> threading.Thread:
        thread = threading.Thread(target=self.run, name=thread_name, daemon=True)
        self._thread = thread
        thread.start()
        return thread

    def run(self) -> None:
        """The forwarder's thread: rounds until stopped. A round that raises is logged, counted
        and followed by a backoff pause; nothing ends the loop but ``stop``/``closing``."""
        while True:
            try:
                delay = self.step()
            except Exception as exc:
                delay = self._loop_failed(exc)
            if delay is None:
                return
            if delay > 0:
                try:
                    self._wait(delay)
                except Exception as exc:  # an injected wait, or a bug: the next round comes anyway
                    self._loop_failed(exc)

    def step(self) -> float | None:
        """One round: hand out the next record if the window and the retry pause allow.
        Returns how long to wait before the next round (0: at once), or None to stop."""
        with self._cond:
            if self.stopping or self.closing:
                return None
            self._seen = self._wakes
            now = self._monotonic()
            if now < self.retry_at:
                return self.retry_at - now
            busy = self.in_flight >= self.max_in_flight_values or (
                self.in_flight and not self.writer.acknowledges
            )
            item = None if busy else self._source.next_locked()
            if item is None:
                return self.idle_s
        loaded = self._source.load(item)
        if loaded is not None:
            self._hand(loaded)
        return 0.0

    def _loop_failed(self, exc: Exception) -> float | None:
        with self._cond:
            self.loop_errors += 1
            self.failures += 1
            delay = self.backoff.delay(self.failures, None, self._rng)
            self.retry_at = self._monotonic() + delay
            if self.stopping or self.closing:
                return None
        text = f"{type(exc).__name__}: {exc}"
        self._errors.error(
            ("loop", text),
            "%s: the spool's forwarder failed (%s); it goes on in %.1f s, the values stay spooled\n%s",
            self.name,
            text,
            delay,
            "".join(traceback.format_exception(exc)).rstrip(),
        )
        return delay

    def _wait_for_wake(self, seconds: float) -> None:
        with self._cond:
            if self._wakes == self._seen and not (self.stopping or self.closing):
                self._cond.wait(seconds)

    def wake_locked(self) -> None:
        """Under the lock: something changed (an append, a settlement, a drop, close)."""
        self._wakes += 1
        self._cond.notify_all()

    # -- handing out -----------------------------------------------------------------------------

    def _hand(self, item: Handout) -> None:
        batch = item.batch
        if batch is None:
            return
        with self._cond:
            if self.cursor != (item.seq, item.start) or self.closing or self.stopping:
                return  # dropped meanwhile (its receipt went with the drop), or stopping
            self._source.taken_locked(item)
            if id(batch) in self.by_batch:
                batch = batch.handle()  # the same object twice in flight: receipts must tell them apart
            entry = Sent(item.seq, item.start, item.end, batch, item.origin, item.held)
            self.sent.append(entry)
            self.by_batch[id(batch)] = entry
            self.in_flight += entry.n
            self.cursor = (item.seq, item.end)
        try:
            self.writer.write_batch(batch)
        except Exception as exc:
            self._write_failed(entry, exc)
            return
        with self._cond:
            recovered = self.failures
            self.failures = 0
        if recovered:
            logger.info(
                "%s: the writer behind the spool takes values again after %d failures", self.name, recovered
            )
        if not self.writer.acknowledges:
            self.settle(entry, entry.n, 0, 0, None)

    def _write_failed(self, entry: Sent, exc: Exception) -> None:
        # The writer did not take the batch: it stays spooled and is handed again after a pause.
        text = f"{type(exc).__name__}: {exc}"
        lost: Receipt | None = None
        with self._cond:
            self.write_errors += 1
            self.by_batch.pop(id(entry.handed), None)
            if entry in self.sent:
                self.sent.remove(entry)
                self.in_flight -= entry.n
            if entry.orphan:
                # Its segment was dropped while it was being handed: no copy is left to retry.
                lost = self._source.orphan_lost_locked(
                    entry, f"its segment was dropped; the writer failed ({text})"
                )
            elif (entry.seq, entry.start) < self.cursor:
                self.cursor = (entry.seq, entry.start)
                self._source.returned_locked(entry)
            self.failures += 1
            delay = self.backoff.delay(self.failures, None, self._rng)
            self.retry_at = self._monotonic() + delay
        if lost is not None:
            self._source.send_receipts([lost])
        self._errors.error(
            ("write", text),
            "%s: the writer behind the spool failed (%s); retrying in %.1f s, the values stay spooled",
            self.name,
            text,
            delay,
        )

    # -- settlements -----------------------------------------------------------------------------

    def on_receipt(self, receipt: Receipt) -> None:
        """The writer's receipt (any thread): settle the record it names."""
        with self._cond:
            entry = self.by_batch.get(id(receipt.batch))
            if entry is None or entry.handed is not receipt.batch:
                entry = None
        if entry is None:
            self._errors.warning(
                ("receipt",), "%s: a receipt for a batch the spool did not hand out; ignored", self.name
            )
            return
        self.settle(entry, receipt.written, receipt.failed, receipt.dropped, receipt.error)

    def settle(self, entry: Sent, written: int, failed: int, dropped: int, error: str | None) -> None:
        forward: Receipt | None = None
        with self._cond:
            if self.closing and dropped and not entry.orphan:
                # Given up because the writer is closing: not lost, the spool sends it next run.
                # (Not so for an orphan: its segment is gone, so what the writer gives up is lost.)
                entry.keep = True
                dropped = 0
            entry.written += written
            entry.failed += failed
            entry.dropped += dropped
            entry.settled += written + failed + dropped + (entry.n if entry.keep else 0)
            done = entry.settled >= entry.n
            if done:
                self.by_batch.pop(id(entry.handed), None)
                self.in_flight -= entry.n
            forward = self._source.settled_locked(entry, written, failed, dropped, error, done)
            if done:
                sent = self.sent
                while sent and sent[0].settled >= sent[0].n and not sent[0].keep:
                    sent.popleft()
            self.wake_locked()
        if forward is not None:
            self._source.send_receipts([forward])

    def orphan_locked(self, seq: int) -> None:
        """Under the lock: segment ``seq`` is gone while some of its records are with the writer.
        They are no longer in the spool: what the writer does not store of them is lost."""
        for entry in self.sent:
            if entry.seq == seq and entry.settled < entry.n:
                entry.orphan = True

    def position_locked(self) -> tuple[int, int]:
        """The first record not settled and still spooled: where a restart resumes sending."""
        for entry in self.sent:
            if not entry.orphan:
                return (entry.seq, entry.start)
        return self.cursor

    def drop_orphans_locked(self, why: str) -> list[Receipt]:
        """Under the lock, at close: the orphans the writer did not settle are lost; counted by
        the source, taken out of the window; the receipts to pass on."""
        receipts = []
        for entry in [e for e in self.sent if e.orphan and e.settled < e.n]:
            self.sent.remove(entry)
            self.by_batch.pop(id(entry.handed), None)
            self.in_flight -= entry.n
            receipt = self._source.orphan_lost_locked(entry, why)
            if receipt is not None:
                receipts.append(receipt)
        return receipts
