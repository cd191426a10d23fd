"""A device that is down, dies, hangs or talks nonsense: the reader keeps going and recovers."""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable

import pytest
from modbus_helpers import (
    CLOSE,
    RawDevice,
    Respond,
    ServerProcess,
    adu,
    collected,
    echo_registers,
    free_port,
    parse_read,
    second_time_only,
    timed_read,
    wait_until,
)

from flowcollect.readers.modbus import ModbusDataReader
from flowcollect.readers.modbus.reader import MAX_RETRY_DELAY_S, retry_delay
from flowcollect.simulator import BULK_START

MakeReader = Callable[..., ModbusDataReader]
MakeDevice = Callable[[Respond], RawDevice]

ADDRESSES = ["holding:4:uint32", f"holding:{BULK_START + 5}", "coil:100"]
TYPES = ["int", "int", "bool"]
TICK_S = 0.05


def tick(reader: ModbusDataReader) -> tuple[list[object], list[str | None], float]:
    variables = collected(ADDRESSES, TYPES)
    elapsed = timed_read(reader, variables)
    return [v.value for v in variables], [v.error for v in variables], elapsed


def healthy(values: list[object], errors: list[str | None]) -> bool:
    return all(e is None for e in errors) and values[1] == 5 and values[2] is True


def failed(values: list[object], errors: list[str | None]) -> bool:
    return all(v is None for v in values) and all(e for e in errors)


def test_device_down_at_start_then_coming_up(server_process: ServerProcess, make_reader: MakeReader) -> None:
    server_process.port = free_port()
    reader = make_reader(port=server_process.port, timeout_s=0.5)
    for _ in range(3):
        values, errors, elapsed = tick(reader)
        assert failed(values, errors)
        assert errors[0] == "not connected: connection refused"
        assert elapsed < 0.5
        time.sleep(TICK_S)
    assert reader.stats()["connected"] == 0

    server_process.start()
    # Within two ticks of the device listening, values flow, without restarting anything.
    results = [tick(reader) for _ in range(2)]
    assert any(healthy(values, errors) for values, errors, _ in results)
    assert reader.stats()["connected"] == 1


def test_device_dying_and_restarting(server_process: ServerProcess, make_reader: MakeReader) -> None:
    server_process.start()
    reader = make_reader(port=server_process.port, timeout_s=0.5)
    values, errors, _ = tick(reader)
    assert healthy(values, errors)

    server_process.stop()
    down_ticks = 0
    for _ in range(5):
        values, errors, elapsed = tick(reader)
        # The tick's rhythm holds: a dead device costs no more than the timeout.
        assert elapsed < 0.5 + 0.25
        assert failed(values, errors)
        down_ticks += 1
        time.sleep(TICK_S)
    stats = reader.stats()
    assert stats["connected"] == 0
    # Never more than one connection attempt per tick.
    assert stats["connect_attempts"] <= 1 + down_ticks

    server_process.start()
    results = [tick(reader) for _ in range(2)]
    assert any(healthy(values, errors) for values, errors, _ in results)
    assert reader.stats()["reconnects"] == 1


def _silent(transaction: int, unit: int, pdu: bytes) -> None:
    return None


def test_a_hung_device_costs_one_timeout_then_backs_off(
    raw_device: MakeDevice, make_reader: MakeReader
) -> None:
    device = raw_device(_silent)
    timeout_s = 0.2
    reader = make_reader(port=device.port, timeout_s=timeout_s)
    values, errors, elapsed = tick(reader)
    assert failed(values, errors)
    assert errors[0] == "no response within 0.2 s"
    assert timeout_s * 0.9 <= elapsed < timeout_s + 0.25
    assert device.requests == [(1, 100, 1)]  # the first timeout ends the tick: no more requests

    started = time.monotonic()
    ticks = 0
    while time.monotonic() - started < 1.5:
        values, errors, elapsed = tick(reader)
        ticks += 1
        assert failed(values, errors)
        assert elapsed < timeout_s + 0.25
        time.sleep(0.02)
    # The unit is asked again after 0.4 s, then 0.8 s, ...: far fewer requests than ticks, each
    # one timeout. A silent unit never closes its line's connection (other units may answer).
    timeouts = reader.stats()["timeouts"]
    assert timeouts == len(device.requests)
    assert 2 <= timeouts <= 3
    assert ticks > 3 * timeouts
    assert reader.stats()["backoff_skips"] >= ticks - timeouts
    assert device.connections == 1

    device.respond = echo_registers
    # Back off at most the delay after the last failure, then values flow again.
    assert wait_until(lambda: tick(reader)[1] == [None, None, None], timeout_s=3.0)


def test_an_unanswered_request_is_resent_by_the_line_within_the_tick(
    raw_device: MakeDevice, make_reader: MakeReader
) -> None:
    # Retries are the line's: the first request goes unanswered, the resend is answered, and
    # the tick has its values (what pymodbus's own retries did before, on the same connection).
    device = raw_device(second_time_only())
    reader = make_reader(port=device.port, timeout_s=0.2, retries=2)
    values, errors, elapsed = tick(reader)
    assert errors == [None, None, None]
    assert values[0] is not None
    assert device.requests[0] == device.requests[1]  # the tick's first request, sent twice
    assert len(device.requests) == 4  # then the tick's two others
    assert 0.18 <= elapsed < 0.2 + 0.25
    assert reader.stats()["timeouts"] == 0
    assert device.connections == 1


def test_a_tcp_connection_nobody_answers_on_is_reopened(
    raw_device: MakeDevice, make_reader: MakeReader
) -> None:
    # A device that went away without a reset: every unit of the line stays silent. After three
    # unanswered requests in a row the connection is taken for dead and opened again.
    device = raw_device(_silent)
    reader = make_reader(port=device.port, timeout_s=0.1)
    assert wait_until(lambda: (tick(reader), reader.stats()["dead_connections"] >= 1)[1], timeout_s=5.0)
    assert reader.stats()["timeouts"] == 3
    device.respond = echo_registers
    assert wait_until(lambda: tick(reader)[1] == [None, None, None], timeout_s=3.0)
    assert device.connections == 2


def test_retry_delay_doubles_from_the_timeout_and_never_exceeds_five_seconds() -> None:
    assert retry_delay(0, 1.0) == 0.0
    assert [retry_delay(n, 0.5) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 5.0]
    assert retry_delay(1000, 30.0) == MAX_RETRY_DELAY_S == 5.0


def _short_answer(transaction: int, unit: int, pdu: bytes) -> bytes:
    function_code, _, _ = parse_read(pdu)
    return adu(
        transaction, unit, struct.pack(">BBH", function_code, 2, 1)
    )  # one register, whatever was asked


def _wrong_function(transaction: int, unit: int, pdu: bytes) -> bytes:
    _, _, count = parse_read(pdu)
    return adu(transaction, unit, struct.pack(f">BB{count}H", 4, 2 * count, *range(count)))


def _byte_count_too_big(transaction: int, unit: int, pdu: bytes) -> bytes:
    return adu(transaction, unit, struct.pack(">BBH", 3, 200, 1))


def _odd_byte_count(transaction: int, unit: int, pdu: bytes) -> bytes:
    return adu(transaction, unit, bytes([3, 3, 0, 1, 2]))


def _bad_protocol(transaction: int, unit: int, pdu: bytes) -> bytes:
    return adu(transaction, unit, struct.pack(">BBHH", 3, 4, 1, 2), protocol=7)


def _wrong_transaction(transaction: int, unit: int, pdu: bytes) -> bytes:
    return adu(transaction + 1, unit, struct.pack(">BBHH", 3, 4, 1, 2))


def _wrong_unit(transaction: int, unit: int, pdu: bytes) -> bytes:
    return adu(transaction, unit + 1, struct.pack(">BBHH", 3, 4, 1, 2))


def _garbage(transaction: int, unit: int, pdu: bytes) -> bytes:
    return bytes(range(256))


def _unknown_exception(transaction: int, unit: int, pdu: bytes) -> bytes:
    return adu(transaction, unit, bytes([pdu[0] | 0x80, 0x42]))


def _hang_up(transaction: int, unit: int, pdu: bytes) -> object:
    return CLOSE


def _unknown_function(transaction: int, unit: int, pdu: bytes) -> bytes:
    return adu(transaction, unit, bytes([0x55, 1, 2, 3]))


@pytest.mark.parametrize(
    ("respond", "error"),
    [
        (_short_answer, "short response: 1 of 3 registers"),
        (_wrong_function, "bad response: function code 4, expected 3"),
        (_unknown_exception, "modbus exception 66: unknown exception"),
        (_hang_up, "connection lost"),
        (_byte_count_too_big, None),
        (_odd_byte_count, None),
        (_bad_protocol, None),
        (_wrong_transaction, None),
        (_wrong_unit, None),
        (_garbage, None),
        (_unknown_function, None),
    ],
)
def test_malformed_responses_never_crash_the_reader(
    raw_device: MakeDevice, make_reader: MakeReader, respond: Respond, error: str | None
) -> None:
    device = raw_device(respond)
    timeout_s = 0.2
    reader = make_reader(port=device.port, timeout_s=timeout_s)
    variables = collected(["holding:0:uint32", "holding:2"])
    elapsed = timed_read(reader, variables)
    assert all(v.value is None for v in variables)
    assert all(v.error for v in variables)
    if error is not None:
        assert variables[0].error is not None
        assert variables[0].error.startswith(error)
    # Answers that are no answer at all are waited for no longer than the timeout.
    assert elapsed < timeout_s + 0.25

    device.respond = echo_registers

    def recovered() -> bool:
        again = collected(["holding:0:uint32", "holding:2"])
        reader.read(again)
        return [v.value for v in again] == [1, 2]

    assert wait_until(recovered, timeout_s=3.0)


def test_close_and_reopen(server_process: ServerProcess) -> None:
    server_process.start()
    reader = ModbusDataReader("modbus", "127.0.0.1", port=server_process.port, timeout_s=0.5)
    reader.open()
    assert reader.stats()["connected"] == 1
    reader.close()
    reader.close()  # idempotent
    assert reader.stats()["connected"] == 0
    values, errors, _ = tick(reader)  # a read after close connects again
    assert healthy(values, errors)
    reader.close()


def test_a_unit_that_never_answers_beside_one_that_does_on_one_tcp_connection(
    raw_device: MakeDevice, make_reader: MakeReader
) -> None:
    # A gateway on Modbus TCP: unit 2 behind it is gone, unit 1 answers. Unit 2 costs one
    # timeout per back-off period and never closes the connection unit 1 shares.
    def only_unit_1(transaction: int, unit: int, pdu: bytes) -> bytes | None:
        return echo_registers(transaction, unit, pdu) if unit == 1 else None

    device = raw_device(only_unit_1)
    alive = make_reader(port=device.port, unit=1, timeout_s=0.1)
    silent = make_reader(port=device.port, unit=2, timeout_s=0.1)
    for _ in range(12):
        values, errors, _elapsed = tick(alive)
        assert errors == [None, None, None]
        assert values[1] == BULK_START + 5  # the device echoes each register's address
        silent_errors = tick(silent)[1]
        assert silent_errors == ["no response within 0.1 s"] * 3
        time.sleep(0.02)
    assert 1 <= silent.stats()["timeouts"] <= 3
    assert silent.stats()["backoff_skips"] >= 9
    assert alive.stats()["timeouts"] == 0
    assert device.connections == 1
    assert alive.stats()["dead_connections"] == 0


def test_abort_from_another_thread_ends_a_read_at_once(
    raw_device: MakeDevice, make_reader: MakeReader
) -> None:
    # The collector's close deadline gave up on this read (a device that never answers, a
    # timeout of 30 s): abort, from the closing thread, shuts the connection down under it.
    device = raw_device(_silent)
    reader = make_reader(port=device.port, timeout_s=30.0)
    outcome: list[tuple[list[str | None], float]] = []

    def stuck() -> None:
        started = time.monotonic()
        errors = tick(reader)[1]
        outcome.append((errors, time.monotonic() - started))

    thread = threading.Thread(target=stuck, daemon=True)
    thread.start()
    assert wait_until(lambda: len(device.requests) >= 1, timeout_s=5.0)
    reader.abort()
    thread.join(2.0)
    assert not thread.is_alive(), "the read outlived abort()"
    errors, took = outcome[0]
    assert took < 2.0
    assert errors == ["closed", "closed", "closed"]  # the collector's doing: no "connection lost"
    assert wait_until(lambda: device.hung_up >= 1, timeout_s=2.0), "the device's connection stayed open"
    assert reader.stats()["connected"] == 0
    assert len(device.requests) == 1  # nothing read or reopened afterwards
