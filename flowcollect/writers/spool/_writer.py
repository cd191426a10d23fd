"""``SpooledWriter``: a write-ahead spool on disk in front of any writer."""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from flowcollect._logs import RateLimitedLog
from flowcollect.errors import ConfigError, PreflightError
from flowcollect.values import CollectedVariable, Receipt, ValueBatch, VariableSpec
from flowcollect.writers.base import DataWriter, OnReceipt
from flowcollect.writers.spool._backlog import Acknowledge, Backlog, LeftOver, dup_fd
from flowcollect.writers.spool._forward import Forwarder
from flowcollect.writers.spool._store import DISK_FULL

if TYPE_CHECKING:
    from flowcollect.writers.spool._options import SpoolOptions

__all__ = ["SpooledWriter", "Sync", "spool_writers"]

logger = logging.getLogger("flowcollect.writers.spool")

Sync = Literal["always", "batch", "never"]
_SYNCS = ("always", "batch", "never")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MIN_SEGMENT = 4096


class SpooledWriter(DataWriter):
    """Puts a write-ahead spool on disk in front of ``writer``.

    ``write_batch`` appends the batch to a segment file in ``path`` and returns; a forwarder thread
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
    - ``close_timeout_s``: how long ``close()`` lets the forwarder drain the backlog before it
      stops; what is left stays in the spool for the next run.
    - ``destination_preflight``: ``"warn"`` (default) runs ``writer.preflight()`` and only logs
      its failure, since the spool holds the values until the destination works; ``"fail"``
      makes it stop the run.
    """

    acknowledges: ClassVar[bool] = True
    keeps_unacknowledged: ClassVar[bool] = True
    """What it has not acknowledged when it closes is not lost: it stays in the spool and is sent
    by the next run, or by the writer that takes over its folder (``take_over``), which then
    acknowledges it to the same batches. An engine should count those values as kept (spooled),
    not as dropped, and take such later receipts."""
    TAKE_OVER_GRACE_S: ClassVar[float] = 30.0
    """How much longer than the previous writer's ``close_timeout_s`` a writer taking over its
    folder waits for it to close before it tries the folder anyway: the inner writer's own
    close comes on top (an InfluxDB writer whose server is down flushes for its ``timeout_s``),
    so as long as a collector's default ``close_timeout_s``. Meanwhile its batches wait in the
    engine's queue (bounded by its queue limit and policy)."""

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

        # Thread ownership. The spool's one lock, ``_cond``, guards every mutable field of the
        # backlog (the store side), of the forwarder, and the two below marked so; the engine's
        # writer thread (appends), the forwarder's thread, the maintenance thread, receipts (any
        # thread) and ``stats()`` all take it. ``_specs`` is the thread calling ``write()``'s;
        # ``_threads`` is written once, under the lock, when the folder is opened.
        self._cond = threading.Condition()
        self._closed = False  # guarded by _cond
        self._maintenance_errors = 0  # guarded by _cond: rounds of the maintenance loop that raised
        self._stopped = threading.Event()  # set once by close(): the maintenance thread ends
        self._threads: list[threading.Thread] = []
        self._specs: dict[tuple[Any, ...], VariableSpec] = {}
        # A reload's take-over (``take_over``): the writer whose folder this one opens once it
        # has closed, and by when. Written by take_over before the first batch, then the
        # engine's writer thread's (write_batch), which clears it once the folder is open.
        self._previous: SpooledWriter | None = None
        self._previous_by = 0.0
        self._released = threading.Event()  # set once by close(): the folder is free for a successor
        self._left: LeftOver | None = None  # guarded by _cond: written by close(), for a successor
        # Batches of the writer taken over still in the spool, by id: their values not yet
        # reported, and where their receipts go (that writer's engine). Guarded by _cond.
        self._adopted: dict[int, _Adopted] = {}
        # The store side: segments, this run's appends not yet handed out, counts, drop policy.
        self._backlog = Backlog(
            self.path,
            max_bytes=max_bytes,
            segment_bytes=self.segment_bytes,
            sync=sync,
            cond=self._cond,
            acknowledge=self._acknowledge_origin,
            monotonic=monotonic,
        )
        # The forwarder: cursor, in-flight window, retry pause (its state is under _cond too).
        self._fw = Forwarder(
            self.name,
            writer,
            self._backlog,
            self._cond,
            max_in_flight_values=max_in_flight_values,
            idle_s=self.sync_interval_s,
            monotonic=monotonic,
        )
        self._backlog.fw = self._fw
        if writer.acknowledges:
            writer.attach(self._fw.on_receipt)
        writer.kept_by = str(self.path)  # what it gives up at close stays here: not "lost"

    # -- the DataWriter contract ---------------------------------------------------------------

    def attach(self, on_receipt: OnReceipt) -> None:
        super().attach(on_receipt)
        with self._cond:
            self._backlog.receipts_wanted = True

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

    def check_variables(self, variables: Sequence[VariableSpec]) -> list[str]:
        """The destination's own check: the spool takes whatever it takes."""
        return self.writer.check_variables(variables)

    def preflight(self) -> None:
        """The folder can be created and written and no other process holds it; then the
        destination's own preflight (its failure only logged, unless ``destination_preflight="fail"``)."""
        self._preflight(folder_free=True)

    def preflight_taking_over(self, previous: DataWriter) -> None:
        """``preflight`` for a writer about to take over from ``previous`` (a reload): when that
        is the spooled writer holding this very folder, the folder is not checked free (it is
        previous's until it closes; ``take_over`` waits for that), the rest is."""
        self._preflight(folder_free=not self._same_folder(previous))

    def _same_folder(self, other: DataWriter) -> bool:
        return isinstance(other, SpooledWriter) and other.path.resolve() == self.path.resolve()

    def _preflight(self, *, folder_free: bool) -> None:
        probe = self.path / f".preflight-{os.getpid()}"
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            try:
                probe.write_bytes(b"ok")
            finally:
                probe.unlink(missing_ok=True)  # never left behind, even when the write failed
        except OSError as exc:
            if exc.errno not in DISK_FULL:
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
        if folder_free and self._backlog.store is None and self.path.is_dir():
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

    def take_over(self, previous: DataWriter) -> None:
        """A reload replaced ``previous`` (the running writer of this name) with this one. The
        writer behind the spool takes over from previous's (a CSV file continued). When
        ``previous`` is the spooled writer of this very folder, this one opens the folder only
        once previous has closed (its queued batches spooled, its lock released), waiting at
        its first batch up to previous's ``close_timeout_s`` plus ``TAKE_OVER_GRACE_S``; then
        it sends what previous left in the spool, its receipts going to previous's batches (so
        each value is counted once, by previous's engine), and skips what previous had
        settled. Called on the caller's thread before this writer gets a batch."""
        if previous is self:
            return
        self.writer.take_over(previous.writer if isinstance(previous, SpooledWriter) else previous)
        if isinstance(previous, SpooledWriter) and self._same_folder(previous):
            self._previous = previous
            self._previous_by = self._monotonic() + previous.close_timeout_s + self.TAKE_OVER_GRACE_S

    def write(self, values: Sequence[CollectedVariable]) -> None:
        # For callers that hand per-value objects: group them into batches of one instant.
        for batch in self._batches_of(values):
            self.write_batch(batch)

    def write_batch(self, batch: ValueBatch) -> None:
        """Append ``batch`` to the spool (with ``sync="always"``: on disk) and return."""
        if not len(batch):
            return
        left = self._await_previous()
        receipts: list[Receipt] = []
        with self._cond:
            if self._closed:
                raise RuntimeError(f"spooled writer {self.name} is closed; it takes no more values")
            backlog = self._backlog
            try:
                if backlog.open_locked():
                    if left is not None:
                        receipts += self._adopt_locked(left)
                    self._previous = None
                    self._start_threads()
            except PreflightError:
                raise
            except OSError as exc:
                # The folder cannot be opened now (a full disk, an I/O error): this batch cannot
                # be kept, counted as such; the next batch tries again. Collection goes on.
                backlog.counters["write_errors"] += 1
                self._errors.error(("open", exc.errno), "spool %s: cannot open: %s", self.path, exc)
                backlog.drop_batch_locked(batch, f"spool folder cannot be opened: {exc}", receipts)
            else:
                backlog.append_locked(batch, receipts)
                self._fw.wake_locked()
        backlog.send_receipts(receipts)

    def flush(self) -> None:
        """Make every appended batch durable in the spool (fsync); delivery goes on in the background."""
        with self._cond:
            store = self._backlog.store
            if store is None:
                return
            fd = dup_fd(store)
            store.dirty = False
            self._backlog.unsynced_since, self._backlog.unsynced_values = None, 0
        if fd is not None:
            try:
                os.fdatasync(fd)
            finally:
                os.close(fd)

    def close(self) -> None:
        """Let the forwarder drain the backlog for up to ``close_timeout_s``, stop it, close the inner
        writer, and keep on disk whatever it did not acknowledge, for the next run."""
        try:
            self._close()
        finally:
            self._released.set()  # the folder is free (or never was taken): a successor opens it

    def _close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            deadline = self._monotonic() + self.close_timeout_s
            if self._backlog.store is not None:
                self._fw.retry_at = 0.0
                self._fw.wake_locked()
                while self._backlog.values and (left := deadline - self._monotonic()) > 0:
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
            backlog = self._backlog
            store = backlog.store
            if store is None:
                return
            # Batches whose segment was dropped while the writer had them, and that the writer
            # did not settle: no copy is left for the next run, so they are lost, and counted.
            lost = self._fw.drop_orphans_locked("its segment was dropped, and the writer closed without it")
            orphans_lost = backlog.orphans_lost
            left = backlog.values
            position = backlog.position_locked()
        backlog.send_receipts(lost)
        if orphans_lost:
            logger.warning(
                "%s: %d values whose segment the disk limit dropped while the writer had them were "
                "not stored by it; counted dropped",
                self.name,
                orphans_lost,
            )
        backlog.save_position(store, position)
        with self._cond:
            backlog.delete_acknowledged_locked(store)
            store.close()
            backlog.close_reader()
            # For a writer taking over the folder (a reload): where this one stopped. (Kept only
            # if something is left: a successor finding none sends what the folder holds.)
            self._left = self._leave_locked()
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
            backlog = self._backlog
            for key, value in backlog.counters.items():
                out[f"spool_{key}"] = value
            out["spool_write_errors"] += self._fw.write_errors
            out["spool_thread_errors"] = self._fw.loop_errors + self._maintenance_errors
            store = backlog.store
            out["spool_bytes"] = store.bytes if store is not None else 0
            out["spool_segments"] = len(store.segments) if store is not None else 0
            out["spool_records"] = backlog.records
            out["spool_values"] = backlog.values
            out["spool_in_flight"] = self._fw.in_flight
            out["spool_unsynced_values"] = backlog.unsynced_values
            since = backlog.unsynced_since
            out["spool_unsynced_age_s"] = self._monotonic() - since if since is not None else 0.0
            oldest = backlog.oldest_t_ms_locked()
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

    # -- a reload's take-over ---------------------------------------------------------------------

    def _await_previous(self) -> LeftOver | None:
        """On the engine's writer thread, no lock held: until the writer taken over has closed
        (bounded by ``_previous_by``), then what it left in the folder. None when there is no
        take-over (or it is done)."""
        previous = self._previous
        if previous is None:
            return None
        if not previous._released.wait(max(0.0, self._previous_by - self._monotonic())):
            # Its close is stuck (an inner writer hanging in close): the batch tries the folder,
            # which says it is in use, counted failed; each later batch tries again, unwaited.
            self._errors.error(
                ("take-over",),
                "%s: the writer it replaces has not closed the spool %s in time; its batches are "
                "refused until it has",
                self.name,
                self.path,
            )
            return None
        with previous._cond:
            left, previous._left = previous._left, None
        return left

    def _adopt_locked(self, left: LeftOver) -> list[Receipt]:
        """Under the lock, the folder just opened: previous's appends are this spool's to send,
        their receipts to previous's batches; the receipts owed for those the folder lost."""
        receipts = []
        for batch, n in self._backlog.adopt_locked(left):
            receipts.append(Receipt(batch, 0, 0, n, "spool: no longer in the folder at the take-over"))
        for _, _, _, batch, n in left.records:
            self._adopted[id(batch)] = _Adopted(batch, n, left.targets[id(batch)])
        if left.records:
            logger.info(
                "%s: takes over %d values in %d batches the writer it replaces left in the spool %s",
                self.name,
                sum(r[4] for r in left.records),
                len(left.records),
                self.path,
            )
        return receipts

    def _leave_locked(self) -> LeftOver:
        """Under the lock, at the end of close: what a writer taking over the folder gets (see
        ``Backlog.left_over_locked``), each batch with where its receipts go: this writer's
        engine, or, for one this writer had itself taken over, the engine it answers to."""
        left = self._backlog.left_over_locked()
        records = []
        for seq, start, end, batch, unheard in left.records:
            n = unheard
            adopted = self._adopted.get(id(batch))
            if adopted is not None and adopted.batch is batch:
                n = min(n, adopted.left)
                left.targets[id(batch)] = adopted.acknowledge
            else:
                left.targets[id(batch)] = self.acknowledge
            if n > 0:
                records.append((seq, start, end, batch, n))
        left.records = records
        return left

    def _acknowledge_origin(
        self, batch: ValueBatch, written: int, failed: int, dropped: int, error: str | None
    ) -> None:
        """Every receipt of the spool: to this writer's engine, or, for a batch of a writer taken
        over, to that one's (clamped to what it has not heard of, so nothing counts twice)."""
        with self._cond:
            adopted = self._adopted.get(id(batch))
            if adopted is not None and adopted.batch is batch:
                counts = []
                for n in (written, failed, dropped):
                    take = min(max(n, 0), adopted.left)
                    adopted.left -= take
                    counts.append(take)
                if adopted.left <= 0:
                    del self._adopted[id(batch)]
            else:
                adopted = None
        if adopted is None:
            self.acknowledge(batch, written, failed, dropped, error)
        elif any(counts):
            adopted.acknowledge(batch, counts[0], counts[1], counts[2], error)

    # -- appending -------------------------------------------------------------------------------

    def _start_threads(self) -> None:
        """Under the lock, once the folder is open: the forwarder's thread and maintenance's."""
        self._threads.append(self._fw.start(f"flowcollect-spool-sender-{self.name}"))
        thread = threading.Thread(
            target=self._run_maintenance, name=f"flowcollect-spool-sync-{self.name}", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    # -- the maintenance thread ------------------------------------------------------------------

    def _run_maintenance(self) -> None:
        """The maintenance thread: group commit (``sync="batch"``), the send position, deleting
        what was acknowledged. A round that raises is logged and counted; the next one comes."""
        store = self._backlog.store
        if store is None:
            return
        saved: list[tuple[int, int] | None] = [None]
        # Its own event, not the condition every append notifies: it wakes once an interval.
        while not self._stopped.wait(self.sync_interval_s):
            try:
                self._backlog.maintain(store, saved)
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

    # -- receipts and helpers --------------------------------------------------------------------

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


class _Adopted:
    """A batch of a writer taken over, still in the spool: its values not yet reported
    (``left``), and where its receipts go (``acknowledge``: that writer's engine)."""

    __slots__ = ("acknowledge", "batch", "left")

    def __init__(self, batch: ValueBatch, left: int, acknowledge: Acknowledge) -> None:
        self.batch = batch
        self.left = left
        self.acknowledge = acknowledge


def _batch_at(
    key: tuple[Any, ...], specs: list[VariableSpec], values: list[Any], errors: list[str | None]
) -> ValueBatch:
    context_id, reader, when = key
    us = (when - _EPOCH) // timedelta(microseconds=1)
    t_ms, rest = divmod(us, 1000)
    source_ns = [us * 1000] * len(values) if rest else None
    return ValueBatch(t_ms, specs, values, errors, source_ns=source_ns, context_id=context_id, reader=reader)


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
