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
  (values, errors, source times, quality) as they are.

Payloads are pickles of plain tuples, lists, numbers, strings and None (protocol 5: C-speed, and
exact for floats, ints of any size, bools and strings). They are read back by an unpickler that
resolves no global name at all, so a payload can build nothing but those plain values: a spool
file cannot make the collector import or call anything.
"""

from __future__ import annotations

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


class _PlainUnpickler(pickle.Unpickler):
    # Resolving no global means no class, function or module can be reached from a payload.
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"spool payloads hold plain values only, not {module}.{name}")


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


def batch_record(list_id: int, batch: ValueBatch) -> bytes:
    errors = batch.errors
    quality = batch.quality
    n = len(batch.variables)
    # All-good columns (the usual case) are stored as None: one byte instead of one per value.
    payload = pickle.dumps(
        (
            list_id,
            batch.context_id,
            batch.reader,
            batch.values,
            None if errors.count(None) == n else errors,
            batch.source_ns,
            None if quality is None or quality.count(None) == n else quality,
        ),
        protocol=5,
    )
    return frame(KIND_BATCH, n, batch.t_ms, payload)


def decode_batch(
    payload: bytes | memoryview, t_ms: int, tables: dict[int, Sequence[VariableSpec]]
) -> ValueBatch:
    row = loads(payload)
    try:
        list_id, context_id, reader, values, errors, source_ns, quality = row
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

    Raises ``RecordError`` for a torn record (``torn=True`` in args: it runs past the buffer's
    end) or a corrupt one.
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
