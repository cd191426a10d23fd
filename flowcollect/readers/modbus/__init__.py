"""Modbus TCP: the address grammar, request planning, decoding and the reader."""

from __future__ import annotations

from flowcollect.readers.modbus.address import ModbusAddress, parse_address
from flowcollect.readers.modbus.packing import ModbusRequest
from flowcollect.readers.modbus.reader import ModbusDataReader

__all__ = ["ModbusAddress", "ModbusDataReader", "ModbusRequest", "parse_address"]
