"""The demo run by ``make run``: a simulated Modbus plant, two contexts, CSV (and InfluxDB).

    flowcollect run pipelines/demo.py --duration 10

The Modbus simulator (``flowcollect.simulator``) is started in-process on a free loopback port
before collection, so no hardware is needed. Two contexts at different intervals share
variables (read once at the instants both want them). Values go to ``out/demo.csv`` beside
this file (replaced on each run) and also to InfluxDB when ``INFLUX_URL`` is set:

- InfluxDB 2.x (and 1.8+, 3.x through their v2 endpoint): ``INFLUX_ORG``, ``INFLUX_BUCKET``,
  ``INFLUX_TOKEN``;
- InfluxDB 1.x: ``INFLUX_API=v1`` and ``INFLUX_DATABASE`` (``INFLUX_USERNAME`` and
  ``INFLUX_PASSWORD`` when auth is on);
- InfluxDB 3.x: ``INFLUX_API=v3``, ``INFLUX_DATABASE``, ``INFLUX_TOKEN``.

A setting missing for the chosen API is an error naming it. The run ends by itself after 20 s
unless ``--duration`` says sooner.
"""

from __future__ import annotations

import os

from flowcollect import ConfigError, DataCollectionContext, DataWriter, Pipeline, ValueType, Variable
from flowcollect.pipeline import EmbeddedModbusSimulator
from flowcollect.readers import ModbusDataReader
from flowcollect.writers import CsvFileDataWriter, InfluxDBDataWriter

# What each API needs besides INFLUX_URL (tokens and passwords the writer reads by itself).
INFLUX_NEEDS = {"v2": ("INFLUX_ORG", "INFLUX_BUCKET"), "v1": ("INFLUX_DATABASE",), "v3": ("INFLUX_DATABASE",)}

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


def influx() -> InfluxDBDataWriter | None:
    """The InfluxDB writer the environment asks for, or None without ``INFLUX_URL``."""
    env = {k: v for k, v in os.environ.items() if k.startswith("INFLUX_") and v}
    if "INFLUX_URL" not in env:
        return None
    api = env.get("INFLUX_API", "v2")
    if api not in INFLUX_NEEDS:
        raise ConfigError(f"demo INFLUX_API: must be v1, v2 or v3, got {api!r}")
    missing = [name for name in INFLUX_NEEDS[api] if name not in env]
    if missing:
        raise ConfigError(
            f"demo: INFLUX_URL is set but {' and '.join(missing)} not (api {api}); for InfluxDB 1.x "
            "set INFLUX_API=v1 and INFLUX_DATABASE, for 2.x INFLUX_ORG and INFLUX_BUCKET"
        )
    url, measurement = env["INFLUX_URL"], "flowcollect_demo"
    if api == "v1":
        return InfluxDBDataWriter(
            url,
            api="v1",
            database=env["INFLUX_DATABASE"],
            username=env.get("INFLUX_USERNAME"),
            measurement=measurement,
        )
    if api == "v3":
        return InfluxDBDataWriter(url, api="v3", database=env["INFLUX_DATABASE"], measurement=measurement)
    return InfluxDBDataWriter(
        url, org=env["INFLUX_ORG"], bucket=env["INFLUX_BUCKET"], measurement=measurement
    )


def writers() -> list[DataWriter]:
    out: list[DataWriter] = [CsvFileDataWriter("out/demo.csv", append=False)]
    writer = influx()
    if writer is not None:
        out.append(writer)
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
