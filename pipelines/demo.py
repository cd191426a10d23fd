"""The demo run by ``make run``: a simulated Modbus plant, two contexts, CSV (and InfluxDB).

    flowcollect run pipelines/demo.py --duration 10

The Modbus simulator (``flowcollect.simulator``) is started in-process on a free loopback port
before collection, so no hardware is needed. Two contexts at different intervals share
variables (read once at the instants both want them). Values go to ``out/demo.csv`` beside
this file (replaced on each run) and also to InfluxDB when ``INFLUX_URL``, ``INFLUX_TOKEN``,
``INFLUX_ORG`` and ``INFLUX_BUCKET`` are set. The run ends by itself after 20 s unless
``--duration`` says sooner.
"""

from __future__ import annotations

import os

from flowcollect import DataCollectionContext, DataWriter, Pipeline, ValueType, Variable
from flowcollect.pipeline import EmbeddedModbusSimulator
from flowcollect.readers import ModbusDataReader
from flowcollect.writers import CsvFileDataWriter, InfluxDBDataWriter

INFLUX_ENV = ("INFLUX_URL", "INFLUX_TOKEN", "INFLUX_ORG", "INFLUX_BUCKET")

# The port is a placeholder: the simulator picks a free one when it starts and points the
# reader at it, so the demo never collides with anything else listening.
plc = ModbusDataReader("plc", host="127.0.0.1", port=502, timeout_s=0.5)


def modbus(vid: int, address: str, value_type: ValueType) -> Variable:
    return Variable(id=vid, address=address, value_type=value_type, reader="plc")


# What the simulated mixer line serves (see docs/modbus.md for its register map).
TEMPERATURE_1 = modbus(1, "holding:0:float32", "float")
TEMPERATURE_2 = modbus(2, "holding:2:float32", "float")
COUNTER = modbus(3, "holding:4:uint32", "int")
PUMP_SPEED = modbus(4, "holding:6:uint16", "int")
LEVEL = modbus(5, "holding:7:int16", "int")
LINE_NAME = modbus(6, "holding:10:string8", "str")
PUMP_RUNNING = modbus(7, "coil:0", "bool")
HEARTBEAT = modbus(8, "discrete:1", "bool")


def writers() -> list[DataWriter]:
    out: list[DataWriter] = [CsvFileDataWriter("out/demo.csv", append=False)]
    if all(os.environ.get(name) for name in INFLUX_ENV):
        out.append(
            InfluxDBDataWriter(
                url=os.environ["INFLUX_URL"],
                token=os.environ["INFLUX_TOKEN"],
                org=os.environ["INFLUX_ORG"],
                bucket=os.environ["INFLUX_BUCKET"],
                measurement="flowcollect_demo",
            )
        )
    return out


pipeline = Pipeline(
    name="demo",
    description="The simulated mixer line: a fast process context and a slow overview context",
    devices=[EmbeddedModbusSimulator([plc], name="simulated mixer line")],
    readers=[plc],
    writers=writers(),
    contexts=[
        # The process, every 250 ms.
        DataCollectionContext(
            id=1,
            interval_ms=250,
            duration_s=20,
            variables=[TEMPERATURE_1, TEMPERATURE_2, COUNTER, PUMP_SPEED, PUMP_RUNNING],
        ),
        # An overview every second; temperature 1 and the counter are shared with context 1.
        DataCollectionContext(
            id=2,
            interval_ms=1000,
            duration_s=20,
            variables=[TEMPERATURE_1, COUNTER, LEVEL, LINE_NAME, HEARTBEAT],
        ),
    ],
)
