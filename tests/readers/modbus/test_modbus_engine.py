"""The Modbus reader under the real engine: a device down, coming up and dying mid-run."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from modbus_helpers import RawDevice, Respond, ServerProcess, free_port, wait_until

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

    # Every tick produced every value: the dead device cost no tick of its own or the other
    # reader's. On a loaded machine either reader may skip an instant, counted as an overrun;
    # none may be doubled or leave the grid.
    for vid, reader in ((1, "plc"), (3, "random")):
        times = sorted(t for t, _, _ in of(vid))
        gaps = [(b - a) / timedelta(milliseconds=TICK_MS) for a, b in itertools.pairwise(times)]
        assert all(g >= 1 and g == int(g) for g in gaps), (reader, gaps)
        assert sum(int(g) - 1 for g in gaps) <= stats.readers[reader].overruns, (reader, gaps)
    # A device that cost its reader time would make it overrun about every other tick (its
    # 0.2 s timeout against a 0.1 s tick): load alone skips far fewer.
    assert stats.readers["plc"].overruns <= stats.readers["plc"].ticks // 10, stats.readers["plc"]
    late = stats.readers["random"].lateness_ms_p99
    assert late is not None
    # Delayed by the dead device, the random reader would be late by its timeout (200 ms);
    # a loaded machine makes it late by less than a tick.
    assert late < TICK_MS
    assert stats.readers["plc"].lane != stats.readers["random"].lane
    assert modbus.stats()["reconnects"] == 0  # connected once, after being down from the start


def _hang(transaction: int, unit: int, pdu: bytes) -> None:
    return None  # reads the request, never answers: the reader's read waits out its timeout


def test_close_giving_up_on_a_stuck_read_still_closes_the_device_connection(
    raw_device: Callable[[Respond], RawDevice],
) -> None:
    # A PLC with a few connection slots: a lane abandoned by close() (its read stuck for the
    # reader's 30 s timeout) must not keep one of them. The device sees its connection closed
    # within close()'s bound, not when the read would have timed out.
    device = raw_device(_hang)
    modbus = ModbusDataReader("plc", "127.0.0.1", port=device.port, timeout_s=30.0)
    context = DataCollectionContext(
        id=1,
        interval_ms=TICK_MS,
        variables=[Variable(id=1, reader="plc", address="holding:4", value_type="int")],
    )
    collector = DataCollector(readers=[modbus], writers=[MemoryDataWriter()], close_timeout_s=1.0)
    collector.start(context)
    assert wait_until(lambda: len(device.requests) >= 1, timeout_s=5.0)
    assert device.connections == 1
    started = time.monotonic()
    collector.close()
    closed_in = time.monotonic() - started
    assert closed_in < 1.0 + 1.0  # the close bound (and its slack), never the read's 30 s
    assert wait_until(lambda: device.hung_up == 1, timeout_s=2.0), "the connection stayed open"
    assert device.connections == 1  # and nothing reopened it
    assert modbus.stats()["connected"] == 0
