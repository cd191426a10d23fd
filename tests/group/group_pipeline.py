"""The pipeline every member of the group tests runs: one Modbus reader per simulated device.

Environment: ``GROUP_TEST_PORTS`` (comma-separated simulator ports), ``GROUP_TEST_CSV`` (this
member's output file), ``GROUP_TEST_INTERVAL_MS``. Every member builds the same readers, so
the same lanes (``modbus+tcp://127.0.0.1:PORT``); variable ``100 * device + n`` comes from
device ``device``, so a CSV row names its device.
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
# Registers 0..5 in one request per device and tick.
variables = [
    Variable(id=100 * i + n, address=address, value_type=kind, reader=f"unit{i}")
    for i in range(len(PORTS))
    for n, (address, kind) in enumerate([("holding:0:float32", "float"), ("holding:4:uint32", "int")])
]

pipeline = Pipeline(
    name="group-test",
    readers=readers,
    writers=[CsvFileDataWriter(os.environ["GROUP_TEST_CSV"], append=False)],
    contexts=[DataCollectionContext(id=1, interval_ms=INTERVAL_MS, variables=variables)],
)
