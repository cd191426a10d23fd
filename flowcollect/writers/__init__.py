"""Writers: one module per destination, each a ``DataWriter``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flowcollect.writers.base import DataWriter
from flowcollect.writers.csvfile import CsvFileDataWriter
from flowcollect.writers.log import LogDataWriter
from flowcollect.writers.memory import MemoryDataWriter
from flowcollect.writers.spool import SpooledWriter, SpoolOptions

if TYPE_CHECKING:
    from flowcollect.writers.influxdb import InfluxDBDataWriter
    from flowcollect.writers.mqtt import MqttDataWriter
    from flowcollect.writers.sparkplug import SparkplugDataWriter

__all__ = [
    "CsvFileDataWriter",
    "DataWriter",
    "InfluxDBDataWriter",
    "LogDataWriter",
    "MemoryDataWriter",
    "MqttDataWriter",
    "SparkplugDataWriter",
    # store and forward
    "SpoolOptions",
    "SpooledWriter",
]


def __getattr__(name: str) -> Any:
    # influxdb-client is imported only by those who write to InfluxDB.
    if name == "InfluxDBDataWriter":
        from flowcollect.writers.influxdb import InfluxDBDataWriter

        return InfluxDBDataWriter
    # paho-mqtt is imported only by those who publish to MQTT.
    if name == "MqttDataWriter":
        from flowcollect.writers.mqtt import MqttDataWriter

        return MqttDataWriter
    if name == "SparkplugDataWriter":
        from flowcollect.writers.sparkplug import SparkplugDataWriter

        return SparkplugDataWriter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
