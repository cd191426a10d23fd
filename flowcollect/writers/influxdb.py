"""A writer to InfluxDB (2.x, 3.x, or 1.8+ through its v2 write endpoint), on influxdb-client.

How it uses influxdb-client: one ``InfluxDBClient`` for the connection, the token and the
timeouts, and the client's ``WriteService`` (the binding of ``POST /api/v2/write`` that the
client's own ``WriteApi`` calls) from sender threads of ours. Not the batching ``WriteApi``:
it runs its own Rx threads, retries and drops on its own schedule, which would fight the bounded
buffer, the order and the counters this writer promises. Not the synchronous ``WriteApi``
either: it takes no per-request timeout (``close()`` must return within ``timeout_s`` even
against a server that hangs) and its gzip runs at level 9, slower than the writer's target.
So the writer serializes to line protocol itself (see ``_lineprotocol``), compresses at a fast
level and sends ``Content-Encoding: gzip``.
"""

from __future__ import annotations

import gzip
import importlib
import logging
import math
import os
import random
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

from flowcollect._logs import RateLimitedLog
from flowcollect.errors import ConfigError
from flowcollect.values import CollectedVariable
from flowcollect.writers._lineprotocol import LineSerializer
from flowcollect.writers.base import DataWriter

__all__ = ["InfluxDBDataWriter"]

logger = logging.getLogger("flowcollect.writers.influxdb")

TOKEN_ENV = "INFLUX_TOKEN"  # noqa: S105 - the name of the variable, not a token
# Level 1 compresses line protocol about 11:1 at ~0.2 us a point; level 9 (the client's own
# choice) reaches 16:1 for ten times the CPU.
GZIP_LEVEL = 1
_MAX_MESSAGE = 500
_MIN_SCRUBBED = 6


@dataclass(slots=True)
class _Batch:
    """Up to ``batch_size`` lines for one request, and their gzip once made."""

    lines: list[str]
    first: int  # the queue position of its first line: batches settle in any order, flush needs it
    born: float  # monotonic time its oldest line was handed over
    body: bytes | None = None
    open: bool = True  # still the last batch, taking lines; never again once taken for sending


def _body(lines: list[str], compress: bool) -> bytes:
    text = "\n".join(lines).encode("utf-8")
    return gzip.compress(text, compresslevel=GZIP_LEVEL, mtime=0) if compress else text


class _Outcome:
    OK = "ok"
    RETRY = "retry"
    REFUSED = "refused"


class InfluxDBDataWriter(DataWriter):
    """Writes each value as one point; batches by size and time; rides out server outages.

    A point per value without ``error``: measurement ``measurement``; tags ``address``,
    ``context`` (context id), ``reader`` and ``variable`` (variable id); one field ``value``
    typed by ``value_type``; timestamp ``time`` in nanoseconds (the moment ``write()`` got the
    value when ``time`` is None). Values with ``error``, and values that cannot be written as their
    type, are counted, logged once per variable and reason, and not sent.

    ``write()`` only serializes and queues. Sender threads post up to ``batch_size`` points per
    request, as soon as that many wait or ``flush_interval_ms`` after the oldest arrived, with
    up to ``max_in_flight`` requests at once while the server answers. When it is unreachable or
    answers 5xx/429, points stay queued in order (at most ``buffer_limit`` of them besides those
    in flight; beyond that the oldest are dropped, counted and logged) and one request at a time
    retries the oldest batch, with exponential backoff and jitter. Any other 4xx refuses that
    batch: it is counted as failed and reported once per status and message, never retried.

    ``token`` (else ``$INFLUX_TOKEN``; none means no Authorization header, as for an InfluxDB
    1.8 without auth) never shows in logs, exceptions, ``repr()`` or ``str()``.
    """

    retry_initial_s = 0.2
    """The first retry waits about this long; each failure doubles it, up to ``retry_max_s``."""
    retry_max_s = 10.0
    max_in_flight = 2
    """Requests at once while the server answers: one waits on the network and the server
    while the next is on its way, which a distant server's round trip needs most."""
    gzip = True
    """Compress requests. Over a network it pays ~11:1; on the same machine it costs both
    sides CPU (see docs/performance.md) and may be turned off."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        org: str | None = None,
        bucket: str | None = None,
        measurement: str = "flowcollect",
        batch_size: int = 5000,
        flush_interval_ms: int = 1000,
        buffer_limit: int = 1_000_000,
        timeout_s: float = 10,
    ) -> None:
        if token is None:
            token = os.environ.get(TOKEN_ENV) or None
        problems = _check_config(
            url, token, org, bucket, measurement, batch_size, flush_interval_ms, buffer_limit, timeout_s
        )
        if problems:
            raise ConfigError(problems)
        self.url = url
        self.org = cast(str, org)
        self.bucket = cast(str, bucket)
        self.measurement = measurement
        self.batch_size = batch_size
        self.flush_interval_ms = flush_interval_ms
        self.buffer_limit = buffer_limit
        self.timeout_s = float(timeout_s)
        self.__token = token
        self._serializer = LineSerializer(measurement)
        self._value_log = RateLimitedLog(logger, window_s=3600.0)
        self._server_log = RateLimitedLog(logger, window_s=60.0)

        # influxdb-client's calls are untyped; they are bound as Any here, once.
        client_module: Any = importlib.import_module("influxdb_client")
        self._api_exception: type[Exception] = importlib.import_module("influxdb_client.rest").ApiException
        self._client: Any = client_module.InfluxDBClient(
            url=url, token=token, org=org, timeout=int(self.timeout_s * 1000)
        )
        self._service: Any = client_module.WriteService(self._client.api_client)

        self._cond = threading.Condition()
        self._batches: deque[_Batch] = deque()  # waiting, oldest first
        self._sending: list[_Batch] = []
        self._waiting = 0  # points in _batches
        self._accepted = 0  # points ever queued: the next queue position
        self._flush_to = 0  # batches starting before this position go without waiting to fill
        self._retry_at = 0.0
        self._failures = 0  # consecutive failed attempts
        self._close_deadline: float | None = None
        self._stopping = False
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._last_error: str | None = None
        self._counters = dict.fromkeys(
            ("written", "failed", "dropped", "errors_skipped", "unwritable", "retries", "requests"), 0
        )

    # -- the DataWriter contract ---------------------------------------------------------------

    @property
    def name(self) -> str:
        return f"influxdb:{self.bucket}"

    def write(self, values: Sequence[CollectedVariable]) -> None:
        if self._closed:
            raise RuntimeError(f"{self.name} is closed; it takes no more values")
        lines, failed, unwritable = self._serializer.serialize(values, time.time_ns())
        for v in failed:
            self._value_log.warning(
                ("error", v.id, v.address, v.error),
                "%s: not writing context %s variable %s (%s): %s",
                self.name,
                v.context_id,
                v.id,
                v.address,
                v.error,
            )
        for v, reason in unwritable:
            self._value_log.warning(
                ("unwritable", v.id, v.address, reason),
                "%s: cannot write context %s variable %s (%s) as %s: %s",
                self.name,
                v.context_id,
                v.id,
                v.address,
                v.value_type,
                reason,
            )
        with self._cond:
            self._counters["errors_skipped"] += len(failed)
            self._counters["unwritable"] += len(unwritable)
            if not lines:
                return
            full = self._queue_locked(lines)
            dropped = self._trim_locked()
            if not self._threads:
                self._start_locked()
            self._cond.notify_all()
        if dropped:
            self._warn_dropped(dropped)
        # Compressing here, on the caller's thread, overlaps it with the requests in flight
        # (zlib lets go of the GIL); a sender compresses whatever is not done by then.
        for batch in full:
            lines = batch.lines
            body = _body(lines, self.gzip)
            with self._cond:
                if batch.lines is lines and batch.body is None:
                    batch.body = body

    def flush(self) -> None:
        """Send everything queued now and wait until the server took it, or ``timeout_s`` passed.

        A flush during an outage retries at once, then keeps the backoff until its deadline.
        """
        missing = self._flush_until(time.monotonic() + self.timeout_s)
        if missing:
            logger.warning(
                "%s: flush timed out after %s s with %d points not yet delivered (last error: %s)",
                self.name,
                self.timeout_s,
                missing,
                self._last_error,
            )

    def close(self) -> None:
        """Flush (bounded by ``timeout_s``), then stop the sender threads and close the connections.

        Points still queued at the deadline are counted as dropped and logged with their count.
        """
        with self._cond:
            if self._closed:
                return
            self._closed = True
            deadline = time.monotonic() + self.timeout_s
            self._close_deadline = deadline
        self._flush_until(deadline)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            # Requests are cut at the close deadline, so the threads end right after it.
            thread.join(max(0.0, deadline - time.monotonic()) + 1.0)
            if thread.is_alive():
                logger.error("%s: sender thread %s did not stop after close()", self.name, thread.name)
        with self._cond:
            lost = self._waiting + sum(len(b.lines) for b in self._sending)
            self._batches.clear()
            self._sending.clear()
            self._waiting = 0
            self._counters["dropped"] += lost
        if lost:
            logger.warning(
                "%s: closed with %d points not delivered within timeout_s=%s (last error: %s); they are lost",
                self.name,
                lost,
                self.timeout_s,
                self._last_error,
            )
        self._client.close()

    def stats(self) -> Mapping[str, float]:
        """``written``, ``failed`` (refused by the server), ``dropped`` (buffer full, or left at
        close), ``errors_skipped`` (values with ``error``), ``unwritable`` (values not of their type),
        ``buffered`` (queued and in flight), ``in_flight``, ``oldest_buffered_age_s``, ``retries``
        (failed attempts, each retried later) and ``requests``."""
        with self._cond:
            out: dict[str, float] = dict(self._counters)
            in_flight = sum(len(b.lines) for b in self._sending)
            out["in_flight"] = in_flight
            out["buffered"] = self._waiting + in_flight
            borns = [b.born for b in self._sending]
            if self._batches:
                borns.append(self._batches[0].born)
            out["oldest_buffered_age_s"] = time.monotonic() - min(borns) if borns else 0.0
        return out

    @property
    def last_error(self) -> str | None:
        """The last failure's text (status and server message, or connection error), if any."""
        return self._last_error

    def __repr__(self) -> str:
        return (
            f"InfluxDBDataWriter(url={_redact_url(self.url)!r}, org={self.org!r}, bucket={self.bucket!r}, "
            f"measurement={self.measurement!r}, token={'<set>' if self.__token else None})"
        )

    def __enter__(self) -> InfluxDBDataWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the queue -------------------------------------------------------------------------------

    def _start_locked(self) -> None:
        for i in range(max(1, self.max_in_flight)):
            thread = threading.Thread(
                target=self._run, name=f"flowcollect-influxdb-{self.bucket}-{i}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _queue_locked(self, lines: list[str]) -> list[_Batch]:
        """Append lines to the open last batch, then in new batches; return the batches filled."""
        size = self.batch_size
        now = time.monotonic()
        full: list[_Batch] = []
        tail = self._batches[-1] if self._batches else None
        rest = lines
        position = self._accepted
        if tail is not None and tail.open and tail.body is None and len(tail.lines) < size:
            room = size - len(tail.lines)
            tail.lines.extend(rest[:room])
            rest = rest[room:]
            position += min(room, len(lines))
            if len(tail.lines) == size:
                full.append(tail)
        for start in range(0, len(rest), size):
            batch = _Batch(rest if len(rest) <= size else rest[start : start + size], position + start, now)
            self._batches.append(batch)
            if len(batch.lines) == size:
                full.append(batch)
        self._waiting += len(lines)
        self._accepted += len(lines)
        return full

    def _trim_locked(self) -> int:
        """Drop the oldest waiting points beyond ``buffer_limit``; return how many."""
        excess = self._waiting - self.buffer_limit
        if excess <= 0:
            return 0
        left = excess
        while left:
            head = self._batches[0]
            n = len(head.lines)
            if n <= left:
                self._batches.popleft()
                left -= n
            else:
                head.lines = head.lines[left:]
                head.first += left
                head.body = None
                left = 0
        self._waiting -= excess
        self._counters["dropped"] += excess
        self._cond.notify_all()
        return excess

    def _warn_dropped(self, dropped: int) -> None:
        self._server_log.warning(
            "dropped",
            "%s: buffer full (buffer_limit=%d points): dropped the %d oldest points, %d dropped in all",
            self.name,
            self.buffer_limit,
            dropped,
            self._counters["dropped"],
        )

    def _unsettled_from_locked(self) -> int:
        """The queue position of the oldest point neither written, refused nor dropped."""
        firsts = [b.first for b in self._sending]
        if self._batches:
            firsts.append(self._batches[0].first)
        return min(firsts) if firsts else self._accepted

    def _flush_until(self, deadline: float) -> int:
        """Wait until every point queued so far is settled; return how many are not, at the deadline."""
        with self._cond:
            target = self._accepted
            if self._unsettled_from_locked() >= target:
                return 0
            self._flush_to = max(self._flush_to, target)
            self._retry_at = 0.0
            self._cond.notify_all()
            while (unsettled := self._unsettled_from_locked()) < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return max(0, target - unsettled)

    # -- the sender threads ----------------------------------------------------------------------

    def _next_batch(self) -> _Batch | None:
        """Wait until a batch is due and a request may go; take it. None when it is time to stop."""
        interval = self.flush_interval_ms / 1000.0
        with self._cond:
            while not self._stopping:
                # While the server fails, one request at a time: the oldest batch probes.
                limit = 1 if self._failures else self.max_in_flight
                if not self._batches or len(self._sending) >= limit:
                    self._cond.wait()
                    continue
                now = time.monotonic()
                if now < self._retry_at:
                    self._cond.wait(self._retry_at - now)
                    continue
                head = self._batches[0]
                due_at = head.born + interval
                if (
                    len(head.lines) >= self.batch_size
                    or len(self._batches) > 1
                    or head.first < self._flush_to
                    or now >= due_at
                ):
                    self._batches.popleft()
                    head.open = False
                    self._waiting -= len(head.lines)
                    self._sending.append(head)
                    return head
                self._cond.wait(due_at - now)
            return None

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            outcome, detail, retry_after = self._send(batch)
            self._settle(batch, outcome, detail, retry_after)

    def _send(self, batch: _Batch) -> tuple[str, str, float | None]:
        """Post one batch; return the outcome, a loggable text and the server's Retry-After."""
        body = batch.body
        if body is None:
            body = batch.body = _body(batch.lines, self.gzip)
        timeout_ms = self.timeout_s * 1000.0
        if self._close_deadline is not None:
            timeout_ms = min(timeout_ms, (self._close_deadline - time.monotonic()) * 1000.0)
            if timeout_ms < 1.0:
                return _Outcome.RETRY, "close() deadline passed", None
        with self._cond:
            self._counters["requests"] += 1
        try:
            self._service.post_write(
                org=self.org,
                bucket=self.bucket,
                body=body,
                precision="ns",
                content_encoding="gzip" if self.gzip else "identity",
                content_type="text/plain; charset=utf-8",
                _request_timeout=timeout_ms,
            )
        except self._api_exception as exc:
            status = getattr(exc, "status", None) or 0
            detail = f"HTTP {status} {getattr(exc, 'reason', '') or ''}".rstrip() + _server_message(exc)
            retry_after = _seconds(getattr(exc, "retry_after", None))
            if status in (0, 429) or status >= 500:
                return _Outcome.RETRY, detail, retry_after
            return _Outcome.REFUSED, detail, None
        except Exception as exc:  # connection errors come as urllib3, socket or ssl types
            return _Outcome.RETRY, f"{type(exc).__name__}: {exc}", None
        return _Outcome.OK, "", None

    def _settle(self, batch: _Batch, outcome: str, detail: str, retry_after: float | None) -> None:
        n = len(batch.lines)
        detail = self._scrub(detail)
        dropped = 0
        recovered = 0
        with self._cond:
            self._sending.remove(batch)
            if outcome == _Outcome.OK:
                self._counters["written"] += n
                recovered = self._failures
                self._failures = 0
                self._retry_at = 0.0
            elif outcome == _Outcome.REFUSED:
                self._counters["failed"] += n
                self._last_error = detail
            else:
                # Back in its place among the waiting batches, so the oldest is retried first.
                at = 0
                while at < len(self._batches) and self._batches[at].first < batch.first:
                    at += 1
                self._batches.insert(at, batch)
                self._waiting += n
                self._counters["retries"] += 1
                self._failures += 1
                self._last_error = detail
                delay = min(self.retry_max_s, self.retry_initial_s * 2 ** min(self._failures - 1, 30))
                delay *= random.uniform(0.5, 1.0)
                if retry_after is not None:
                    delay = max(delay, min(retry_after, self.retry_max_s))
                self._retry_at = time.monotonic() + delay
                dropped = self._trim_locked()
            waiting = self._waiting
            self._cond.notify_all()
        if outcome == _Outcome.OK:
            if recovered:
                logger.info("%s: delivering again after %d failed attempts", self.name, recovered)
        elif outcome == _Outcome.REFUSED:
            self._server_log.error(
                ("refused", detail),
                "%s: the server refused %d points (not retried): %s",
                self.name,
                n,
                detail,
            )
        else:
            self._server_log.warning(
                ("retry", detail.split(":", 1)[0]),
                "%s: write failed (%s); %d points kept, retrying oldest first with backoff",
                self.name,
                detail,
                waiting,
            )
        if dropped:
            self._warn_dropped(dropped)

    def _scrub(self, text: str) -> str:
        token = self.__token
        # A token of a few characters would mask every occurrence of them in ordinary words.
        if token and len(token) >= _MIN_SCRUBBED:
            return text.replace(token, "***")
        return text


def _check_config(
    url: object,
    token: object,
    org: object,
    bucket: object,
    measurement: object,
    batch_size: object,
    flush_interval_ms: object,
    buffer_limit: object,
    timeout_s: object,
) -> list[str]:
    problems: list[str] = []
    where = "InfluxDBDataWriter"
    if not isinstance(url, str):
        problems.append(f"{where} url: must be a str, got {type(url).__name__}")
    else:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problems.append(f"{where} url: must look like http(s)://host:port, got {_redact_url(url)!r}")
    if token is not None and (not isinstance(token, str) or not token.strip()):
        problems.append(f"{where} token: must be a non-empty str (or None to read ${TOKEN_ENV})")
    for field, value in (("org", org), ("bucket", bucket)):
        if not isinstance(value, str) or not value.strip():
            problems.append(f"{where} {field}: required, a non-empty str; got {value!r}")
    if not isinstance(measurement, str) or not measurement.strip():
        problems.append(f"{where} measurement: must be a non-empty str, got {measurement!r}")
    elif measurement.startswith("#"):
        problems.append(f"{where} measurement: must not start with '#' (a line protocol comment)")
    for field, value in (
        ("batch_size", batch_size),
        ("flush_interval_ms", flush_interval_ms),
        ("buffer_limit", buffer_limit),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            problems.append(f"{where} {field}: must be a positive int, got {value!r}")
    if (
        isinstance(timeout_s, bool)
        or not isinstance(timeout_s, int | float)
        or not math.isfinite(timeout_s)
        or timeout_s <= 0
    ):
        problems.append(f"{where} timeout_s: must be a positive number of seconds, got {timeout_s!r}")
    return problems


def _redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _server_message(exc: Any) -> str:
    """``": <the server's message>"``: InfluxDB's JSON ``message`` as the client parsed it, else the body."""
    message = getattr(exc, "message", None) or getattr(exc, "body", None)
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    text = str(message or "").strip()
    if not text or text == str(getattr(exc, "reason", "") or "").strip():
        return ""
    return ": " + (text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "...")


def _seconds(value: object) -> float | None:
    try:
        seconds = float(str(value))
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
