"""The edge node's session in virtual time: no broker, every payload decoded by the protobuf
library (``_schema.Payload``), never by the encoder under test."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest

from flowcollect.sparkplug._schema import DataType, Payload
from flowcollect.sparkplug._session import (
    Carried,
    EdgeNode,
    Note,
    Publish,
    Reconnect,
    Settle,
    Subscribe,
)
from flowcollect.values import ValueBatch, VariableSpec

T0 = 1_765_102_500_000  # 2025-12-07T10:15:00Z, a grid instant


def spec(i: int, address: str, value_type: str = "float", *, reader: str = "plc1", **kw: Any) -> VariableSpec:
    return VariableSpec(i, 1, address, value_type, reader, 100, name=kw.pop("name", None), **kw)


def batch(
    variables: Sequence[VariableSpec],
    t_ms: int,
    values: list[Any],
    errors: list[str | None] | None = None,
    quality: list[str | None] | None = None,
) -> ValueBatch:
    return ValueBatch(t_ms, variables, list(values), errors, quality=quality, context_id=1)


def node(**kw: Any) -> EdgeNode:
    kw.setdefault("device_of", lambda s: s.reader)
    return EdgeNode("Plant", "edge1", **kw)


def publishes(actions: Sequence[Any]) -> list[Publish]:
    return [a for a in actions if isinstance(a, Publish)]


def decoded(message: Publish) -> Any:
    return Payload.FromString(message.payload)


def metric_by_name(payload: Any) -> dict[str, Any]:
    return {m.name: m for m in payload.metrics}


VARS = (
    spec(1, "temp", name="Line/Temp"),
    spec(2, "run", "bool", name="Run"),
    spec(3, "holding:4:int16", "int"),
)


def start(n: EdgeNode, now: int = T0 - 50) -> list[Publish]:
    n.will(now)
    return publishes(n.connected(now))


def test_will_is_ndeath_with_bdseq_and_no_seq() -> None:
    n = node(bdseq=7)
    will = n.will(T0)
    assert will.kind == "NDEATH" and will.topic == "spBv1.0/Plant/NDEATH/edge1" and will.qos == 1
    payload = decoded(will)
    assert not payload.HasField("seq")
    (bdseq,) = payload.metrics
    assert (bdseq.name, bdseq.datatype, bdseq.long_value) == ("bdSeq", DataType.Int64, 7)


def test_births_before_data_then_aliases_only() -> None:
    n = node()
    actions = n.will(T0 - 50), n.connected(T0 - 50)
    subscribe = next(a for a in actions[1] if isinstance(a, Subscribe))
    assert ("spBv1.0/Plant/NCMD/edge1", 1) in subscribe.topics
    (nbirth,) = publishes(actions[1])
    assert nbirth.kind == "NBIRTH" and nbirth.topic == "spBv1.0/Plant/NBIRTH/edge1"
    payload = decoded(nbirth)
    assert payload.seq == 0
    metrics = metric_by_name(payload)
    assert metrics["bdSeq"].long_value == 0 and metrics["bdSeq"].datatype == DataType.Int64
    rebirth = metrics["Node Control/Rebirth"]
    assert rebirth.datatype == DataType.Boolean and rebirth.boolean_value is False

    first = batch(VARS, T0, [21.5, True, -3])
    (dbirth,) = publishes(n.data(first, T0 + 2))
    assert dbirth.kind == "DBIRTH" and dbirth.topic == "spBv1.0/Plant/DBIRTH/edge1/plc1"
    assert dbirth.carries == (Carried(first, 0, 3),)
    payload = decoded(dbirth)
    assert payload.seq == 1
    born = metric_by_name(payload)
    assert set(born) == {"Line/Temp", "Run", "holding:4:int16"}
    assert born["Line/Temp"].datatype == DataType.Double and born["Line/Temp"].double_value == 21.5
    assert born["Run"].datatype == DataType.Boolean and born["Run"].boolean_value is True
    assert born["holding:4:int16"].datatype == DataType.Int16
    assert born["holding:4:int16"].int_value == (-3) & 0xFFFFFFFF  # two's complement in uint32
    assert all(m.timestamp == T0 for m in payload.metrics)
    aliases = {m.name: m.alias for m in payload.metrics}
    assert len(set(aliases.values())) == 3 and 0 not in aliases.values()

    second = batch(VARS, T0 + 100, [22.0, False, 5])
    (ddata,) = publishes(n.data(second, T0 + 102))
    assert ddata.kind == "DDATA" and ddata.topic == "spBv1.0/Plant/DDATA/edge1/plc1" and ddata.qos == 0
    assert ddata.carries == (Carried(second, 0, 3),)
    payload = decoded(ddata)
    assert payload.seq == 2 and payload.timestamp == T0 + 102
    assert all(not m.HasField("name") and not m.HasField("datatype") for m in payload.metrics)
    assert all(m.timestamp == T0 + 100 and not m.is_historical for m in payload.metrics)
    by_alias = {m.alias: m for m in payload.metrics}
    assert by_alias[aliases["Line/Temp"]].double_value == 22.0
    assert by_alias[aliases["Run"]].boolean_value is False
    assert by_alias[aliases["holding:4:int16"]].int_value == 5


def test_seq_wraps_after_255_across_all_node_messages() -> None:
    n = node()
    start(n)
    seqs = []
    for k in range(300):
        for message in publishes(n.data(batch(VARS, T0 + 100 * k, [1.0, True, k]), T0 + 100 * k)):
            seqs.append(decoded(message).seq)
    assert seqs == [(1 + k) % 256 for k in range(300)]


def test_a_new_connection_has_a_new_bdseq_and_restarts_seq() -> None:
    n = node(bdseq=254)
    start(n)
    n.data(batch(VARS, T0, [1.0, True, 1]), T0)
    n.connection_lost()
    assert metric_by_name(decoded(n.will(T0 + 10)))["bdSeq"].long_value == 255
    out = publishes(n.connected(T0 + 20))
    assert [m.kind for m in out] == ["NBIRTH", "DBIRTH"]
    assert [decoded(m).seq for m in out] == [0, 1]
    assert metric_by_name(decoded(out[0]))["bdSeq"].long_value == 255
    n.connection_lost()
    assert metric_by_name(decoded(n.will(T0 + 30)))["bdSeq"].long_value == 0  # 0-255, round


def test_failed_connect_keeps_the_bdseq() -> None:
    n = node()
    n.will(T0)
    n.connection_lost()  # never connected: the will was never registered
    assert n.bdseq == 0


def rebirth_command(value: bool = True) -> bytes:
    payload = Payload(timestamp=T0)
    payload.metrics.add(name="Node Control/Rebirth", datatype=DataType.Boolean, boolean_value=value)
    return payload.SerializeToString()


def test_rebirth_on_ncmd_with_current_values() -> None:
    n = node()
    start(n)
    n.data(batch(VARS, T0, [1.0, True, 1]), T0)
    n.data(batch(VARS, T0 + 100, [2.0, False, 2]), T0 + 100)
    assert publishes(n.received("spBv1.0/Plant/NCMD/edge1", rebirth_command(False), T0 + 150)) == []
    out = publishes(n.received("spBv1.0/Plant/NCMD/edge1", rebirth_command(), T0 + 150))
    assert [m.kind for m in out] == ["NBIRTH", "DBIRTH"]
    assert [decoded(m).seq for m in out] == [0, 1]
    assert all(m.carries == () for m in out)  # values already counted: a birth repeats them
    born = metric_by_name(decoded(out[1]))
    assert born["Line/Temp"].double_value == 2.0 and born["Line/Temp"].timestamp == T0 + 100
    # Data goes on with the same aliases, seq after the births.
    (ddata,) = publishes(n.data(batch(VARS, T0 + 200, [3.0, True, 3]), T0 + 200))
    assert decoded(ddata).seq == 2
    assert {m.alias for m in decoded(ddata).metrics} == {m.alias for m in decoded(out[1]).metrics}


def test_ncmd_that_is_not_a_payload_is_a_note() -> None:
    n = node()
    start(n)
    actions = n.received("spBv1.0/Plant/NCMD/edge1", b"\xff\xff\xff", T0)
    assert [type(a) for a in actions] == [Note]


def test_error_is_null_with_bad_quality_and_uncertain_keeps_the_value() -> None:
    n = node()
    start(n)
    n.data(batch(VARS, T0, [1.0, True, 1]), T0)
    b = batch(VARS, T0 + 100, [None, True, 4], ["timeout", None, None], [None, None, "UncertainLastUsable"])
    (ddata,) = publishes(n.data(b, T0 + 100))
    assert ddata.carries == (Carried(b, 0, 3),)  # an error is delivered as what it is
    temp, run, reg = decoded(ddata).metrics
    assert temp.is_null and temp.WhichOneof("value") is None
    assert list(temp.properties.keys) == ["Quality"]
    quality = temp.properties.values[0]
    assert quality.type == DataType.Int32 and quality.int_value == (-2147483136) & 0xFFFFFFFF
    assert not run.is_null and len(run.properties.keys) == 0
    assert reg.int_value == 4 and list(reg.properties.keys) == ["Quality"]
    assert reg.properties.values[0].int_value == 1073742080  # Ignition's Uncertain


def test_value_that_does_not_fit_is_null_and_counted_failed() -> None:
    n = node()
    start(n)
    n.data(batch(VARS, T0, [1.0, True, 1]), T0)
    b = batch(VARS, T0 + 100, [1.0, True, 40000])  # 40000 is no int16
    (ddata,) = publishes(n.data(b, T0 + 100))
    (carried,) = ddata.carries
    assert (carried.count, carried.failed) == (3, 1) and "holding:4:int16" in (carried.error or "")
    assert decoded(ddata).metrics[2].is_null


@pytest.mark.parametrize(
    ("address", "value_type", "extra", "datatype"),
    [
        ("holding:0:int16", "int", {}, DataType.Int16),
        ("holding:0:uint16", "int", {}, DataType.UInt16),
        ("input:0:int32", "int", {}, DataType.Int32),
        ("input:0:uint32", "int", {}, DataType.UInt32),
        ("holding:0:int64", "int", {}, DataType.Int64),
        ("holding:0:uint64", "int", {}, DataType.UInt64),
        ("holding:0:float32", "float", {}, DataType.Float),
        ("holding:0:float64", "float", {}, DataType.Double),
        ("holding:0:int16", "float", {"scale": 0.1}, DataType.Double),
        ("coil:3", "bool", {}, DataType.Boolean),
        ("ns=2;s=Line.Speed", "float", {}, DataType.Double),
        ("ns=2;s=Line.Count", "int", {}, DataType.Int64),
        ("ns=2;s=Line.Batch", "str", {}, DataType.String),
    ],
)
def test_datatypes_follow_the_value_type_and_register(
    address: str, value_type: str, extra: dict[str, Any], datatype: int
) -> None:
    n = node()
    start(n)
    value = {"bool": True, "str": "B-17", "int": 7, "float": 1.5}[value_type]
    (dbirth,) = publishes(n.data(batch((spec(1, address, value_type, **extra),), T0, [value]), T0))
    (metric,) = decoded(dbirth).metrics
    assert metric.datatype == datatype


def test_devices_from_the_template_each_born_once() -> None:
    n = node()
    start(n)
    variables = (spec(1, "a", reader="plc1"), spec(2, "b", reader="plc2"), spec(3, "c", reader="plc1"))
    b = batch(variables, T0, [1.0, 2.0, 3.0])
    out = publishes(n.data(b, T0))
    assert [(m.kind, m.topic.rsplit("/", 1)[1]) for m in out] == [("DBIRTH", "plc1"), ("DBIRTH", "plc2")]
    assert [c.count for m in out for c in m.carries] == [2, 1]
    out = publishes(n.data(batch(variables, T0 + 100, [4.0, 5.0, 6.0]), T0 + 100))
    assert [m.kind for m in out] == ["DDATA", "DDATA"]
    aliases = [m.alias for message in out for m in decoded(message).metrics]
    assert len(set(aliases)) == 3  # aliases unique across the node's devices


def test_a_device_name_the_template_cannot_make_fails_those_values() -> None:
    def device_of(s: VariableSpec) -> str:
        if s.reader == "bad":
            raise ValueError("device 'a/b' must not contain /")
        return s.reader

    n = node(device_of=device_of)
    start(n)
    b = batch((spec(1, "a"), spec(2, "b", reader="bad")), T0, [1.0, 2.0])
    actions = n.data(b, T0)
    assert Settle(b, 1, 0, "device 'a/b' must not contain /") in actions
    (dbirth,) = publishes(actions)
    assert dbirth.carries == (Carried(b, 0, 1),)


def test_a_new_metric_on_a_born_device_is_a_rebirth() -> None:
    n = node()
    start(n)
    n.data(batch(VARS[:2], T0, [1.0, True]), T0)
    b = batch(VARS, T0 + 100, [2.0, False, 9])
    out = publishes(n.data(b, T0 + 100))
    assert [m.kind for m in out] == ["NBIRTH", "DBIRTH", "DDATA"]
    assert set(metric_by_name(decoded(out[1]))) == {"Line/Temp", "Run", "holding:4:int16"}
    assert out[2].carries == (Carried(b, 0, 3),)
    assert [decoded(m).seq for m in out] == [0, 1, 2]


def state(online: bool, stamp: int) -> bytes:
    return json.dumps({"online": online, "timestamp": stamp}).encode()


STATE = "spBv1.0/STATE/scada"


def test_primary_host_births_only_when_online_and_held_data_goes_out_historical() -> None:
    n = node(primary_host_id="scada")
    n.will(T0 - 500)
    actions = n.connected(T0 - 500)
    (subscribe,) = [a for a in actions if isinstance(a, Subscribe)]
    assert (STATE, 1) in subscribe.topics
    assert publishes(actions) == []  # no STATE yet: the host counts as offline
    held = [batch(VARS, T0 + 100 * k, [float(k), True, k]) for k in range(3)]
    for b in held:
        assert publishes(n.data(b, b.t_ms)) == []
    assert n.held_values == 9
    assert publishes(n.received(STATE, state(False, 10), T0 + 250)) == []
    out = publishes(n.received(STATE, state(True, 20), T0 + 300))
    assert [m.kind for m in out] == ["NBIRTH", "DBIRTH", "DDATA", "DDATA"]
    assert [decoded(m).seq for m in out] == [0, 1, 2, 3]
    # The newest held values are the current ones: the birth carries them; the older follow.
    assert out[1].carries == (Carried(held[2], 0, 3),)
    born = metric_by_name(decoded(out[1]))
    assert born["Line/Temp"].double_value == 2.0 and not born["Line/Temp"].is_historical
    assert born["Line/Temp"].timestamp == T0 + 200
    for k, message in enumerate(out[2:]):
        assert message.carries == (Carried(held[k], 0, 3),)
        metrics = decoded(message).metrics
        assert all(m.is_historical and m.timestamp == T0 + 100 * k for m in metrics)
    assert n.held_values == 0
    # Live from now on.
    (live,) = publishes(n.data(batch(VARS, T0 + 400, [9.0, True, 9]), T0 + 400))
    assert not any(m.is_historical for m in decoded(live).metrics)


def test_primary_host_offline_ends_the_session_and_data_is_held() -> None:
    n = node(primary_host_id="scada")
    n.will(T0)
    n.connected(T0)
    n.received(STATE, state(True, 20), T0)
    n.data(batch(VARS, T0 + 100, [1.0, True, 1]), T0 + 100)
    actions = n.received(STATE, state(False, 30), T0 + 150)
    (ndeath,) = publishes(actions)
    assert ndeath.kind == "NDEATH" and metric_by_name(decoded(ndeath))["bdSeq"].long_value == 0
    assert isinstance(actions[-1], Reconnect)
    older, newer = batch(VARS, T0 + 200, [2.0, True, 2]), batch(VARS, T0 + 300, [3.0, True, 3])
    assert publishes(n.data(older, T0 + 200)) == [] and publishes(n.data(newer, T0 + 300)) == []
    n.connection_lost()
    assert metric_by_name(decoded(n.will(T0 + 250)))["bdSeq"].long_value == 1
    assert publishes(n.connected(T0 + 250)) == []
    # A stale retained "online" (older timestamp) does not count.
    assert publishes(n.received(STATE, state(True, 25), T0 + 260)) == []
    out = publishes(n.received(STATE, state(True, 40), T0 + 400))
    assert [m.kind for m in out] == ["NBIRTH", "DBIRTH", "DDATA"]
    assert metric_by_name(decoded(out[0]))["bdSeq"].long_value == 1
    assert out[1].carries == (Carried(newer, 0, 3),) and out[2].carries == (Carried(older, 0, 3),)
    assert all(m.is_historical and m.timestamp == T0 + 200 for m in decoded(out[2]).metrics)


def test_state_that_is_not_json_is_a_note() -> None:
    n = node(primary_host_id="scada")
    n.connected(T0)
    assert [type(a) for a in n.received(STATE, b"{nope", T0)] == [Note]
    assert not n.host_online


def test_hold_limit_drops_the_oldest_and_says_so() -> None:
    n = node(primary_host_id="scada", hold_limit=6)
    n.connected(T0)
    batches = [batch(VARS, T0 + 100 * k, [1.0, True, k]) for k in range(3)]
    assert n.data(batches[0], T0) == [] and n.data(batches[1], T0) == []
    (settle,) = n.data(batches[2], T0)
    assert isinstance(settle, Settle) and (settle.batch, settle.dropped) == (batches[0], 3)
    assert n.held_values == 6
    taken = n.take_held()
    assert taken == [(batches[1], 3), (batches[2], 3)] and n.held_values == 0


def test_requeued_values_go_out_in_instant_order_and_historical() -> None:
    n = node()
    start(n)
    first = batch(VARS, T0, [1.0, True, 1])
    n.data(first, T0)
    b = batch(VARS, T0 + 100, [2.0, True, 2])
    (ddata,) = publishes(n.data(b, T0 + 100))
    n.connection_lost()
    later = batch(VARS, T0 + 200, [3.0, True, 3])
    n.data(later, T0 + 200)  # held: no session
    n.requeue(ddata.carries)  # the broker never got it: back, behind the later one
    assert n.held_values == 6
    n.will(T0 + 300)
    out = publishes(n.connected(T0 + 300))
    assert [m.kind for m in out] == ["NBIRTH", "DBIRTH", "DDATA"]
    assert out[1].carries == (Carried(later, 0, 3),)
    assert out[2].carries == (Carried(b, 0, 3),)
    assert all(m.is_historical for m in decoded(out[2]).metrics)


def test_clean_stop_sends_ddeath_per_device_then_ndeath() -> None:
    n = node(bdseq=3)
    start(n)
    variables = (spec(1, "a", reader="plc1"), spec(2, "b", reader="plc2"))
    n.data(batch(variables, T0, [1.0, 2.0]), T0)
    out = publishes(n.stop(T0 + 10))
    assert [(m.kind, m.topic) for m in out] == [
        ("DDEATH", "spBv1.0/Plant/DDEATH/edge1/plc1"),
        ("DDEATH", "spBv1.0/Plant/DDEATH/edge1/plc2"),
        ("NDEATH", "spBv1.0/Plant/NDEATH/edge1"),
    ]
    assert [decoded(m).seq for m in out[:2]] == [3, 4]
    assert metric_by_name(decoded(out[2]))["bdSeq"].long_value == 3


def test_late_values_in_a_live_session_are_historical() -> None:
    n = node()
    start(n, now=T0 + 5_000)
    n.data(batch(VARS, T0 + 5_000, [1.0, True, 1]), T0 + 5_000)
    # Older than a value already sent: it must not overwrite the live one.
    (older,) = publishes(n.data(batch(VARS, T0 + 4_900, [0.5, True, 0]), T0 + 5_010))
    assert all(m.is_historical for m in decoded(older).metrics)
    # From well before the births (a spool's backlog after a restart), on another device.
    other = (spec(9, "x", reader="plc9"),)
    out = publishes(n.data(batch(other, T0, [7.0]), T0 + 5_020))
    assert [m.kind for m in out] == ["DBIRTH", "DDATA"]
    assert out[0].carries == () and all(m.is_historical for m in decoded(out[1]).metrics)
    # Just overtaken by the births (within the grace): live.
    (fresh,) = publishes(n.data(batch(other, T0 + 4_500, [8.0]), T0 + 5_030))
    assert not any(m.is_historical for m in decoded(fresh).metrics)
