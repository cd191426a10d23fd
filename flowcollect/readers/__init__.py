"""Readers: one module (or package) per protocol, each a ``DataReader``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flowcollect.readers.base import DataReader
from flowcollect.readers.randomgen import RandomDataReader

if TYPE_CHECKING:
    from flowcollect.readers.modbus import ModbusDataReader

__all__ = ["DataReader", "ModbusDataReader", "RandomDataReader"]


def __getattr__(name: str) -> Any:
    # pymodbus is imported only by those who read Modbus.
    if name == "ModbusDataReader":
        from flowcollect.readers.modbus import ModbusDataReader

        return ModbusDataReader
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
