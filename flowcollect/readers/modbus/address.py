"""The Modbus address grammar: ``<table>:<offset>[:<type>[:<order>]]``.

Pure: parsing and the value-type rules only, no I/O. See ``docs/modbus.md`` for the table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "BIT_TABLES",
    "BYTE_ORDERS",
    "MAX_OFFSET",
    "MAX_STRING_REGISTERS",
    "REGISTER_TABLES",
    "REGISTER_TYPES",
    "TABLES",
    "ByteOrder",
    "ModbusAddress",
    "Table",
    "check_value_type",
    "parse_address",
]

Table = Literal["coil", "discrete", "input", "holding"]
ByteOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]

TABLES: Final[tuple[Table, ...]] = ("coil", "discrete", "input", "holding")
BIT_TABLES: Final[frozenset[str]] = frozenset({"coil", "discrete"})
REGISTER_TABLES: Final[frozenset[str]] = frozenset({"input", "holding"})
BYTE_ORDERS: Final[tuple[ByteOrder, ...]] = ("ABCD", "CDAB", "BADC", "DCBA")
MAX_OFFSET: Final = 65535
# One read request carries at most 125 registers (the protocol's limit), so a longer string
# could never be read.
MAX_STRING_REGISTERS: Final = 125

# Register type -> number of 16-bit registers (1 for a bit; strings carry their own length).
REGISTER_TYPES: Final[dict[str, int]] = {
    "bool": 1,
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "int64": 4,
    "uint64": 4,
    "float32": 2,
    "float64": 4,
}

# The Python type a register type decodes to before any conversion to ``Variable.value_type``.
_NATURAL: Final[dict[str, str]] = {
    "bool": "bool",
    "int16": "int",
    "uint16": "int",
    "int32": "int",
    "uint32": "int",
    "int64": "int",
    "uint64": "int",
    "float32": "float",
    "float64": "float",
    "string": "str",
}

# Which value types hold every value of a register type without loss. A float holds any 32-bit
# integer exactly but not every 64-bit one, and no integer holds a fraction.
_HOLDS: Final[dict[str, frozenset[str]]] = {
    "bool": frozenset({"bool", "int", "float", "str"}),
    "int16": frozenset({"int", "float", "str"}),
    "uint16": frozenset({"int", "float", "str"}),
    "int32": frozenset({"int", "float", "str"}),
    "uint32": frozenset({"int", "float", "str"}),
    "int64": frozenset({"int", "str"}),
    "uint64": frozenset({"int", "str"}),
    "float32": frozenset({"float", "str"}),
    "float64": frozenset({"float", "str"}),
    "string": frozenset({"str"}),
}

_STRING = re.compile(r"string(?:(\d+)|<(\d+)>)")
_DIGITS = re.compile(r"\d+")


@dataclass(frozen=True, slots=True)
class ModbusAddress:
    """One parsed address: where the value lives and how its registers decode."""

    table: Table
    offset: int
    type: str
    """``bool``, ``int16`` ... ``float64`` or ``string``."""
    order: ByteOrder
    width: int
    """Registers (or bits, on coil and discrete tables) the value occupies."""

    @property
    def end(self) -> int:
        """One past the last register (or bit) of the value."""
        return self.offset + self.width

    @property
    def is_bit(self) -> bool:
        return self.table in BIT_TABLES

    @property
    def natural_type(self) -> str:
        """The Python type the registers decode to: ``bool``, ``int``, ``float`` or ``str``."""
        return _NATURAL[self.type]

    def __str__(self) -> str:
        type_text = f"string{self.width}" if self.type == "string" else self.type
        return f"{self.table}:{self.offset}:{type_text}:{self.order}"


def parse_address(text: str) -> ModbusAddress:
    """Parse ``<table>:<offset>[:<type>[:<order>]]``; raise ``ValueError`` saying what is wrong.

    Table, type and order are case-insensitive; the offset is a decimal number, 0-based.
    """
    if not isinstance(text, str):
        raise ValueError(f"modbus address must be a string, got {type(text).__name__}")
    parts = text.split(":")
    if not 2 <= len(parts) <= 4:
        raise ValueError(
            f"modbus address {text!r} must look like <table>:<offset>[:<type>[:<order>]], "
            "e.g. 'holding:10:float32:ABCD'"
        )
    table = _parse_table(text, parts[0])
    offset = _parse_offset(text, parts[1])
    type_name, width = _parse_type(text, table, parts[2] if len(parts) > 2 else "")
    order = _parse_order(text, type_name, parts[3] if len(parts) > 3 else "")
    if offset + width - 1 > MAX_OFFSET:
        raise ValueError(
            f"modbus address {text!r}: {type_name} at offset {offset} needs {width} registers "
            f"and runs past the last offset {MAX_OFFSET}"
        )
    return ModbusAddress(table=table, offset=offset, type=type_name, order=order, width=width)


def check_value_type(address: ModbusAddress, value_type: str) -> None:
    """Raise ``ValueError`` unless ``value_type`` holds every value of the address's type."""
    holds = _HOLDS[address.type]
    if value_type not in holds:
        type_text = f"string{address.width}" if address.type == "string" else address.type
        raise ValueError(
            f"value_type {value_type!r} cannot hold a {type_text} value from {address.table}:"
            f"{address.offset}; use one of {', '.join(sorted(holds))}"
        )


def _parse_table(text: str, part: str) -> Table:
    lowered = part.lower()
    for table in TABLES:
        if lowered == table:
            return table
    raise ValueError(f"modbus address {text!r}: unknown table {part!r}; expected one of {', '.join(TABLES)}")


def _parse_offset(text: str, part: str) -> int:
    # fullmatch on \d+ refuses signs, spaces, underscores and hex, which int() would accept.
    if not _DIGITS.fullmatch(part) or not part.isascii():
        raise ValueError(f"modbus address {text!r}: offset {part!r} must be a decimal number 0..65535")
    offset = int(part)
    if offset > MAX_OFFSET:
        raise ValueError(f"modbus address {text!r}: offset {offset} is out of range 0..{MAX_OFFSET}")
    return offset


def _parse_type(text: str, table: Table, part: str) -> tuple[str, int]:
    is_bit = table in BIT_TABLES
    if not part:
        return ("bool", 1) if is_bit else ("uint16", 1)
    lowered = part.lower()
    if is_bit:
        if lowered != "bool":
            raise ValueError(
                f"modbus address {text!r}: a {table} holds one bit, so its type can only be 'bool', "
                f"not {part!r}"
            )
        return "bool", 1
    if lowered == "bool":
        raise ValueError(
            f"modbus address {text!r}: type 'bool' is for coil and discrete tables; read a "
            f"{table} register as uint16 and give the variable value_type 'int'"
        )
    if lowered in REGISTER_TYPES:
        return lowered, REGISTER_TYPES[lowered]
    match = _STRING.fullmatch(lowered)
    if match is not None:
        digits = match.group(1) or match.group(2)
        count = int(digits)
        if not 1 <= count <= MAX_STRING_REGISTERS:
            raise ValueError(
                f"modbus address {text!r}: string length {count} must be 1..{MAX_STRING_REGISTERS} "
                "registers (two characters each)"
            )
        return "string", count
    names = ", ".join(t for t in REGISTER_TYPES if t != "bool")
    raise ValueError(f"modbus address {text!r}: unknown type {part!r}; expected one of {names}, string<N>")


def _parse_order(text: str, type_name: str, part: str) -> ByteOrder:
    if not part:
        return "ABCD"
    upper = part.upper()
    order: ByteOrder | None = next((o for o in BYTE_ORDERS if o == upper), None)
    if order is None:
        raise ValueError(
            f"modbus address {text!r}: unknown byte order {part!r}; expected one of {', '.join(BYTE_ORDERS)}"
        )
    if type_name == "bool":
        raise ValueError(f"modbus address {text!r}: a bit has no byte order")
    if type_name == "string" and order not in ("ABCD", "BADC"):
        raise ValueError(
            f"modbus address {text!r}: a string takes byte order ABCD (high byte first) or BADC "
            f"(low byte first), not {order}"
        )
    return order
