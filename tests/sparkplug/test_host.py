"""The reading side: addresses, aliases learned from births, seq gaps asking for a rebirth.

Messages come from the edge node's session (a real producer) and, where a test needs a payload
the session would never send, straight from the protobuf library."""

from __future__ import annotations

from typing import Any

import pytest

from flowcollect.sparkplug._host import SparkplugAddress, SparkplugHost, parse_address
from flowcollect.sparkplug._schema import DataType, Payload
from flowcollect.sparkplug._session import EdgeNode, Publish
from flowcollect.values import ValueBatch, VariableSpec

T0 = 1_765_102_500_000
VARS = (
    VariableSpec(1, 1, "temp", "float", "plc1", 100, name="Temp"),
    VariableSpec(2, 1, "holding:1:int16", "int", "plc1", 100, name="Level"),
)
TEMP = parse_address("spBv1.0/Plant/DDATA/edge1/plc1:Temp")
LEVEL = parse_address("spBv1.0/Plant/DDATA/edge1/plc1:Level")


def test_parse_address() -> None:
    a = parse_address("spBv1.0/G/DDATA/E/D:Folder/Metric: one")
    assert a == SparkplugAddress("G", "E", "D", "Folder/Metric: one")
    assert str(a) == "spBv1.0/G/DDATA/E/D:Folder/Metric: one"
    assert parse_address("spBv1.0/G/NDATA/E:m") == SparkplugAddress("G", "E", None, "m")
    assert a.subscriptions() == ["spBv1.0/G/+/E", "spBv1.0/G/+/E/+"]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("spBv1.0/G/DDATA/E/D", "must look like"),
        ("spBv1.0/G/DDATA/E/D:", "names no metric"),
        ("spAv1.0/G/DDATA/E/D:m", "must start with spBv1.0/"),
        ("spBv1.0/G/DBIRTH/E/D:m", "the topic must be"),
        ("spBv1.0/G/DDATA/+/D:m", "must not contain +"),
    ],
)
def test_bad_addresses_say_why(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_address(text)


def edge() -> tuple[EdgeNode, list[Publish]]:
    n = EdgeNode("Plant", "edge1", device_of=lambda s: s.reader)
    n.will(T0)
    return n, [a for a in n.connected(T0) if isinstance(a, Publish)]


def feed(host: SparkplugHost, messages: list[Publish], now: int = T0) -> list[Any]:
    out = []
    for m in messages:
        out.append(host.received(m.topic, m.payload, now))
    return out


def data(n: EdgeNode, t_ms: int, temp: float, level: int) -> list[Publish]:
    b = ValueBatch(t_ms, VARS, [temp, level], context_id=1)
    return [a for a in n.data(b, t_ms) if isinstance(a, Publish)]


def test_values_by_name_from_births_and_aliased_data() -> None:
    host = SparkplugHost()
    host.set_wanted([TEMP, LEVEL])
    n, births = edge()
    feed(host, births)
    (birth,) = feed(host, data(n, T0, 20.5, -7))
    assert [(v.address, v.value, v.t_ms) for v in birth.values] == [(TEMP, 20.5, T0), (LEVEL, -7, T0)]
    (update,) = feed(host, data(n, T0 + 100, 21.0, -8))
    assert [(v.address.metric, v.value, v.t_ms, v.error) for v in update.values] == [
        ("Temp", 21.0, T0 + 100, None),
        ("Level", -8, T0 + 100, None),
    ]
    assert update.rebirth is None


def test_a_seq_gap_asks_for_a_rebirth_once_per_interval() -> None:
    host = SparkplugHost()
    host.set_wanted([TEMP])
    n, births = edge()
    feed(host, births + data(n, T0, 1.0, 1))
    data(n, T0 + 100, 2.0, 2)  # lost on the way
    (update,) = feed(host, data(n, T0 + 200, 3.0, 3), now=T0 + 200)
    assert update.rebirth is not None
    topic, payload = update.rebirth
    assert topic == "spBv1.0/Plant/NCMD/edge1"
    (metric,) = Payload.FromString(payload).metrics
    assert (metric.name, metric.datatype, metric.boolean_value) == (
        "Node Control/Rebirth",
        DataType.Boolean,
        True,
    )
    assert [v.value for v in update.values] == [3.0]  # the value itself is still good
    data(n, T0 + 300, 4.0, 4)
    (again,) = feed(host, data(n, T0 + 400, 5.0, 5), now=T0 + 400)
    assert again.rebirth is None  # asked a moment ago: not again yet
    # The node answers with births: in step again.
    births = [a for a in n.received(topic, payload, T0 + 500) if isinstance(a, Publish)]
    feed(host, births)
    (after,) = feed(host, data(n, T0 + 600, 6.0, 6), now=T0 + 600)
    assert after.rebirth is None and [v.value for v in after.values] == [6.0]


def test_data_before_any_birth_asks_for_a_rebirth() -> None:
    host = SparkplugHost()
    host.set_wanted([TEMP])
    n, _births = edge()
    data(n, T0, 1.0, 1)  # the birth the host never saw
    (update,) = feed(host, data(n, T0 + 100, 2.0, 2))
    assert update.rebirth is not None and update.values == []


def test_deaths_make_errors_and_a_late_will_of_an_old_session_is_ignored() -> None:
    host = SparkplugHost()
    host.set_wanted([TEMP])
    n, births = edge()
    feed(host, births + data(n, T0, 1.0, 1))
    old_will = n.will(T0)  # bdSeq 0
    n.connection_lost()
    n.will(T0 + 10)
    feed(host, [a for a in n.connected(T0 + 10) if isinstance(a, Publish)])  # NBIRTH bdSeq 1
    (late,) = feed(host, [old_will])
    assert late.values == []
    (ddeath,) = feed(host, [m for m in n.stop(T0 + 20) if isinstance(m, Publish) and m.kind == "DDEATH"])
    assert [v.error for v in ddeath.values] == ["device offline (DDEATH)"]
    (death,) = feed(host, [n.will(T0 + 30)])
    assert [(v.value, v.error) for v in death.values] == [(None, "edge node offline (NDEATH)")]


def test_quality_bad_is_an_error_and_historical_is_kept() -> None:
    host = SparkplugHost()
    host.set_wanted([TEMP])
    payload = Payload(timestamp=T0, seq=0)
    payload.metrics.add(name="bdSeq", datatype=DataType.Int64, long_value=0)
    host.received("spBv1.0/Plant/NBIRTH/edge1", payload.SerializeToString(), T0)
    birth = Payload(timestamp=T0, seq=1)
    m = birth.metrics.add(name="Temp", alias=5, datatype=DataType.Double, is_null=True, timestamp=T0)
    m.properties.keys.append("Quality")
    m.properties.values.add(type=DataType.Int32, int_value=(-2147483136) & 0xFFFFFFFF)
    (value,) = host.received("spBv1.0/Plant/DBIRTH/edge1/plc1", birth.SerializeToString(), T0).values
    assert value.value is None and value.error is not None and "Bad" in value.error
    ddata = Payload(timestamp=T0, seq=2)
    ddata.metrics.add(alias=5, double_value=4.5, timestamp=T0 - 1000, is_historical=True)
    (value,) = host.received("spBv1.0/Plant/DDATA/edge1/plc1", ddata.SerializeToString(), T0).values
    assert (value.value, value.t_ms, value.historical) == (4.5, T0 - 1000, True)


def test_a_payload_that_does_not_parse_is_a_problem_not_a_crash() -> None:
    host = SparkplugHost()
    host.set_wanted([TEMP])
    update = host.received("spBv1.0/Plant/DDATA/edge1/plc1", b"\xff\xff\xff\xff", T0)
    assert update.values == [] and update.problems
