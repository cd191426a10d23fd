"""Units of one line under the real engine: shared reads, one request at a time, all units' values."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
from line_helpers import BAUD, alternates, line_for
from modbus_helpers import wait_until

from flowcollect import DataCollectionContext, DataCollector, Variable
from flowcollect.readers.modbus import ModbusDataReader
from flowcollect.simulator import UNIT_REGISTER, LineSimulator
from flowcollect.writers.memory import MemoryDataWriter

pytestmark = [pytest.mark.server, pytest.mark.realtime]

TICK_MS = 200


@pytest.fixture
def gateway() -> Iterator[LineSimulator]:
    with LineSimulator((1, 2, 3), baudrate=BAUD) as simulator:
        yield simulator


def test_two_contexts_sharing_a_unit_cost_one_request_per_instant(gateway: LineSimulator) -> None:
    meter = ModbusDataReader("meter", line=line_for(gateway), unit=2, timeout_s=0.2)
    writer = MemoryDataWriter()
    wanted = [Variable(id=1, reader="meter", address=f"holding:{UNIT_REGISTER}", value_type="int")]
    contexts = [DataCollectionContext(id=i, interval_ms=TICK_MS, variables=wanted) for i in (1, 2)]
    with DataCollector(readers=[meter], writers=[writer]) as collector:
        for context in contexts:
            collector.start(context)
        assert wait_until(lambda: len({v.time for v in writer.snapshot()}) >= 5, timeout_s=10.0)
        collector.stop(1)
        collector.stop(2)
    values = writer.snapshot()
    assert {(v.value, v.error) for v in values} == {(2, None)}
    per_instant = Counter(v.time for v in values)
    # Both contexts got the value of each instant they shared...
    shared = [t for t, n in per_instant.items() if n == 2]
    assert len(shared) >= 4
    # ...and the unit was asked once per instant read, never once per context.
    assert gateway.requests_by_unit.get(2, 0) == meter.stats()["requests"] == len(per_instant)


def test_three_units_of_one_line_under_the_engine(gateway: LineSimulator) -> None:
    line = line_for(gateway)
    readers = [ModbusDataReader(f"unit{u}", line=line, unit=u, timeout_s=0.2) for u in (1, 2, 3)]
    writer = MemoryDataWriter()
    context = DataCollectionContext(
        id=1,
        interval_ms=TICK_MS,
        variables=[
            Variable(id=u, reader=f"unit{u}", address=f"holding:{UNIT_REGISTER}", value_type="int")
            for u in (1, 2, 3)
        ],
    )
    with DataCollector(readers=readers, writers=[writer]) as collector:
        # The three readers of the line share one lane: one thread, one clock.
        assert collector.lanes()[line.key] == ("unit1", "unit2", "unit3")
        collector.start(context)
        assert wait_until(
            lambda: len({v.time for v in writer.snapshot() if v.error is None}) >= 4, timeout_s=10.0
        )
        collector.stop(1)
        lanes = {collector.stats().readers[f"unit{u}"].lane for u in (1, 2, 3)}
    assert lanes == {line.key}
    values = writer.snapshot()
    assert {(v.id, v.value) for v in values if v.error is None} == {(1, 1), (2, 2), (3, 3)}
    # One connection for the three units (let go when the context stopped: the lane's readers
    # heard an empty plan), and requests strictly one at a time on it.
    assert all(reader.stats()["connect_attempts"] == 1 for reader in readers)
    assert gateway.connections == 1
    assert alternates(gateway.exchanges)


def test_a_silent_unit_under_the_engine_costs_the_others_nothing(gateway: LineSimulator) -> None:
    line = line_for(gateway)
    readers = [ModbusDataReader(f"unit{u}", line=line, unit=u, timeout_s=0.05) for u in (1, 2, 3)]
    writer = MemoryDataWriter()
    context = DataCollectionContext(
        id=1,
        interval_ms=TICK_MS,
        variables=[
            Variable(id=u, reader=f"unit{u}", address=f"holding:{UNIT_REGISTER}", value_type="int")
            for u in (1, 2, 3)
        ],
    )
    gateway.silence(2)
    with DataCollector(readers=readers, writers=[writer]) as collector:
        collector.start(context)
        assert wait_until(lambda: len({v.time for v in writer.snapshot()}) >= 15, timeout_s=20.0)
        collector.stop(1)
        stats = collector.stats().readers
    values = writer.snapshot()
    instants = sorted({v.time for v in values})
    for unit in (1, 3):
        mine = {v.time: (v.value, v.error) for v in values if v.id == unit}
        assert set(mine) == set(instants)
        # Every instant the unit's value, or a request skipped (it would have overrun the
        # next instant) and counted.
        skipped = [t for t, (_, error) in mine.items() if error is not None]
        assert all(mine[t][1] == "skipped: the line is busy until the next tick" for t in skipped)
        assert len(skipped) == readers[unit - 1].stats()["skipped_requests"]
        assert {value for value, error in mine.values() if error is None} == {unit}
        assert len(skipped) <= len(instants) // 2
    silent = readers[1].stats()
    assert gateway.requests_by_unit.get(2, 0) == silent["timeouts"]
    # Asked at the start, then after 0.1, 0.2, 0.4, ... s of back-off (5 s at most): one
    # timeout per back-off period over the run, however long the machine made it.
    span_s = (instants[-1] - instants[0]).total_seconds() + TICK_MS / 1000
    periods, at, delay = 1, 0.05, 0.1
    while at + delay < span_s:
        at, delay, periods = at + delay + 0.05, min(2 * delay, 5.0), periods + 1
    assert 1 <= silent["timeouts"] <= periods
    assert silent["timeouts"] + silent["backoff_skips"] == stats["unit2"].ticks
