"""The store side of a spool: what is spooled and not yet settled, and where it is.

``Backlog`` owns the open ``Store`` (the segment files), this run's appends not yet handed out
(``origins``, and ``memory`` when nobody wants receipts), the backlog's counts, the drop policy
and the spool's counters. It is the ``Source`` its ``Forwarder`` takes records from, and it
settles what the forwarder reports. ``SpooledWriter`` is the ``DataWriter`` in front of both.

Every mutable field is guarded by ``cond``, the spool's one lock (``SpooledWriter._cond``), which
the forwarder shares: a drop moves the forwarder's cursor and orphans its in-flight records in
one step with the segment list. Methods named ``*_locked`` are called with it held; ``load``,
``maintain``, ``save_position`` and ``send_receipts`` take it themselves or need none. The
exception is ``_reader``, used by the forwarder's thread only (and by ``close`` once that thread
has stopped).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from flowcollect._logs import RateLimitedLog
from flowcollect.errors import PreflightError
from flowcollect.values import Receipt, ValueBatch
from flowcollect.writers.spool import _records as rec
from flowcollect.writers.spool._forward import Handout, Sent
from flowcollect.writers.spool._store import (
    DiskFullError,
    OpenReport,
    Segment,
    SegmentReader,
    SpoolInUseError,
    Store,
    iter_records,
)

if TYPE_CHECKING:
    from pathlib import Path

    from flowcollect.writers.spool._forward import Forwarder

__all__ = ["MEMORY_VALUES", "Backlog", "LeftOver", "dup_fd"]

logger = logging.getLogger("flowcollect.writers.spool")

MEMORY_VALUES = 200_000
"""Recent batches kept in memory as well, so a forwarder that keeps up never reads the disk.
Beyond this the backlog lives on disk only: memory stays flat however long the outage."""
_EPISODE_END = 0.5
# A drop episode ends when the spool is back under this share of max_bytes: dropping one
# segment (at most a quarter) during a long outage does not end it, draining the backlog does.

Acknowledge = Callable[[ValueBatch, int, int, int, "str | None"], None]


class LeftOver:
    """What a closed spool leaves to the writer taking over its folder (``left_over_locked``):
    ``records``, (seq, start, end, batch, values not yet reported) of each append not settled,
    in folder order; ``settled``, (seq, start) -> (end, values) of each record after the send
    position that was settled already."""

    __slots__ = ("records", "settled", "targets")

    def __init__(
        self,
        records: list[tuple[int, int, int, ValueBatch, int]],
        settled: dict[tuple[int, int], tuple[int, int]],
    ) -> None:
        self.records = records
        self.settled = settled
        self.targets: dict[int, Acknowledge] = {}  # id(batch) -> where its receipts go


class _Pending:
    """An append not yet handed out: where its record is, and the engine's batch.

    ``held``: the batch still has its columns, so it is handed from memory; otherwise they were
    released (beyond ``MEMORY_VALUES``) and the batch object is kept only for its receipt,
    while the values are read back from the record on disk.
    """

    __slots__ = ("batch", "end", "held", "seq", "start")

    def __init__(self, seq: int, start: int, end: int, batch: ValueBatch, held: bool = True) -> None:
        self.seq = seq
        self.start = start
        self.end = end
        self.batch = batch
        self.held = held


class Backlog:
    """The spool's store side (see the module's docstring)."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int,
        segment_bytes: int,
        sync: str,
        cond: threading.Condition,
        acknowledge: Acknowledge,
        monotonic: Callable[[], float],
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.sync = sync
        self._cond = cond
        self._acknowledge = acknowledge
        self._monotonic = monotonic
        self._errors = RateLimitedLog(logger, clock=monotonic)
        self.fw: Forwarder | None = None  # set once, before the folder is opened
        # All guarded by _cond:
        self.store: Store | None = None  # None until the first batch opens the folder
        self.by_seq: dict[int, Segment] = {}  # the store's segments by number
        self._memory: deque[_Pending] = deque()  # no receipts wanted: recent appends, to hand from memory
        self._memory_values = 0
        # With someone attached for receipts (the engine): this run's batches not yet handed out,
        # by record. A receipt must carry the very batch the engine gave (it matches them by
        # identity), so each is kept until handed out. The engine gives an acknowledging writer
        # its own batch object, so beyond MEMORY_VALUES (``_held``) the spool releases its
        # columns once appended: the object stays for the receipt, the values are read back
        # from disk, and memory stays flat however long the outage.
        self._origins: dict[tuple[int, int], _Pending] = {}
        self._held = 0  # values of _origins still holding their columns
        # Records after the send position that the writer this one took over from (a reload,
        # ``SpooledWriter.take_over``) had already settled: (seq, start) -> (end, values). The
        # cursor steps over them instead of sending them again (no value doubled).
        self._settled: dict[tuple[int, int], tuple[int, int]] = {}
        self.receipts_wanted = False  # set by SpooledWriter.attach, before the first batch
        # Values (and batch records) appended or left by an earlier run and not yet settled by
        # the writer, dropped by the policy or lost to corruption: in flight ones included.
        self.values = 0
        self.records = 0
        self._episode_dropped: int | None = None  # values dropped in the current drop episode
        self._episode_limit = max_bytes
        # Appends not yet known to be on disk (fsync): what a power cut could take now.
        self.unsynced_since: float | None = None
        self.unsynced_values = 0
        self.orphans_lost = 0  # values of dropped segments that the writer did not store
        self.counters: dict[str, int] = dict.fromkeys(
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
        self._reader = SegmentReader()  # the forwarder's thread's

    def open_locked(self) -> bool:
        """Open the folder if it is not open yet; True when this call opened it."""
        if self.store is not None:
            return False
        if self.fw is None:
            raise RuntimeError("the backlog has no forwarder")
        store = Store(self.path, self.segment_bytes, self.sync)
        try:
            report = store.open()
        except SpoolInUseError as exc:
            raise PreflightError(str(exc.strerror)) from exc
        self.store = store
        self.by_seq = {s.seq: s for s in store.segments}
        self.fw.cursor = store.position
        self.values = report.replay_values
        self.records = report.replay_records
        self._report_open(report)
        return True

    @property
    def _fw(self) -> Forwarder:
        fw = self.fw
        if fw is None:
            raise RuntimeError("the backlog has no forwarder")
        return fw

    def _report_open(self, report: OpenReport) -> None:
        self.counters["torn"] += report.torn
        self.counters["corrupt"] += report.corrupt
        self.counters["corrupt_values"] += report.corrupt_values
        if report.position_reset:
            logger.warning("spool %s: %s", self.path, report.position_reset)
        if report.replay_values:
            logger.info(
                "spool %s: %d values in %d batches left by an earlier run are sent first",
                self.path,
                report.replay_values,
                report.replay_records,
            )

    def append_locked(self, batch: ValueBatch, receipts: list[Receipt]) -> None:
        """Append ``batch`` to the open folder, dropping the oldest segments as the disk limit
        says; the receipts owed for what was dropped (or for the batch, if it cannot be kept)."""
        store = self.store
        if store is None:
            raise RuntimeError("the spool folder is not open")
        n = len(batch)
        for _ in range(len(store.segments) + 3):
            try:
                segment, start, end = store.append(batch)
                break
            except DiskFullError as exc:
                self.counters["disk_full"] += 1
                # The disk's room is the limit of this episode, not max_bytes.
                self._episode_limit = min(self._episode_limit, store.bytes)
                if not self._drop_oldest_locked(store, f"disk full ({exc.strerror})", receipts):
                    self.drop_batch_locked(
                        batch, f"disk full ({exc.strerror}) and nothing left to drop", receipts
                    )
                    return
            except OSError as exc:
                # Any other I/O error: the batch cannot be kept; collection goes on.
                self.counters["write_errors"] += 1
                self._errors.error(("append", exc.errno), "spool %s: cannot append: %s", self.path, exc)
                self.drop_batch_locked(batch, f"spool append failed: {exc}", receipts)
                return
        else:
            self.drop_batch_locked(batch, "disk full: no room after dropping every segment", receipts)
            return
        self.by_seq[segment.seq] = segment
        self.counters["appended_values"] += n
        self.counters["appended_records"] += 1
        self.values += n
        self.records += 1
        if self.sync != "always":
            if self.unsynced_since is None:
                self.unsynced_since = self._monotonic()
            self.unsynced_values += n
        self._keep_locked(segment, start, end, batch)
        while store.bytes > self.max_bytes and len(store.segments) > 1:
            if not self._drop_oldest_locked(store, f"max_bytes={self.max_bytes} reached", receipts):
                break
        if self._episode_dropped is not None and store.bytes < self._episode_limit * _EPISODE_END:
            logger.warning(
                "spool %s: back under its limit; %d values were dropped in that episode (%d in all)",
                self.path,
                self._episode_dropped,
                self.counters["dropped_by_policy"],
            )
            self._episode_dropped = None
            self._episode_limit = self.max_bytes

    def _keep_locked(self, segment: Segment, start: int, end: int, batch: ValueBatch) -> None:
        """Keep an appended batch in memory: for its receipt, and its values while within
        ``MEMORY_VALUES``, so a forwarder that keeps up never reads the disk."""
        n = len(batch)
        if self.receipts_wanted:
            held = self._held + n <= MEMORY_VALUES
            if held:
                self._held += n
            else:
                batch.release()  # on disk now; the object (ours: see DataWriter) stays for its receipt
            self._origins[(segment.seq, start)] = _Pending(segment.seq, start, end, batch, held)
        elif self._memory_values + n <= MEMORY_VALUES:
            self._memory.append(_Pending(segment.seq, start, end, batch))
            self._memory_values += n

    def drop_batch_locked(self, batch: ValueBatch, reason: str, receipts: list[Receipt]) -> None:
        """A batch that could not be appended at all: dropped before it was ever spooled."""
        self.counters["not_spooled"] += len(batch)
        self._count_drop(len(batch), reason, counter=None)
        receipts.append(Receipt(batch, 0, 0, len(batch), reason))

    def _count_drop(self, n: int, reason: str, counter: str | None = "dropped_by_policy") -> None:
        if counter is not None:
            self.counters[counter] += n
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
        self.by_seq.pop(segment.seq, None)
        self.counters["dropped_segments"] += 1
        self.values -= dropped
        self.records -= records
        self._count_drop(dropped, reason)
        self._fw.wake_locked()
        return True

    # -- sending ---------------------------------------------------------------------------------

    def _next(self, store: Store) -> tuple[Segment, int, _Pending | None] | None:
        """The next record to hand out: (segment, offset, the in-memory batch if any), or None."""
        while True:
            seq, offset = self._fw.cursor
            segment = self.by_seq.get(seq)
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
            done = self._settled.pop((seq, offset), None)
            if done is not None:  # settled by the writer taken over: not sent twice
                end, n = done
                self._fw.cursor = (seq, end)
                self.values -= n
                self.records -= 1
                segment.records -= 1
                segment.values -= n
                continue
            # Left in place: taken_locked takes it when handed, so a drop in between still finds it.
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
            if self._fw.cursor != (segment.seq, offset) or segment.seq not in self.by_seq:
                return None  # dropped meanwhile
            if batch is None:
                self._fw.cursor = (segment.seq, record.end)
                return None
        return record.end, batch

    # -- the forwarder's source (forward.Source) -------------------------------------------------

    def load(self, item: Handout) -> Handout | None:
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
        store = self.store
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

    def returned_locked(self, entry: Sent) -> None:
        if entry.origin is not None and self.receipts_wanted:
            # Handed again from memory if it still has its columns (within the in-flight window,
            # so not counted against MEMORY_VALUES), else from disk.
            self._origins[(entry.seq, entry.start)] = _Pending(
                entry.seq, entry.start, entry.end, entry.origin, held=entry.held
            )
            if entry.held:
                self._held += entry.n

    def settled_locked(
        self, entry: Sent, written: int, failed: int, dropped: int, error: str | None, done: bool
    ) -> Receipt | None:
        self.counters["written"] += written
        self.counters["failed"] += failed
        self.counters["dropped_by_writer"] += dropped
        forward = None
        if entry.origin is None:
            self.counters["replayed_values"] += written + failed + dropped
        elif written or failed or dropped:
            forward = Receipt(entry.origin, written, failed, dropped, error)
        if done and not entry.keep:
            self.values -= entry.n
            self.records -= 1
            segment = self.by_seq.get(entry.seq)
            if segment is not None and not entry.orphan:
                segment.records -= 1
                segment.values -= entry.n
        return forward

    def orphan_lost_locked(self, entry: Sent, why: str) -> Receipt | None:
        """An orphan (its segment dropped while the writer had it) the writer did not store: its
        unsettled values are lost, counted once here as dropped by the policy."""
        lost = entry.n - entry.settled
        entry.settled = entry.n
        self.values -= lost
        self.records -= 1
        self.counters["dropped_by_policy"] += lost
        self.orphans_lost += lost
        if entry.origin is None or not lost:
            return None
        return Receipt(entry.origin, 0, 0, lost, f"spool: {why}")

    def _pop_origin(self, key: tuple[int, int]) -> _Pending | None:
        """Under the lock: the pending append of this run at ``key``, taken out of ``_origins``."""
        pending = self._origins.pop(key, None)
        if pending is not None and pending.held:
            self._held -= len(pending.batch)
        return pending

    def position_locked(self) -> tuple[int, int]:
        """The first record not acknowledged: where a restart resumes sending."""
        return self._fw.position_locked()

    def _unsent_in_locked(self, segment: Segment) -> tuple[int, int]:
        """Values and records of a segment not yet handed to the writer (by its counts)."""
        sent = [e for e in self._fw.sent if e.seq == segment.seq and e.settled < e.n and not e.orphan]
        return segment.values - sum(e.n for e in sent), segment.records - len(sent)

    def oldest_t_ms_locked(self) -> int | None:
        if self._fw.sent:
            return self._fw.sent[0].t_ms
        if not self.values:
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
        store = self.store
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
            if segment.seq not in self.by_seq:
                return
            for key in [k for k in self._origins if k[0] == segment.seq]:
                batch = self._origins[key].batch
                self._pop_origin(key)
                receipts.append(Receipt(batch, 0, 0, len(batch), "spool: segment unreadable"))
            self.counters["corrupt"] += 1
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
            self.counters["dropped_by_policy"] += lost
            self.values -= lost
            self.records -= records
            self._fw.orphan_locked(segment.seq)
            if segment is store.active:
                store.seal()
            store.segments.remove(segment)
            store.bytes -= segment.size
            del self.by_seq[segment.seq]
            later = [s.seq for s in store.segments if s.seq > segment.seq]
            self._fw.cursor = (later[0], len(rec.MAGIC)) if later else (segment.seq + 1, len(rec.MAGIC))
            self._reader.close()
        self.send_receipts(receipts)

    # -- a reload: one writer taking over the folder from another ------------------------------

    def left_over_locked(self) -> LeftOver:
        """Under the lock, once closed (the forwarder stopped): what a writer taking over this
        folder needs to go on where this one stopped. The appends of this run not yet settled,
        each with the values its batch's owner has not heard of (in flight ones as well: what
        the writer gave up while closing stays spooled), and the records after the send
        position that were settled already."""
        records = [(p.seq, p.start, p.end, p.batch, len(p.batch)) for p in self._origins.values()]
        settled = dict(self._settled)
        for entry in self._fw.sent:
            if entry.orphan:
                continue  # its segment is gone: counted lost at close
            if entry.settled >= entry.n and not entry.keep:
                settled[(entry.seq, entry.start)] = (entry.end, entry.n)
            elif entry.origin is not None:  # (a replay of an earlier run is sent again as one)
                left = entry.n - entry.written - entry.failed - entry.dropped
                if left > 0:
                    records.append((entry.seq, entry.start, entry.end, entry.origin, left))
        records.sort(key=lambda r: (r[0], r[1]))
        return LeftOver(records, settled)

    def adopt_locked(self, left: LeftOver) -> list[tuple[ValueBatch, int]]:
        """Under the lock, right after this backlog opened the folder ``left`` came from: its
        appends become this backlog's to send (read back from disk, their receipts to their
        own batches), its settled records are stepped over. Returns those appends no longer
        in the folder (a segment the open found damaged): lost, to be reported dropped."""
        lost: list[tuple[ValueBatch, int]] = []
        cursor = self._fw.cursor
        for seq, start, end, batch, n in left.records:
            if seq not in self.by_seq or (seq, start) < cursor:
                lost.append((batch, n))
            else:
                # Read back from disk: the object (the old engine's handle) stays for receipts.
                batch.release()
                self._origins[(seq, start)] = _Pending(seq, start, end, batch, held=False)
        self._settled.update({k: v for k, v in left.settled.items() if k >= cursor})
        return lost

    # -- durability and cleanup -------------------------------------------------------------------

    def maintain(self, store: Store, saved: list[tuple[int, int] | None]) -> None:
        with self._cond:
            fd = dup_fd(store) if self.sync == "batch" and store.dirty else None
            if fd is not None:
                store.dirty = False
                self.unsynced_since, self.unsynced_values = None, 0
            position = self.position_locked()
        try:
            if fd is not None:
                os.fdatasync(fd)
            if position != saved[0] and self.save_position(store, position):
                saved[0] = position
        except OSError as exc:
            self._errors.error(("sync", exc.errno), "spool %s: cannot sync: %s", self.path, exc)
        finally:
            if fd is not None:
                os.close(fd)
        with self._cond:
            self.delete_acknowledged_locked(store)

    def save_position(self, store: Store, position: tuple[int, int]) -> bool:
        try:
            store.save_position(position)
        except OSError as exc:
            # The old position stays: a restart replays a little more, which overwrites.
            self._errors.error(
                ("position", exc.errno), "spool %s: cannot save the send position: %s", self.path, exc
            )
            return False
        return True

    def delete_acknowledged_locked(self, store: Store) -> None:
        """Delete the segments wholly before the saved send position."""
        saved = store.position[0]
        for segment in list(store.segments):
            if segment.seq < saved and segment is not store.active:
                store.delete(segment)
                self.by_seq.pop(segment.seq, None)

    # -- receipts ---------------------------------------------------------------------------------

    def taken_locked(self, item: Handout) -> None:
        self._pop_origin((item.seq, item.start))

    def next_locked(self) -> Handout | None:
        store = self.store
        found = self._next(store) if store is not None else None
        if found is None:
            return None
        segment, offset, pending = found
        return Handout(segment.seq, offset, pending=(segment, pending))

    def send_receipts(self, receipts: list[Receipt]) -> None:
        for receipt in receipts:
            self._acknowledge(receipt.batch, receipt.written, receipt.failed, receipt.dropped, receipt.error)

    def close_reader(self) -> None:
        self._reader.close()


def dup_fd(store: Store) -> int | None:
    fd = store._fd
    return os.dup(fd) if fd is not None else None
