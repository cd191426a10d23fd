"""The OPC UA reader under the engine: DataCollector collecting from a real asyncua server."""

from __future__ import annotations

from opcua_helpers import wait_for

from flowcollect import DataCollectionContext, DataCollector, Variable
from flowcollect.readers import OpcUaDataReader
from flowcollect.simulator.opcua import OpcUaSimulator
from flowcollect.writers.memory import MemoryDataWriter


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
    # Source timestamps: the time each value carries is the server's, not the grid's.
    assert any(v.time is not None and v.time.microsecond % 1000 != 0 for v in values)


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


def test_report_change_delivers_each_change_with_its_source_time(sim: OpcUaSimulator) -> None:
    import datetime as dt

    reader = OpcUaDataReader("opc", sim.endpoint, mode="subscribe", timeout_s=2.0)
    writer = MemoryDataWriter()
    variable = Variable(
        id=1, address=sim.node_id("Line1/Setpoint"), value_type="float", reader="opc", report="change"
    )
    base = dt.datetime(2025, 7, 1, 8, 0, 0, 250000, tzinfo=dt.UTC)
    with DataCollector(readers=[reader], writers=[writer]) as collector:
        collector.start(DataCollectionContext(id=1, variables=[variable], interval_ms=1000, duration_s=60))
        # The initial value delivered: the item exists and the engine routes its changes.
        assert wait_for(lambda: len(writer.snapshot()) >= 1, 10)
        written = [(base + dt.timedelta(seconds=k), 300.0 + k) for k in range(4)]
        for when, value in written:
            sim.set_value("Line1/Setpoint", value, source_time=when)
        assert wait_for(lambda: any(v.value == 303.0 for v in writer.snapshot()), 10)
        collector.stop(1)
    # The shared server's Setpoint holds whatever an earlier test wrote: only ours count.
    ours = {value for _when, value in written}
    got = [(v.time, v.value) for v in writer.snapshot() if v.value in ours]
    assert got == written
