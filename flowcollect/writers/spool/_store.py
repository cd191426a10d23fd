"""The spool's folder: segment files, their recovery at open, the send position, the disk limit.

Not thread-safe by itself: the spool's ``Backlog`` calls it under the spool's lock, except
``SegmentReader``, which reads on the forwarder's thread from its own file descriptors (a segment
unlinked meanwhile stays readable through them, so a drop never pulls a file from under a read),
and a segment's ``tables`` (with ``load_tables``), which the forwarder's thread fills as it reads
another run's segment: appends write only their own segments' tables, under the lock, and the
forwarder only adds missing ids (``setdefault``), so neither overwrites the other's.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from flowcollect.values import ValueBatch, VariableSpec
from flowcollect.writers.spool import _records as rec

logger = logging.getLogger("flowcollect.writers.spool")

SEGMENT_SUFFIX = ".seg"
CORRUPT_SUFFIX = ".corrupt"
POSITION = "position"
LOCK = "lock"
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_READ_CHUNK = 1 << 20


class SpoolInUseError(OSError):
    """Another process (or writer) holds the spool folder."""


class DiskFullError(OSError):
    """An append found no room on the disk (ENOSPC, EDQUOT, or a file size limit)."""


@dataclass(eq=False)
class Segment:
    seq: int
    path: Path
    size: int
    """Bytes of whole, valid records (plus the magic): where the next append or read ends."""
    own: bool
    """Appended by this process (its batches are the engine's, owed a receipt)."""
    records: int = 0
    """Batch records from the send position on (all of them, for later segments)."""
    values: int = 0
    tables: dict[int, Sequence[VariableSpec]] = field(default_factory=dict)
    start: int = len(rec.MAGIC)
    """Where sending resumes in this segment when it was opened (the saved position's offset)."""
    tables_complete: bool = False
    """Every variable table of the segment is in ``tables`` (own segments: always)."""
    # Own segments: which table each ``variables`` sequence got, by identity and by its specs' ids.
    by_object: dict[int, tuple[Sequence[VariableSpec], int]] = field(default_factory=dict)
    by_ids: dict[tuple[int, ...], int] = field(default_factory=dict)


@dataclass
class OpenReport:
    """What opening the folder found, for the writer's counters and log."""

    torn: int = 0
    torn_bytes: int = 0
    corrupt: int = 0
    corrupt_bytes: int = 0
    corrupt_values: int = 0
    """Values in records after the send position that damage made unreadable."""
    replay_values: int = 0
    replay_records: int = 0
    position_reset: str | None = None


def segment_name(seq: int) -> str:
    return f"{seq:012d}{SEGMENT_SUFFIX}"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so a crash leaves the old or the new file, never a mix."""
    temp = path.with_name(path.name + ".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        # A full disk (or any failure) leaves no half-written temporary file behind.
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


@dataclass
class _Scan:
    size: int  # end of the last good record: where the good data ends
    problem: str | None = None  # None, "torn" (only a tail cut short) or "corrupt" (damage inside)
    detail: str = ""
    file_size: int = 0
    gaps: list[tuple[int, int]] = field(default_factory=list)
    """Damaged spans ``[start, end)`` with readable records after each."""


def _resync(data: bytes, start: int) -> int | None:
    """The offset of the first whole, valid record at or after ``start``, or None.

    A damaged header (a length field overwritten, say) hides where the next record begins, so
    every offset is a candidate; ``bytes.find`` jumps to the next byte that could be a record's
    kind (a zero-filled tail costs next to nothing), and the length is checked before the
    checksum, so few candidates cost more than a comparison.
    """
    view = memoryview(data)
    end = len(data)
    kind_at = 8  # the kind byte follows the length and the checksum
    offset = start
    while offset <= end - rec.HEADER_SIZE:
        hits = [i for i in (data.find(bytes([k]), offset + kind_at) for k in _KINDS) if i >= 0]
        if not hits:
            return None
        offset = min(hits) - kind_at
        if offset > end - rec.HEADER_SIZE:
            return None
        length = int.from_bytes(view[offset : offset + 4], "little")
        if offset + rec.HEADER_SIZE + length <= end:
            try:
                rec.parse(view, offset)
            except rec.RecordError:
                pass
            else:
                return offset
        offset += 1
    return None


_KINDS = (rec.KIND_SPECS, rec.KIND_BATCH)


def _scan(data: bytes) -> _Scan:
    """Walk a segment's records. A bad record with a readable record somewhere after it is
    damage (a gap, and the walk goes on after it); one with nothing readable after it is a tail
    that a crash cut short (torn: short, or zero-filled after a power cut)."""
    if data[: len(rec.MAGIC)] != rec.MAGIC:
        if len(data) < len(rec.MAGIC) and rec.MAGIC.startswith(data):
            return _Scan(0, "torn", "incomplete file header", len(data))
        return _Scan(0, "corrupt", "not a spool segment (bad magic)", len(data))
    offset = len(rec.MAGIC)
    view = memoryview(data)
    gaps: list[tuple[int, int]] = []
    detail = ""
    while offset < len(data):
        try:
            record = rec.parse(view, offset)
        except rec.RecordError as exc:
            resume = _resync(data, offset + 1)
            if resume is None:
                if gaps:  # damage earlier, and a torn tail too
                    return _Scan(offset, "corrupt", detail, len(data), gaps)
                return _Scan(offset, "torn", str(exc), len(data))
            detail = detail or f"{exc} at byte {offset}"
            gaps.append((offset, resume))
            offset = resume
            continue
        offset = record.end
    return _Scan(offset, "corrupt" if gaps else None, detail, len(data), gaps)


def _lost_in(view: memoryview, gap: tuple[int, int]) -> int:
    """Values of the batch record a gap begins with, from its header if that still reads as
    one (a damaged length or payload leaves it whole); 0 when it does not."""
    start = gap[0]
    if start + rec.HEADER_SIZE > len(view):
        return 0
    _length, _crc, kind, values, _t_ms = rec.HEADER.unpack_from(view, start)
    return values if kind == rec.KIND_BATCH and 0 < values <= 1 << 24 else 0


def _table_of(record: rec.Record) -> int | None:
    """The variable table a batch record refers to (its payload's first field)."""
    try:
        row = rec.loads(record.payload)
        return int(row[0])
    except (rec.RecordError, TypeError, ValueError, IndexError):
        return None


def iter_records(data: bytes | memoryview, start: int, end: int) -> Iterator[rec.Record]:
    offset = start
    view = memoryview(data)
    while offset < end:
        record = rec.parse(view[:end], offset)
        yield record
        offset = record.end


class Store:
    """The folder's segments, oldest first, and the append file."""

    def __init__(self, path: Path, segment_bytes: int, sync: str) -> None:
        self.path = path
        self.segment_bytes = segment_bytes
        self.sync = sync
        self.segments: list[Segment] = []
        self._fd: int | None = None  # the active (last, own) segment, open for appending
        self._lock_fd: int | None = None
        self.dirty = False  # appended since the last fsync
        self.bytes = 0
        self.position: tuple[int, int] = (0, len(rec.MAGIC))
        self._encoder = rec.Encoder()
        self._as_text: set[str] = set()  # value types already reported as stored as text

    # -- opening ---------------------------------------------------------------------------------

    def open(self) -> OpenReport:
        """Take the folder, check and repair every segment, and count the backlog from the saved
        send position on: one read of each segment. An open that fails releases the folder."""
        self.path.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        try:
            return self._open()
        except BaseException:
            self.segments = []
            self.close()
            raise

    def _open(self) -> OpenReport:
        report = OpenReport()
        found = self._segment_files()
        for p in self.path.glob(f"*{SEGMENT_SUFFIX}.tmp"):
            with contextlib.suppress(OSError):
                p.unlink()
        seq, offset = self._read_position(report)
        if found and found[0][0] < seq:
            # Segments below the position should have been deleted when it was saved. Either a
            # crash came in between, or the position file is damaged: it is not trusted with
            # the backlog, nothing is deleted for it, and everything is sent again (replays of
            # what was acknowledged are harmless: the destination overwrites a point).
            older = sum(1 for s, _ in found if s < seq)
            held = (
                "which the folder holds" if seq in {s for s, _ in found} else "which the folder does not hold"
            )
            report.position_reset = (
                f"the position file names segment {seq} ({held}) but {older} older segments are "
                f"still there; keeping them all and sending from {segment_name(found[0][0])} on"
            )
            seq, offset = found[0][0], len(rec.MAGIC)
        kept = found
        if kept and kept[0][0] != seq:
            seq, offset = kept[0][0], len(rec.MAGIC)  # the saved segment is gone: from the next one
        for s, p in kept:
            segment = self._recover(s, p, offset if s == seq else len(rec.MAGIC), report)
            if segment is not None:
                self.segments.append(segment)
                report.replay_values += segment.values
                report.replay_records += segment.records
        self.bytes = sum(s.size for s in self.segments)
        self.position = (seq, offset)
        if self.segments and self.segments[0].seq == seq:
            self.position = (seq, self.segments[0].start)
        return report

    def _segment_files(self) -> list[tuple[int, Path]]:
        """The segment files, by number; entries that are not regular files are left alone."""
        found = []
        for p in self.path.iterdir():
            if not (p.name.endswith(SEGMENT_SUFFIX) and p.name[: -len(SEGMENT_SUFFIX)].isdigit()):
                continue
            try:
                regular = stat.S_ISREG(p.stat().st_mode)
            except OSError:
                regular = False  # a dangling link
            if not regular:
                # A folder, a FIFO, a socket: not the spool's; reading it would fail or block.
                logger.warning(
                    "spool %s: %s is not a regular file; left alone and not sent", self.path, p.name
                )
                continue
            found.append((int(p.name[: -len(SEGMENT_SUFFIX)]), p))
        return sorted(found)

    def _take_lock(self) -> None:
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolInUseError(
                errno.EBUSY, f"spool folder {self.path} is in use by another writer or process"
            ) from None
        self._lock_fd = fd

    def _read_position(self, report: OpenReport) -> tuple[int, int]:
        try:
            raw = json.loads((self.path / POSITION).read_text(encoding="utf-8"))
            seq, offset = int(raw["segment"]), int(raw["offset"])
        except FileNotFoundError:
            return (0, len(rec.MAGIC))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            report.position_reset = f"unreadable position file ({exc}); replaying every segment"
            return (0, len(rec.MAGIC))
        return (seq, offset)

    def _recover(self, seq: int, p: Path, start: int, report: OpenReport) -> Segment | None:
        """Check a segment, cut a torn tail, repair a damaged one (a copy as found is moved aside
        as ``.corrupt``; every readable record, before the damage and after it, is kept), and
        count its batches from ``start`` (the send position, in its segment) on."""
        data = p.read_bytes()
        scan = _scan(data)
        if scan.problem == "torn":
            report.torn += 1
            report.torn_bytes += scan.file_size - scan.size
            logger.warning(
                "spool %s: segment %s ends in a torn record at byte %d (%s): dropped its last %d bytes",
                self.path,
                p.name,
                scan.size,
                scan.detail,
                scan.file_size - scan.size,
            )
            if scan.size < len(rec.MAGIC):
                p.unlink()
                return None
            os.truncate(p, scan.size)
            data = data[: scan.size]
        elif scan.problem == "corrupt":
            repaired = self._repair(p, data, scan, start, report)
            if repaired is None:
                return None
            data, start = repaired
        if start > len(data):
            report.position_reset = (
                f"position {start} is past the end of segment {p.name} ({len(data)} bytes); "
                "replaying that segment from its start"
            )
            start = len(rec.MAGIC)
        segment = Segment(seq, p, len(data), own=False)
        offsets = set()
        for record in iter_records(data, len(rec.MAGIC), len(data)):
            offsets.add(record.offset)
            if record.offset >= start and record.kind == rec.KIND_BATCH:
                segment.records += 1
                segment.values += record.values
        if start != len(data) and start not in offsets:
            report.position_reset = (
                f"position {start} of segment {p.name} is not a record; replaying that segment from its start"
            )
            start = len(rec.MAGIC)
            segment.records = segment.values = 0
            for record in iter_records(data, len(rec.MAGIC), len(data)):
                if record.kind == rec.KIND_BATCH:
                    segment.records += 1
                    segment.values += record.values
        segment.start = start
        return segment

    def _cut(self, p: Path, at: int) -> None:
        """A damaged segment with no room for its repaired copy: what follows the damage is
        counted lost, so it must go (cutting a file needs no room); else an open with room would
        repair it back and send values already counted lost. Should the cut fail, the next open
        counts them again, and says so."""
        if at < len(rec.MAGIC):
            return
        try:
            os.truncate(p, at)
        except OSError as exc:
            logger.error("spool %s: cannot cut %s at byte %d: %s", self.path, p.name, at, exc)

    def _repair(
        self, p: Path, data: bytes, scan: _Scan, start: int, report: OpenReport
    ) -> tuple[bytes, int] | None:
        """A damaged segment: its readable records in a new file (the original moved aside as
        ``.corrupt``), the values lost from ``start`` on counted; (new data, ``start`` in it)."""
        report.corrupt += 1
        view = memoryview(data)
        aside = p.with_name(p.name + CORRUPT_SUFFIX)
        # The spans between the gaps hold whole records.
        spans = []
        at = len(rec.MAGIC)
        for gap in scan.gaps:
            spans.append((at, gap[0]))
            at = gap[1]
        if scan.size >= len(rec.MAGIC):
            spans.append((at, scan.size))
        lost = sum(_lost_in(view, gap) for gap in scan.gaps if gap[0] >= start)
        kept = [rec.MAGIC]
        size = len(rec.MAGIC)
        new_start: int | None = None
        tables: set[int] = set()
        for lo, hi in spans:
            for record in iter_records(view, lo, hi):
                if new_start is None and record.offset >= start:
                    new_start = size
                if record.kind == rec.KIND_SPECS:
                    tables.add(rec.decode_specs(record.payload)[0])
                elif _table_of(record) not in tables:
                    # Its variable table was in the damaged part: it cannot be decoded.
                    lost += record.values if record.offset >= start else 0
                    continue
                kept.append(bytes(view[record.offset : record.end]))
                size += record.end - record.offset
        if new_start is None:
            new_start = size
        report.corrupt_bytes += scan.file_size - size
        os.replace(p, aside)
        repaired = b"".join(kept)
        try:
            if size > len(rec.MAGIC):
                write_atomically(p, repaired)
        except OSError as exc:
            # No room for the repaired copy (a full disk): the original goes back under its
            # name, read up to the damage only; what follows the damage is lost, and counted.
            os.replace(aside, p)
            first = scan.gaps[0][0] if scan.gaps else scan.size
            self._cut(p, first)
            lost = sum(_lost_in(view, gap) for gap in scan.gaps if gap[0] >= start) + sum(
                r.values
                for lo, hi in spans
                for r in iter_records(view, lo, hi)
                if r.kind == rec.KIND_BATCH and r.offset >= max(first, start)
            )
            report.corrupt_values += lost
            logger.error(
                "spool %s: segment %s is damaged (%s) and there is no room to repair it (%s): it is "
                "read up to byte %d; %d values not yet sent are lost",
                self.path,
                p.name,
                scan.detail,
                exc.strerror or exc,
                first,
                lost,
            )
            return data[:first], min(start, first)
        report.corrupt_values += lost
        logger.error(
            "spool %s: segment %s is damaged (%s): moved aside to %s; the readable records before "
            "and after the damage are kept, %d values not yet sent are lost",
            self.path,
            p.name,
            scan.detail,
            aside.name,
            lost,
        )
        if size <= len(rec.MAGIC):
            return None
        return repaired, new_start

    # -- appending -------------------------------------------------------------------------------

    @property
    def active(self) -> Segment | None:
        last = self.segments[-1] if self.segments else None
        return last if last is not None and last.own and self._fd is not None else None

    def roll(self) -> Segment:
        """Seal the active segment (if any) and start a new one."""
        self.seal()
        # Never a number the saved position could name: it would point into the wrong file.
        seq = max(self.segments[-1].seq if self.segments else 0, self.position[0]) + 1
        p = self.path / segment_name(seq)
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        except OSError as exc:
            if exc.errno in DISK_FULL:
                raise DiskFullError(exc.errno, f"no room for a new segment in {self.path}") from exc
            raise
        try:
            _write_all(fd, rec.MAGIC)
        except OSError as exc:
            os.close(fd)
            p.unlink(missing_ok=True)
            if exc.errno in DISK_FULL:
                raise DiskFullError(exc.errno, f"no room for a new segment in {self.path}") from exc
            raise
        if self.sync != "never":
            os.fsync(fd)
            fsync_dir(self.path)
        self._fd = fd
        segment = Segment(seq, p, len(rec.MAGIC), own=True, tables_complete=True)
        self.segments.append(segment)
        self.bytes += len(rec.MAGIC)
        return segment

    def seal(self) -> None:
        if self._fd is not None:
            if self.dirty and self.sync != "never":
                os.fsync(self._fd)
            self.dirty = False
            os.close(self._fd)
            self._fd = None

    def append(self, batch: ValueBatch) -> tuple[Segment, int, int]:
        """Append one batch (and its variable table, first time in this segment): (segment, start, end)."""
        segment = self.active
        if segment is None or segment.size >= self.segment_bytes:
            segment = self.roll()
        variables = batch.variables
        list_id: int | None = None
        hit = segment.by_object.get(id(variables))
        if hit is not None and hit[0] is variables:
            list_id = hit[1]
        else:
            ids = tuple(map(id, variables))
            list_id = segment.by_ids.get(ids)
        parts = []
        new_table = list_id is None
        if list_id is None:
            list_id = len(segment.tables)
            parts.append(rec.specs_record(list_id, variables))
        record, as_text = rec.batch_record(list_id, batch, self._encoder)
        parts.append(record)
        if as_text - self._as_text:
            self._as_text |= as_text
            logger.warning(
                "spool %s: values of type %s from reader %r are stored as their text",
                self.path,
                ", ".join(sorted(as_text)),
                batch.reader,
            )
        data = b"".join(parts) if len(parts) > 1 else parts[0]
        start = segment.size
        fd = self._fd
        if fd is None:  # roll() just opened it; this is for the type checker
            raise RuntimeError("spool segment is not open")
        try:
            _write_all(fd, data)
        except OSError as exc:
            # Whatever part of the record reached the file is cut off again: the file stays whole.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            if exc.errno in DISK_FULL:
                raise DiskFullError(exc.errno, f"no room for {len(data)} bytes in {self.path}") from exc
            raise
        if new_table:
            segment.tables[list_id] = variables
            segment.by_ids[tuple(map(id, variables))] = list_id
        if len(segment.by_object) < 10_000:
            segment.by_object[id(variables)] = (variables, list_id)
        end = start + len(data)
        segment.size = end
        self.bytes += len(data)
        segment.records += 1
        segment.values += len(variables)
        if self.sync == "always":
            os.fdatasync(fd)
        else:
            self.dirty = True
        return segment, start, end

    def sync_now(self) -> None:
        """fsync the active segment if it has unsynced appends."""
        if self.dirty and self._fd is not None:
            os.fdatasync(self._fd)
            self.dirty = False

    # -- the send position and deletion ----------------------------------------------------------

    def save_position(self, position: tuple[int, int]) -> None:
        data = json.dumps({"segment": position[0], "offset": position[1]}).encode()
        write_atomically(self.path / POSITION, data)
        self.position = position

    def delete(self, segment: Segment) -> None:
        """Remove a segment (acknowledged, or dropped by the disk limit) from disk and the list."""
        if segment is self.active:
            self.seal()
        self.segments.remove(segment)
        self.bytes -= segment.size
        segment.path.unlink(missing_ok=True)

    def load_tables(self, segment: Segment) -> None:
        """Read every variable table of a segment another process wrote."""
        if segment.tables_complete:
            return
        with open(segment.path, "rb") as f:
            data = f.read(segment.size)
        for record in iter_records(data, len(rec.MAGIC), len(data)):
            if record.kind == rec.KIND_SPECS:
                list_id, specs = rec.decode_specs(record.payload)
                segment.tables[list_id] = specs
        segment.tables_complete = True

    def batch_headers(self, segment: Segment, start: int) -> Iterator[tuple[int, int]]:
        """(start, values) of each batch appended from ``start`` on, from the headers alone.

        A batch's start is where its append began, as ``append`` returned it: its variable
        table's record when it brought one.
        """
        with open(segment.path, "rb") as f:
            data = f.read(segment.size)
        began: int | None = None
        for record in iter_records(data, start, len(data)):
            if record.kind == rec.KIND_SPECS:
                began = record.offset if began is None else began
            else:
                yield (record.offset if began is None else began), record.values
                began = None

    def close(self) -> None:
        self.seal()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class SegmentReader:
    """Reads records in order for the forwarder (its thread only), from its own descriptors and a
    read-ahead buffer."""

    def __init__(self) -> None:
        self._seq: int | None = None
        self._fd: int | None = None
        self._buffer = b""
        self._base = 0  # file offset of _buffer[0]

    def read(self, segment: Segment, offset: int, end: int) -> rec.Record:
        """The record at ``offset`` of ``segment`` (whose valid data ends at ``end``)."""
        if self._seq != segment.seq or self._fd is None:
            self.close()
            self._fd = os.open(segment.path, os.O_RDONLY)
            self._seq = segment.seq
            self._buffer = b""
            self._base = 0
        rel = offset - self._base
        if rel < 0 or rel + rec.HEADER_SIZE > len(self._buffer):
            self._fill(offset, end)
            rel = 0
        try:
            return rec.parse(self._buffer, rel, self._base)
        except rec.TornRecordError:
            length = rec.HEADER.unpack_from(self._buffer, rel)[0]
            need = rec.HEADER_SIZE + length
            if offset + need > end:
                raise
            self._fill(offset, end, need)
            return rec.parse(self._buffer, 0, self._base)

    def _fill(self, offset: int, end: int, need: int = 0) -> None:
        if self._fd is None:
            raise RuntimeError("no segment open for reading")
        size = min(max(_READ_CHUNK, need), end - offset)
        self._buffer = os.pread(self._fd, size, offset)
        self._base = offset

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None
        self._seq = None
        self._buffer = b""
