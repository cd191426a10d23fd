"""The OPC UA reader under the engine: DataCollector collecting from a real asyncua server."""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path
from typing import Literal

import pytest
from opcua_helpers import wait_for

from flowcollect import DataCollectionContext, DataCollector, Variable
from flowcollect.readers import OpcUaDataReader
from flowcollect.simulator.opcua import OpcUaSimulator
from flowcollect.writers import CsvFileDataWriter, InfluxDBDataWriter
from flowcollect.writers.memory import MemoryDataWriter
from tests.support.influxdb1 import InfluxFactory, influxdb1_factory

__all__ = ["influxdb1_factory"]


def test_polled_ticks_cost_the_minimum_read_calls_at_the_server(sim: OpcUaSimulator) -> None:
    reader = OpcUaDataReader("opc", sim.endpoint, timeout_s=2.0)
    writer = MemoryDataWriter()
    variables = [
        Variable(id=k + 1, address=sim.node_id(f"Bulk/B{k}"), value_type="float", reader="opc")
        for k in range(35)
    ]
    sim.reset_counters()
    with DataCollector(readers=[reader], writers=[writer]) as collector:
        collector.start(DataCollectionContext(id=1, variables=variables, interval_ms=200, duration_s=60))
        assert wait_for(lambda: len(writer.snapshot()) >= 5 * 35, 15)
        collector.stop(1)
        ticks = collector.stats().readers["opc"].ticks
    calls = reader.stats()["read_calls"]
    assert ticks >= 5
    assert calls == 4 * ticks  # ⌈35 / MaxNodesPerRead 10⌉ per tick, counted by the reader...
    assert sim.read_calls == calls  # ...and by the server
    values = writer.snapshot()
    assert all(v.error is None for v in values)
    assert {(v.id, v.value) for v in values} == {(k + 1, float(k)) for k in range(35)}
    # The time each value carries is its instant on the grid; the server's time travels beside it.
    assert all(v.time is not None and v.time.microsecond % 1000 == 0 for v in values)
    assert any(v.source_time is not None and v.source_time.microsecond % 1000 != 0 for v in values)


def test_subscribed_values_are_sampled_and_held_at_due_instants(
    sim: OpcUaSimulator, no_leftover_threads: None
) -> None:
    reader = OpcUaDataReader("opc", sim.endpoint, mode="subscribe", timeout_s=2.0)
    writer = MemoryDataWriter()
    sim.set_value("Line1/Setpoint", 5.0)
    variables = [
        Variable(id=1, address=sim.node_id("Line1/Counter"), value_type="int", reader="opc"),
        Variable(id=2, address=sim.node_id("Line1/Setpoint"), value_type="float", reader="opc"),
        Variable(id=3, address=sim.node_id("Line1/Flaky"), value_type="float", reader="opc"),
    ]
    with DataCollector(readers=[reader], writers=[writer]) as collector:
        collector.start(DataCollectionContext(id=1, variables=variables, interval_ms=200, duration_s=60))
        # Setpoint never changes: it is held (the subscription's keep-alives say the source lives).
        assert wait_for(lambda: sum(1 for v in writer.snapshot() if v.id == 2 and v.value == 5.0) >= 5, 15)
        sim.set_bad(True)
        try:
            assert wait_for(
                lambda: any(v.id == 3 and v.error == "BadSensorFailure" for v in writer.snapshot()), 10
            )
        finally:
            sim.set_bad(False)
        collector.stop(1)
    values = writer.snapshot()
    counters = [v.value for v in values if v.id == 1 and v.error is None]
    assert len(counters) >= 5 and counters == sorted(counters)  # sampled at instants, never backwards
    assert all(v.value is None for v in values if v.error is not None)
    assert reader.stats()["monitored_items"] == 0  # closed


@pytest.mark.parametrize("timestamps", ["instant", "source"])
def test_report_change_delivers_each_change_with_its_source_time(
    sim: OpcUaSimulator, timestamps: Literal["instant", "source"]
) -> None:
    reader = OpcUaDataReader("opc", sim.endpoint, mode="subscribe", timeout_s=2.0, timestamps=timestamps)
    writer = MemoryDataWriter()
    variable = Variable(
        id=1, address=sim.node_id("Line1/Setpoint"), value_type="float", reader="opc", report="change"
    )
    base = dt.datetime(2025, 7, 1, 8, 0, 0, 250000, tzinfo=dt.UTC)
    with DataCollector(readers=[reader], writers=[writer]) as collector:
        collector.start(DataCollectionContext(id=1, variables=[variable], interval_ms=1000, duration_s=60))
        # The initial value delivered: the item exists and the engine routes its changes.
        assert wait_for(lambda: len(writer.snapshot()) >= 1, 10)
        first = 300.0 if timestamps == "source" else 400.0  # not what the other run left behind
        written = [(base + dt.timedelta(seconds=k), first + k) for k in range(4)]
        for when, value in written:
            sim.set_value("Line1/Setpoint", value, source_time=when)
        assert wait_for(lambda: any(v.value == first + 3 for v in writer.snapshot()), 10)
        collector.stop(1)
    # The shared server's Setpoint holds whatever an earlier test wrote: only ours count.
    ours = {value for _when, value in written}
    mine = [v for v in writer.snapshot() if v.value in ours]
    if timestamps == "source":  # the source's time stamps each change
        assert [(v.time, v.value) for v in mine] == written
        assert all(v.source_time is None for v in mine)
    else:  # the default: stamped when delivered, the source's time beside
        assert [(v.source_time, v.value) for v in mine] == written
        assert all(v.time is not None and v.time > base + dt.timedelta(days=365) for v in mine)


def test_polled_values_are_stamped_with_their_instant_and_carry_the_source_time_beside(
    sim: OpcUaSimulator, tmp_path: Path, influxdb1_factory: InfluxFactory
) -> None:
    # A source that last changed long before the context started, polled every 200 ms: stamped
    # with its source time, every row had that same time (one point in InfluxDB: the data
    # collapsed) and it was earlier than the context's start.
    changed = dt.datetime(2025, 7, 1, 8, 0, 0, 123456, tzinfo=dt.UTC)
    sim.set_value("Line1/Setpoint", 7.5, source_time=changed)
    server = influxdb1_factory()
    server.query("CREATE DATABASE plant")
    csv_path = tmp_path / "values.csv"
    memory = MemoryDataWriter()
    influx = InfluxDBDataWriter(
        server.url, api="v1", database="plant", measurement="opc", flush_interval_ms=20
    )
    reader = OpcUaDataReader("opc", sim.endpoint, timeout_s=2.0)  # timestamps: the default
    variable = Variable(id=1, address=sim.node_id("Line1/Setpoint"), value_type="float", reader="opc")
    writers = [CsvFileDataWriter(csv_path), memory, influx]
    with DataCollector(readers=[reader], writers=writers) as collector:
        context = collector.start(
            DataCollectionContext(id=1, variables=[variable], interval_ms=200, duration_s=60)
        )
        assert wait_for(lambda: len(memory.snapshot()) >= 6, 15)
        collector.stop(1)
    assert context.start_date is not None
    values = memory.snapshot()
    times = [v.time for v in values]
    assert all(t is not None and t >= context.start_date for t in times), (times, context.start_date)
    assert all(t is not None and t.microsecond % 200_000 == 0 for t in times)  # on the 200 ms grid
    assert len(set(times)) == len(times)  # one row per instant: nothing collapses
    assert {(v.value, v.source_time) for v in values} == {(7.5, changed)}
    with csv_path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == len(values)
    assert len({row["time"] for row in rows}) == len(rows)
    assert {row["source_time"] for row in rows} == {"2025-07-01T08:00:00.123456+00:00"}
    # InfluxDB: one point per instant, each with the source time in a field of its own.
    points = server.select('SELECT "value", "source_time" FROM "opc"', "plant")
    assert len(points) == len(values)
    assert {p["source_time"] for p in points} == {int(changed.timestamp() * 1_000_000) * 1000}
    assert {p["value"] for p in points} == {7.5}


def test_timestamps_source_stays_available(sim: OpcUaSimulator) -> None:
    changed = dt.datetime(2025, 7, 1, 9, 0, 0, 500000, tzinfo=dt.UTC)
    sim.set_value("Line1/Setpoint", 8.5, source_time=changed)
    memory = MemoryDataWriter()
    reader = OpcUaDataReader("opc", sim.endpoint, timeout_s=2.0, timestamps="source")
    variable = Variable(id=1, address=sim.node_id("Line1/Setpoint"), value_type="float", reader="opc")
    with DataCollector(readers=[reader], writers=[memory]) as collector:
        collector.start(DataCollectionContext(id=1, variables=[variable], interval_ms=200, duration_s=60))
        assert wait_for(lambda: len(memory.snapshot()) >= 3, 15)
        collector.stop(1)
    # What it asks for: the source's time is the value's time (and nothing travels beside it).
    assert {(v.time, v.source_time) for v in memory.snapshot()} == {(changed, None)}
