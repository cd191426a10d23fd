"""Polled reads against an in-process asyncua server: types, quality, chunking, timestamps."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from opcua_helpers import read, specs, wait_for

from flowcollect.readers import OpcUaDataReader
from flowcollect.simulator.opcua import KNOWN, NAMESPACE_URI, OpcUaSimulator
from flowcollect.values import VariableSpec

MakeReader = Callable[..., OpcUaDataReader]

# Built-in type -> (value as its natural value type, the natural type).
NATURAL: dict[str, tuple[Any, str]] = {
    "Boolean": (True, "bool"),
    "SByte": (-8, "int"),
    "Byte": (200, "int"),
    "Int16": (-1234, "int"),
    "UInt16": (54321, "int"),
    "Int32": (-123456, "int"),
    "UInt32": (3_000_000_000, "int"),
    "Int64": (-9_000_000_000_000_000, "int"),
    "UInt64": (18_000_000_000_000_000_000, "int"),
    "Float": (1.5, "float"),
    "Double": (2.25, "float"),
    "String": ("hello", "str"),
    "LocalizedText": ("Grüße", "str"),
    "DateTime": ("2024-01-02T03:04:05+00:00", "str"),
    "ByteString": ("0102ff", "str"),
    "Guid": ("72962b91-fa75-4ae6-8d28-b404dc7daf63", "str"),
    "Int32Array": ("[1, 2, 3]", "str"),
    "Integral": (7.0, "float"),
}


def test_every_built_in_type_maps_to_its_value_type(sim: OpcUaSimulator, make_reader: MakeReader) -> None:
    assert set(NATURAL) == set(KNOWN)
    reader = make_reader()
    wanted = [
        VariableSpec(i, 1, sim.node_id(f"Types/{name}"), kind, "opc", 100)
        for i, (name, (_v, kind)) in enumerate(NATURAL.items(), 1)
    ]
    batch = read(reader, wanted)
    got = {cv.address: (cv.value, cv.error) for cv in batch}
    for name, (value, _kind) in NATURAL.items():
        assert got[sim.node_id(f"Types/{name}")] == (value, None), name
    assert all(
        type(v) is {"bool": bool, "int": int, "float": float, "str": str}[s.value_type]
        for v, s in zip(batch.values, wanted, strict=True)
    )


@pytest.mark.parametrize(
    ("name", "value_type", "value", "error"),
    [
        ("Int16", "float", -1234.0, None),
        ("Boolean", "int", 1, None),
        ("Boolean", "float", 1.0, None),
        ("Integral", "int", 7, None),
        ("Double", "int", None, "cannot deliver Double 2.25 as int"),
        ("Byte", "bool", None, "cannot deliver Byte 200 as bool"),
        ("String", "float", None, "cannot deliver String 'hello' as float"),
        ("Int32Array", "int", None, "cannot deliver Int32 array as int"),
        ("Double", "str", "2.25", None),
        ("Boolean", "str", "true", None),
    ],
)
def test_a_value_the_type_cannot_hold_is_an_error_on_that_value_only(
    sim: OpcUaSimulator, make_reader: MakeReader, name: str, value_type: str, value: Any, error: str | None
) -> None:
    reader = make_reader()
    batch = read(
        reader,
        [
            VariableSpec(1, 1, sim.node_id(f"Types/{name}"), value_type, "opc", 100),
            VariableSpec(2, 1, sim.node_id("Types/Double"), "float", "opc", 100),
        ],
    )
    assert (batch.values[0], batch.errors[0]) == (value, error)
    assert (batch.values[1], batch.errors[1]) == (2.25, None)


def test_uncertain_marks_quality_and_bad_gives_no_value_ever(
    sim: OpcUaSimulator, make_reader: MakeReader
) -> None:
    reader = make_reader()
    addresses = [sim.node_id("Types/Uncertain"), sim.node_id("Types/Bad"), sim.node_id("Types/Double")]
    batch = read(reader, specs(addresses))
    assert batch.values == [3.5, None, 2.25]
    assert batch.errors == [None, "BadSensorFailure", None]
    assert batch.quality == ["UncertainLastUsableValue", None, None]
    # A node that turns Bad keeps its last value in the DataValue: it must not be delivered.
    flaky = specs([sim.node_id("Line1/Flaky"), sim.node_id("Line1/Counter")], "float")
    sim.set_bad(True)
    try:
        batch = read(reader, flaky)
        assert batch.values[0] is None and batch.errors[0] == "BadSensorFailure"
        assert batch.errors[1] is None and isinstance(batch.values[1], float)
    finally:
        sim.set_bad(False)
    assert wait_for(lambda: read(reader, flaky).errors[0] is None, 5)


def test_35_due_nodes_cost_4_read_calls_at_the_server(sim: OpcUaSimulator, make_reader: MakeReader) -> None:
    reader = make_reader()
    assert reader.stats()["max_nodes_per_read"] == 10
    wanted = specs([sim.node_id(f"Bulk/B{k}") for k in range(35)])
    read(reader, wanted)  # the first tick plans
    sim.reset_counters()
    for _tick in range(3):
        batch = read(reader, wanted)
        assert batch.values == [float(k) for k in range(35)]
    assert (sim.read_calls, sim.read_nodes) == (12, 105)
    # Only the due nodes: a tick due at 12 of them is 2 calls.
    sim.reset_counters()
    read(reader, wanted[:12])
    assert (sim.read_calls, sim.read_nodes) == (2, 12)


def test_a_server_that_refuses_the_size_it_announced_teaches_a_smaller_one(
    sim: OpcUaSimulator, make_reader: MakeReader
) -> None:
    # A cap above the server's real limit (as when a server announces none, or lies).
    reader = make_reader(max_nodes_per_read=1000)
    assert reader.stats()["max_nodes_per_read"] == 10  # from the server's operation limits
    reader._link.max_read = 25  # type: ignore[union-attr] - what a lying server would make us believe
    wanted = specs([sim.node_id(f"Bulk/B{k}") for k in range(25)])
    first = read(reader, wanted)
    assert set(first.errors) == {"Read refused: BadTooManyOperations"}
    assert wait_for(lambda: read(reader, wanted).errors == [None] * 25, 5)
    assert reader.stats()["max_nodes_per_read"] <= 10


def test_browse_paths_and_namespace_uris_resolve(sim: OpcUaSimulator, make_reader: MakeReader) -> None:
    reader = make_reader()
    ns = sim.namespace_index
    addresses = [
        f"/{ns}:Plant/{ns}:Types/{ns}:Double",
        f"/{{{NAMESPACE_URI}}}Plant/{{{NAMESPACE_URI}}}Types/{{{NAMESPACE_URI}}}Double",
        f"nsu={NAMESPACE_URI};/Plant/Types/Double",
        f"nsu={NAMESPACE_URI};s=Types.Double",
        f"nsu={NAMESPACE_URI};/Plant/Types/NoSuchNode",
        "nsu=urn:nobody;s=Types.Double",
        f"ns={ns};s=Types.NoSuchNode",
    ]
    batch = read(reader, specs(addresses))
    assert batch.values[:4] == [2.25] * 4
    assert batch.errors[4] == "browse path not found on the server (BadNoMatch)"
    assert batch.errors[5] == "namespace 'urn:nobody' is not on the server"
    assert batch.errors[6] == "BadNodeIdUnknown"


def test_timestamps_source_server_and_instant(sim: OpcUaSimulator, make_reader: MakeReader) -> None:
    import datetime as dt

    when = dt.datetime(2025, 3, 4, 5, 6, 7, 123456, tzinfo=dt.UTC)
    sim.set_value("Line1/Setpoint", 42.0, source_time=when)
    address = [sim.node_id("Line1/Setpoint")]
    source = read(make_reader(timestamps="source"), specs(address))
    assert source.values == [42.0]
    assert source.source_ns == [int(when.timestamp()) * 1_000_000_000 + 123_456_000]
    server = read(make_reader(timestamps="server"), specs(address))
    assert server.source_ns is not None and server.source_ns[0] is not None
    assert abs(server.source_ns[0] / 1e9 - time.time()) < 60
    instant = read(make_reader(timestamps="instant"), specs(address))
    assert instant.source_ns is None  # the value's time is the instant...
    assert instant.source_time_ns == source.source_ns  # ...and the source's travels beside it
    assert instant.values == [42.0]
    assert read(make_reader(), specs(address)).source_time_ns == source.source_ns  # the default


def test_a_node_removed_mid_run_becomes_an_error_and_the_others_flow(
    sim: OpcUaSimulator, make_reader: MakeReader
) -> None:
    reader = make_reader()
    wanted = specs([sim.node_id("Bulk/B38"), sim.node_id("Bulk/B39"), sim.node_id("Line1/Counter")])
    assert read(reader, wanted).errors == [None, None, None]
    sim.delete_node("Bulk/B39")
    batch = read(reader, wanted)
    assert batch.values[0] == 38.0 and batch.errors[0] is None
    assert batch.values[1] is None and batch.errors[1] == "BadNodeIdUnknown"
    assert batch.errors[2] is None
    assert reader.connected


def test_an_invalid_address_is_an_error_on_its_value_only(
    sim: OpcUaSimulator, make_reader: MakeReader
) -> None:
    reader = make_reader()
    batch = read(reader, specs(["Plant.Temp", sim.node_id("Types/Double")]))
    assert batch.errors[0] is not None and batch.errors[0].startswith("invalid address:")
    assert batch.values[1] == 2.25


def test_describe_requests_uses_the_server_limit_once_connected(
    sim: OpcUaSimulator, make_reader: MakeReader
) -> None:
    reader = make_reader(max_nodes_per_read=500)
    lines = reader.describe_requests(specs([sim.node_id(f"Bulk/B{k}") for k in range(35)]))
    assert len(lines) == 4
    assert lines[-1].startswith("Read: 5 node(s)")
