"""Values read from the simulator's known registers: every table, type and byte order."""

from __future__ import annotations

import math
import struct
from collections.abc import Callable

import pytest
from modbus_helpers import collected, wait_until

from flowcollect.readers.modbus import ModbusDataReader
from flowcollect.readers.modbus.decoding import decode, encode
from flowcollect.simulator import KNOWN_BITS, KNOWN_TYPES, ORDERS, PLANT_NAME, known_offset

MakeReader = Callable[..., ModbusDataReader]

# The simulator's fixed numbers, written here again by hand: the test must not trust the code
# that put them there.
EXPECTED = {
    "int16": -12345,
    "uint16": 54321,
    "int32": -123456789,
    "uint32": 3456789012,
    "int64": -1234567890123456789,
    "uint64": 12345678901234567890,
    "float32": 1234.5677490234375,
    "float64": -2.718281828459045,
}


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("type_name", KNOWN_TYPES)
@pytest.mark.parametrize("table", ["holding", "input"])
def test_every_type_and_order_decodes_the_known_value(
    make_reader: MakeReader, table: str, type_name: str, order: str
) -> None:
    reader = make_reader()
    value_type = "float" if type_name.startswith("float") else "int"
    variables = collected([f"{table}:{known_offset(type_name, order)}:{type_name}:{order}"], value_type)
    reader.read(variables)
    assert variables[0].error is None
    assert variables[0].value == EXPECTED[type_name]
    assert type(variables[0].value) is type(EXPECTED[type_name])


@pytest.mark.parametrize(
    ("registers", "type_name", "order", "value"),
    [
        # Hand-written wire contents: the byte-order names mean what the docs say.
        ([0x3F80, 0x0000], "float32", "ABCD", 1.0),
        ([0x0000, 0x3F80], "float32", "CDAB", 1.0),
        ([0x803F, 0x0000], "float32", "BADC", 1.0),
        ([0x0000, 0x803F], "float32", "DCBA", 1.0),
        ([0x0102, 0x0304], "uint32", "ABCD", 0x01020304),
        ([0x0304, 0x0102], "uint32", "CDAB", 0x01020304),
        ([0x0201, 0x0403], "uint32", "BADC", 0x01020304),
        ([0x0403, 0x0201], "uint32", "DCBA", 0x01020304),
        ([0x0102, 0x0304, 0x0506, 0x0708], "uint64", "ABCD", 0x0102030405060708),
        ([0x0708, 0x0506, 0x0304, 0x0102], "uint64", "CDAB", 0x0102030405060708),
        ([0x0201, 0x0403, 0x0605, 0x0807], "uint64", "BADC", 0x0102030405060708),
        ([0x0807, 0x0605, 0x0403, 0x0201], "uint64", "DCBA", 0x0102030405060708),
        ([0xFFFE], "int16", "ABCD", -2),
        ([0xFEFF], "int16", "BADC", -2),
        ([0xFEFF], "int16", "DCBA", -2),
        ([0x0102], "uint16", "CDAB", 0x0102),
        ([0x4142, 0x4300], "string", "ABCD", "ABC"),
        ([0x4241, 0x0043], "string", "BADC", "ABC"),
        ([0x4100, 0x4200], "string", "ABCD", "A\x00B"),
    ],
)
def test_byte_orders_against_hand_written_registers(
    registers: list[int], type_name: str, order: str, value: float | str
) -> None:
    assert decode(registers, type_name, order) == value
    if type_name == "string" and value == "A\x00B":
        return  # only trailing NULs are stripped, so this one does not round-trip
    assert encode(value, type_name, order, width=len(registers)) == registers


@pytest.mark.parametrize(
    ("address", "value"),
    [
        ("holding:300:string6", "flowcollect"),
        ("input:300:string6", "flowcollect"),
        ("holding:310:string6:BADC", "flowcollect"),
        ("holding:320:string4", "ABCDEFGH"),
        ("holding:320:string2", "ABCD"),
        ("holding:10:string8", PLANT_NAME),
    ],
)
def test_strings(make_reader: MakeReader, address: str, value: str) -> None:
    reader = make_reader()
    variables = collected([address], "str")
    reader.read(variables)
    assert (variables[0].value, variables[0].error) == (value, None)


@pytest.mark.parametrize("table", ["coil", "discrete"])
def test_bits(make_reader: MakeReader, table: str) -> None:
    reader = make_reader()
    variables = collected([f"{table}:{100 + i}" for i in range(16)], "bool")
    reader.read(variables)
    assert [v.value for v in variables] == list(KNOWN_BITS)
    assert all(v.error is None for v in variables)


@pytest.mark.parametrize(
    ("address", "value_type", "value"),
    [
        (f"holding:{known_offset('int16', 'ABCD')}:int16", "float", -12345.0),
        (f"holding:{known_offset('int16', 'ABCD')}:int16", "str", "-12345"),
        (f"holding:{known_offset('uint32', 'CDAB')}:uint32:CDAB", "float", 3456789012.0),
        (f"holding:{known_offset('uint64', 'ABCD')}:uint64", "str", "12345678901234567890"),
        (f"holding:{known_offset('float32', 'ABCD')}:float32", "str", "1234.5677490234375"),
        ("coil:100", "int", 1),
        ("coil:101", "float", 0.0),
        ("coil:100", "str", "True"),
    ],
)
def test_values_are_delivered_as_the_variable_value_type(
    make_reader: MakeReader, address: str, value_type: str, value: object
) -> None:
    reader = make_reader()
    variables = collected([address], value_type)
    reader.read(variables)
    assert variables[0].error is None
    assert variables[0].value == value
    assert type(variables[0].value) is type(value)


def test_a_value_type_that_cannot_hold_the_value_is_an_error_not_a_crash(make_reader: MakeReader) -> None:
    # validate refuses this at start; read must still survive it if handed one.
    reader = make_reader()
    variables = collected(["holding:300:string6", "holding:301"], ["int", "int"])
    reader.read(variables)
    assert variables[0].value is None
    assert variables[0].error is not None
    assert "cannot hold" in variables[0].error
    assert variables[1].error is None


def test_an_invalid_address_in_read_is_an_error_on_that_value_only(make_reader: MakeReader) -> None:
    reader = make_reader()
    variables = collected(["holding:nope", "holding:1000"])
    reader.read(variables)
    assert variables[0].value is None
    assert variables[0].error is not None
    assert variables[0].error.startswith("invalid address")
    assert (variables[1].value, variables[1].error) == (0, None)


def test_the_plant_changes_over_time(make_reader: MakeReader) -> None:
    reader = make_reader()
    addresses = ["holding:0:float32", "holding:2:float32", "holding:4:uint32", "holding:6", "coil:0"]
    types = ["float", "float", "int", "int", "bool"]
    first = collected(addresses, types)
    reader.read(first)
    assert all(v.error is None for v in first)
    assert 19.4 <= first[0].value <= 22.6
    assert 56.9 <= first[1].value <= 73.1
    assert 1419 <= first[3].value <= 1481
    assert isinstance(first[4].value, bool)

    def counter_moved() -> bool:
        later = collected(addresses, types)
        reader.read(later)
        return bool(later[2].value > first[2].value)

    # The counter steps every 100 ms.
    assert wait_until(counter_moved, timeout_s=3.0)


def test_float32_values_are_the_exact_float32_not_rounded(make_reader: MakeReader) -> None:
    reader = make_reader()
    variables = collected(["holding:0:float32"], "float")
    reader.read(variables)
    value = variables[0].value
    assert isinstance(value, float)
    assert not math.isnan(value)
    assert struct.unpack(">f", struct.pack(">f", value))[0] == value
