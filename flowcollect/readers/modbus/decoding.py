"""Registers to values and back, for every register type and byte order. Pure.

Registers arrive as 16-bit integers, each the big-endian word of two bytes on the wire. For a
value whose big-endian bytes are ``A B C D`` (``A`` most significant) the orders mean:

- ``ABCD``: registers ``[AB][CD]`` (big-endian words and bytes),
- ``CDAB``: ``[CD][AB]`` (words swapped; for 64-bit values the four words are reversed),
- ``BADC``: ``[BA][DC]`` (bytes swapped inside each word),
- ``DCBA``: ``[DC][BA]`` (both: fully little-endian).

Each order is its own inverse, so one function rearranges in both directions.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any, Final

from flowcollect.readers.modbus.address import ModbusAddress

__all__ = [
    "Decoder",
    "convert",
    "decode",
    "decoder_for",
    "encode",
    "plain_register",
    "registers_to_bytes",
]

Decoder = Callable[[Sequence[Any], int], Any]
"""Decodes the value starting at an index of a response's registers (or bits)."""

# The struct code of each numeric type, big-endian ('>').
_CODES: Final[dict[str, str]] = {
    "int16": "h",
    "uint16": "H",
    "int32": "i",
    "uint32": "I",
    "int64": "q",
    "uint64": "Q",
    "float32": "f",
    "float64": "d",
}


def registers_to_bytes(registers: Sequence[int], order: str) -> bytes:
    """The value's big-endian bytes, from registers laid out in ``order``."""
    words = list(registers)
    if order in ("CDAB", "DCBA"):
        words.reverse()
    endian = "<" if order in ("BADC", "DCBA") else ">"
    return struct.pack(f"{endian}{len(words)}H", *words)


def decode(registers: Sequence[int], type_name: str, order: str = "ABCD") -> int | float | str:
    """Decode the registers of one value (exactly its width) of a numeric or string type."""
    raw = registers_to_bytes(registers, order)
    if type_name == "string":
        # The register's high byte first was already restored above; latin-1 maps every byte
        # to one character, so a device's odd byte never makes the read fail.
        return raw.rstrip(b"\x00").decode("latin-1")
    value: int | float = struct.unpack(">" + _CODES[type_name], raw)[0]
    return value


def encode(value: int | float | str, type_name: str, order: str = "ABCD", width: int = 0) -> list[int]:
    """The registers holding ``value`` in ``order``; the inverse of ``decode``.

    Strings are padded with NULs to ``width`` registers (needed for strings only).
    """
    if type_name == "string":
        if not isinstance(value, str):
            raise TypeError(f"a string register value must be str, got {type(value).__name__}")
        data = value.encode("latin-1")
        if len(data) > 2 * width:
            raise ValueError(f"{value!r} needs more than {width} registers")
        data = data.ljust(2 * width, b"\x00")
    else:
        data = struct.pack(">" + _CODES[type_name], value)
    words = list(struct.unpack(f">{len(data) // 2}H", data))
    # Rearranging the big-endian words into `order` is the same permutation as the reverse.
    return list(struct.unpack(f">{len(words)}H", registers_to_bytes(words, order)))


def decoder_for(address: ModbusAddress) -> Decoder:
    """A fast decoder for one address: ``decoder(registers, index)`` -> the value.

    The common cases (a bit, a big-endian 16-bit register) skip ``struct`` entirely: a tick of a
    thousand registers spends its time here.
    """
    type_name, order, width = address.type, address.order, address.width
    if type_name == "bool":
        return _bit
    swap_bytes = order in ("BADC", "DCBA")
    if type_name == "uint16":
        return _uint16_swapped if swap_bytes else plain_register
    if type_name == "int16":
        return _int16_swapped if swap_bytes else _int16
    if type_name == "string":
        return lambda regs, i: decode(regs[i : i + width], "string", order)
    reverse_words = order in ("CDAB", "DCBA")
    words = struct.Struct(("<" if swap_bytes else ">") + "H" * width)
    value = struct.Struct(">" + _CODES[type_name])
    pack, unpack = words.pack, value.unpack

    if reverse_words:

        def decode_reversed(regs: Sequence[Any], i: int) -> Any:
            return unpack(pack(*reversed(regs[i : i + width])))[0]

        return decode_reversed

    def decode_in_order(regs: Sequence[Any], i: int) -> Any:
        return unpack(pack(*regs[i : i + width]))[0]

    return decode_in_order


def _bit(bits: Sequence[Any], i: int) -> Any:
    return bool(bits[i])


def plain_register(regs: Sequence[Any], i: int) -> Any:
    """The decoder of a big-endian uint16: the register itself (callers may inline it)."""
    return regs[i]


def _uint16_swapped(regs: Sequence[Any], i: int) -> Any:
    word: int = regs[i]
    return ((word & 0xFF) << 8) | (word >> 8)


def _int16(regs: Sequence[Any], i: int) -> Any:
    word: int = regs[i]
    return word - 0x10000 if word & 0x8000 else word


def _int16_swapped(regs: Sequence[Any], i: int) -> Any:
    word: int = regs[i]
    swapped = ((word & 0xFF) << 8) | (word >> 8)
    return swapped - 0x10000 if swapped & 0x8000 else swapped


def _to_str(value: Any) -> str:
    return str(value)


# (natural type, wanted value type) -> conversion; pairs missing here are refused by validate.
_CONVERSIONS: Final[dict[tuple[str, str], Callable[[Any], Any]]] = {
    ("int", "float"): float,
    ("int", "str"): _to_str,
    ("bool", "int"): int,
    ("bool", "float"): float,
    ("bool", "str"): _to_str,
    ("float", "str"): _to_str,
}


def convert(value: Any, natural_type: str, value_type: str) -> Any:
    """Deliver a decoded value as ``value_type``; ``KeyError`` if that type cannot hold it."""
    if natural_type == value_type:
        return value
    return _CONVERSIONS[(natural_type, value_type)](value)
