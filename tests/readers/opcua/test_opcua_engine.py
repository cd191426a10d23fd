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
