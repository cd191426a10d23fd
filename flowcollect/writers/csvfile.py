"""A writer to a CSV file: one row per value, acknowledged once the OS has the row."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import stat
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from flowcollect.errors import ConfigError, PreflightError
from flowcollect.values import CollectedVariable, ValueBatch
from flowcollect.writers.base import DataWriter

__all__ = ["CsvFileDataWriter"]

logger = logging.getLogger("flowcollect.writers.csv")

COLUMNS = ("id", "context_id", "address", "value", "time", "error", "name", "quality", "tags", "source_time")
"""The columns of a new file. An existing file keeps its own header's columns (the six first
ones, before ``name``, ``quality``, ``tags`` and ``source_time`` were added) so appending never
shifts them."""

HEADER = COLUMNS  # the name older code imports

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_KERNEL_FILESYSTEMS = (Path("/proc"), Path("/sys"))


def time_text(when: datetime | None) -> str:
    """The one timestamp format of the file: ISO 8601 in UTC, always with milliseconds."""
    if when is None:
        return ""
    if when.tzinfo is not None and when.utcoffset() != timedelta(0):
        when = when.astimezone(UTC)
    return when.isoformat(timespec="milliseconds")


def _source_time_text(when: datetime) -> str:
    # A source's clock is finer than the grid's: microseconds, where OPC UA's clocks have them.
    return when.astimezone(UTC).isoformat(timespec="microseconds")


def _source_text(ns: int | None) -> str:
    return "" if ns is None else _source_time_text(_EPOCH + timedelta(microseconds=ns // 1000))


def _write_all(fd: int, data: bytes) -> int:
    """Write all of ``data``; on an error, raise it with ``written`` set to what went out."""
    view = memoryview(data)
    done = 0
    while done < len(view):
        try:
            done += os.write(fd, view[done:])
        except OSError as exc:
            exc.written = done  # type: ignore[attr-defined]
            raise
    return done


class CsvFileDataWriter(DataWriter):
    """Writes ``id, context_id, address, value, time, error, name, quality, tags, source_time`` rows.

    ``time`` is ISO 8601 in UTC with milliseconds (``2026-11-25T12:00:00.100+00:00``): the
    instant, or the source's own time where the reader stamps values with it. ``name`` and
    ``tags`` (a JSON object) are the variable's, ``quality`` is empty for a good value,
    ``source_time`` is the source's own time carried beside the value (an OPC UA reader's
    default; same format, microseconds), empty when the reader gives none. The header is written once, when
    the file is new or empty; with ``append=False`` an existing file is replaced when the writer
    first writes.

    Rows are buffered in memory and handed to the OS at least every ``flush_interval_s`` (the
    engine calls ``flush`` on the writer's thread; ``tail -f`` shows them, a kill -9 loses at most
    that much), whenever ``max_buffer_bytes`` are waiting, and at close. A row counts as written
    only once the OS took it (acknowledged then; no ``fsync``): on a full disk or any write
    error the rows are reported failed, the file is cut back to its last whole batch (so it stays
    valid CSV) and the error is logged once per episode, and once more when writing works again.

    ``write(values)`` (the per-value API, for direct use) writes at once and raises on error.
    Safe to share between threads.
    """

    acknowledges = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        append: bool = True,
        flush_interval_s: float = 1.0,
        max_buffer_bytes: int = 1 << 20,
    ) -> None:
        problems = []
        if isinstance(flush_interval_s, bool) or not isinstance(flush_interval_s, (int, float)):
            problems.append(f"CSV writer {path}: flush_interval_s must be seconds, got {flush_interval_s!r}")
        elif not 0 < flush_interval_s <= 3600:
            problems.append(
                f"CSV writer {path}: flush_interval_s must be > 0 and <= 3600 s, got {flush_interval_s!r}"
            )
        if (
            isinstance(max_buffer_bytes, bool)
            or not isinstance(max_buffer_bytes, int)
            or max_buffer_bytes <= 0
        ):
            problems.append(
                f"CSV writer {path}: max_buffer_bytes must be a positive int, got {max_buffer_bytes!r}"
            )
        if problems:
            raise ConfigError(problems)
        self.path = Path(path)
        self.append = append
        self._truncate = not append  # only at the first open: a reopen after close appends
        self.flush_interval_s = float(flush_interval_s)
        self.max_buffer_bytes = max_buffer_bytes
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._columns: tuple[str, ...] = COLUMNS
        self._picks: tuple[int, ...] | None = None  # column indices of an older header
        self._need_header = False
        self._pending: list[tuple[ValueBatch | None, int, bytes]] = []  # (batch, rows, bytes)
        self._pending_rows = 0
        self._pending_bytes = 0
        self._tags: dict[tuple[tuple[str, str], ...], str] = {}
        self._failing: str | None = None  # the error of the current failure episode
        self._failed_in_episode = 0
        self.rows = 0
        """Rows the OS took."""
        self.failed_rows = 0
        """Rows that could not be written."""

    @property
    def name(self) -> str:
        return f"csv:{self.path}"

    # -- checks before collecting --------------------------------------------------------------

    def preflight(self) -> None:
        """Raise ``PreflightError`` when the file cannot be written: the path is a directory, its
        folder cannot be created, or the OS refuses to open or create it (permissions, a
        read-only filesystem, ``/proc``). Leaves no file behind that was not there."""
        path = self.path
        real = path.resolve()
        for kernel in _KERNEL_FILESYSTEMS:
            if real == kernel or kernel in real.parents:
                # The kernel's own files open for writing and then refuse, or take, any text.
                raise PreflightError(f"{path} is in {kernel}, the kernel's interface, not a place for data")
        if path.is_dir():
            raise PreflightError(f"{path} is a directory, not a file")
        if path.exists():
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC))
            except OSError as exc:
                raise PreflightError(f"cannot write {path}: {exc.strerror or exc}") from None
            return
        folder = path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise PreflightError(f"cannot create {path}: {folder} is not a directory")
        # Create and remove the file itself (or, when folders are missing, a probe in the first
        # existing one): only the OS knows every reason it may refuse.
        probe = path if folder == path.parent else folder / f".flowcollect-preflight-{os.getpid()}"
        try:
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
        except OSError as exc:
            raise PreflightError(f"cannot create {path}: {exc.strerror or exc} (in {folder})") from None
        with contextlib.suppress(OSError):
            os.unlink(probe)

    def take_over(self, previous: DataWriter) -> None:
        """A reload replaced ``previous`` on the same file (its flush interval changed, say):
        continue the file, never replace it. Without this, ``append=False`` would cut away every
        row the run wrote before the reload at this writer's first write. Should ``previous``
        not have opened the file yet, it does now (replacing an older file, as it would have at
        its first write), with the header, so the two writers never both write one."""
        if not isinstance(previous, CsvFileDataWriter) or previous is self:
            return
        if previous.path.resolve() != self.path.resolve():
            return
        # On failure previous reports its own error when it writes; this one appends anyway.
        with previous._lock, contextlib.suppress(OSError):
            fd = previous._fd if previous._fd is not None else previous._open_locked()
            if previous._need_header:
                _write_all(fd, previous._encode([COLUMNS]))
                previous._need_header = False
        self._truncate = False

    # -- rows ----------------------------------------------------------------------------------

    def _open_locked(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_TRUNC if self._truncate else os.O_APPEND)
        fd = os.open(self.path, flags, 0o644)
        self._truncate = False
        info = os.fstat(fd)
        self._columns, self._picks = COLUMNS, None
        if stat.S_ISREG(info.st_mode) and info.st_size > 0:
            self._need_header = False
            self._adopt_header()
        else:
            self._need_header = True
        self._fd = fd
        return fd

    def _adopt_header(self) -> None:
        try:
            with self.path.open(newline="", encoding="utf-8") as file:
                header = tuple(next(csv.reader(file), ()))
        except (OSError, UnicodeDecodeError, csv.Error):
            header = ()
        if header == COLUMNS:
            return
        if header and "id" in header and set(header) <= set(COLUMNS):
            self._columns = header
            self._picks = tuple(COLUMNS.index(c) for c in header)
            return
        logger.warning(
            "%s: the existing file's header is not flowcollect's (%s); rows are appended with %s",
            self.name,
            ",".join(header) or "unreadable",
            ",".join(COLUMNS),
        )

    def _tags_text(self, tags: tuple[tuple[str, str], ...]) -> str:
        if not tags:
            return ""
        text = self._tags.get(tags)
        if text is None:
            if len(self._tags) > 10_000:
                self._tags.clear()
            text = self._tags[tags] = json.dumps(dict(tags), separators=(",", ":"), ensure_ascii=False)
        return text

    def _encode(self, rows: list[tuple[object, ...]]) -> bytes:
        picks = self._picks
        if picks is not None:
            rows = [tuple(row[i] for i in picks) for row in rows]
        buffer = io.StringIO()
        csv.writer(buffer).writerows(rows)
        return buffer.getvalue().encode("utf-8")

    def _batch_rows(self, batch: ValueBatch) -> list[tuple[object, ...]]:
        when = time_text(batch.time)
        source, quality, beside = batch.source_ns, batch.quality, batch.source_time_ns
        tags = self._tags_text
        if source is None and quality is None and beside is None:  # the common case
            return [
                (
                    spec.id,
                    spec.context_id,
                    spec.address,
                    "" if value is None else value,
                    when,
                    error or "",
                    spec.name or "",
                    "",
                    tags(spec.tags) if spec.tags else "",
                    "",
                )
                for spec, value, error in zip(batch.variables, batch.values, batch.errors, strict=True)
            ]
        rows: list[tuple[object, ...]] = []
        for i, spec in enumerate(batch.variables):
            value = batch.values[i]
            ns = None if source is None else source[i]
            rows.append(
                (
                    spec.id,
                    spec.context_id,
                    spec.address,
                    "" if value is None else value,
                    when if ns is None else time_text(_EPOCH + timedelta(microseconds=ns // 1000)),
                    batch.errors[i] or "",
                    spec.name or "",
                    "" if quality is None else quality[i] or "",
                    tags(spec.tags) if spec.tags else "",
                    _source_text(None if beside is None else beside[i]),
                )
            )
        return rows

    def write_batch(self, batch: ValueBatch) -> None:
        with self._lock:
            if self._fd is None:
                self._open_locked()  # first: an existing file's header decides the columns
            data = self._encode(self._batch_rows(batch))
            self._pending.append((batch, len(batch), data))
            self._pending_rows += len(batch)
            self._pending_bytes += len(data)
            if self._pending_bytes >= self.max_buffer_bytes:
                self._flush_locked()

    def write(self, values: Sequence[CollectedVariable]) -> None:
        times: dict[datetime | None, str] = {}  # a list's values mostly share one instant
        rows: list[tuple[object, ...]] = []
        for v in values:
            when = times.get(v.time)
            if when is None:
                when = times[v.time] = time_text(v.time)
            value = v.value
            rows.append(
                (
                    v.id,
                    v.context_id,
                    v.address,
                    "" if value is None else value,
                    when,
                    v.error or "",
                    "",
                    v.quality or "",
                    "",
                    "" if v.source_time is None else _source_time_text(v.source_time),
                )
            )
        with self._lock:
            if self._fd is None:
                self._open_locked()
            data = self._encode(rows)
            self._pending.append((None, len(rows), data))
            self._pending_rows += len(rows)
            self._pending_bytes += len(data)
            self._flush_locked()

    def _flush_locked(self) -> None:
        """Hand the OS every waiting row, then report each batch: written, or failed."""
        fd = self._fd
        if fd is None or not self._pending:
            return
        pending, self._pending = self._pending, []
        self._pending_rows = self._pending_bytes = 0
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
        good_end = os.fstat(fd).st_size if regular else 0
        error: OSError | None = None
        done: list[tuple[ValueBatch | None, int]] = []
        failed: list[tuple[ValueBatch | None, int]] = []
        try:
            if self._need_header:
                good_end += _write_all(fd, self._encode([COLUMNS]))
                self._need_header = False
        except OSError as exc:
            error = exc
        for batch, rows, data in pending:
            if error is None:
                try:
                    good_end += _write_all(fd, data)
                except OSError as exc:
                    error = exc
                else:
                    done.append((batch, rows))
                    continue
            failed.append((batch, rows))
        if error is not None and regular:
            # Cut a half-written batch (or header) away: the file stays whole rows, and what the
            # receipts call failed is really not in it.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, good_end)
            if good_end == 0:
                self._need_header = True
        self._report(done, failed, error)

    def _report(
        self,
        done: list[tuple[ValueBatch | None, int]],
        failed: list[tuple[ValueBatch | None, int]],
        error: OSError | None,
    ) -> None:
        stored = sum(rows for _, rows in done)
        lost = sum(rows for _, rows in failed)
        self.rows += stored
        self.failed_rows += lost
        for batch, rows in done:
            if batch is not None:
                self.acknowledge(batch, rows)
        if error is None:
            if self._failing is not None and stored:
                logger.warning(
                    "%s: writing again (%d rows failed while it could not: %s)",
                    self.name,
                    self._failed_in_episode,
                    self._failing,
                )
                self._failing = None
                self._failed_in_episode = 0
            return
        text = f"{type(error).__name__}: {error.strerror or error}"
        for batch, rows in failed:
            if batch is not None:
                self.acknowledge(batch, 0, failed=rows, error=text)
        self._failed_in_episode += lost
        if self._failing is None:
            self._failing = text
            logger.error(
                "%s: cannot write %s (%s); its rows are counted failed until writing works again",
                self.name,
                self.path,
                text,
            )
        if any(batch is None for batch, _ in failed):
            raise error  # the per-value API has no receipts: its caller hears it

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def close(self) -> None:
        with self._lock:
            try:
                self._flush_locked()
            finally:
                if self._fd is not None:
                    os.close(self._fd)
                    self._fd = None

    def stats(self) -> Mapping[str, float]:
        return {"buffered": self._pending_rows, "rows": self.rows, "failed_rows": self.failed_rows}
