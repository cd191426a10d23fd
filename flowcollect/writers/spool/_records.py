"""The spool's on-disk format: segment files made of checksummed records.

A segment starts with an 8-byte magic. Then records, each::

    u32 payload length | u32 crc32 | u8 kind | u32 values | i64 t_ms | payload

little-endian; the CRC32 covers everything after itself (kind, values, t_ms and the payload), so
a torn or flipped record is recognised before any of it is decoded. ``values`` and ``t_ms`` sit
in the header so the spool can count its backlog and age without decoding payloads.

Two kinds of record:

- ``KIND_SPECS``: a table of ``VariableSpec``s (a list id and the specs' fields), written once
  per segment for each distinct ``variables`` sequence the batches use, before the first batch
  that refers to it. A batch names its table by id, so no spec is written per value.
- ``KIND_BATCH``: one ``ValueBatch``: its table id, context, reader, and the columns
  (values, errors, source times, quality, and the source times carried beside the values: an
  eighth element a record of an older spool does not have) as they are.

Payloads are pickles of plain tuples, lists, numbers, strings and None (protocol 5: C-speed, and
exact for floats, ints of any size, bools and strings), plus the ``datetime`` types a source may
give. They are read back by an unpickler that resolves no global name but those ``datetime``
classes, so a payload can build nothing else: a spool file cannot make the collector import or
call anything. A value of any other type is stored as its text (``str(value)``), and the spool
logs it once per type.
"""

from __future__ import annotations

import datetime
import io
import pickle
import struct
import zlib
from collections.abc import Sequence
from typing import Any

from flowcollect.values import ValueBatch, VariableSpec

MAGIC = b"FCSPOOL\x01"
HEADER = struct.Struct("<IIBIq")
HEADER_SIZE = HEADER.size
_CRC_FROM = 8  # the CRC covers the header from the kind on, then the payload
KIND_SPECS = 1
KIND_BATCH = 2
MAX_PAYLOAD = 1 << 30  # a length beyond this is a corrupt header, not a record


class RecordError(ValueError):
    """A record that cannot be read: torn (incomplete) or corrupt (checksum, kind, payload)."""


_DATETIME_TYPES: frozenset[type] = frozenset(
    {datetime.datetime, datetime.date, datetime.time, datetime.timedelta, datetime.timezone}
)
_GLOBALS = {("datetime", t.__name__): t for t in _DATETIME_TYPES}
_PLAIN_TYPES: frozenset[type] = frozenset({float, int, bool, str, bytes, type(None), *_DATETIME_TYPES})


class UnsupportedValueError(TypeError):
    """A value the spool stores as its text: not a plain type nor a ``datetime`` one."""


class _PlainUnpickler(pickle.Unpickler):
    # Resolving no global but the datetime classes means no function or module can be reached.
    def find_class(self, module: str, name: str) -> Any:
        found = _GLOBALS.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"spool payloads hold plain values only, not {module}.{name}")
        return found


class _PlainPickler(pickle.Pickler):
    # Called only for objects the C pickler does not handle itself (not for None, bools, ints,
    # floats, str, bytes, lists, tuples, dicts): refusing them here costs the hot path nothing.
    def reducer_override(self, obj: Any) -> Any:
        if type(obj) in _DATETIME_TYPES or (isinstance(obj, type) and obj in _DATETIME_TYPES):
            return NotImplemented
        raise UnsupportedValueError(type(obj).__name__)


def _keeps(value: object) -> bool:
    return type(value) in _PLAIN_TYPES or isinstance(value, list | tuple | dict)


class Encoder:
    """Pickles payloads with one reusable pickler (not thread-safe: the spool calls it under its lock)."""

    def __init__(self) -> None:
        self._buffer = io.BytesIO()
        self._pickler = _PlainPickler(self._buffer, protocol=5)

    def dumps(self, obj: Any) -> bytes:
        buffer = self._buffer
        buffer.seek(0)
        buffer.truncate()
        self._pickler.clear_memo()
        try:
            self._pickler.dump(obj)
        except UnsupportedValueError:
            self._pickler = _PlainPickler(buffer, protocol=5)  # a failed dump may leave it half-way
            raise
        return buffer.getvalue()


def loads(payload: bytes | memoryview) -> Any:
    try:
        return _PlainUnpickler(io.BytesIO(payload)).load()
    except Exception as exc:  # any damage the CRC let through is a corrupt record, never a crash
        raise RecordError(f"undecodable payload: {exc}") from exc


def frame(kind: int, values: int, t_ms: int, payload: bytes) -> bytes:
    """One record: header and payload, ready to append."""
    tail = struct.pack("<BIq", kind, values, t_ms)
    crc = zlib.crc32(payload, zlib.crc32(tail))
    return struct.pack("<II", len(payload), crc) + tail + payload


def specs_record(list_id: int, variables: Sequence[VariableSpec]) -> bytes:
    rows = [
        (
            s.id,
            s.context_id,
            s.address,
            s.value_type,
            s.reader,
            s.interval_ms,
            s.name,
            s.tags,
            s.scale,
            s.offset,
            s.report,
            s.deadband,
            s.heartbeat_ms,
        )
        for s in variables
    ]
    return frame(KIND_SPECS, 0, 0, pickle.dumps((list_id, rows), protocol=5))


def decode_specs(payload: bytes | memoryview) -> tuple[int, tuple[VariableSpec, ...]]:
    try:
        list_id, rows = loads(payload)
        specs = tuple(
            VariableSpec(
                id=row[0],
                context_id=row[1],
                address=row[2],
                value_type=row[3],
                reader=row[4],
                interval_ms=row[5],
                name=row[6],
                tags=tuple(tuple(pair) for pair in row[7]),
                scale=row[8],
                offset=row[9],
                report=row[10],
                deadband=row[11],
                heartbeat_ms=row[12],
            )
            for row in rows
        )
    except RecordError:
        raise
    except Exception as exc:
        raise RecordError(f"bad variable table: {exc}") from exc
    return int(list_id), specs


def batch_record(list_id: int, batch: ValueBatch, encoder: Encoder) -> tuple[bytes, set[str]]:
    """The batch's record, and the names of the value types stored as text (usually none)."""
    errors = batch.errors
    quality = batch.quality
    n = len(batch.variables)
    values = batch.values
    converted: set[str] = set()
    while True:
        # All-good columns (the usual case) are stored as None: one byte instead of one per value.
        row = (
            list_id,
            batch.context_id,
            batch.reader,
            values,
            None if errors.count(None) == n else errors,
            batch.source_ns,
            None if quality is None or quality.count(None) == n else quality,
            batch.source_time_ns,
        )
        try:
            payload = encoder.dumps(row)
        except UnsupportedValueError:
            # Odd scalars first; then lists or dicts holding something odd. Anything else (an odd
            # error text or source time) is a reader's bug: the append fails, counted as failed.
            odd = [not _keeps(v) for v in values]
            if not any(odd):
                odd = [isinstance(v, list | tuple | dict) for v in values]
                if not any(odd):
                    raise
            converted |= {type(v).__name__ for v, bad in zip(values, odd, strict=True) if bad}
            values = [str(v) if bad else v for v, bad in zip(values, odd, strict=True)]
            continue
        return frame(KIND_BATCH, n, batch.t_ms, payload), converted


def decode_batch(
    payload: bytes | memoryview, t_ms: int, tables: dict[int, Sequence[VariableSpec]]
) -> ValueBatch:
    row = loads(payload)
    try:
        list_id, context_id, reader, values, errors, source_ns, quality, *rest = row
        beside = rest[0] if rest else None
        variables = tables[list_id]
    except KeyError as exc:
        raise RecordError(f"batch refers to variable table {exc} that the segment does not hold") from exc
    except Exception as exc:
        raise RecordError(f"bad batch record: {exc}") from exc
    n = len(variables)
    if not isinstance(values, list) or len(values) != n:
        raise RecordError("batch values do not match its variable table")
    return ValueBatch(
        t_ms,
        variables,
        values,
        errors if errors is not None else [None] * n,
        source_ns=source_ns,
        quality=quality,
        context_id=context_id,
        reader=reader,
        source_time_ns=beside,
    )


class Record:
    """A record's header as found in a segment: where it is and what it holds."""

    __slots__ = ("end", "kind", "offset", "payload", "t_ms", "values")

    def __init__(self, offset: int, end: int, kind: int, values: int, t_ms: int, payload: memoryview) -> None:
        self.offset = offset
        self.end = end
        self.kind = kind
        self.values = values
        self.t_ms = t_ms
        self.payload = payload


def parse(buffer: bytes | memoryview, offset: int, base: int = 0) -> Record:
    """The record at ``offset`` of ``buffer`` (which starts at file offset ``base``).

    Raises ``TornRecordError`` for a record that runs past the buffer's end (torn, or not all read
    yet) and ``RecordError`` for a corrupt one (checksum, length, kind).
    """
    view = memoryview(buffer)
    if offset + HEADER_SIZE > len(view):
        raise TornRecordError("incomplete header")
    length, crc, kind, values, t_ms = HEADER.unpack_from(view, offset)
    if length > MAX_PAYLOAD:
        raise RecordError(f"impossible record length {length}")
    end = offset + HEADER_SIZE + length
    if end > len(view):
        raise TornRecordError("incomplete payload")
    if zlib.crc32(view[offset + _CRC_FROM : end]) != crc:
        raise RecordError("checksum mismatch")
    if kind not in (KIND_SPECS, KIND_BATCH):
        raise RecordError(f"unknown record kind {kind}")
    return Record(base + offset, base + end, kind, values, t_ms, view[offset + HEADER_SIZE : end])


class TornRecordError(RecordError):
    """A record cut short by the end of the data: a write that did not finish."""
