"""A Modbus TCP reader on the engine's loop writes its tick's first request at the instant
(``send_batch``), and the read that follows takes it up: one request per tick, never two."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from modbus_helpers import (
    CLOSE,
    LoopThread,
    RawDevice,
    Respond,
    adu,
    echo_registers,
    parse_read,
    registers_answer,
    wait_until,
)

from flowcollect.readers.modbus import ModbusDataReader
from flowcollect.values import ValueBatch, VariableSpec

MakeDevice = Callable[[Respond], RawDevice]
T0 = 1_800_000_000_000


def _specs(addresses: list[str]) -> list[VariableSpec]:
    return [VariableSpec(i + 1, 1, a, "int", "plc", 100) for i, a in enumerate(addresses)]


@pytest.fixture
def reader_on_loop(loop_thread: LoopThread) -> Callable[[int, float], ModbusDataReader]:
    made: list[ModbusDataReader] = []

    def make(port: int, timeout_s: float = 1.0) -> ModbusDataReader:
        reader = ModbusDataReader("plc", "127.0.0.1", port=port, timeout_s=timeout_s)
        made.append(reader)
        loop_thread.call(reader.open)
        return reader

    yield make  # type: ignore[misc]
    for reader in made:
        loop_thread.call(reader.close)


def _tick(loop: LoopThread, reader: ModbusDataReader, specs: list[VariableSpec], t_ms: int) -> ValueBatch:
    batch = ValueBatch(t_ms, specs)
    loop.call(lambda: reader.send_batch(batch))
    return batch


def test_the_request_leaves_at_send_batch_and_the_read_takes_it_up(
    raw_device: MakeDevice, loop_thread: LoopThread, reader_on_loop: Callable[..., ModbusDataReader]
) -> None:
    device = raw_device(echo_registers)
    reader = reader_on_loop(device.port)
    specs = _specs(["holding:0", "holding:1:uint32", "holding:5"])
    # The first tick: nothing known yet (no connection, no plan): send_batch sends nothing.
    first = _tick(loop_thread, reader, specs, T0)
    assert device.requests == []
    loop_thread.run(reader.read_batch_async(first))
    assert first.values == [0, 1 * 65536 + 2, 5]
    assert len(device.requests) == 1
    for k in range(1, 4):
        batch = _tick(loop_thread, reader, specs, T0 + 100 * k)
        # Written before anything awaits it.
        assert wait_until(lambda k=k: len(device.requests) == 1 + k, timeout_s=2.0)  # type: ignore[misc]
        loop_thread.run(reader.read_batch_async(batch))
        assert batch.values == [0, 1 * 65536 + 2, 5]
        assert batch.errors == [None, None, None]
    assert device.requests == [(3, 0, 6)] * 4  # one request per tick, never two
    assert reader.stats()["requests"] == 4


def test_a_unit_backing_off_is_not_asked_at_the_instant(
    raw_device: MakeDevice, loop_thread: LoopThread, reader_on_loop: Callable[..., ModbusDataReader]
) -> None:
    device = raw_device(echo_registers)
    reader = reader_on_loop(device.port, timeout_s=0.2)
    specs = _specs(["holding:0"])
    loop_thread.run(reader.read_batch_async(_tick(loop_thread, reader, specs, T0)))
    device.respond = lambda transaction, unit, pdu: None  # silent from now on
    silent = _tick(loop_thread, reader, specs, T0 + 100)
    loop_thread.run(reader.read_batch_async(silent))
    assert silent.errors == ["no response within 0.2 s"]
    asked = len(device.requests)
    # Backing off: neither send_batch nor the read asks it again before its back-off ends.
    again = _tick(loop_thread, reader, specs, T0 + 200)
    loop_thread.run(reader.read_batch_async(again))
    assert again.errors == ["no response within 0.2 s"]
    assert len(device.requests) == asked


def test_a_late_answer_before_the_right_one_in_one_segment_is_dropped(
    raw_device: MakeDevice, loop_thread: LoopThread, reader_on_loop: Callable[..., ModbusDataReader]
) -> None:
    # The previous transaction's answer (with other values) and this one's, in one write: the
    # stale one is dropped by its transaction id, the right one framed from the same segment.
    def late_then_right(transaction: int, unit: int, pdu: bytes) -> bytes:
        function_code, _address, count = parse_read(pdu)
        stale = adu((transaction - 1) & 0xFFFF, unit, registers_answer(function_code, [999] * count))
        return stale + echo_registers(transaction, unit, pdu)

    device = raw_device(late_then_right)
    reader = reader_on_loop(device.port)
    specs = _specs(["holding:3", "holding:4"])
    for k in range(3):
        batch = _tick(loop_thread, reader, specs, T0 + 100 * k)
        loop_thread.run(reader.read_batch_async(batch))
        assert batch.values == [3, 4]
    assert len(device.requests) == 3


def test_a_request_written_for_another_instant_is_never_taken_for_this_one(
    raw_device: MakeDevice, loop_thread: LoopThread, reader_on_loop: Callable[..., ModbusDataReader]
) -> None:
    # Every answer says which request it answers: the read of T0+200 must get its own request's
    # answer, not the one written at T0+100 for a read that never came (a clock step, a plan
    # change in between).
    asked = [0]

    def numbered(transaction: int, unit: int, pdu: bytes) -> bytes:
        function_code, _address, count = parse_read(pdu)
        asked[0] += 1
        return adu(transaction, unit, registers_answer(function_code, [asked[0]] * count))

    device = raw_device(numbered)
    reader = reader_on_loop(device.port)
    specs = _specs(["holding:0"])
    loop_thread.run(reader.read_batch_async(_tick(loop_thread, reader, specs, T0)))
    _tick(loop_thread, reader, specs, T0 + 100)  # written, never read
    assert wait_until(lambda: asked[0] == 2, timeout_s=2.0)
    later = ValueBatch(T0 + 200, specs)
    loop_thread.run(reader.read_batch_async(later))
    assert later.values == [3]
    assert len(device.requests) == 3


def _closing_on_the_second_request() -> Respond:
    seen = [0]

    def respond(transaction: int, unit: int, pdu: bytes) -> object:
        seen[0] += 1
        return CLOSE if seen[0] == 2 else echo_registers(transaction, unit, pdu)

    return respond  # type: ignore[return-value]


def test_a_device_closing_on_a_request_written_early_is_read_again_on_a_new_connection(
    raw_device: MakeDevice, loop_thread: LoopThread, reader_on_loop: Callable[..., ModbusDataReader]
) -> None:
    # The device hangs up on the request written at the instant: the read says so, or (when the
    # hang-up reached the loop before the read began) reopens the line and asks again; either
    # way the next tick reads, and nothing waits for an answer that cannot come.
    device = raw_device(_closing_on_the_second_request())
    reader = reader_on_loop(device.port)
    specs = _specs(["holding:0", "holding:1"])
    loop_thread.run(reader.read_batch_async(_tick(loop_thread, reader, specs, T0)))
    batch = _tick(loop_thread, reader, specs, T0 + 100)
    assert wait_until(lambda: len(device.requests) == 2, timeout_s=2.0)
    started = time.monotonic()
    loop_thread.run(reader.read_batch_async(batch))
    assert time.monotonic() - started < 0.5  # never the 1 s timeout
    if batch.values != [0, 1]:
        assert batch.values == [None, None]
        assert all(e is not None and e.startswith("connection lost") for e in batch.errors), batch.errors
    again = ValueBatch(T0 + 200, specs)
    loop_thread.run(reader.read_batch_async(again))
    assert again.values == [0, 1]


def test_a_read_waits_for_the_answer_of_its_early_request_within_its_timeout(
    raw_device: MakeDevice, loop_thread: LoopThread, reader_on_loop: Callable[..., ModbusDataReader]
) -> None:
    # The answer comes 50 ms after the request: the read begins before it and waits for it (one
    # request); a device slower than the timeout makes it time out from when it was written.
    delay_s = [0.05]

    def slow(transaction: int, unit: int, pdu: bytes) -> bytes:
        time.sleep(delay_s[0])  # the device's thread, not the engine's
        return echo_registers(transaction, unit, pdu)

    device = raw_device(slow)
    reader = reader_on_loop(device.port, timeout_s=0.3)
    specs = _specs(["holding:7"])
    loop_thread.run(reader.read_batch_async(_tick(loop_thread, reader, specs, T0)))
    batch = ValueBatch(T0 + 100, specs)

    async def send_then_read() -> None:
        reader.send_batch(batch)
        await reader.read_batch_async(batch)

    loop_thread.run(send_then_read())
    assert batch.values == [7]
    assert len(device.requests) == 2
    delay_s[0] = 0.5
    late = ValueBatch(T0 + 200, specs)

    async def send_wait_read() -> float:
        reader.send_batch(late)
        await asyncio.sleep(0.2)
        started = time.monotonic()
        await reader.read_batch_async(late)
        return time.monotonic() - started

    waited = loop_thread.run(send_wait_read())
    assert late.errors == ["no response within 0.3 s"]
    assert waited < 0.25  # the timeout counts from the write, not from the read
