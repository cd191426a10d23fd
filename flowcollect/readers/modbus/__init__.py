"""Modbus over TCP, serial lines and RTU gateways: lines, addresses, request plans, decoding, the reader."""

from __future__ import annotations

from flowcollect.readers.modbus.address import ModbusAddress, parse_address
from flowcollect.readers.modbus.estimates import LineEstimate, estimate_lane, line_estimates
from flowcollect.readers.modbus.line import ModbusLine, ModbusTls
from flowcollect.readers.modbus.packing import ModbusRequest
from flowcollect.readers.modbus.reader import ModbusDataReader

__all__ = [
    # units and lines
    "ModbusDataReader",
    "ModbusLine",
    "ModbusTls",
    # what a tick costs
    "LineEstimate",
    "ModbusRequest",
    "estimate_lane",
    "line_estimates",
    # addresses
    "ModbusAddress",
    "parse_address",
]
