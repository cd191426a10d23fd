"""Requests per tick, counted where they land: at the device."""

from __future__ import annotations

import math
import struct
from collections.abc import Callable

import pytest
from modbus_helpers import RawDevice, Respond, adu, collected, parse_read, registers_answer

from flowcollect.readers.modbus import ModbusDataReader
from flowcollect.simulator import BULK_START, HOLE_INVALID, HOLE_START, Simulator

MakeReader = Callable[..., ModbusDataReader]


def requests_of(sim: Simulator) -> list[tuple[int, int, int]]:
    return [(r.function_code, r.address, r.count) for r in sim.request_log]


def test_a_thousand_contiguous_registers_cost_the_minimum_requests(
    sim: Simulator, make_reader: MakeReader
) -> None:
    reader = make_reader()
    addresses = [f"holding:{BULK_START + k}" for k in range(1000)]
    for _tick in range(3):
        sim.reset_counters()
        variables = collected(addresses)
        reader.read(variables)
        assert [v.value for v in variables] == list(range(1000))
        assert sim.requests == math.ceil(1000 / 125) == 8
        assert all(count <= 125 for _, _, count in requests_of(sim))
    assert reader.stats()["plans"] == 1  # planned once, reused every tick


@pytest.mark.parametrize("max_registers", [2, 7, 50, 125])
def test_max_registers_is_never_exceeded(sim: Simulator, make_reader: MakeReader, max_registers: int) -> None:
    reader = make_reader(max_registers=max_registers)
    variables = collected([f"holding:{BULK_START + k}:uint32" for k in range(0, 200, 2)])
    reader.read(variables)
    assert all(v.error is None for v in variables)
    counts = [count for _, _, count in requests_of(sim)]
    assert max(counts) <= max_registers
    # A uint32 never straddles two requests: each request holds max_registers // 2 of them.
    assert len(counts) == math.ceil(100 / (max_registers // 2))


@pytest.mark.parametrize("max_gap", [0, 3, 10])
def test_gaps_up_to_max_gap_are_bridged(sim: Simulator, make_reader: MakeReader, max_gap: int) -> None:
    reader = make_reader(max_gap=max_gap)
    within = collected([f"holding:{BULK_START}", f"holding:{BULK_START + max_gap + 1}"])
    reader.read(within)
    assert requests_of(sim) == [(3, BULK_START, max_gap + 2)]
    sim.reset_counters()
    beyond = collected([f"holding:{BULK_START}", f"holding:{BULK_START + max_gap + 2}"])
    reader.read(beyond)
    assert requests_of(sim) == [(3, BULK_START, 1), (3, BULK_START + max_gap + 2, 1)]
    assert [v.value for v in within + beyond] == [0, max_gap + 1, 0, max_gap + 2]


def test_bit_tables_bridge_gaps_in_bits_worth_max_gap_registers(
    sim: Simulator, make_reader: MakeReader
) -> None:
    reader = make_reader(max_gap=5)  # 80 bits
    reader.read(collected(["coil:0", "coil:81", "discrete:0", "discrete:82"], "bool"))
    assert requests_of(sim) == [(1, 0, 82), (2, 0, 1), (2, 82, 1)]


def test_overlapping_and_repeated_addresses_are_read_once(sim: Simulator, make_reader: MakeReader) -> None:
    reader = make_reader()
    variables = collected(
        [f"holding:{BULK_START}:uint32", f"holding:{BULK_START + 1}", f"holding:{BULK_START + 1}"],
        ["int", "int", "str"],
    )
    reader.read(variables)
    assert requests_of(sim) == [(3, BULK_START, 2)]
    assert [v.value for v in variables] == [1, 1, "1"]


def test_plan_requests_is_the_plan_read_follows(sim: Simulator, make_reader: MakeReader) -> None:
    reader = make_reader()
    addresses = [
        "coil:0",
        "coil:2",
        "holding:0:float32",
        "holding:4:uint32",
        "holding:10:string8",
        "input:100",
    ]
    planned = reader.plan_requests(addresses)
    assert [(r.table, r.start, r.count) for r in planned] == [
        ("coil", 0, 3),
        ("input", 100, 1),
        ("holding", 0, 18),
    ]
    reader.read(collected(addresses))
    assert requests_of(sim) == [(r.function_code, r.start, r.count) for r in planned]
    with pytest.raises(ValueError, match="unknown table 'hold'"):
        reader.plan_requests(["hold:1"])


def test_an_exception_splits_the_request_once_and_the_split_is_remembered(
    sim: Simulator, make_reader: MakeReader
) -> None:
    reader = make_reader()
    addresses = [f"holding:{r}" for r in range(HOLE_START, HOLE_START + 10)]
    first = collected(addresses)
    reader.read(first)
    for variable, register in zip(first, range(HOLE_START, HOLE_START + 10), strict=True):
        if register == HOLE_INVALID:
            assert variable.value is None
            assert variable.error == "modbus exception 2: illegal data address"
        else:
            assert (variable.value, variable.error) == (register, None)
    for _tick in range(3):
        sim.reset_counters()
        again = collected(addresses)
        reader.read(again)
        assert [v.value for v in again] == [v.value for v in first]
        # Only the bad register costs a request of its own: the fewest possible.
        assert requests_of(sim) == [(3, 400, 5), (3, 405, 1), (3, 406, 4)]
    assert reader.stats()["splits"] == 1


def test_a_refused_gap_is_not_bridged_again(sim: Simulator, make_reader: MakeReader) -> None:
    reader = make_reader()
    addresses = [f"holding:{HOLE_INVALID - 1}", f"holding:{HOLE_INVALID + 1}"]
    first = collected(addresses)
    reader.read(first)
    assert [(v.value, v.error) for v in first] == [(404, None), (406, None)]
    sim.reset_counters()
    reader.read(collected(addresses))
    assert requests_of(sim) == [(3, 404, 1), (3, 406, 1)]


def test_a_value_straddling_a_bad_register_is_isolated(sim: Simulator, make_reader: MakeReader) -> None:
    reader = make_reader()
    addresses = ["holding:403", "holding:404:float32", "holding:407"]
    first = collected(addresses, ["int", "float", "int"])
    reader.read(first)
    assert [v.value for v in first] == [403, None, 407]
    assert first[1].error == "modbus exception 2: illegal data address"
    sim.reset_counters()
    second = collected(addresses, ["int", "float", "int"])
    reader.read(second)
    assert [v.value for v in second] == [403, None, 407]
    settled = requests_of(sim)
    sim.reset_counters()
    reader.read(collected(addresses, ["int", "float", "int"]))
    assert requests_of(sim) == settled
    assert len(settled) == 3
    assert reader.stats()["splits"] == 1


def _busy(transaction: int, unit: int, pdu: bytes) -> bytes:
    return adu(transaction, unit, bytes([pdu[0] | 0x80, 6]))


def test_other_exceptions_mark_the_request_without_splitting(
    raw_device: Callable[[Respond], RawDevice], make_reader: MakeReader
) -> None:
    device = raw_device(_busy)
    reader = make_reader(port=device.port)
    variables = collected([f"holding:{r}" for r in range(10)])
    reader.read(variables)
    assert all(v.value is None for v in variables)
    assert {v.error for v in variables} == {"modbus exception 6: server device busy"}
    assert device.requests == [(3, 0, 10)]


def _limited_to_ten(transaction: int, unit: int, pdu: bytes) -> bytes:
    function_code, address, count = parse_read(pdu)
    if count > 10:
        return adu(transaction, unit, bytes([function_code | 0x80, 3]))
    return adu(transaction, unit, registers_answer(function_code, range(address, address + count)))


def test_a_device_refusing_large_requests_teaches_a_smaller_limit(
    raw_device: Callable[[Respond], RawDevice], make_reader: MakeReader
) -> None:
    device = raw_device(_limited_to_ten)
    reader = make_reader(port=device.port)
    addresses = [f"holding:{r}" for r in range(30)]
    first = collected(addresses)
    reader.read(first)
    assert [v.value for v in first] == list(range(30))
    for _tick in range(2):
        device.requests.clear()
        again = collected(addresses)
        reader.read(again)
        assert [v.value for v in again] == list(range(30))
        assert all(count <= 10 for _, _, count in device.requests)
        assert len(device.requests) <= 4
    assert reader.stats()["splits"] == 1


def test_unit_id_is_sent(raw_device: Callable[[Respond], RawDevice], make_reader: MakeReader) -> None:
    units: list[int] = []

    def respond(transaction: int, unit: int, pdu: bytes) -> bytes:
        units.append(unit)
        return adu(transaction, unit, struct.pack(">BBH", 3, 2, 99))

    device = raw_device(respond)
    reader = make_reader(port=device.port, unit=17)
    variables = collected(["holding:0"])
    reader.read(variables)
    assert (variables[0].value, units) == (99, [17])


def test_requests_describe_themselves(make_reader: MakeReader) -> None:
    reader = make_reader()
    texts = [str(r) for r in reader.plan_requests(["coil:0", "coil:2", "holding:5", "holding:7:uint32"])]
    assert texts == ["coil 0..2 (3 bits)", "holding 5..8 (4 registers)"]
    assert str(reader.plan_requests(["discrete:9"])[0]) == "discrete 9..9 (1 bit)"
