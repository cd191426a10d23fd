"""The hand encoder's payloads, decoded by the protobuf library, say exactly what was encoded:
every datatype over its whole range, errors, doubtful values, historical flags, births."""

from __future__ import annotations

import math
import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from flowcollect.sparkplug._payload import (
    QUALITY_BAD,
    QUALITY_UNCERTAIN,
    Current,
    DataEncoder,
    MetricDef,
    birth_payload,
    metric_value,
)
from flowcollect.sparkplug._schema import DataType, Payload

RANGES = {
    DataType.Int8: (-(2**7), 2**7 - 1),
    DataType.Int16: (-(2**15), 2**15 - 1),
    DataType.Int32: (-(2**31), 2**31 - 1),
    DataType.Int64: (-(2**63), 2**63 - 1),
    DataType.UInt8: (0, 2**8 - 1),
    DataType.UInt16: (0, 2**16 - 1),
    DataType.UInt32: (0, 2**32 - 1),
    DataType.UInt64: (0, 2**64 - 1),
}


def values_of(datatype: DataType) -> st.SearchStrategy[Any]:
    if datatype in RANGES:
        lo, hi = RANGES[datatype]
        return st.integers(lo, hi)
    if datatype == DataType.Double:
        return st.floats(allow_nan=True, allow_infinity=True)
    if datatype == DataType.Float:
        return st.floats(width=32, allow_nan=False, allow_infinity=True)
    if datatype == DataType.Boolean:
        return st.booleans()
    return st.text(max_size=40)


DATATYPES = [*RANGES, DataType.Double, DataType.Float, DataType.Boolean, DataType.String]


@st.composite
def metrics(draw: Any) -> tuple[MetricDef, Any, str | None, str | None]:
    datatype = draw(st.sampled_from(DATATYPES))
    alias = draw(st.integers(1, 2**40))
    name = draw(st.text(min_size=1, max_size=30))
    error = draw(st.one_of(st.none(), st.just("timeout")))
    quality = draw(st.one_of(st.none(), st.just("Uncertain")))
    value = None if error is not None else draw(values_of(datatype))
    return MetricDef.make(name, alias, datatype), value, error, quality


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


def quality_of(metric: Any) -> int | None:
    if "Quality" not in metric.properties.keys:
        return None
    raw = metric.properties.values[list(metric.properties.keys).index("Quality")]
    assert raw.type == DataType.Int32
    return int(raw.int_value - (1 << 32) if raw.int_value >= 1 << 31 else raw.int_value)


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(metrics(), min_size=1, max_size=20),
    t_ms=st.integers(0, 2**45),
    seq=st.integers(0, 255),
    historical=st.booleans(),
)
def test_data_payloads_say_what_was_encoded(rows: list[Any], t_ms: int, seq: int, historical: bool) -> None:
    defs = [r[0] for r in rows]
    values = [r[1] for r in rows]
    errors = [r[2] for r in rows]
    quality = [r[3] for r in rows]
    payload, unfit = DataEncoder(defs).encode(
        t_ms, seq, values, errors, quality if any(quality) else None, now_ms=t_ms + 5, historical=historical
    )
    assert unfit == []  # every value drawn fits its datatype
    decoded = Payload.FromString(payload)
    assert (decoded.seq, decoded.timestamp, len(decoded.metrics)) == (seq, t_ms + 5, len(rows))
    for m, d, value, error, q in zip(decoded.metrics, defs, values, errors, quality, strict=True):
        assert (m.alias, m.timestamp, m.is_historical) == (d.alias, t_ms, historical)
        assert not m.HasField("name") and not m.HasField("datatype")  # DATA: the alias only
        if error is not None:
            assert m.is_null and m.WhichOneof("value") is None and quality_of(m) == QUALITY_BAD
            continue
        got = metric_value(m, d.datatype)
        expected = struct.unpack("<f", struct.pack("<f", value))[0] if d.datatype == DataType.Float else value
        assert same(expected, got), (d.datatype, value, got)
        assert quality_of(m) == (QUALITY_UNCERTAIN if q is not None else None)


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(metrics(), min_size=1, max_size=10), seq=st.integers(0, 255))
def test_births_name_every_metric_with_its_datatype_and_value(rows: list[Any], seq: int) -> None:
    born = [(d, Current(1_000 + i, value, error, q)) for i, (d, value, error, q) in enumerate(rows)]
    decoded = Payload.FromString(birth_payload(seq, 99, born))
    assert (decoded.seq, decoded.timestamp) == (seq, 99)
    for i, (m, (d, current)) in enumerate(zip(decoded.metrics, born, strict=True)):
        assert (m.name, m.alias, m.datatype, m.timestamp) == (d.name, d.alias, d.datatype, 1_000 + i)
        if current.error is not None:
            assert m.is_null and quality_of(m) == QUALITY_BAD
        else:
            expected = current.value
            if d.datatype == DataType.Float:
                expected = struct.unpack("<f", struct.pack("<f", expected))[0]
            assert same(expected, metric_value(m))


TOO_BIG = st.one_of(st.integers(2**15, 2**70), st.integers(-(2**70), -(2**15) - 1))


@given(
    case=st.one_of(
        st.tuples(st.just(DataType.Int16), st.one_of(TOO_BIG, st.text(), st.floats(), st.booleans())),
        st.tuples(st.just(DataType.String), st.just("half a pair: \ud800")),
        st.tuples(st.just(DataType.Boolean), st.one_of(st.integers(2, 9), st.text())),
    )
)
def test_a_value_that_does_not_fit_is_null_and_bad_and_said(case: tuple[DataType, Any]) -> None:
    datatype, value = case
    payload, unfit = DataEncoder([MetricDef.make("m", 1, datatype)]).encode(
        1, 0, [value], [None], None, now_ms=1
    )
    (m,) = Payload.FromString(payload).metrics
    assert unfit == [0] and m.is_null and quality_of(m) == QUALITY_BAD
