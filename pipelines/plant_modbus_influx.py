"""A plant: three Modbus devices, byte orders of every kind, a context paused on a schedule.

    flowcollect run pipelines/plant_modbus_influx.py
    flowcollect plan pipelines/plant_modbus_influx.py

Three simulated devices (``flowcollect.simulator``, each started in-process on a free
loopback port) stand for a mixer PLC, a boiler controller that stores its words swapped
(CDAB, BADC, DCBA), and a packing machine. Four contexts read them at 200 ms to 5 s; the
quality context runs 4 s, pauses 2 s, and so on (``PauseSchedule``), as a batch phase would.

Values go to InfluxDB when ``INFLUX_URL``, ``INFLUX_TOKEN``, ``INFLUX_ORG`` and
``INFLUX_BUCKET`` are set, else to ``out/plant.csv`` beside this file. Runs until stopped
(Ctrl-C, SIGTERM): its contexts have ``duration_s=None``.
"""

from __future__ import annotations

import os

from flowcollect import DataCollectionContext, DataWriter, Pipeline, ValueType, Variable
from flowcollect.pipeline import EmbeddedModbusSimulator, PauseSchedule
from flowcollect.readers import ModbusDataReader
from flowcollect.writers import CsvFileDataWriter, InfluxDBDataWriter

INFLUX_ENV = ("INFLUX_URL", "INFLUX_TOKEN", "INFLUX_ORG", "INFLUX_BUCKET")

# One reader (one connection) per device. The ports are placeholders: each simulator picks a
# free port when it starts and points its reader at it. On a real plant, give host and port.
mixer = ModbusDataReader("mixer", host="127.0.0.1", port=502, timeout_s=0.5)
boiler = ModbusDataReader("boiler", host="127.0.0.1", port=502, timeout_s=0.5, max_gap=16)
packer = ModbusDataReader("packer", host="127.0.0.1", port=502, timeout_s=0.5, unit=1)


def var(
    vid: int, reader: str, address: str, value_type: ValueType, interval_ms: int | None = None
) -> Variable:
    return Variable(id=vid, reader=reader, address=address, value_type=value_type, interval_ms=interval_ms)


# The mixer: live process values (big-endian, the Modbus default).
MIXER_TEMPERATURE = var(1, "mixer", "holding:0:float32", "float")
JACKET_TEMPERATURE = var(2, "mixer", "holding:2:float32", "float")
PARTS = var(3, "mixer", "holding:4:uint32", "int")
PUMP_SPEED = var(4, "mixer", "holding:6:uint16", "int")
PUMP_RUNNING = var(5, "mixer", "coil:0", "bool", interval_ms=600)
VALVE_OPEN = var(6, "mixer", "coil:1", "bool", interval_ms=600)

# The boiler controller stores multi-word values in other orders (the simulator's fixed block).
SUPPLY_TEMPERATURE = var(11, "boiler", "holding:200:float32:CDAB", "float")
RETURN_TEMPERATURE = var(12, "boiler", "holding:208:float32:DCBA", "float")
PRESSURE_OFFSET = var(13, "boiler", "holding:140:int32:BADC", "int")
BURNER_STARTS = var(14, "boiler", "holding:152:uint32:CDAB", "int")
ENERGY_KWH = var(15, "boiler", "holding:224:float64:DCBA", "float")

# The packing machine: input registers, discrete inputs and a byte-swapped string.
FILM_TENSION = var(21, "packer", "input:108:int16:BADC", "int")
PACKS_TOTAL = var(22, "packer", "input:160:uint32:DCBA", "int")
RECIPE = var(23, "packer", "input:310:string6:BADC", "str")
DOOR_CLOSED = var(24, "packer", "discrete:0", "bool")
HEARTBEAT = var(25, "packer", "discrete:1", "bool")


def writers() -> list[DataWriter]:
    if all(os.environ.get(name) for name in INFLUX_ENV):
        return [
            InfluxDBDataWriter(
                url=os.environ["INFLUX_URL"],
                token=os.environ["INFLUX_TOKEN"],
                org=os.environ["INFLUX_ORG"],
                bucket=os.environ["INFLUX_BUCKET"],
                measurement="plant",
            )
        ]
    return [CsvFileDataWriter("out/plant.csv")]


QUALITY = 3

pipeline = Pipeline(
    name="plant",
    description="Mixer, boiler and packer on Modbus TCP into InfluxDB (CSV without it)",
    devices=[
        EmbeddedModbusSimulator([mixer], name="mixer PLC (simulated)"),
        EmbeddedModbusSimulator([boiler], name="boiler controller (simulated)"),
        EmbeddedModbusSimulator([packer], name="packing machine (simulated)"),
    ],
    readers=[mixer, boiler, packer],
    writers=writers(),
    listeners=[PauseSchedule(QUALITY, active_s=4.0, paused_s=2.0)],
    # duration_s=None: a plant's contexts never end by themselves; the run ends on SIGTERM.
    contexts=[
        # The process: fast values every 200 ms, the pump and valve states every 600 ms.
        DataCollectionContext(
            id=1,
            duration_s=None,
            interval_ms=200,
            variables=[MIXER_TEMPERATURE, JACKET_TEMPERATURE, PARTS, PUMP_SPEED, PUMP_RUNNING, VALVE_OPEN],
        ),
        # Energy: the boiler every second, with the mixer temperature (shared with context 1).
        DataCollectionContext(
            id=2,
            duration_s=None,
            interval_ms=1000,
            variables=[
                SUPPLY_TEMPERATURE,
                RETURN_TEMPERATURE,
                PRESSURE_OFFSET,
                BURNER_STARTS,
                ENERGY_KWH,
                MIXER_TEMPERATURE,
            ],
        ),
        # Quality: the packer every 500 ms while a batch runs (paused and resumed on a schedule).
        DataCollectionContext(
            id=QUALITY,
            duration_s=None,
            interval_ms=500,
            variables=[FILM_TENSION, PACKS_TOTAL, RECIPE, DOOR_CLOSED, HEARTBEAT],
        ),
        # An overview every 5 s across devices, sharing reads with the other contexts.
        DataCollectionContext(
            id=4,
            duration_s=None,
            interval_ms=5000,
            variables=[PARTS, ENERGY_KWH, PACKS_TOTAL, var(31, "mixer", "holding:10:string8", "str")],
        ),
    ],
)
