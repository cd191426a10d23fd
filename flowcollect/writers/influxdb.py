"""A writer to InfluxDB (2.x, 3.x, or 1.8+ through its v2 write endpoint), on influxdb-client.

How it uses influxdb-client: one ``InfluxDBClient`` for the connection, the token and the
timeouts, and the client's ``WriteService`` (the binding of ``POST /api/v2/write`` that the
client's own ``WriteApi`` calls) from one sender thread of ours. Not the batching ``WriteApi``:
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
# Level 1 compresses line protocol about 8:1 at over a million points a second; level 9 (the
# client's own choice) gains a little more ratio for four times the CPU.
GZIP_LEVEL = 1
_MAX_MESSAGE = 500


@dataclass(slots=True)
class _Chunk:
    """Lines handed over by one ``write()`` (or a batch put back after a failed send)."""

    lines: list[str]
    born: float  # monotonic time the oldest line was handed over
    start: int = 0  # lines before this index have left the chunk

    def __len__(self) -> int:
        return len(self.lines) - self.start


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

    ``write()`` only serializes and queues; a sender thread posts up to ``batch_size`` points per
    request, as soon as that many wait or ``flush_interval_ms`` after the oldest arrived.
    When the server is unreachable or answers 5xx/429, points stay queued in order (at most
    ``buffer_limit`` of them; beyond that the oldest are dropped, counted and logged) and the
    oldest batch is retried with exponential backoff and jitter. Any other 4xx refuses that batch:
    it is counted as failed and reported once per status and message, never retried.

    ``token`` (else ``$INFLUX_TOKEN``; none means no Authorization header, as for an InfluxDB
    1.8 without auth) never shows in logs, exceptions, ``repr()`` or ``str()``.
    """

    retry_initial_s = 0.2
    """The first retry waits about this long; each failure doubles it, up to ``retry_max_s``."""
    retry_max_s = 10.0

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
        self._chunks: deque[_Chunk] = deque()
        self._waiting = 0  # points in _chunks
        self._inflight = 0  # points in the request being sent
        self._inflight_born = 0.0
        self._accepted = 0  # points ever queued
        self._resolved = 0  # points written, refused or dropped: always a prefix of the queue
        self._flush_to = 0  # send without waiting for a full batch until _resolved reaches this
        self._retry_at = 0.0
        self._failures = 0  # consecutive failed attempts
        self._close_deadline: float | None = None
        self._stopping = False
        self._closed = False
        self._thread: threading.Thread | None = None
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
        dropped = 0
        with self._cond:
            self._counters["errors_skipped"] += len(failed)
            self._counters["unwritable"] += len(unwritable)
            if not lines:
                return
            wake = self._waiting == 0 or self._waiting + len(lines) >= self.batch_size
            self._chunks.append(_Chunk(lines, time.monotonic()))
            self._waiting += len(lines)
            self._accepted += len(lines)
            dropped = self._trim_locked()
            if self._thread is None:
                self._start_locked()
            elif wake:
                self._cond.notify_all()
        if dropped:
            self._warn_dropped(dropped)

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
        """Flush (bounded by ``timeout_s``), then stop the sender thread and close the connection.

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
            thread = self._thread
        if thread is not None:
            # Requests are cut at the close deadline, so the thread ends right after it.
            thread.join(max(0.0, deadline - time.monotonic()) + 1.0)
            if thread.is_alive():
                logger.error("%s: sender thread did not stop after close()", self.name)
        with self._cond:
            lost = self._waiting + self._inflight
            if lost:
                self._chunks.clear()
                self._waiting = 0
                self._resolved += lost
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
        ``buffered`` (queued and in flight), ``oldest_buffered_age_s``, ``retries``, ``requests``."""
        with self._cond:
            out: dict[str, float] = dict(self._counters)
            out["buffered"] = self._waiting + self._inflight
            borns = [self._chunks[0].born] if self._chunks else []
            if self._inflight:
                borns.append(self._inflight_born)
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

    # -- the buffer ----------------------------------------------------------------------------

    def _start_locked(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"flowcollect-influxdb-{self.bucket}", daemon=True
        )
        self._thread.start()

    def _trim_locked(self) -> int:
        """Drop the oldest waiting points beyond ``buffer_limit``; return how many."""
        excess = self._waiting - self.buffer_limit
        if excess <= 0:
            return 0
        left = excess
        while left:
            head = self._chunks[0]
            n = len(head)
            if n <= left:
                self._chunks.popleft()
                left -= n
            else:
                head.start += left
                left = 0
        self._waiting -= excess
        self._resolved += excess
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

    def _take_locked(self) -> tuple[list[str], float]:
        want = min(self.batch_size, self._waiting)
        born = self._chunks[0].born
        batch: list[str] = []
        while len(batch) < want:
            head = self._chunks[0]
            need = want - len(batch)
            if len(head) <= need:
                batch.extend(head.lines[head.start :] if head.start else head.lines)
                self._chunks.popleft()
            else:
                batch.extend(head.lines[head.start : head.start + need])
                head.start += need
        self._waiting -= want
        self._inflight = want
        self._inflight_born = born
        return batch, born

    def _flush_until(self, deadline: float) -> int:
        """Wait until every point queued so far is settled; return how many are not, at the deadline."""
        with self._cond:
            target = self._accepted
            if self._resolved >= target:
                return 0
            self._flush_to = max(self._flush_to, target)
            self._retry_at = 0.0
            self._cond.notify_all()
            while self._resolved < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return max(0, target - self._resolved)

    # -- the sender thread ---------------------------------------------------------------------

    def _next_batch(self) -> tuple[list[str], float] | None:
        """Wait until a batch is due and take it; None when it is time to stop."""
        interval = self.flush_interval_ms / 1000.0
        with self._cond:
            while not self._stopping:
                if self._waiting == 0:
                    self._cond.wait()
                    continue
                now = time.monotonic()
                if now < self._retry_at:
                    self._cond.wait(self._retry_at - now)
                    continue
                due_at = self._chunks[0].born + interval
                if self._waiting >= self.batch_size or self._resolved < self._flush_to or now >= due_at:
                    return self._take_locked()
                self._cond.wait(due_at - now)
            return None

    def _run(self) -> None:
        while (taken := self._next_batch()) is not None:
            batch, born = taken
            outcome, detail, retry_after = self._send(batch)
            self._settle(batch, born, outcome, detail, retry_after)

    def _send(self, batch: list[str]) -> tuple[str, str, float | None]:
        """Post one batch; return the outcome, a loggable text and the server's Retry-After."""
        body = gzip.compress("\n".join(batch).encode("utf-8"), compresslevel=GZIP_LEVEL, mtime=0)
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
                content_encoding="gzip",
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

    def _settle(
        self, batch: list[str], born: float, outcome: str, detail: str, retry_after: float | None
    ) -> None:
        n = len(batch)
        detail = self._scrub(detail)
        dropped = 0
        recovered = 0
        with self._cond:
            self._inflight = 0
            if outcome == _Outcome.OK:
                self._counters["written"] += n
                self._resolved += n
                recovered = self._failures
                self._failures = 0
                self._retry_at = 0.0
            elif outcome == _Outcome.REFUSED:
                self._counters["failed"] += n
                self._resolved += n
                self._last_error = detail
            else:
                # Back at the head, so the order holds and the next attempt starts with the oldest.
                self._chunks.appendleft(_Chunk(batch, born))
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
                self._waiting + self._inflight,
            )
        if dropped:
            self._warn_dropped(dropped)

    def _scrub(self, text: str) -> str:
        token = self.__token
        return text.replace(token, "***") if token else text


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
    body = getattr(exc, "body", None)
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    text = str(body or getattr(exc, "message", "") or "").strip()
    if not text or text == str(exc.reason or "").strip():
        return ""
    return ": " + (text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "...")


def _seconds(value: object) -> float | None:
    try:
        seconds = float(str(value))
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
