"""The Modbus reader under the real engine: a device down, coming up and dying mid-run."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from modbus_helpers import ServerProcess, free_port, wait_until

from flowcollect import DataCollectionContext, DataCollector, Variable
from flowcollect.readers import ModbusDataReader, RandomDataReader
from flowcollect.writers.memory import MemoryDataWriter

pytestmark = pytest.mark.realtime

TICK_MS = 100


def test_a_device_down_then_up_then_dead_never_stops_or_delays_collection(
    server_process: ServerProcess,
) -> None:
    server_process.port = free_port()
    modbus = ModbusDataReader("plc", "127.0.0.1", port=server_process.port, timeout_s=0.2)
    writer = MemoryDataWriter()
    context = DataCollectionContext(
        id=1,
        interval_ms=TICK_MS,
        variables=[
            Variable(id=1, reader="plc", address="holding:4:uint32", value_type="int"),
            Variable(id=2, reader="plc", address="holding:1005", value_type="int"),
            Variable(id=3, reader="random", address="r", value_type="float"),
        ],
    )

    def of(variable_id: int) -> list[tuple[datetime, object, str | None]]:
        return [(v.time, v.value, v.error) for v in writer.snapshot() if v.id == variable_id and v.time]

    with DataCollector(readers=[modbus, RandomDataReader()], writers=[writer]) as collector:
        collector.start(context)
        # Down at start: every tick still yields both Modbus values, with the reason.
        assert wait_until(lambda: len(of(2)) >= 4, timeout_s=5.0)
        assert {error for _, _, error in of(2)} == {"not connected: connection refused"}

        server_process.start()
        listening = datetime.now(UTC)

        def back() -> bool:
            return any(error is None for _, _, error in of(2))

        assert wait_until(back, timeout_s=5.0)
        first_value_at = min(t for t, _, error in of(2) if error is None)
        # Within two ticks of the device listening (the tick's time is its scheduled instant).
        assert first_value_at <= listening + timedelta(milliseconds=2 * TICK_MS)
        assert [value for t, value, _ in of(2) if t >= first_value_at][:1] == [5]

        server_process.stop()
        died = datetime.now(UTC)
        assert wait_until(
            lambda: sum(1 for t, _, e in of(2) if t > died and e is not None) >= 4, timeout_s=5.0
        )
        collector.stop(1)
        stats = collector.stats()

    # Every instant produced every value, or was skipped and counted (a busy machine may make a
    # lane miss an instant; none is ever doubled or off the grid): the dead device cost no tick
    # of its own lane or the other reader's.
    for variable_id, reader in ((1, "plc"), (3, "random")):
        times = sorted(t for t, _, _ in of(variable_id))
        assert len(times) == len(set(times))
        assert all(t.microsecond % (TICK_MS * 1000) == 0 for t in times)
        assert all(
            (b - a) % timedelta(milliseconds=TICK_MS) == timedelta(0) for a, b in itertools.pairwise(times)
        )
        expected = (times[-1] - times[0]) // timedelta(milliseconds=TICK_MS) + 1
        assert len(times) + stats.readers[reader].overruns >= expected
    assert stats.readers["plc"].lane != stats.readers["random"].lane
    assert modbus.stats()["reconnects"] == 0  # connected once, after being down from the start
