"""Readers: one module (or package) per protocol, each a ``DataReader``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flowcollect.readers.base import DataReader
from flowcollect.readers.randomgen import RandomDataReader

if TYPE_CHECKING:
    from flowcollect.readers.modbus import ModbusDataReader, ModbusLine

__all__ = ["DataReader", "ModbusDataReader", "ModbusLine", "RandomDataReader"]


def __getattr__(name: str) -> Any:
    # pymodbus is imported only by those who read Modbus.
    if name in ("ModbusDataReader", "ModbusLine"):
        from flowcollect.readers import modbus

        return getattr(modbus, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
