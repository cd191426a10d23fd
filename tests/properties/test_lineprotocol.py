"""The writer's own line protocol is byte for byte influxdb-client's ``Point.to_line_protocol()``."""

from __future__ import annotations

import math
import numbers
import random
import struct
from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st
from influxdb_client.client.write.point import Point
from influxdb_client.domain.write_precision import WritePrecision

from flowcollect.values import CollectedVariable, ValueBatch, VariableSpec
from flowcollect.writers._lineprotocol import (
    LineSerializer,
    Unwritable,
    field_text,
    float_texts,
    timestamp_ns,
)

# Everything line protocol escapes (or must not), plus text from all of Unicode.
SPECIAL = st.sampled_from([",", "=", " ", "\n", "\t", "\r", "\\", '"', "#", "é", "\x00", "💧"])
TEXT = st.text(alphabet=st.one_of(SPECIAL, st.characters()), max_size=24)
NAMES = st.text(alphabet=st.one_of(SPECIAL, st.characters()), min_size=1, max_size=16).filter(
    lambda name: not name.startswith("#")  # a comment line: refused by the writer's settings
)
IDS = st.integers(min_value=-(2**40), max_value=2**63)
ZONES = st.none() | st.builds(
    timezone,
    st.timedeltas(min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59)),
)
# The span of a signed 64-bit nanosecond timestamp.
TIMES = st.datetimes(min_value=datetime(1678, 1, 1), max_value=datetime(2261, 12, 31), timezones=ZONES)

VALUES: dict[str, st.SearchStrategy[Any]] = {
    "float": st.floats() | st.integers(min_value=-(2**70), max_value=2**70) | st.booleans(),
    "int": st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False).map(float.__floor__).map(float),
    "bool": st.booleans() | st.sampled_from([0, 1, 0.0, 1.0]),
    "str": TEXT | st.floats(allow_nan=False) | st.integers(),
}
TYPED_VALUES = st.sampled_from(sorted(VALUES)).flatmap(lambda vt: st.tuples(st.just(vt), VALUES[vt]))


@st.composite
def collected(draw: st.DrawFn, time: datetime | None = None) -> CollectedVariable:
    value_type, value = draw(TYPED_VALUES)
    return CollectedVariable(
        id=draw(IDS),
        context_id=draw(IDS),
        address=draw(TEXT),
        value_type=value_type,
        reader=draw(TEXT),
        interval_ms=1000,
        value=value,
        time=draw(TIMES) if time is None else time,
    )


def as_declared(value: Any, value_type: str) -> Any:
    """The Python value the writer sends for ``value_type`` (its conversion rules, restated)."""
    if value_type == "float":
        return float(value)
    if value_type == "int":
        return int(value)
    if value_type == "bool":
        return bool(value)
    return value if isinstance(value, str) else str(value)


def point_line(measurement: str, v: CollectedVariable) -> str:
    point = (
        Point(measurement)
        .tag("address", v.address)
        .tag("context", v.context_id)
        .tag("reader", v.reader)
        .tag("variable", v.id)
        .field("value", as_declared(v.value, v.value_type))
        .time(v.time, WritePrecision.NS)
    )
    return str(point.to_line_protocol())


def refused_on_purpose(v: CollectedVariable) -> bool:
    """Values the writer refuses where Point would write text the server rejects (or nothing)."""
    value = as_declared(v.value, v.value_type)
    if v.value_type == "float":
        return not math.isfinite(value)  # Point writes no line at all for these
    if v.value_type == "int":
        return not -(2**63) <= value < 2**63  # InfluxDB refuses the whole batch for one of these
    if v.value_type == "str":
        return len(value.encode("utf-8", "surrogatepass")) > 65535
    return False


@settings(max_examples=400, deadline=None)
@given(measurement=NAMES, v=collected())
@example(measurement="m", v=CollectedVariable(1, 1, "di\\", "float", "r r", 1, 1.0, datetime(2024, 1, 1)))
@example(measurement="a b,c", v=CollectedVariable(1, 2, "", "str", "x", 1, 'q"\\', datetime(2024, 1, 1)))
@example(measurement="m", v=CollectedVariable(1, 2, "a", "float", "x", 1, 1e16, datetime(2024, 1, 1)))
def test_a_line_is_what_point_writes(measurement: str, v: CollectedVariable) -> None:
    serializer = LineSerializer(measurement)
    lines, failed, unwritable = serializer.serialize([v], default_ns=0)
    assert failed == []
    if refused_on_purpose(v):
        assert lines == [] and len(unwritable) == 1
    else:
        assert unwritable == []
        assert lines == [point_line(measurement, v)]
        assert serializer.line(v, default_ns=0) == lines[0]


@settings(max_examples=100, deadline=None)
@given(measurement=NAMES, at=TIMES, data=st.data())
def test_a_batch_is_the_lines_of_its_writable_values_in_order(
    measurement: str, at: datetime, data: st.DataObject
) -> None:
    # Values of one tick share one time object, as the collector delivers them.
    values = data.draw(st.lists(collected(time=at), max_size=20))
    errors = set(data.draw(st.sets(st.integers(0, 19))))
    for i in errors & set(range(len(values))):
        values[i].error = "timeout"
    lines, failed, unwritable = LineSerializer(measurement).serialize(values, default_ns=0)
    wanted = [v for v in values if v.error is None and not refused_on_purpose(v)]
    assert lines == [point_line(measurement, v) for v in wanted]
    assert failed == [v for v in values if v.error is not None]
    assert len(unwritable) == len(values) - len(wanted) - len(failed)


@given(at=TIMES)
def test_timestamps_are_nanoseconds_as_point_computes_them(at: datetime) -> None:
    text = Point("m").field("f", 1.0).time(at, WritePrecision.NS).to_line_protocol()
    assert str(timestamp_ns(at)) == text.rsplit(" ", 1)[1]
    assert timestamp_ns(at) % 1000 == 0


def test_a_value_without_time_takes_the_moment_it_was_handed_over() -> None:
    v = CollectedVariable(1, 1, "a", "int", "r", 1, 5, None)
    assert LineSerializer("m").serialize([v], default_ns=123)[0] == [
        "m,address=a,context=1,reader=r,variable=1 value=5i 123"
    ]


@given(
    value=st.one_of(
        st.text(max_size=3), st.binary(max_size=3), st.none(), st.lists(st.integers(), max_size=2)
    )
)
def test_values_of_the_wrong_kind_are_refused_with_a_reason(value: Any) -> None:
    for value_type in ("float", "int", "bool"):
        if isinstance(value, numbers.Real):
            continue
        try:
            field_text(value, value_type)
        except Unwritable as exc:
            assert str(exc)
        else:
            raise AssertionError(f"{value!r} accepted as {value_type}")


TAG_KEYS_DRAWN = st.text(alphabet=st.one_of(SPECIAL, st.characters()), min_size=1, max_size=8).filter(
    lambda key: not key.endswith("\\")  # Point leaves a key's trailing backslash to escape its '='
)
TYPED_KEYS = {"float": "value", "int": "value_int", "bool": "value_bool", "str": "value_str"}


@settings(max_examples=150, deadline=None)
@given(measurement=NAMES, t_ms=st.integers(0, 2**63 // 10**6 - 1), data=st.data())
def test_a_columnar_batch_is_what_point_writes_with_typed_field_keys(
    measurement: str, t_ms: int, data: st.DataObject
) -> None:
    n = data.draw(st.integers(0, 10))
    specs, values = [], []
    for _ in range(n):
        value_type, value = data.draw(TYPED_VALUES)
        specs.append(
            VariableSpec(
                data.draw(IDS),
                data.draw(IDS),
                data.draw(TEXT),
                value_type,
                data.draw(TEXT),
                1000,
                name=data.draw(st.none() | TEXT),
                tags=tuple(data.draw(st.lists(st.tuples(TAG_KEYS_DRAWN, TEXT), max_size=3))),
            )
        )
        values.append(value)
    errors: list[str | None] = [data.draw(st.sampled_from([None, None, "timeout"])) for _ in range(n)]
    values = [None if e else v for v, e in zip(values, errors, strict=True)]
    batch = ValueBatch(t_ms, specs, values, errors)
    lines, problems = LineSerializer(measurement, "typed").serialize_batch(batch)

    expected = []
    for i, (spec, v) in enumerate(zip(batch.variables, batch, strict=True)):
        if v.error is not None or refused_on_purpose(v):
            assert any(p[0] == i for p in problems)
            continue
        point = Point(measurement)
        for key, tag in spec.tags:
            if key not in {"address", "context", "name", "reader", "variable"}:
                point.tag(key, tag)
        point.tag("address", spec.address).tag("context", spec.context_id).tag("reader", spec.reader)
        point.tag("variable", spec.id).tag("name", spec.name or None)
        point.field(TYPED_KEYS[spec.value_type], as_declared(v.value, v.value_type))
        expected.append(str(point.time(t_ms * 1_000_000, WritePrecision.NS).to_line_protocol()))
    assert lines == expected
    assert len(problems) == n - len(expected)


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.floats(), min_size=1, max_size=12), t_ms=st.integers(0, 2**40))
@example(values=[1.0, 100.0, 1e16, -0.0, 2.5e-300, 1.7976931348623157e308, 1.7976931348623157e308], t_ms=0)
# Below 1e-4 the fast path's JSON notation differs from repr's and is made again.
@example(values=[1e-05, -1.3207500170060027e-08, 0.00012, 10.00001, 9.9e-05, 5e-324, 0.0001], t_ms=0)
def test_a_batch_of_floats_takes_the_fast_path_to_the_same_text(values: list[float], t_ms: int) -> None:
    specs = [VariableSpec(i, 1, f"a{i}", "float", "r", 1000) for i in range(len(values))]
    lines, problems = LineSerializer("m", "typed").serialize_batch(ValueBatch(t_ms, specs, list(values)))
    expected = [
        str(
            Point("m")
            .tag("address", f"a{i}")
            .tag("context", 1)
            .tag("reader", "r")
            .tag("variable", i)
            .field("value", x)
            .time(t_ms * 1_000_000, WritePrecision.NS)
            .to_line_protocol()
        )
        for i, x in enumerate(values)
        if math.isfinite(x)
    ]
    assert lines == expected
    assert [p[0] for p in problems] == [i for i, x in enumerate(values) if not math.isfinite(x)]


FINITE = st.floats(allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(values=st.lists(FINITE | FINITE.map(lambda x: x * 1e-6) | st.integers(-(10**9), 10**9).map(float)))
@example(values=[1e-05, 1e-06, -1e-07, 0.0001, 9.999e-05, 1e16, 1e15, 9007199254740993.0, -0.0, 5e-324])
def test_float_texts_are_the_reprs_without_a_whole_floats_point_zero(values: list[float]) -> None:
    expected = [(repr(x)[:-2] if repr(x).endswith(".0") else repr(x)) + " 7" for x in values]
    assert float_texts(values, " 7") == expected
    assert float_texts(values) == [text[:-2] for text in expected]


def test_float_texts_agree_with_repr_over_random_doubles_of_every_exponent() -> None:
    # Random bit patterns cover every binary exponent, where hypothesis favours special values.
    rng = random.Random(20261126)
    doubles = (struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0] for _ in range(200_000))
    values = [x for x in doubles if math.isfinite(x)]
    assert float_texts(values) == [repr(x)[:-2] if repr(x).endswith(".0") else repr(x) for x in values]
