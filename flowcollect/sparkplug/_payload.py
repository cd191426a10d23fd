"""Sparkplug B payloads: a metric's datatype, and the bytes of births, data and deaths.

The encoder writes the protobuf wire format by hand for the few fields a collector sends (name,
alias, timestamp, datatype, is_historical, is_null, the ``Quality`` property, a scalar value):
a DDATA of 1,000 metrics costs a few hundred nanoseconds per metric this way, where building
the library's message objects costs several times that (bench/sparkplug.py measures both). The
tests decode every payload through the protobuf library (``_schema.Payload``), never through
this module, and ``decode`` here is that library's parser.

Wire format reminders (proto2): a field is a key ``(number << 3) | wire type`` then its value;
wire type 0 is a varint, 1 eight little-endian bytes, 2 a length then bytes, 5 four bytes.
``uint32``/``uint64`` carry signed integers as two's complement (Sparkplug 3.0 payloads chapter):
Int8/16/32 in ``int_value`` modulo 2**32, Int64 in ``long_value`` modulo 2**64.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from flowcollect.sparkplug._schema import DataType, Payload
from flowcollect.values import VariableSpec

__all__ = [
    "QUALITY_BAD",
    "QUALITY_UNCERTAIN",
    "MetricDef",
    "birth_payload",
    "DataEncoder",
    "datatype_of",
    "decode",
    "metric_value",
    "varint",
]

# Ignition 8's QualityCode numbers (what Cirrus Link's MQTT Engine reads from the ``Quality``
# property, an Int32): the top two bits are the level (00 good, 01 uncertain, 10 bad), the low
# 16 bits the sub-code. A metric without the property is Good.
QUALITY_BAD: Final = -2147483136  # Bad (sub-code 512)
QUALITY_UNCERTAIN: Final = 1073742080  # Uncertain (sub-code 256)
QUALITY_PROPERTY: Final = "Quality"

_U32: Final = 0xFFFFFFFF
_U64: Final = 0xFFFFFFFFFFFFFFFF

# datatype -> (inclusive range of the integer types; None for the others)
_INT_RANGES: Final[dict[int, tuple[int, int]]] = {
    DataType.Int8: (-(2**7), 2**7 - 1),
    DataType.Int16: (-(2**15), 2**15 - 1),
    DataType.Int32: (-(2**31), 2**31 - 1),
    DataType.Int64: (-(2**63), 2**63 - 1),
    DataType.UInt8: (0, 2**8 - 1),
    DataType.UInt16: (0, 2**16 - 1),
    DataType.UInt32: (0, 2**32 - 1),
    DataType.UInt64: (0, 2**64 - 1),
}
_SMALL_INTS: Final = frozenset(
    {DataType.Int8, DataType.Int16, DataType.Int32, DataType.UInt8, DataType.UInt16, DataType.UInt32}
)
_REGISTER_DATATYPES: Final[dict[str, DataType]] = {
    "int16": DataType.Int16,
    "uint16": DataType.UInt16,
    "int32": DataType.Int32,
    "uint32": DataType.UInt32,
    "int64": DataType.Int64,
    "uint64": DataType.UInt64,
}


def datatype_of(spec: VariableSpec) -> DataType:
    """The Sparkplug datatype of a variable's values.

    ``bool`` Boolean, ``str`` String, ``float`` Double (Float for a Modbus float32 register read
    without scale or offset), ``int`` Int64, or the register's own type (Int16, UInt16, Int32,
    UInt32, Int64, UInt64) when the address is a Modbus address and no scale or offset turns
    the value into another number.
    """
    value_type = spec.value_type
    if value_type == "bool":
        return DataType.Boolean
    if value_type == "str":
        return DataType.String
    register = _register_type(spec.address) if spec.scale is None and spec.offset is None else None
    if value_type == "int":
        return _REGISTER_DATATYPES.get(register or "", DataType.Int64)
    return DataType.Float if register == "float32" else DataType.Double


def _register_type(address: str) -> str | None:
    # Only a Modbus address names its register type; any other reader's address does not parse.
    if ":" not in address:
        return None
    from flowcollect.readers.modbus import parse_address

    try:
        return parse_address(address).type
    except ValueError:
        return None


# -- the wire format ------------------------------------------------------------------------------

_VARINT1: Final = [bytes((i,)) for i in range(128)]


def varint(n: int) -> bytes:
    """A non-negative integer as a protobuf varint."""
    if n < 128:
        return _VARINT1[n]
    out = bytearray()
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, wire: int) -> bytes:
    return varint((number << 3) | wire)


def _delimited(number: int, body: bytes) -> bytes:
    return _field(number, 2) + varint(len(body)) + body


_PACK_D = struct.Struct("<d").pack
_PACK_F = struct.Struct("<f").pack
_K_INT = _field(10, 0)
_K_LONG = _field(11, 0)
_K_FLOAT = _field(12, 5)
_K_DOUBLE = _field(13, 1)
_K_BOOL = _field(14, 0)
_K_STRING = _field(15, 2)
_TRUE = _K_BOOL + b"\x01"
_FALSE = _K_BOOL + b"\x00"
_HISTORICAL: Final = _field(5, 0) + b"\x01"


def _quality(code: int) -> bytes:
    value = _field(1, 0) + varint(DataType.Int32) + _field(3, 0) + varint(code & _U32)
    return _delimited(9, _delimited(1, QUALITY_PROPERTY.encode()) + _delimited(2, value))


_NULL: Final = _field(7, 0) + b"\x01"
NULL_BAD: Final = _NULL + _quality(QUALITY_BAD)
"""is_null, and the Quality property Bad: how a read error goes out."""
UNCERTAIN: Final = _quality(QUALITY_UNCERTAIN)


class ValueDoesNotFitError(ValueError):
    """A value the metric's datatype cannot carry (an int out of range, a float for a bool)."""


ValueEncoder = Callable[[Any], bytes]


def _encode_double(v: Any) -> bytes:
    if isinstance(v, (float, int)) and not isinstance(v, bool):
        return _K_DOUBLE + _PACK_D(v)
    raise ValueDoesNotFitError(f"{v!r} is not a number")


def _encode_float(v: Any) -> bytes:
    if isinstance(v, (float, int)) and not isinstance(v, bool):
        try:
            return _K_FLOAT + _PACK_F(v)
        except OverflowError:
            raise ValueDoesNotFitError(f"{v!r} does not fit a Float") from None
    raise ValueDoesNotFitError(f"{v!r} is not a number")


def _encode_bool(v: Any) -> bytes:
    if v is True or v is False:
        return _TRUE if v else _FALSE
    raise ValueDoesNotFitError(f"{v!r} is not a bool")


def _encode_string(v: Any) -> bytes:
    if isinstance(v, str):
        try:
            data = v.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: no UTF-8 text can carry it
            raise ValueDoesNotFitError(f"{v!r} is not valid Unicode text") from None
        return _K_STRING + varint(len(data)) + data
    raise ValueDoesNotFitError(f"{v!r} is not a string")


def _int_encoder(datatype: int) -> ValueEncoder:
    lo, hi = _INT_RANGES[datatype]
    small = datatype in _SMALL_INTS
    key = _K_INT if small else _K_LONG
    mask = _U32 if small else _U64
    name = DataType(datatype).name

    def encode(v: Any) -> bytes:
        if type(v) is not int or not lo <= v <= hi:
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueDoesNotFitError(f"{v!r} is not an integer")
            raise ValueDoesNotFitError(f"{v} does not fit {name}")
        return key + varint(v & mask)

    return encode


def value_encoder(datatype: int) -> ValueEncoder:
    """The function turning a Python value into its metric value field, for ``datatype``."""
    if datatype == DataType.Double:
        return _encode_double
    if datatype == DataType.Float:
        return _encode_float
    if datatype == DataType.Boolean:
        return _encode_bool
    if datatype == DataType.String:
        return _encode_string
    if datatype in _INT_RANGES:
        return _int_encoder(datatype)
    raise ValueError(f"no encoder for Sparkplug datatype {datatype}")


@dataclass(frozen=True, slots=True)
class MetricDef:
    """A metric as born: its name, alias and datatype, and the pieces its messages reuse."""

    name: str
    alias: int
    datatype: int
    encode: ValueEncoder
    key: bytes
    """The alias field, ready to send (DATA messages carry only the alias)."""
    birth_key: bytes
    """The name and alias fields, ready to send in births."""

    @classmethod
    def make(cls, name: str, alias: int, datatype: int) -> MetricDef:
        return cls(
            name,
            alias,
            datatype,
            value_encoder(datatype),
            _field(2, 0) + varint(alias),
            # Alias 0: no alias (the node's own metrics, addressed by name).
            _delimited(1, name.encode("utf-8")) + (_field(2, 0) + varint(alias) if alias else b""),
        )


_K_TIMESTAMP = _field(3, 0)
_K_DATATYPE = _field(4, 0)
_K_METRIC = _field(2, 2)


def _timestamp(t_ms: int, historical: bool) -> bytes:
    return _K_TIMESTAMP + varint(t_ms) + (_HISTORICAL if historical else b"")


def _value_bytes(metric: MetricDef, value: Any, error: str | None, quality: str | None) -> tuple[bytes, bool]:
    """(the metric's value fields, whether the value did not fit and went out as null)."""
    if error is not None:
        return NULL_BAD, False
    try:
        body = metric.encode(value)
    except ValueDoesNotFitError:
        return NULL_BAD, True
    return (body + UNCERTAIN if quality is not None else body), False


_BOOL_BYTES: Final = {True: b"\x01", False: b"\x00"}
# datatype -> (the value field's key, a packer of fixed width): the values a DATA message can
# write with one precomputed prefix per metric (the metric's length does not vary).
_FIXED: Final[dict[int, tuple[bytes, Callable[[Any], bytes], int]]] = {
    DataType.Double: (_K_DOUBLE, _PACK_D, 8),
    DataType.Float: (_K_FLOAT, _PACK_F, 4),
    DataType.Boolean: (_K_BOOL, _BOOL_BYTES.__getitem__, 1),
}


class DataEncoder:
    """Encodes DATA payloads for one fixed list of metrics (a device's variables in a batch).

    Protobuf accepts a message's fields in any order, so each metric is written as its alias,
    its value, then the timestamp shared by the whole message: for fixed-width values
    (Double, Float, Boolean) everything before the value is one precomputed prefix per metric,
    and a metric costs one pack and two concatenations.
    """

    __slots__ = ("_fixed", "_prefixes", "metrics")

    def __init__(self, metrics: list[MetricDef]) -> None:
        self.metrics = metrics
        fixed = [_FIXED.get(m.datatype) for m in metrics]
        self._fixed = [f[1] for f in fixed if f is not None] if all(fixed) else None
        self._prefixes: dict[int, list[bytes]] = {}

    def _prefix_list(self, tail: int) -> list[bytes]:
        prefixes = self._prefixes.get(tail)
        if prefixes is None:
            prefixes = []
            for m in self.metrics:
                key, _, width = _FIXED[m.datatype]
                size = len(m.key) + len(key) + width + tail
                prefixes.append(_K_METRIC + varint(size) + m.key + key)
            self._prefixes[tail] = prefixes
        return prefixes

    def encode(
        self,
        t_ms: int,
        seq: int,
        values: list[Any],
        errors: list[str | None],
        quality: list[str | None] | None,
        *,
        now_ms: int,
        historical: bool = False,
    ) -> tuple[bytes, list[int]]:
        """A DDATA/NDATA payload: every metric by alias at ``t_ms`` (the grid instant).

        Returns the bytes and the positions of values that did not fit their datatype (sent
        as null with quality Bad).
        """
        ts = _timestamp(t_ms, historical)
        head = _field(1, 0) + varint(now_ms)
        foot = _field(3, 0) + varint(seq)
        packers = self._fixed
        if packers is not None and quality is None and errors.count(None) == len(errors):
            prefixes = self._prefix_list(len(ts))
            try:
                body = [p + f(v) + ts for p, f, v in zip(prefixes, packers, values, strict=True)]
            except (struct.error, OverflowError, KeyError, TypeError):
                pass  # a value of another type: the general path below says which
            else:
                return head + b"".join(body) + foot, []
        parts: list[bytes] = [head]
        append = parts.append
        unfit: list[int] = []
        for i, m in enumerate(self.metrics):
            value, bad = _value_bytes(m, values[i], errors[i], None if quality is None else quality[i])
            if bad:
                unfit.append(i)
            one = m.key + value + ts
            append(_K_METRIC + varint(len(one)) + one)
        append(foot)
        return b"".join(parts), unfit


@dataclass(slots=True)
class Current:
    """A metric's newest value (what a birth carries)."""

    t_ms: int
    value: Any = None
    error: str | None = None
    quality: str | None = None


def _birth_metric(metric: MetricDef, current: Current | None) -> bytes:
    if current is None:  # born before any value: null, no quality claim
        body = metric.birth_key + _K_DATATYPE + varint(metric.datatype) + _NULL
    else:
        value, _ = _value_bytes(metric, current.value, current.error, current.quality)
        body = metric.birth_key + _K_TIMESTAMP + varint(current.t_ms) + _K_DATATYPE
        body += varint(metric.datatype) + value
    return _K_METRIC + varint(len(body)) + body


def birth_payload(seq: int | None, now_ms: int, metrics: Sequence[tuple[MetricDef, Current | None]]) -> bytes:
    """An NBIRTH/DBIRTH (or, with ``seq`` None, an NDEATH): every metric with name, alias,
    datatype and its current value."""
    parts = [_field(1, 0) + varint(now_ms)]
    parts.extend(_birth_metric(m, c) for m, c in metrics)
    if seq is not None:
        parts.append(_field(3, 0) + varint(seq))
    return b"".join(parts)


def decode(data: bytes) -> Any:
    """Parse a Sparkplug B payload with the protobuf library; ``google.protobuf.message.DecodeError``
    when the bytes are not one."""
    return Payload.FromString(data)


def metric_value(metric: Any, datatype: int | None = None) -> Any:
    """A decoded metric's value as Python: None when null or absent; integers of the signed
    datatypes back from two's complement. ``datatype``: the metric's, from its birth, for DATA
    messages (which carry only the alias)."""
    if metric.is_null:
        return None
    which = metric.WhichOneof("value")
    if which is None:
        return None
    value = getattr(metric, which)
    if metric.HasField("datatype"):
        datatype = metric.datatype
    if which == "int_value" and datatype in (DataType.Int8, DataType.Int16, DataType.Int32):
        return value - (1 << 32) if value >= 1 << 31 else value
    if which == "long_value" and datatype == DataType.Int64:
        return value - (1 << 64) if value >= 1 << 63 else value
    return value
