"""The address grammar, value-type rules and the reader's settings: clear errors for bad input."""

from __future__ import annotations

import re

import pytest

from flowcollect.errors import ConfigError
from flowcollect.models import Variable
from flowcollect.readers import ModbusDataReader
from flowcollect.readers.modbus import parse_address
from flowcollect.readers.modbus.address import check_value_type


@pytest.mark.parametrize(
    ("text", "table", "offset", "type_name", "order", "width"),
    [
        ("coil:0", "coil", 0, "bool", "ABCD", 1),
        ("discrete:65535", "discrete", 65535, "bool", "ABCD", 1),
        ("coil:7:bool", "coil", 7, "bool", "ABCD", 1),
        ("holding:0", "holding", 0, "uint16", "ABCD", 1),
        ("input:12", "input", 12, "uint16", "ABCD", 1),
        ("holding:5:int16", "holding", 5, "int16", "ABCD", 1),
        ("holding:5:int16:BADC", "holding", 5, "int16", "BADC", 1),
        ("holding:10:uint32", "holding", 10, "uint32", "ABCD", 2),
        ("holding:10:int32:CDAB", "holding", 10, "int32", "CDAB", 2),
        ("input:10:float32:DCBA", "input", 10, "float32", "DCBA", 2),
        ("holding:10:float64", "holding", 10, "float64", "ABCD", 4),
        ("holding:10:int64:CDAB", "holding", 10, "int64", "CDAB", 4),
        ("holding:10:uint64:BADC", "holding", 10, "uint64", "BADC", 4),
        ("holding:10:string8", "holding", 10, "string", "ABCD", 8),
        ("holding:10:string<8>", "holding", 10, "string", "ABCD", 8),
        ("holding:10:string1:BADC", "holding", 10, "string", "BADC", 1),
        ("HOLDING:3:Float32:cdab", "holding", 3, "float32", "CDAB", 2),
        ("holding:65534:int32", "holding", 65534, "int32", "ABCD", 2),
        ("holding:007", "holding", 7, "uint16", "ABCD", 1),
        ("holding:1:int32:", "holding", 1, "int32", "ABCD", 2),
    ],
)
def test_parse_valid_addresses(
    text: str, table: str, offset: int, type_name: str, order: str, width: int
) -> None:
    address = parse_address(text)
    assert (address.table, address.offset, address.type, address.order, address.width) == (
        table,
        offset,
        type_name,
        order,
        width,
    )
    assert address.end == offset + width


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "must look like"),
        ("holding", "must look like"),
        ("holding:1:int16:ABCD:x", "must look like"),
        ("register:1", "unknown table 'register'"),
        ("holding:-1", "offset '-1' must be a decimal number"),
        ("holding:0x10", "offset '0x10' must be a decimal number"),
        ("holding: 1", "offset ' 1' must be a decimal number"),
        ("holding:", "offset '' must be a decimal number"),
        ("holding:65536", "offset 65536 is out of range 0..65535"),
        ("holding:65535:float32", "runs past the last offset 65535"),
        ("holding:1:float", "unknown type 'float'"),
        ("holding:1:int8", "unknown type 'int8'"),
        ("holding:1:bool", "type 'bool' is for coil and discrete tables"),
        ("coil:1:int16", "its type can only be 'bool'"),
        ("discrete:1:float32", "its type can only be 'bool'"),
        ("holding:1:string0", "string length 0 must be 1..125"),
        ("holding:1:string126", "string length 126 must be 1..125"),
        ("holding:1:string", "unknown type 'string'"),
        ("holding:1:int32:ABDC", "unknown byte order 'ABDC'"),
        ("coil:1:bool:ABCD", "a bit has no byte order"),
        ("holding:1:string4:CDAB", "a string takes byte order ABCD"),
    ],
)
def test_parse_rejects_bad_addresses_naming_the_problem(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="modbus address") as caught:
        parse_address(text)
    assert message in str(caught.value)
    assert repr(text) in str(caught.value) or text == ""


@pytest.mark.parametrize(
    ("address", "value_type", "ok"),
    [
        ("coil:0", "bool", True),
        ("coil:0", "int", True),
        ("coil:0", "float", True),
        ("coil:0", "str", True),
        ("holding:0", "int", True),
        ("holding:0", "float", True),
        ("holding:0", "bool", False),
        ("holding:0:int32", "float", True),
        ("holding:0:uint32", "bool", False),
        ("holding:0:int64", "int", True),
        ("holding:0:int64", "float", False),
        ("holding:0:uint64", "float", False),
        ("holding:0:float32", "float", True),
        ("holding:0:float32", "str", True),
        ("holding:0:float32", "bool", False),
        ("holding:0:float64", "int", False),
        ("holding:0:string4", "str", True),
        ("holding:0:string4", "int", False),
        ("holding:0:string4", "float", False),
    ],
)
def test_value_type_must_hold_every_value_of_the_register_type(
    address: str, value_type: str, ok: bool
) -> None:
    parsed = parse_address(address)
    if ok:
        check_value_type(parsed, value_type)
        return
    with pytest.raises(ValueError, match=f"value_type '{value_type}' cannot hold"):
        check_value_type(parsed, value_type)


def _variable(address: str, value_type: str = "int") -> Variable:
    return Variable(id=7, address=address, value_type=value_type, reader="modbus")  # type: ignore[arg-type]


def test_validate_accepts_good_variables_without_touching_the_device() -> None:
    # Port 1 on loopback: nothing listens, and validate must not try.
    reader = ModbusDataReader("modbus", "127.0.0.1", port=1)
    reader.validate(_variable("holding:0:float32:CDAB", "float"))
    reader.validate(_variable("coil:3", "bool"))
    assert reader.stats()["connect_attempts"] == 0


@pytest.mark.parametrize(
    ("address", "value_type", "message"),
    [
        ("holding:0:float32", "bool", "value_type 'bool' cannot hold a float32 value"),
        ("holding:0:string4", "int", "cannot hold a string4 value"),
        ("holding:x", "int", "offset 'x' must be a decimal number"),
        ("holding:0:string20", "str", "needs 20 registers, more than this reader's max_registers=10"),
    ],
)
def test_validate_rejects_with_a_clear_message(address: str, value_type: str, message: str) -> None:
    reader = ModbusDataReader("modbus", "127.0.0.1", port=1, max_registers=10)
    with pytest.raises(ValueError, match=re.escape(message)):
        reader.validate(_variable(address, value_type))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"type": ""}, "ModbusDataReader type: must be a non-empty str, got ''"),
        ({"host": ""}, "ModbusDataReader host: must be a non-empty str"),
        ({"host": None}, "ModbusDataReader host: must be a non-empty str, got None"),
        ({"port": 0}, "ModbusDataReader port: must be an int 1..65535, got 0"),
        ({"port": 70000}, "ModbusDataReader port: must be an int 1..65535, got 70000"),
        ({"port": "502"}, "ModbusDataReader port: must be an int 1..65535, got '502'"),
        ({"unit": 256}, "ModbusDataReader unit: must be an int 0..255"),
        ({"unit": True}, "ModbusDataReader unit: must be an int 0..255, got True"),
        ({"timeout_s": 0}, "ModbusDataReader timeout_s: must be a positive number of seconds, got 0"),
        ({"timeout_s": float("nan")}, "ModbusDataReader timeout_s: must be a positive number"),
        ({"max_gap": -1}, "ModbusDataReader max_gap: must be an int 0 or more, got -1"),
        (
            {"max_registers": 126},
            "ModbusDataReader max_registers: must be an int 1..125 (the protocol's limit",
        ),
        ({"max_registers": 0}, "ModbusDataReader max_registers: must be an int 1..125"),
        ({"max_bits": 2001}, "ModbusDataReader max_bits: must be an int 1..2000"),
        ({"min_interval_ms": 0}, "ModbusDataReader min_interval_ms: must be an int 1 or more, got 0"),
    ],
)
def test_reader_settings_are_checked(options: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"type": "modbus", "host": "127.0.0.1", **options}
    with pytest.raises(ConfigError, match=re.escape(message)):
        ModbusDataReader(**arguments)  # type: ignore[arg-type]


def test_every_bad_setting_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        ModbusDataReader("modbus", "127.0.0.1", port=0, unit=-1, max_bits=0)
    assert [p.split(":")[0] for p in caught.value.problems] == [
        "ModbusDataReader port",
        "ModbusDataReader unit",
        "ModbusDataReader max_bits",
    ]


def test_reader_reports_its_type_and_interval_floor() -> None:
    reader = ModbusDataReader("plc1", "127.0.0.1", min_interval_ms=20)
    assert reader.type == "plc1"
    assert reader.min_interval_ms == 20
    assert "127.0.0.1:502" in repr(reader)
