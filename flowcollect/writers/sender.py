"""A buffered sender for network writers: batching, an in-flight limit, backoff, receipts.

A network writer turns values into records (lines of text) and hands them to a
``BufferedSender`` with a token saying whose they are (the ``ValueBatch`` they came from). The
sender batches records into requests, posts them through a ``Transport`` from its own threads,
keeps them through outages (bounded by ``buffer_limit``), and says per token how many records
were stored, refused or dropped (``on_settled``), possibly in several parts when requests merge
or split batches. The transport is the only protocol-specific part: it encodes records into a
body, sends it, and classifies the server's answer as an ``Outcome``. InfluxDB's HTTP transport
is one; an MQTT or plain HTTP writer brings its own and reuses everything else.

What each outcome makes the sender do:

- ``OK``: every record of the request is stored.
- ``PARTIAL``: the server stored some records and refused the rest for good: the refused ones
  are failed, the others written; nothing is sent again.
- ``REFUSED``: the whole request is refused for good (malformed): every record failed.
- ``RETRY`` (no connection, timeout, 429, 5xx): kept at the head of the queue and retried, oldest
  first, one request at a time, after a backoff with jitter (``Retry-After`` lengthens it).
- ``HOLD`` (401, 403, 404: credentials or the database are wrong): as ``RETRY``, and logged as an
  error and counted in ``held_retries``: an operator's problem to fix, never a reason to discard.
- ``TOO_LARGE`` (413): the request is split in two and both halves are sent at once; later
  requests are cut to the size that worked. Every ``regrow_after_s`` without another 413 the
  limit doubles again (up to ``batch_size``), so a passing storm, a server whose limit was
  raised or one oversized record does not leave the sender at one record a request for ever.

Time comes from an injectable ``clock``; with ``threaded=False`` nothing runs by itself and
``pump()`` sends what is due now, so the backoff and batching logic is tested in virtual time.
"""

from __future__ import annotations

import enum
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Protocol

from flowcollect._logs import RateLimitedLog

__all__ = [
    # what a transport says
    "Outcome",
    "Status",
    "Transport",
    # the sender
    "Backoff",
    "BufferedSender",
    "OnSettled",
    "SenderStats",
]

OnSettled = Callable[[object, int, int, int, "str | None"], None]
"""``on_settled(token, written, failed, dropped, error)``: the fate of some of a token's records."""


class Status(enum.Enum):
    OK = "ok"
    PARTIAL = "partial"
    REFUSED = "refused"
    RETRY = "retry"
    HOLD = "hold"
    TOO_LARGE = "too_large"


@dataclass(frozen=True, slots=True)
class Outcome:
    """A transport's verdict on one request.

    ``detail`` is a loggable text (status and the server's message; no secrets). For ``PARTIAL``,
    ``rejected`` is how many records the server refused and ``rejected_records`` their indexes in
    the request when the server says which (else the sender attributes the count to the request's
    records in order). ``retry_after_s`` is the server's ``Retry-After``.
    """

    status: Status
    detail: str = ""
    retry_after_s: float | None = None
    rejected: int = 0
    rejected_records: tuple[int, ...] | None = None

    @classmethod
    def ok(cls) -> Outcome:
        return _OK


_OK = Outcome(Status.OK)


class Transport(Protocol):
    """Moves one request's records to the destination; knows nothing of batching or retries."""

    def encode(self, records: Sequence[str]) -> bytes:
        """The request body for these records (joined, compressed: the transport's choice)."""
        ...

    def send(self, body: bytes, *, timeout_s: float) -> Outcome:
        """Send one body within ``timeout_s``; never raise for a failure of the destination."""
        ...

    def close(self) -> None:
        """Release connections; called once, after the last ``send``."""
        ...


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter: ``initial_s`` doubled per consecutive failure up to
    ``max_s``, each wait shortened by a random 0-50 % so many senders do not retry in step.
    A ``Retry-After`` from the server lengthens the wait (capped at ``max_s`` too)."""

    initial_s: float = 0.2
    max_s: float = 10.0

    def delay(self, failures: int, retry_after_s: float | None, rng: Callable[[], float]) -> float:
        base: float = min(self.max_s, self.initial_s * 2.0 ** min(max(failures, 1) - 1, 30))
        wait = base * (0.5 + 0.5 * rng())
        if retry_after_s is not None:
            wait = max(wait, min(retry_after_s, self.max_s))
        return wait


@dataclass(slots=True)
class SenderStats:
    """The sender's counters, in records (``requests``, ``retries``... in requests).

    ``written`` stored; ``failed`` refused for good by the destination (partial writes
    included); ``dropped`` given up by the sender (``buffer_limit`` reached, or left at close);
    ``buffered`` waiting and in flight; ``retries`` failed attempts retried later, of which
    ``held_retries`` answered 401/403/404 (credentials or target missing: the data is kept);
    ``holding`` is 1 while the last attempt was such an answer; ``splits`` requests split after a
    413; ``partial_writes`` requests the destination stored only in part.
    """

    written: int = 0
    failed: int = 0
    dropped: int = 0
    buffered: int = 0
    in_flight: int = 0
    oldest_buffered_age_s: float = 0.0
    requests: int = 0
    retries: int = 0
    held_retries: int = 0
    holding: int = 0
    splits: int = 0
    partial_writes: int = 0
    last_error: str | None = field(default=None)

    def as_mapping(self) -> dict[str, float]:
        """The numeric counters, for ``DataWriter.stats()`` (``last_error`` left out)."""
        out = asdict(self)
        del out["last_error"]
        return {k: float(v) for k, v in out.items()}


@dataclass(slots=True)
class _Run:
    """``count`` consecutive records of one token."""

    token: object
    count: int


@dataclass(slots=True, eq=False)  # compared by identity: two chunks are never "equal"
class _Chunk:
    """Up to ``batch_size`` records for one request, the tokens they belong to, and their body."""

    records: list[str]
    owners: list[_Run]  # in record order
    first: int  # queue position of its first record: chunks settle in any order, flush needs it
    born: float  # clock time its oldest record was handed over
    body: bytes | None = None
    open: bool = True  # the last chunk, still taking records; never again once taken for sending


def _cut(owners: list[_Run], n: int) -> tuple[list[_Run], list[_Run]]:
    """Split token runs after ``n`` records: (the first n records' runs, the rest's)."""
    head: list[_Run] = []
    rest: list[_Run] = []
    left = n
    for run in owners:
        k = run.count
        if left >= k:
            head.append(_Run(run.token, k))
            left -= k
        elif left > 0:
            head.append(_Run(run.token, left))
            rest.append(_Run(run.token, k - left))
            left = 0
        else:
            rest.append(_Run(run.token, k))
    return head, rest


_Settlement = tuple[object, int, int, int, "str | None"]


class BufferedSender:
    """Batches records into requests and delivers them through a ``Transport``.

    ``submit()`` only queues (it never waits on the network). A request goes when
    ``batch_size`` records wait, ``flush_interval_s`` after the oldest waiting record arrived, or
    on ``flush()``; up to ``max_in_flight`` at once while the destination answers, one at a time
    while it fails. Above ``buffer_limit`` waiting records the oldest are dropped and counted.
    ``close()`` ends within ``timeout_s``: what is not delivered then is dropped and reported.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        name: str,
        on_settled: OnSettled | None = None,
        batch_size: int = 5000,
        flush_interval_s: float = 1.0,
        buffer_limit: int = 1_000_000,
        max_in_flight: int = 2,
        timeout_s: float = 10.0,
        backoff: Backoff | None = None,
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
        threaded: bool = True,
        encode_on_submit: bool = True,
        regrow_after_s: float = 60.0,
    ) -> None:
        self.transport = transport
        self.name = name
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.buffer_limit = buffer_limit
        self.max_in_flight = max(1, max_in_flight)
        self.timeout_s = timeout_s
        self.backoff = backoff or Backoff()
        self.encode_on_submit = encode_on_submit
        self.regrow_after_s = regrow_after_s
        self._on_settled = on_settled
        self._logger = logger or logging.getLogger("flowcollect.writers.sender")
        self._clock = clock
        self._rng = rng
        self._threaded = threaded
        self._log = RateLimitedLog(self._logger, window_s=60.0, clock=clock)

        self._cond = threading.Condition()
        self._chunks: deque[_Chunk] = deque()  # waiting, oldest first
        self._sending: list[_Chunk] = []
        self._waiting = 0
        self._accepted = 0  # records ever queued: the next queue position
        self._flush_to = 0  # chunks starting before this position go without waiting to fill
        # Lowered when the destination answers 413; doubled back (up to batch_size) once
        # _regrow_at passed with requests succeeding. Both guarded by _cond.
        self._max_records = batch_size
        self._regrow_at = 0.0
        self._retry_at = 0.0
        self._failures = 0
        self._close_deadline: float | None = None
        self._stopping = False
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._stats = SenderStats()

    # -- the owner's side ------------------------------------------------------------------------

    def submit(self, records: list[str], token: object = None) -> None:
        """Queue records (in order) belonging to ``token``; reported through ``on_settled``."""
        if not records:
            return
        with self._cond:
            if self._closed:
                raise RuntimeError(f"{self.name} is closed; it takes no more records")
            full = self._queue_locked(records, token)
            settled = self._trim_locked()
            if self._threaded and not self._threads:
                self._start_locked()
            self._cond.notify_all()
        self._report(settled)
        if self.encode_on_submit:
            # Encoding here, on the caller's thread, overlaps it with the requests in flight
            # (zlib lets go of the GIL); a sender thread encodes whatever is not done by then.
            for chunk in full:
                records = chunk.records
                body = self.transport.encode(records)
                with self._cond:
                    if chunk.records is records and chunk.body is None:
                        chunk.body = body

    @property
    def closed(self) -> bool:
        return self._closed

    def flush(self, timeout_s: float | None = None) -> int:
        """Send everything queued now; wait until it is settled or ``timeout_s`` (default: the
        sender's) passed. Returns how many records are still not settled. During an outage it
        retries at once, then keeps the backoff until its deadline."""
        deadline = self._clock() + (self.timeout_s if timeout_s is None else timeout_s)
        return self._flush_until(deadline)

    def close(self, kept_by: str | None = None) -> int:
        """Flush within ``timeout_s``, stop the threads, drop (and report) what is left; return
        how many records were dropped so. ``kept_by``: who keeps what is dropped so (a spool in
        front of the writer), for the log: they are given back to it, not lost."""
        with self._cond:
            if self._closed:
                return 0
            self._closed = True
            deadline = self._clock() + self.timeout_s
            self._close_deadline = deadline
        self._flush_until(deadline)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            # Requests are cut at the close deadline, so the threads end right after it.
            thread.join(max(0.0, deadline - self._clock()) + 1.0)
            if thread.is_alive():
                self._logger.error("%s: sender thread %s did not stop after close()", self.name, thread.name)
        settled: list[_Settlement] = []
        with self._cond:
            lost = 0
            error = f"not delivered before close() ended (last error: {self._stats.last_error})"
            for chunk in [*self._chunks, *self._sending]:
                lost += len(chunk.records)
                settled.extend((r.token, 0, 0, r.count, error) for r in chunk.owners)
            self._chunks.clear()
            self._sending.clear()
            self._waiting = 0
            self._stats.dropped += lost
        self._report(settled)
        if lost and kept_by is not None:
            self._logger.info(
                "%s: closed with %d records undelivered within timeout_s=%s (last error: %s); "
                "the spool %s keeps them for the next run",
                self.name,
                lost,
                self.timeout_s,
                self._stats.last_error,
                kept_by,
            )
        elif lost:
            self._logger.warning(
                "%s: closed with %d records undelivered within timeout_s=%s (last error: %s); they are lost",
                self.name,
                lost,
                self.timeout_s,
                self._stats.last_error,
            )
        self.transport.close()
        return lost

    def stats(self) -> SenderStats:
        """A snapshot of the counters."""
        with self._cond:
            s = self._stats
            in_flight = sum(len(c.records) for c in self._sending)
            borns = [c.born for c in self._sending]
            if self._chunks:
                borns.append(self._chunks[0].born)
            return SenderStats(
                written=s.written,
                failed=s.failed,
                dropped=s.dropped,
                buffered=self._waiting + in_flight,
                in_flight=in_flight,
                oldest_buffered_age_s=self._clock() - min(borns) if borns else 0.0,
                requests=s.requests,
                retries=s.retries,
                held_retries=s.held_retries,
                holding=s.holding,
                splits=s.splits,
                partial_writes=s.partial_writes,
                last_error=s.last_error,
            )

    def pump(self) -> int:
        """Without threads (``threaded=False``): send every request due at ``clock()`` now, one
        after another; return how many were sent. For tests in virtual time."""
        sent = 0
        while True:
            with self._cond:
                chunk, _ = self._due_locked(self._clock())
            if chunk is None:
                return sent
            self._send_and_settle(chunk)
            sent += 1

    # -- the queue -------------------------------------------------------------------------------

    def _start_locked(self) -> None:
        for i in range(self.max_in_flight):
            thread = threading.Thread(
                target=self._run, name=f"flowcollect-sender-{self.name}-{i}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _queue_locked(self, records: list[str], token: object) -> list[_Chunk]:
        """Append to the open last chunk, then to new chunks; return the chunks filled."""
        size = self.batch_size
        now = self._clock()
        full: list[_Chunk] = []
        tail = self._chunks[-1] if self._chunks else None
        rest = records
        position = self._accepted
        if tail is not None and tail.open and tail.body is None and len(tail.records) < size:
            room = size - len(tail.records)
            taken = rest[:room]
            tail.records.extend(taken)
            if tail.owners and tail.owners[-1].token is token:
                tail.owners[-1].count += len(taken)
            else:
                tail.owners.append(_Run(token, len(taken)))
            rest = rest[room:]
            position += len(taken)
            if len(tail.records) == size:
                full.append(tail)
        for start in range(0, len(rest), size):
            part = rest[start : start + size]  # a copy: the caller's list stays the caller's
            chunk = _Chunk(part, [_Run(token, len(part))], position + start, now)
            self._chunks.append(chunk)
            if len(part) == size:
                full.append(chunk)
        self._waiting += len(records)
        self._accepted += len(records)
        return full

    def _trim_locked(self) -> list[_Settlement]:
        """Drop the oldest waiting records beyond ``buffer_limit``."""
        excess = self._waiting - self.buffer_limit
        if excess <= 0:
            return []
        settled: list[_Settlement] = []
        error = f"buffer full (buffer_limit={self.buffer_limit}): the oldest records were dropped"
        left = excess
        while left:
            head = self._chunks[0]
            n = len(head.records)
            if n <= left:
                self._chunks.popleft()
                settled.extend((r.token, 0, 0, r.count, error) for r in head.owners)
                left -= n
            else:
                gone, head.owners = _cut(head.owners, left)
                settled.extend((r.token, 0, 0, r.count, error) for r in gone)
                head.records = head.records[left:]
                head.first += left
                head.body = None
                left = 0
        self._waiting -= excess
        self._stats.dropped += excess
        self._cond.notify_all()
        self._log.warning(
            "dropped",
            "%s: buffer full (buffer_limit=%d records): dropped the %d oldest, %d dropped in all",
            self.name,
            self.buffer_limit,
            excess,
            self._stats.dropped,
        )
        return settled

    def _unsettled_from_locked(self) -> int:
        firsts = [c.first for c in self._sending]
        if self._chunks:
            firsts.append(self._chunks[0].first)
        return min(firsts) if firsts else self._accepted

    def _flush_until(self, deadline: float) -> int:
        with self._cond:
            target = self._accepted
            if self._unsettled_from_locked() >= target:
                return 0
            self._flush_to = max(self._flush_to, target)
            self._retry_at = 0.0
            self._cond.notify_all()
        if not self._threaded:
            self.pump()
        with self._cond:
            while self._threaded and self._unsettled_from_locked() < target:
                left = deadline - self._clock()
                if left <= 0:
                    break
                self._cond.wait(left)
            return max(0, target - self._unsettled_from_locked())

    def _due_locked(self, now: float) -> tuple[_Chunk | None, float | None]:
        """The chunk to send now (taken), or None and how long to wait (None: until notified)."""
        limit = 1 if self._failures else self.max_in_flight
        if not self._chunks or len(self._sending) >= limit:
            return None, None
        if now < self._retry_at:
            return None, self._retry_at - now
        head = self._chunks[0]
        due_at = head.born + self.flush_interval_s
        if not (
            len(head.records) >= self.batch_size
            or len(self._chunks) > 1
            or head.first < self._flush_to
            or now >= due_at
        ):
            return None, due_at - now
        self._chunks.popleft()
        head.open = False
        if len(head.records) > self._max_records:
            # The destination refused requests this large: send the head now, the rest next.
            n = self._max_records
            head_owners, rest_owners = _cut(head.owners, n)
            rest = _Chunk(head.records[n:], rest_owners, head.first + n, head.born, None, False)
            self._chunks.appendleft(rest)
            head.records, head.owners, head.body = head.records[:n], head_owners, None
        self._waiting -= len(head.records)
        self._sending.append(head)
        return head, None

    # -- the sender threads ----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopping:
                        return
                    chunk, wait = self._due_locked(self._clock())
                    if chunk is not None:
                        break
                    self._cond.wait(wait)
            self._send_and_settle(chunk)

    def _send_and_settle(self, chunk: _Chunk) -> None:
        outcome = self._send(chunk)
        self._report(self._settle(chunk, outcome))

    def _send(self, chunk: _Chunk) -> Outcome:
        body = chunk.body
        if body is None:
            body = chunk.body = self.transport.encode(chunk.records)
        timeout = self.timeout_s
        if self._close_deadline is not None:
            timeout = min(timeout, self._close_deadline - self._clock())
            if timeout < 0.001:
                return Outcome(Status.RETRY, "close() deadline passed")
        with self._cond:
            self._stats.requests += 1
        try:
            return self.transport.send(body, timeout_s=timeout)
        except Exception as exc:  # a transport must not raise; if one does, keep the data
            return Outcome(Status.RETRY, f"{type(exc).__name__}: {exc}")

    def _settle(self, chunk: _Chunk, outcome: Outcome) -> list[_Settlement]:
        n = len(chunk.records)
        status = outcome.status
        settled: list[_Settlement] = []
        recovered = 0
        with self._cond:
            if chunk not in self._sending:
                # close() gave up on this request and reported it dropped; its late answer
                # changes nothing.
                return settled
            self._sending.remove(chunk)
            stats = self._stats
            grown = self._regrow_locked() if status in (Status.OK, Status.PARTIAL) else 0
            if status in (Status.OK, Status.PARTIAL):
                recovered = self._failures
                self._failures = 0
                self._retry_at = 0.0
                stats.holding = 0
            if status is Status.OK:
                stats.written += n
                settled.extend((r.token, r.count, 0, 0, None) for r in chunk.owners)
            elif status is Status.PARTIAL:
                rejected = _rejected_per_run(chunk.owners, outcome)
                failed = sum(rejected)
                stats.written += n - failed
                stats.failed += failed
                stats.partial_writes += 1
                stats.last_error = outcome.detail
                for r, bad in zip(chunk.owners, rejected, strict=True):
                    settled.append((r.token, r.count - bad, bad, 0, outcome.detail if bad else None))
            elif status is Status.REFUSED or (status is Status.TOO_LARGE and n <= 1):
                stats.failed += n
                stats.last_error = outcome.detail
                settled.extend((r.token, 0, r.count, 0, outcome.detail) for r in chunk.owners)
            elif status is Status.TOO_LARGE:
                self._shrink_locked((n + 1) // 2)
                stats.splits += 1
                stats.last_error = outcome.detail
                self._put_back_locked(chunk)
            else:  # RETRY, HOLD
                self._put_back_locked(chunk)
                stats.retries += 1
                if status is Status.HOLD:
                    stats.held_retries += 1
                    stats.holding = 1
                stats.last_error = outcome.detail
                self._failures += 1
                delay = self.backoff.delay(self._failures, outcome.retry_after_s, self._rng)
                self._retry_at = self._clock() + delay
                settled.extend(self._trim_locked())
            waiting = self._waiting
            self._cond.notify_all()
        self._log_outcome(outcome, n, waiting, recovered)
        if grown:
            self._logger.info(
                "%s: no 413 for %s s: trying requests of up to %d records again",
                self.name,
                self.regrow_after_s,
                grown,
            )
        return settled

    def _shrink_locked(self, limit: int) -> None:
        self._max_records = min(self._max_records, limit)
        self._regrow_at = self._clock() + self.regrow_after_s

    def _regrow_locked(self) -> int:
        """After a quiet ``regrow_after_s`` since the last 413, double the request limit (the
        server's limit may have been raised, or the 413 came from one oversized record); a 413
        at the new size halves it again. Returns the new limit, or 0 if unchanged."""
        if self._max_records >= self.batch_size or self._clock() < self._regrow_at:
            return 0
        self._max_records = min(self.batch_size, self._max_records * 2)
        self._regrow_at = self._clock() + self.regrow_after_s
        return self._max_records

    def _put_back_locked(self, chunk: _Chunk) -> None:
        # Back in its place among the waiting chunks, so the oldest is retried first.
        at = 0
        while at < len(self._chunks) and self._chunks[at].first < chunk.first:
            at += 1
        self._chunks.insert(at, chunk)
        self._waiting += len(chunk.records)

    def _log_outcome(self, outcome: Outcome, n: int, waiting: int, recovered: int) -> None:
        status, detail = outcome.status, outcome.detail
        kind: Hashable = (status, detail.split(":", 1)[0])
        if status is Status.OK:
            if recovered:
                self._logger.info("%s: delivering again after %d failed attempts", self.name, recovered)
        elif status is Status.PARTIAL:
            self._log.error(
                kind, "%s: partial write: %d of %d records refused (not retried): %s",
                self.name, _rejected_total(outcome, n), n, detail,
            )  # fmt: skip
        elif status is Status.REFUSED or (status is Status.TOO_LARGE and n <= 1):
            self._log.error(
                kind, "%s: the destination refused %d records (not retried): %s", self.name, n, detail
            )
        elif status is Status.TOO_LARGE:
            self._log.warning(
                kind, "%s: request of %d records too large (%s): splitting it and smaller requests from now",
                self.name, n, detail,
            )  # fmt: skip
        elif status is Status.HOLD:
            self._log.error(
                kind,
                "%s: %s; %d records kept and retried with backoff until this is fixed",
                self.name,
                detail,
                waiting,
            )
        else:
            self._log.warning(
                kind,
                "%s: write failed (%s); %d records kept, retrying oldest first with backoff",
                self.name,
                detail,
                waiting,
            )

    def _report(self, settled: list[_Settlement]) -> None:
        on_settled = self._on_settled
        if on_settled is None:
            return
        for token, written, failed, dropped, error in settled:
            if token is None:
                continue
            try:
                on_settled(token, written, failed, dropped, error)
            except Exception:
                self._logger.exception("%s: on_settled callback failed", self.name)


def _rejected_total(outcome: Outcome, n: int) -> int:
    if outcome.rejected_records is not None:
        return len({i for i in outcome.rejected_records if 0 <= i < n})
    return max(0, min(n, outcome.rejected))


def _rejected_per_run(owners: list[_Run], outcome: Outcome) -> list[int]:
    """How many records of each token run the destination refused.

    Exact when it named the records; otherwise (InfluxDB 1.x and 2.x give only a count) the
    count is attributed to the runs in order, so totals are exact and a run's share may not be.
    """
    counts = [r.count for r in owners]
    total = sum(counts)
    out = [0] * len(counts)
    if outcome.rejected_records is not None:
        bounds = []
        start = 0
        for k in counts:
            bounds.append((start, start + k))
            start += k
        for i in set(outcome.rejected_records):
            if 0 <= i < total:
                for run, (lo, hi) in enumerate(bounds):
                    if lo <= i < hi:
                        out[run] += 1
                        break
        return out
    left = max(0, min(total, outcome.rejected))
    for run, k in enumerate(counts):
        take = min(k, left)
        out[run] = take
        left -= take
    return out
