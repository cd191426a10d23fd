"""The pipeline every member of the group tests runs: one Modbus reader per simulated device.

Environment: ``GROUP_TEST_PORTS`` (comma-separated simulator ports), ``GROUP_TEST_CSV`` (this
member's output file), ``GROUP_TEST_INTERVAL_MS``, ``GROUP_TEST_VARIABLES`` (per device; by
default two, from the simulated plant; more come from its bulk registers, one request a tick).
Every member builds the same readers, so the same lanes (``modbus+tcp://127.0.0.1:PORT``);
variable ``100 * (device + 1) + n`` comes from device ``device`` (0-based), so a CSV row names its device.
"""

from __future__ import annotations

import os

from flowcollect import DataCollectionContext, Pipeline, Variable
from flowcollect.readers import ModbusDataReader
from flowcollect.writers import CsvFileDataWriter

PORTS = [int(p) for p in os.environ["GROUP_TEST_PORTS"].split(",")]
INTERVAL_MS = int(os.environ.get("GROUP_TEST_INTERVAL_MS", "200"))

readers = [
    ModbusDataReader(f"unit{i}", host="127.0.0.1", port=port, timeout_s=0.5) for i, port in enumerate(PORTS)
]
COUNT = int(os.environ.get("GROUP_TEST_VARIABLES", "2"))
# Registers 0..5 (or bulk registers 1000...) in one request per device and tick.
ADDRESSES = (
    [("holding:0:float32", "float"), ("holding:4:uint32", "int")]
    if COUNT == 2
    else [(f"holding:{1000 + n}:uint16", "int") for n in range(COUNT)]
)
variables = [
    Variable(id=100 * (i + 1) + n, address=address, value_type=kind, reader=f"unit{i}")
    for i in range(len(PORTS))
    for n, (address, kind) in enumerate(ADDRESSES)
]

pipeline = Pipeline(
    name="group-test",
    readers=readers,
    writers=[CsvFileDataWriter(os.environ["GROUP_TEST_CSV"], append=False)],
    contexts=[DataCollectionContext(id=1, interval_ms=INTERVAL_MS, variables=variables)],
)
