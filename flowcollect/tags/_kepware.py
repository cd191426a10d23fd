"""Kepware's CSV tag export, for the Modbus driver: its documented columns mapped onto variables.

A Kepware export has a header record (``Tag Name``, ``Address``, ``Data Type``, ``Respect Data
Type``, ``Client Access``, ``Scan Rate``, ``Scaling``, ``Raw Low`` ... ``Description``) and a
record per tag. What maps:

- ``Tag Name`` -> ``name``; ``Scan Rate`` (ms) -> ``interval_ms`` (empty or 0: the default);
- ``Address`` and ``Data Type`` -> a Modbus address in flowcollect's grammar: ``0xxxx`` coils,
  ``1xxxx`` discrete inputs, ``3xxxx`` input registers, ``4xxxx`` holding registers (five or six
  digits, 1-based, as Kepware writes them), the data type giving the register type;
  ``4xxxx.nnn H``/``L`` strings of ``nnn`` bytes, high or low byte first;
- ``Scaling`` ``Linear`` with ``Raw Low/High`` and ``Scaled Low/High`` -> ``scale`` and ``offset``;
- ``Eng Units`` -> the tag ``unit``.

Kepware keeps 32- and 64-bit word order in the device's settings, not in the tag list; its
default is "first word low", so multi-register values get byte order ``CDAB`` unless the caller
says otherwise (``kepware_word_order="ABCD"`` for a device with that setting off).

Not carried over (said once, by name): ``Respect Data Type``, ``Client Access``, ``Scaled Data
Type``, ``Clamp Low/High``, ``Negate Value``, ``Description`` and any other column. A row whose
address or data type has no equivalent (a bit inside a register, BCD, ``Square Root`` scaling) is
an error naming the row and the column.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Final

__all__ = ["KEPWARE_COLUMNS", "is_kepware", "translate_row"]

KEPWARE_COLUMNS: Final = (
    "Tag Name",
    "Address",
    "Data Type",
    "Scan Rate",
    "Scaling",
    "Raw Low",
    "Raw High",
    "Scaled Low",
    "Scaled High",
    "Eng Units",
)
"""The columns that carry over; any other column is reported as ignored."""

_ALIASES: Final = {"eng. units": "Eng Units", "engineering units": "Eng Units"}

# Kepware data type -> (register type, registers); None: the table's own (a bit).
_REGISTER_TYPES: Final[dict[str, str | None]] = {
    "boolean": None,
    "word": "uint16",
    "short": "int16",
    "dword": "uint32",
    "long": "int32",
    "float": "float32",
    "double": "float64",
    "qword": "uint64",
    "llong": "int64",
    "default": "",
}
_UNSUPPORTED_TYPES: Final = ("bcd", "lbcd", "char", "byte", "date")
_TABLES: Final = {"0": "coil", "1": "discrete", "3": "input", "4": "holding"}
_ADDRESS = re.compile(r"([0134])(\d{4,5})(?:\.(\d+)\s*([HL])?)?", re.IGNORECASE)


def canonical_column(header: str) -> str:
    """A Kepware column's documented spelling (``Eng. Units`` and ``Eng Units`` are one)."""
    stripped = header.strip()
    return _ALIASES.get(stripped.lower(), stripped)


def is_kepware(header: list[str]) -> bool:
    """Whether a header record is Kepware's (it has ``Tag Name`` and ``Address``)."""
    names = {canonical_column(h) for h in header}
    return {"Tag Name", "Address"} <= names


def translate_row(
    cells: Mapping[str, str], word_order: str
) -> tuple[dict[str, object], list[tuple[str, str]]]:
    """One Kepware record -> Variable fields, and the problems as (column, message) pairs."""
    fields: dict[str, object] = {}
    problems: list[tuple[str, str]] = []
    name = cells.get("Tag Name", "").strip()
    if name:
        fields["name"] = name
    else:
        problems.append(("Tag Name", "is empty"))
    address = _address(cells.get("Address", ""), cells.get("Data Type", ""), word_order, problems)
    if address is not None:
        fields["address"] = address
    rate = cells.get("Scan Rate", "").strip()
    if rate and rate != "0":
        if rate.isdigit():
            fields["interval_ms"] = int(rate)
        else:
            problems.append(("Scan Rate", f"{rate!r} is not a whole number of milliseconds"))
    _scaling(cells, fields, problems)
    unit = cells.get("Eng Units", "").strip()
    if unit:
        fields["tags"] = {"unit": unit}
    return fields, problems


class _RefusedError(ValueError):
    """A record whose address or data type has no flowcollect equivalent."""

    def __init__(self, column: str, message: str) -> None:
        super().__init__(message)
        self.column = column


def _address(text: str, data_type: str, word_order: str, problems: list[tuple[str, str]]) -> str | None:
    try:
        return _translate_address(text.strip(), data_type.strip(), word_order)
    except _RefusedError as refused:
        problems.append((refused.column, str(refused)))
        return None


def _translate_address(raw: str, data_type: str, word_order: str) -> str:
    match = _ADDRESS.fullmatch(raw)
    if match is None:
        raise _RefusedError(
            "Address", f"{raw!r} is not a Kepware Modbus address (0xxxx, 1xxxx, 3xxxx or 4xxxx, 1-based)"
        )
    table = _TABLES[match.group(1)]
    number = int(match.group(2))
    if not 1 <= number <= 65536:
        raise _RefusedError("Address", f"{raw!r}: register {number} is out of range 1..65536")
    offset = number - 1
    kind = data_type.lower()
    if match.group(3) is not None:
        if match.group(4) is None or kind not in ("string", ""):
            raise _RefusedError(
                "Address",
                f"{raw!r}: a bit inside a register has no flowcollect equivalent; read the register "
                "as Word and test the bit downstream",
            )
        registers = math.ceil(int(match.group(3)) / 2)
        order = "ABCD" if match.group(4).upper() == "H" else "BADC"
        return f"{table}:{offset}:string{registers}:{order}"
    if kind == "string":
        raise _RefusedError("Address", f"{raw!r}: a String tag needs its length, as 4xxxx.nnn H or L")
    if kind in _UNSUPPORTED_TYPES:
        raise _RefusedError("Data Type", f"{data_type!r} has no flowcollect equivalent")
    if kind and kind not in _REGISTER_TYPES:
        raise _RefusedError("Data Type", f"{data_type!r} is not a Kepware Modbus data type")
    register_type = _REGISTER_TYPES.get(kind, "")
    if table in ("coil", "discrete"):
        if register_type:
            raise _RefusedError("Data Type", f"{data_type!r} does not fit a {table}, which holds one bit")
        return f"{table}:{offset}"
    if register_type is None:
        raise _RefusedError(
            "Data Type", f"Boolean on a {table} register has no flowcollect equivalent; use Word"
        )
    if register_type in ("", "uint16", "int16"):
        return f"{table}:{offset}" + (f":{register_type}" if register_type else "")
    return f"{table}:{offset}:{register_type}:{word_order}"


def _scaling(cells: Mapping[str, str], fields: dict[str, object], problems: list[tuple[str, str]]) -> None:
    mode = cells.get("Scaling", "").strip().lower()
    if mode in ("", "none", "0"):
        return
    if mode != "linear":
        problems.append(
            ("Scaling", f"{cells['Scaling'].strip()!r} scaling has no flowcollect equivalent (Linear has)")
        )
        return
    bounds: dict[str, float] = {}
    for column in ("Raw Low", "Raw High", "Scaled Low", "Scaled High"):
        text = cells.get(column, "").strip()
        try:
            bounds[column] = float(text)
        except ValueError:
            problems.append((column, f"{text!r} is not a number"))
    if len(bounds) < 4:
        return
    raw_span = bounds["Raw High"] - bounds["Raw Low"]
    if raw_span == 0:
        problems.append(("Raw High", "equals Raw Low, so Linear scaling divides by zero"))
        return
    scale = (bounds["Scaled High"] - bounds["Scaled Low"]) / raw_span
    fields["scale"] = scale
    fields["offset"] = bounds["Scaled Low"] - bounds["Raw Low"] * scale
