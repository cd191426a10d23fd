"""``SpooledWriter``: a write-ahead spool on disk in front of any writer."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from flowcollect._logs import RateLimitedLog
from flowcollect.errors import ConfigError, PreflightError
from flowcollect.values import CollectedVariable, Receipt, ValueBatch, VariableSpec
from flowcollect.writers.base import DataWriter, OnReceipt
from flowcollect.writers.spool import _records as rec
from flowcollect.writers.spool._forward import Forwarder, Handout, Sent
from flowcollect.writers.spool._store import (
    DISK_FULL,
    DiskFullError,
    OpenReport,
    Segment,
    SegmentReader,
    SpoolInUseError,
    Store,
    iter_records,
)

if TYPE_CHECKING:
    from flowcollect.writers.spool._options import SpoolOptions

__all__ = ["SpooledWriter", "Sync", "spool_writers"]

logger = logging.getLogger("flowcollect.writers.spool")

Sync = Literal["always", "batch", "never"]
_SYNCS = ("always", "batch", "never")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MIN_SEGMENT = 4096
_MEMORY_VALUES = 200_000
"""Recent batches kept in memory as well, so a sender that keeps up never reads the disk.
Beyond this the backlog lives on disk only: memory stays flat however long the outage."""
_RETRY_INITIAL_S = 0.5
_RETRY_MAX_S = 30.0
_EPISODE_END = 0.5
# A drop episode ends when the spool is back under this share of max_bytes: dropping one
# segment (at most a quarter) during a long outage does not end it, draining the backlog does.


class _Pending:
    """An append not yet handed out: where its record is, and the engine's batch.

    ``held``: the batch still has its columns, so it is handed from memory; otherwise they were
    released (beyond ``_MEMORY_VALUES``) and the batch object is kept only for its receipt,
    while the values are read back from the record on disk.
    """

    __slots__ = ("batch", "end", "held", "seq", "start")

    def __init__(self, seq: int, start: int, end: int, batch: ValueBatch, held: bool = True) -> None:
        self.seq = seq
        self.start = start
        self.end = end
        self.batch = batch
        self.held = held


class SpooledWriter(DataWriter):
    """Puts a write-ahead spool on disk in front of ``writer``.

    ``write_batch`` appends the batch to a segment file in ``path`` and returns; a sender thread
    hands the spooled batches to ``writer`` in order and deletes them once ``writer`` has
    acknowledged them (``writer.acknowledges``: its receipts; otherwise its ``write`` returning).
    The spool acknowledges to the engine what ``writer`` acknowledged, so a value counts as
    written once stored at the destination, never merely spooled. As for any acknowledging
    writer, the batch object given to ``write_batch`` is the spool's own (the engine gives it a
    ``handle()``; a caller that keeps using its batch passes one too): beyond the most recent
    200,000 values the spool releases its columns once appended, keeping the object for the
    receipt and reading the values back from disk, so memory stays flat through an outage.

    - ``max_bytes``: the spool's disk budget. Beyond it, or when the disk is full, the oldest
      segment is dropped (counted, logged once per episode, reported as ``dropped`` in receipts
      of this process's batches); appends never block.
    - ``sync``: ``"batch"`` fsyncs the segment at least every ``sync_interval_s``;
      ``"always"`` before ``write_batch`` returns; ``"never"`` leaves it to the OS. Every mode
      writes each batch to the file before returning, so a kill of the process loses nothing
      appended; ``sync`` is about power cuts and kernel crashes (see docs/spool.md).
    - ``segment_bytes``: a segment is closed at this size (default: ``max_bytes / 16``, between
      64 KiB and 64 MiB). Segments are the unit deleted once acknowledged, or dropped.
    - ``max_in_flight_values``: values handed to ``writer`` and not yet acknowledged, at most.
      The rest waits on disk, so ``writer``'s own buffer never overflows during an outage.
    - ``close_timeout_s``: how long ``close()`` lets the sender drain the backlog before it
      stops; what is left stays in the spool for the next run.
    - ``destination_preflight``: ``"warn"`` (default) runs ``writer.preflight()`` and only logs
      its failure, since the spool holds the values until the destination works; ``"fail"``
      makes it stop the run.
    """

    acknowledges: ClassVar[bool] = True
    keeps_unacknowledged: ClassVar[bool] = True
    """What it has not acknowledged when it closes is not lost: it stays in the spool and is sent
    by the next run. An engine should count those values as kept (spooled), not as dropped."""

    def __init__(
        self,
        writer: DataWriter,
        path: str | os.PathLike[str],
        *,
        max_bytes: int,
        sync: Sync = "batch",
        sync_interval_s: float = 1.0,
        segment_bytes: int | None = None,
        max_in_flight_values: int = 50_000,
        close_timeout_s: float = 5.0,
        destination_preflight: Literal["warn", "fail"] = "warn",
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if segment_bytes is None and isinstance(max_bytes, int) and max_bytes > 0:
            segment_bytes = min(64 << 20, max(64 << 10, max_bytes // 16))
        problems = _check(
            writer,
            max_bytes,
            sync,
            sync_interval_s,
            segment_bytes,
            max_in_flight_values,
            close_timeout_s,
            destination_preflight,
        )
        if problems:
            raise ConfigError(problems)
        self.writer = writer
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.sync: Sync = sync
        self.sync_interval_s = float(sync_interval_s)
        self.segment_bytes = int(segment_bytes or 0)
        self.max_in_flight_values = max_in_flight_values
        self.close_timeout_s = float(close_timeout_s)
        self.destination_preflight = destination_preflight
        self._clock = clock
        self._monotonic = monotonic
        self._errors = RateLimitedLog(logger, clock=monotonic)

        # Thread ownership. Every mutable field below is guarded by ``_cond`` (the spool lock),
        # which the forwarder shares: appends (the engine's writer thread), the forwarder's
        # thread, the maintenance thread, receipts (any thread) and ``stats()`` all take it.
        # Exceptions: ``_reader`` is used by the forwarder's thread only (and by close() once
        # that thread has stopped); ``_specs`` by the thread calling ``write()``; ``_threads`` is
        # written once, under the lock, when the folder is opened.
        self._cond = threading.Condition()
        self._store: Store | None = None  # guarded by _cond (None until the first batch)
        self._segments: dict[int, Segment] = {}  # guarded by _cond
        self._memory: deque[_Pending] = deque()  # guarded by _cond (no receipts wanted: recent appends)
        self._memory_values = 0  # guarded by _cond
        # With someone attached for receipts (the engine): this run's batches not yet handed out,
        # by record. A receipt must carry the very batch the engine gave (it matches them by
        # identity), so each is kept until handed out. The engine gives an acknowledging writer
        # its own batch object, so beyond _MEMORY_VALUES (``_held``) the spool releases its
        # columns once appended: the object stays for the receipt, the values are read back
        # from disk, and memory stays flat however long the outage.
        self._origins: dict[tuple[int, int], _Pending] = {}  # guarded by _cond
        self._held = 0  # guarded by _cond: values of _origins still holding their columns
        self._receipts_wanted = False  # set by attach(), before the first batch
        # Values (and batch records) appended or left by an earlier run and not yet settled by
        # the writer, dropped by the policy or lost to corruption: in flight ones included.
        self._backlog = 0  # guarded by _cond
        self._backlog_records = 0  # guarded by _cond
        self._closed = False  # guarded by _cond
        self._stopped = threading.Event()  # set once by close(): the maintenance thread ends
        self._threads: list[threading.Thread] = []
        self._reader = SegmentReader()  # the forwarder's thread's
        self._episode_dropped: int | None = None  # guarded by _cond: values dropped this episode
        self._episode_limit = max_bytes  # guarded by _cond
        # Appends not yet known to be on disk (fsync): what a power cut could take now.
        self._unsynced_since: float | None = None  # guarded by _cond
        self._unsynced_values = 0  # guarded by _cond
        self._maintenance_errors = 0  # guarded by _cond: rounds of the maintenance loop that raised
        self._orphans_lost = 0  # guarded by _cond: values of dropped segments the writer did not store
        self._specs: dict[tuple[Any, ...], VariableSpec] = {}
        self._counters: dict[str, int] = dict.fromkeys(  # guarded by _cond
            (
                "appended_values",
                "appended_records",
                "written",
                "failed",
                "dropped_by_writer",
                "dropped_by_policy",
                "dropped_segments",
                "replayed_values",
                "torn",
                "corrupt",
                "corrupt_values",
                "write_errors",
                "disk_full",
                "not_spooled",
            ),
            0,
        )
        # The forwarder: cursor, in-flight window, retry pause; its state is under _cond too.
        self._fw = Forwarder(
            self.name,
            writer,
            _Outbox(self),
            self._cond,
            max_in_flight_values=max_in_flight_values,
            idle_s=self.sync_interval_s,
            monotonic=monotonic,
        )
        if writer.acknowledges:
            writer.attach(self._fw.on_receipt)
        writer.kept_by = str(self.path)  # what it gives up at close stays here: not "lost"

    # -- the DataWriter contract ---------------------------------------------------------------

    def attach(self, on_receipt: OnReceipt) -> None:
        super().attach(on_receipt)
        self._receipts_wanted = True

    # The engine's queue and routing sit before the spool, so they are the inner writer's: a
    # writer told to receive some contexts only, or to keep a queue of its own size, keeps that
    # with a spool in front. (Set on the spooled writer, they go to the inner one.)
    @property
    def routing(self) -> Any:
        return getattr(self.writer, "routing", None)

    @routing.setter
    def routing(self, value: Any) -> None:
        setattr(self.writer, "routing", value)  # noqa: B010 - not every DataWriter declares it

    @property
    def queue_policy(self) -> Any:
        return getattr(self.writer, "queue_policy", "drop_oldest")

    @queue_policy.setter
    def queue_policy(self, value: Any) -> None:
        setattr(self.writer, "queue_policy", value)  # noqa: B010 - as above

    @property
    def queue_limit(self) -> Any:
        return getattr(self.writer, "queue_limit", None)

    @queue_limit.setter
    def queue_limit(self, value: Any) -> None:
        setattr(self.writer, "queue_limit", value)  # noqa: B010 - as above

    @property
    def name(self) -> str:
        # The destination's name, so metrics and status keep their labels when a spool is added.
        return self.writer.name

    @classmethod
    def from_options(cls, writer: DataWriter, options: SpoolOptions) -> SpooledWriter:
        """``writer`` behind a spool configured by ``options`` (as a pipeline declares it)."""
        return cls(
            writer,
            options.path,
            max_bytes=options.max_bytes,
            sync=options.sync,
            sync_interval_s=options.sync_interval_s,
            segment_bytes=options.segment_bytes,
            max_in_flight_values=options.max_in_flight_values,
            close_timeout_s=options.close_timeout_s,
            destination_preflight=options.destination_preflight,
        )

    def preflight(self) -> None:
        """The folder can be created and written and no other process holds it; then the
        destination's own preflight (its failure only logged, unless ``destination_preflight="fail"``)."""
        probe = self.path / f".preflight-{os.getpid()}"
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            try:
                probe.write_bytes(b"ok")
            finally:
                probe.unlink(missing_ok=True)  # never left behind, even when the write failed
        except OSError as exc:
            if exc.errno not in DISK_FULL or not self.path.is_dir():
                raise PreflightError(
                    f"spool folder {self.path} cannot be written: {exc.strerror or exc}"
                ) from exc
            # A full disk is a state to collect through, not a reason not to start: appends drop
            # the oldest segments (or, with nothing to drop, the new batch), counted and logged.
            logger.warning(
                "spool %s: the disk is full (%s); collecting anyway: the oldest spooled values are "
                "dropped to make room, counted as dropped",
                self.path,
                exc.strerror or exc,
            )
        if self._store is None:
            try:
                fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                if exc.errno not in DISK_FULL:
                    raise PreflightError(
                        f"spool folder {self.path} cannot be written: {exc.strerror or exc}"
                    ) from exc
                fd = None  # no room even for the lock file: appends will say so, counted
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise PreflightError(
                        f"spool folder {self.path} is in use by another writer or process"
                    ) from None
                finally:
                    os.close(fd)
        try:
            self.writer.preflight()
        except PreflightError as exc:
            if self.destination_preflight == "fail":
                raise
            logger.warning(
                "%s: destination not ready (%s); collecting into the spool %s until it is",
                self.name,
                exc,
                self.path,
            )

    def write(self, values: Sequence[CollectedVariable]) -> None:
        # For callers that hand per-value objects: group them into batches of one instant.
        for batch in self._batches_of(values):
            self.write_batch(batch)

    def write_batch(self, batch: ValueBatch) -> None:
        """Append ``batch`` to the spool (with ``sync="always"``: on disk) and return."""
        if not len(batch):
            return
        receipts: list[Receipt] = []
        with self._cond:
            if self._closed:
                raise RuntimeError(f"spooled writer {self.name} is closed; it takes no more values")
            try:
                store = self._open_locked()
            except PreflightError:
                raise
            except OSError as exc:
                # The folder cannot be opened now (a full disk, an I/O error): this batch cannot
                # be kept, counted as such; the next batch tries again. Collection goes on.
                self._counters["write_errors"] += 1
                self._errors.error(("open", exc.errno), "spool %s: cannot open: %s", self.path, exc)
                self._drop_batch_locked(batch, f"spool folder cannot be opened: {exc}", receipts)
            else:
                self._append_locked(store, batch, receipts)
                self._fw.wake_locked()
        self._send_receipts(receipts)

    def flush(self) -> None:
        """Make every appended batch durable in the spool (fsync); delivery goes on in the background."""
        with self._cond:
            store = self._store
            if store is None:
                return
            fd = _dup(store)
            store.dirty = False
            self._unsynced_since, self._unsynced_values = None, 0
        if fd is not None:
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)

    def close(self) -> None:
        """Let the sender drain the backlog for up to ``close_timeout_s``, stop it, close the inner
        writer, and keep on disk whatever it did not acknowledge, for the next run."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            deadline = self._monotonic() + self.close_timeout_s
            if self._store is not None:
                self._fw.retry_at = 0.0
                self._fw.wake_locked()
                while self._backlog_locked() and (left := deadline - self._monotonic()) > 0:
                    self._cond.wait(min(left, 0.1))
            self._fw.closing = True
            self._fw.wake_locked()
        # The forwarder stops handing batches before the writer closes (it may be in a write now).
        for thread in self._threads[:1]:
            thread.join(max(0.0, deadline - self._monotonic()) + 1.0)
        try:
            self.writer.close()
        except Exception as exc:
            logger.error("%s: closing the writer behind the spool failed: %s", self.name, exc)
        with self._cond:
            self._fw.stopping = True
            self._stopped.set()
            self._fw.wake_locked()
        for thread in self._threads:
            thread.join(max(0.0, deadline - self._monotonic()) + 1.0)
            if thread.is_alive():
                logger.error("%s: spool thread %s did not stop after close()", self.name, thread.name)
        with self._cond:
            store = self._store
            if store is None:
                return
            # Batches whose segment was dropped while the writer had them, and that the writer
            # did not settle: no copy is left for the next run, so they are lost, and counted.
            lost = self._fw.drop_orphans_locked("its segment was dropped, and the writer closed without it")
            orphans_lost = self._orphans_lost
            left = self._backlog_locked()
            position = self._position_locked()
        self._send_receipts(lost)
        if orphans_lost:
            logger.warning(
                "%s: %d values whose segment the disk limit dropped while the writer had them were "
                "not stored by it; counted dropped",
                self.name,
                orphans_lost,
            )
        self._save_position(store, position)
        with self._cond:
            self._delete_acknowledged_locked(store)
            store.close()
            self._reader.close()
        if left:
            logger.warning(
                "%s: closed with %d values not yet delivered; they stay in the spool %s for the next run",
                self.name,
                left,
                self.path,
            )

    def stats(self) -> Mapping[str, float]:
        """The inner writer's own counters, and the spool's as ``spool_*``: ``bytes``,
        ``segments``, ``records`` and ``values`` (the backlog: not yet acknowledged, in flight
        included), ``in_flight``, ``oldest_age_s``, ``appended_values``, ``appended_records``,
        ``written``, ``failed``, ``dropped_by_writer``, ``dropped_by_policy``,
        ``dropped_segments``, ``replayed_values``, ``torn``, ``corrupt``, ``write_errors``,
        ``disk_full``, ``not_spooled`` (dropped because they could not be appended at all), and
        ``unsynced_values`` / ``unsynced_age_s``: appended but not yet known to
        be on disk (no fsync since), what a power cut could take now.

        The writer-wide words keep their meaning with a spool in front: ``buffered`` is the
        spool's backlog (it holds what the inner writer buffers), ``oldest_buffered_age_s`` its
        oldest value's age, ``dropped`` what the inner writer gave up plus what the disk limit
        dropped (``dropped_by_policy`` and ``not_spooled``); the inner writer's own are kept as
        ``inner_buffered``, ``inner_dropped`` and ``inner_oldest_buffered_age_s``.
        """
        try:
            out: dict[str, float] = dict(self.writer.stats())
        except Exception:
            out = {}
        with self._cond:
            for key, value in self._counters.items():
                out[f"spool_{key}"] = value
            out["spool_write_errors"] += self._fw.write_errors
            out["spool_thread_errors"] = self._fw.loop_errors + self._maintenance_errors
            store = self._store
            out["spool_bytes"] = store.bytes if store is not None else 0
            out["spool_segments"] = len(store.segments) if store is not None else 0
            out["spool_records"] = self._backlog_records
            out["spool_values"] = self._backlog_locked()
            out["spool_in_flight"] = self._fw.in_flight
            out["spool_unsynced_values"] = self._unsynced_values
            since = self._unsynced_since
            out["spool_unsynced_age_s"] = self._monotonic() - since if since is not None else 0.0
            oldest = self._oldest_t_ms_locked()
        age = max(0.0, self._clock() - oldest / 1000.0) if oldest is not None else 0.0
        out["spool_oldest_age_s"] = age
        for key in ("buffered", "dropped", "oldest_buffered_age_s"):
            if key in out:
                out[f"inner_{key}"] = out[key]
        out["buffered"] = out["spool_values"]
        out["oldest_buffered_age_s"] = age
        # What the writer gave up as it said in its receipts (not what it gave up at close,
        # which the spool keeps), plus what the spool itself dropped: what receipts reported.
        out["dropped"] = (
            out["spool_dropped_by_writer"] + out["spool_dropped_by_policy"] + out["spool_not_spooled"]
        )
        return out

    def __repr__(self) -> str:
        return (
            f"SpooledWriter({self.writer!r}, path={str(self.path)!r}, max_bytes={self.max_bytes}, "
            f"sync={self.sync!r})"
        )

    # -- appending -------------------------------------------------------------------------------

    def _open_locked(self) -> Store:
        store = self._store
        if store is not None:
            return store
        store = Store(self.path, self.segment_bytes, self.sync)
        try:
            report = store.open()
        except SpoolInUseError as exc:
            raise PreflightError(str(exc.strerror)) from exc
        self._store = store
        self._segments = {s.seq: s for s in store.segments}
        self._fw.cursor = store.position
        self._backlog = report.replay_values
        self._backlog_records = report.replay_records
        self._report_open(report)
        self._threads.append(self._fw.start(f"flowcollect-spool-sender-{self.name}"))
        thread = threading.Thread(
            target=self._run_maintenance, name=f"flowcollect-spool-sync-{self.name}", daemon=True
        )
        self._threads.append(thread)
        thread.start()
        return store

    def _report_open(self, report: OpenReport) -> None:
        self._counters["torn"] += report.torn
        self._counters["corrupt"] += report.corrupt
        self._counters["corrupt_values"] += report.corrupt_values
        if report.position_reset:
            logger.warning("spool %s: %s", self.path, report.position_reset)
        if report.replay_values:
            logger.info(
                "spool %s: %d values in %d batches left by an earlier run are sent first",
                self.path,
                report.replay_values,
                report.replay_records,
            )

    def _append_locked(self, store: Store, batch: ValueBatch, receipts: list[Receipt]) -> None:
        n = len(batch)
        for _ in range(len(store.segments) + 3):
            try:
                segment, start, end = store.append(batch)
                break
            except DiskFullError as exc:
                self._counters["disk_full"] += 1
                # The disk's room is the limit of this episode, not max_bytes.
                self._episode_limit = min(self._episode_limit, store.bytes)
                if not self._drop_oldest_locked(store, f"disk full ({exc.strerror})", receipts):
                    self._drop_batch_locked(
                        batch, f"disk full ({exc.strerror}) and nothing left to drop", receipts
                    )
                    return
            except OSError as exc:
                # Any other I/O error: the batch cannot be kept; collection goes on.
                self._counters["write_errors"] += 1
                self._errors.error(("append", exc.errno), "spool %s: cannot append: %s", self.path, exc)
                self._drop_batch_locked(batch, f"spool append failed: {exc}", receipts)
                return
        else:
            self._drop_batch_locked(batch, "disk full: no room after dropping every segment", receipts)
            return
        self._segments[segment.seq] = segment
        self._counters["appended_values"] += n
        self._counters["appended_records"] += 1
        self._backlog += n
        self._backlog_records += 1
        if self.sync != "always":
            if self._unsynced_since is None:
                self._unsynced_since = self._monotonic()
            self._unsynced_values += n
        self._keep_locked(segment, start, end, batch)
        while store.bytes > self.max_bytes and len(store.segments) > 1:
            if not self._drop_oldest_locked(store, f"max_bytes={self.max_bytes} reached", receipts):
                break
        if self._episode_dropped is not None and store.bytes < self._episode_limit * _EPISODE_END:
            logger.warning(
                "spool %s: back under its limit; %d values were dropped in that episode (%d in all)",
                self.path,
                self._episode_dropped,
                self._counters["dropped_by_policy"],
            )
            self._episode_dropped = None
            self._episode_limit = self.max_bytes

    def _keep_locked(self, segment: Segment, start: int, end: int, batch: ValueBatch) -> None:
        """Keep an appended batch in memory: for its receipt, and its values while within
        ``_MEMORY_VALUES``, so a sender that keeps up never reads the disk."""
        n = len(batch)
        if self._receipts_wanted:
            held = self._held + n <= _MEMORY_VALUES
            if held:
                self._held += n
            else:
                batch.release()  # on disk now; the object (ours: see DataWriter) stays for its receipt
            self._origins[(segment.seq, start)] = _Pending(segment.seq, start, end, batch, held)
        elif self._memory_values + n <= _MEMORY_VALUES:
            self._memory.append(_Pending(segment.seq, start, end, batch))
            self._memory_values += n

    def _drop_batch_locked(self, batch: ValueBatch, reason: str, receipts: list[Receipt]) -> None:
        """A batch that could not be appended at all: dropped before it was ever spooled."""
        self._counters["not_spooled"] += len(batch)
        self._count_drop(len(batch), reason, counter=None)
        receipts.append(Receipt(batch, 0, 0, len(batch), reason))

    def _count_drop(self, n: int, reason: str, counter: str | None = "dropped_by_policy") -> None:
        if counter is not None:
            self._counters[counter] += n
        if self._episode_dropped is None:
            self._episode_dropped = 0
            logger.warning(
                "spool %s: %s: dropping the oldest values to go on collecting "
                "(logged once until it is back under its limit)",
                self.path,
                reason,
            )
        self._episode_dropped += n

    def _drop_oldest_locked(self, store: Store, reason: str, receipts: list[Receipt]) -> bool:
        """Drop the oldest segment (values not yet handed to the writer are lost); False if none."""
        if not store.segments:
            return False
        segment = store.segments[0]
        if segment is store.active and segment.records == 0 and len(store.segments) == 1:
            return False
        seq, offset = self._fw.cursor
        dropped = records = 0
        if seq <= segment.seq:
            start = offset if seq == segment.seq else len(rec.MAGIC)
            try:
                for record_start, n in store.batch_headers(segment, start):
                    dropped += n
                    records += 1
                    # Receipts only matter to whoever is attached, and then the batch is kept.
                    kept = self._pop_origin((segment.seq, record_start))
                    if kept is not None:
                        receipts.append(Receipt(kept.batch, 0, 0, n, f"spool: {reason}"))
            except (OSError, rec.RecordError) as exc:
                logger.error("spool %s: dropping %s: %s", self.path, segment.path.name, exc)
                dropped, records = self._unsent_in_locked(segment)
            later = [s.seq for s in store.segments if s.seq > segment.seq]
            self._fw.cursor = (later[0], len(rec.MAGIC)) if later else (segment.seq + 1, len(rec.MAGIC))
        while self._memory and self._memory[0].seq <= segment.seq:
            self._memory_values -= len(self._memory.popleft().batch)
        # Its batches with the writer now are no longer in the spool: what the writer stores of
        # them counts as written, what it does not is counted dropped then (never kept).
        self._fw.orphan_locked(segment.seq)
        store.delete(segment)
        self._segments.pop(segment.seq, None)
        self._counters["dropped_segments"] += 1
        self._backlog -= dropped
        self._backlog_records -= records
        self._count_drop(dropped, reason)
        self._fw.wake_locked()
        return True

    # -- sending ---------------------------------------------------------------------------------

    def _next_locked(self, store: Store) -> tuple[Segment, int, _Pending | None] | None:
        """The next record to hand out: (segment, offset, the in-memory batch if any), or None."""
        while True:
            seq, offset = self._fw.cursor
            segment = self._segments.get(seq)
            if segment is None:
                later = [s for s in store.segments if s.seq > seq]
                if not later:
                    return None
                self._fw.cursor = (later[0].seq, len(rec.MAGIC))
                continue
            if offset >= segment.size:
                if segment is store.active or segment is store.segments[-1]:
                    return None
                later = [s for s in store.segments if s.seq > seq]
                self._fw.cursor = (later[0].seq, len(rec.MAGIC))
                continue
            # Left in place: _hand takes it under the lock, so a drop in between still finds it.
            kept = self._origins.get((seq, offset))
            if kept is not None:
                return segment, offset, kept
            memory = self._memory
            while memory and (memory[0].seq, memory[0].start) < self._fw.cursor:
                self._memory_values -= len(memory.popleft().batch)
            if memory and memory[0].seq == seq and memory[0].start == offset:
                pending = memory.popleft()
                self._memory_values -= len(pending.batch)
                return segment, offset, pending
            return segment, offset, None

    def _read_from_disk(
        self, store: Store, segment: Segment, offset: int, pending: _Pending | None = None
    ) -> tuple[int, ValueBatch] | None:
        """The batch at the cursor, read from its segment (variable tables are taken in passing).

        With ``pending`` (an append whose columns were released), its whole append: the batch
        record, after the variable table the append may have written before it."""
        with self._cond:
            end = segment.size
        try:
            if not segment.tables_complete and offset > len(rec.MAGIC):
                store.load_tables(segment)
            at = offset
            while True:
                record = self._reader.read(segment, at, end)
                batch = None
                if record.kind == rec.KIND_SPECS:
                    list_id, specs = rec.decode_specs(record.payload)
                    segment.tables.setdefault(list_id, specs)
                else:
                    batch = rec.decode_batch(record.payload, record.t_ms, segment.tables)
                if batch is not None or pending is None or record.end >= pending.end:
                    break
                at = record.end
        except (OSError, rec.RecordError) as exc:
            self._corrupt_at_read(store, segment, offset, exc)
            return None
        with self._cond:
            if self._fw.cursor != (segment.seq, offset) or segment.seq not in self._segments:
                return None  # dropped meanwhile
            if batch is None:
                self._fw.cursor = (segment.seq, record.end)
                return None
        return record.end, batch

    # -- the forwarder's source (see _Outbox) ----------------------------------------------------

    def _load(self, item: Handout) -> Handout | None:
        """Outside the lock: the batch to hand for ``item`` (from memory, or read from disk)."""
        segment, pending = item.pending
        if pending is not None and pending.held:
            # Its own object for the writer behind: it may release it (see DataWriter).
            item.end, item.batch, item.origin, item.held = (
                pending.end,
                pending.batch.handle(),
                pending.batch,
                True,
            )
            return item
        store = self._store
        if store is None:
            return None
        read = self._read_from_disk(store, segment, item.start, pending)
        if read is None:
            return None
        item.end, item.batch = read
        if pending is not None:  # released: the values from disk, the receipt to its batch
            item.origin = pending.batch
        else:  # a replay of an earlier run has no batch of the engine's to answer to
            item.origin = item.batch if segment.own else None
        return item

    def _returned_locked(self, entry: Sent) -> None:
        if entry.origin is not None and self._receipts_wanted:
            # Handed again from memory if it still has its columns (within the in-flight window,
            # so not counted against _MEMORY_VALUES), else from disk.
            self._origins[(entry.seq, entry.start)] = _Pending(
                entry.seq, entry.start, entry.end, entry.origin, held=entry.held
            )
            if entry.held:
                self._held += entry.n

    def _settled_locked(
        self, entry: Sent, written: int, failed: int, dropped: int, error: str | None, done: bool
    ) -> Receipt | None:
        self._counters["written"] += written
        self._counters["failed"] += failed
        self._counters["dropped_by_writer"] += dropped
        forward = None
        if entry.origin is None:
            self._counters["replayed_values"] += written + failed + dropped
        elif written or failed or dropped:
            forward = Receipt(entry.origin, written, failed, dropped, error)
        if done and not entry.keep:
            self._backlog -= entry.n
            self._backlog_records -= 1
            segment = self._segments.get(entry.seq)
            if segment is not None and not entry.orphan:
                segment.records -= 1
                segment.values -= entry.n
        return forward

    def _orphan_lost_locked(self, entry: Sent, why: str) -> Receipt | None:
        """An orphan (its segment dropped while the writer had it) the writer did not store: its
        unsettled values are lost, counted once here as dropped by the policy."""
        lost = entry.n - entry.settled
        entry.settled = entry.n
        self._backlog -= lost
        self._backlog_records -= 1
        self._counters["dropped_by_policy"] += lost
        self._orphans_lost += lost
        if entry.origin is None or not lost:
            return None
        return Receipt(entry.origin, 0, 0, lost, f"spool: {why}")

    def _pop_origin(self, key: tuple[int, int]) -> _Pending | None:
        """Under the lock: the pending append of this run at ``key``, taken out of ``_origins``."""
        pending = self._origins.pop(key, None)
        if pending is not None and pending.held:
            self._held -= len(pending.batch)
        return pending

    def _position_locked(self) -> tuple[int, int]:
        """The first record not acknowledged: where a restart resumes sending."""
        return self._fw.position_locked()

    def _backlog_locked(self) -> int:
        return self._backlog

    def _unsent_in_locked(self, segment: Segment) -> tuple[int, int]:
        """Values and records of a segment not yet handed to the writer (by its counts)."""
        sent = [e for e in self._fw.sent if e.seq == segment.seq and e.settled < e.n and not e.orphan]
        return segment.values - sum(e.n for e in sent), segment.records - len(sent)

    def _oldest_t_ms_locked(self) -> int | None:
        if self._fw.sent:
            return self._fw.sent[0].t_ms
        if not self._backlog_locked():
            return None
        in_memory = self._origins.get(self._fw.cursor)
        if (
            in_memory is None
            and self._memory
            and (self._memory[0].seq, self._memory[0].start) == self._fw.cursor
        ):
            in_memory = self._memory[0]
        if in_memory is not None:
            return in_memory.batch.t_ms
        return self._oldest_on_disk_locked()

    def _oldest_on_disk_locked(self) -> int | None:
        """The instant of the first batch record at or after the cursor, from its header."""
        store = self._store
        for segment in store.segments if store is not None else ():
            if segment.seq < self._fw.cursor[0]:
                continue
            start = self._fw.cursor[1] if segment.seq == self._fw.cursor[0] else len(rec.MAGIC)
            try:
                with open(segment.path, "rb") as f:
                    f.seek(start)
                    data = f.read(min(segment.size - start, 1 << 20))
                for record in iter_records(data, 0, len(data)):
                    if record.kind == rec.KIND_BATCH:
                        return record.t_ms
            except (OSError, rec.RecordError):
                break
        return None

    def _corrupt_at_read(self, store: Store, segment: Segment, offset: int, exc: Exception) -> None:
        receipts: list[Receipt] = []
        with self._cond:
            if segment.seq not in self._segments:
                return
            for key in [k for k in self._origins if k[0] == segment.seq]:
                batch = self._origins[key].batch
                self._pop_origin(key)
                receipts.append(Receipt(batch, 0, 0, len(batch), "spool: segment unreadable"))
            self._counters["corrupt"] += 1
            lost, records = self._unsent_in_locked(segment)
            aside = segment.path.with_name(segment.path.name + ".corrupt")
            logger.error(
                "spool %s: segment %s cannot be read at byte %d (%s): moved aside to %s, "
                "%d values in it not yet sent are lost",
                self.path,
                segment.path.name,
                offset,
                exc,
                aside.name,
                lost,
            )
            with contextlib.suppress(OSError):
                os.replace(segment.path, aside)
            self._counters["dropped_by_policy"] += lost
            self._backlog -= lost
            self._backlog_records -= records
            self._fw.orphan_locked(segment.seq)
            if segment is store.active:
                store.seal()
            store.segments.remove(segment)
            store.bytes -= segment.size
            del self._segments[segment.seq]
            later = [s.seq for s in store.segments if s.seq > segment.seq]
            self._fw.cursor = (later[0], len(rec.MAGIC)) if later else (segment.seq + 1, len(rec.MAGIC))
            self._reader.close()
        self._send_receipts(receipts)

    # -- durability and cleanup -------------------------------------------------------------------

    def _run_maintenance(self) -> None:
        """The maintenance thread: group commit (``sync="batch"``), the send position, deleting
        what was acknowledged. A round that raises is logged and counted; the next one comes."""
        store = self._store
        if store is None:
            return
        saved: list[tuple[int, int] | None] = [None]
        # Its own event, not the condition every append notifies: it wakes once an interval.
        while not self._stopped.wait(self.sync_interval_s):
            try:
                self._maintain(store, saved)
            except Exception as exc:
                with self._cond:
                    self._maintenance_errors += 1
                text = f"{type(exc).__name__}: {exc}"
                self._errors.error(
                    ("maintenance", text),
                    "spool %s: a maintenance round failed (%s); the next one comes in %.1f s\n%s",
                    self.path,
                    text,
                    self.sync_interval_s,
                    "".join(traceback.format_exception(exc)).rstrip(),
                )

    def _maintain(self, store: Store, saved: list[tuple[int, int] | None]) -> None:
        with self._cond:
            fd = _dup(store) if self.sync == "batch" and store.dirty else None
            if fd is not None:
                store.dirty = False
                self._unsynced_since, self._unsynced_values = None, 0
            position = self._position_locked()
        try:
            if fd is not None:
                os.fdatasync(fd)
            if position != saved[0] and self._save_position(store, position):
                saved[0] = position
        except OSError as exc:
            self._errors.error(("sync", exc.errno), "spool %s: cannot sync: %s", self.path, exc)
        finally:
            if fd is not None:
                os.close(fd)
        with self._cond:
            self._delete_acknowledged_locked(store)

    def _save_position(self, store: Store, position: tuple[int, int]) -> bool:
        try:
            store.save_position(position)
        except OSError as exc:
            # The old position stays: a restart replays a little more, which overwrites.
            self._errors.error(
                ("position", exc.errno), "spool %s: cannot save the send position: %s", self.path, exc
            )
            return False
        return True

    def _delete_acknowledged_locked(self, store: Store) -> None:
        """Delete the segments wholly before the saved send position."""
        saved = store.position[0]
        for segment in list(store.segments):
            if segment.seq < saved and segment is not store.active:
                store.delete(segment)
                self._segments.pop(segment.seq, None)

    # -- receipts and helpers --------------------------------------------------------------------

    def _send_receipts(self, receipts: list[Receipt]) -> None:
        for receipt in receipts:
            self.acknowledge(receipt.batch, receipt.written, receipt.failed, receipt.dropped, receipt.error)

    def _batches_of(self, values: Sequence[CollectedVariable]) -> list[ValueBatch]:
        """Per-value objects as columnar batches: one per run of equal (context, reader, time)."""
        out: list[ValueBatch] = []
        key: tuple[Any, ...] | None = None
        specs: list[VariableSpec] = []
        column: list[Any] = []
        errors: list[str | None] = []
        for v in values:
            when = v.time if v.time is not None else datetime.fromtimestamp(self._clock(), UTC)
            k = (v.context_id, v.reader, when)
            if k != key:
                if key is not None:
                    out.append(_batch_at(key, specs, column, errors))
                key, specs, column, errors = k, [], [], []
            spec_key = (v.id, v.context_id, v.address, v.value_type, v.reader, v.interval_ms)
            spec = self._specs.get(spec_key)
            if spec is None:
                spec = VariableSpec(*spec_key)
                if len(self._specs) < 100_000:
                    self._specs[spec_key] = spec
            specs.append(spec)
            column.append(v.value)
            errors.append(v.error)
        if key is not None:
            out.append(_batch_at(key, specs, column, errors))
        return out


class _Outbox:
    """The store side of a spool as its forwarder sees it (``_forward.Source``)."""

    __slots__ = ("_spool",)

    def __init__(self, spool: SpooledWriter) -> None:
        self._spool = spool

    def next_locked(self) -> Handout | None:
        spool = self._spool
        store = spool._store
        found = spool._next_locked(store) if store is not None else None
        if found is None:
            return None
        segment, offset, pending = found
        return Handout(segment.seq, offset, pending=(segment, pending))

    def load(self, item: Handout) -> Handout | None:
        return self._spool._load(item)

    def taken_locked(self, item: Handout) -> None:
        self._spool._pop_origin((item.seq, item.start))

    def returned_locked(self, entry: Sent) -> None:
        self._spool._returned_locked(entry)

    def settled_locked(
        self, entry: Sent, written: int, failed: int, dropped: int, error: str | None, done: bool
    ) -> Receipt | None:
        return self._spool._settled_locked(entry, written, failed, dropped, error, done)

    def orphan_lost_locked(self, entry: Sent, why: str) -> Receipt | None:
        return self._spool._orphan_lost_locked(entry, why)

    def send_receipts(self, receipts: list[Receipt]) -> None:
        self._spool._send_receipts(receipts)


def _batch_at(
    key: tuple[Any, ...], specs: list[VariableSpec], values: list[Any], errors: list[str | None]
) -> ValueBatch:
    context_id, reader, when = key
    us = (when - _EPOCH) // timedelta(microseconds=1)
    t_ms, rest = divmod(us, 1000)
    source_ns = [us * 1000] * len(values) if rest else None
    return ValueBatch(t_ms, specs, values, errors, source_ns=source_ns, context_id=context_id, reader=reader)


def _dup(store: Store) -> int | None:
    fd = store._fd
    return os.dup(fd) if fd is not None else None


def _check(
    writer: object,
    max_bytes: object,
    sync: object,
    sync_interval_s: object,
    segment_bytes: object,
    max_in_flight_values: object,
    close_timeout_s: object,
    destination_preflight: object,
) -> list[str]:
    problems = []
    if not isinstance(writer, DataWriter):
        problems.append(f"writer: must be a DataWriter, got {type(writer).__name__}")
    if isinstance(writer, SpooledWriter):
        problems.append("writer: is already spooled; one spool per writer")
    if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes <= 0:
        problems.append(f"max_bytes: must be a positive number of bytes, got {max_bytes!r}")
    if sync not in _SYNCS:
        problems.append(f"sync: must be one of {', '.join(_SYNCS)}; got {sync!r}")
    if not isinstance(sync_interval_s, int | float) or not 0 < sync_interval_s <= 60:
        problems.append(f"sync_interval_s: must be in (0, 60] seconds, got {sync_interval_s!r}")
    if not isinstance(segment_bytes, int) or segment_bytes < _MIN_SEGMENT:
        problems.append(f"segment_bytes: must be at least {_MIN_SEGMENT}, got {segment_bytes!r}")
    elif isinstance(max_bytes, int) and max_bytes > 0 and segment_bytes * 4 > max_bytes:
        problems.append(
            f"segment_bytes: {segment_bytes} is more than a quarter of max_bytes={max_bytes}; "
            "the disk limit drops whole segments, so it needs several"
        )
    if not isinstance(max_in_flight_values, int) or max_in_flight_values <= 0:
        problems.append(f"max_in_flight_values: must be a positive integer, got {max_in_flight_values!r}")
    if not isinstance(close_timeout_s, int | float) or close_timeout_s < 0:
        problems.append(f"close_timeout_s: must be zero or more seconds, got {close_timeout_s!r}")
    if destination_preflight not in ("warn", "fail"):
        problems.append(f"destination_preflight: must be 'warn' or 'fail', got {destination_preflight!r}")
    return problems


def spool_writers(writers: Sequence[DataWriter], spools: Mapping[str, SpoolOptions]) -> list[DataWriter]:
    """``writers`` with each one named in ``spools`` (by ``writer.name``) behind a spool.

    For a pipeline's per-writer option (``spools={"influxdb:line1": SpoolOptions(...)}``):
    a name that matches no writer, or two spools in one folder, is a ``ConfigError`` naming it.
    Writers already spooled are left as they are (applying it twice changes nothing).
    """
    names = [w.name for w in writers]
    problems = [
        f"spools.{name}: no writer is named {name!r} (writers: {', '.join(map(repr, names))})"
        for name in spools
        if name not in names
    ]
    folders: dict[Path, str] = {}
    for name, options in spools.items():
        folder = Path(os.path.abspath(options.path))
        if folder in folders:
            problems.append(f"spools.{name}: path {options.path} is also the spool of {folders[folder]!r}")
        folders[folder] = name
    if problems:
        raise ConfigError(problems)
    # Idempotent: a writer already spooled stays as it is, so a model may apply this again.
    return [
        SpooledWriter.from_options(w, spools[w.name])
        if w.name in spools and not isinstance(w, SpooledWriter)
        else w
        for w in writers
    ]
