"""Readers: one module (or package) per protocol, each a ``DataReader``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flowcollect.readers.base import DataReader
from flowcollect.readers.randomgen import RandomDataReader

if TYPE_CHECKING:
    from flowcollect.readers.modbus import ModbusDataReader, ModbusLine
    from flowcollect.readers.mqtt import MqttDataReader
    from flowcollect.readers.opcua import OpcUaDataReader

__all__ = [
    "DataReader",
    "ModbusDataReader",
    "ModbusLine",
    "MqttDataReader",
    "OpcUaDataReader",
    "RandomDataReader",
]


def __getattr__(name: str) -> Any:
    # pymodbus is imported only by those who read Modbus.
    if name in ("ModbusDataReader", "ModbusLine"):
        from flowcollect.readers import modbus

        return getattr(modbus, name)
    # asyncua is imported only by those who read OPC UA.
    if name == "OpcUaDataReader":
        from flowcollect.readers.opcua import OpcUaDataReader

        return OpcUaDataReader
    # paho-mqtt is imported only by those who read MQTT.
    if name == "MqttDataReader":
        from flowcollect.readers.mqtt import MqttDataReader

        return MqttDataReader
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
