"""The OPC UA demo: the simulated plant polled and subscribed, into a CSV file.

    flowcollect run pipelines/opcua_demo.py --duration 10
    flowcollect plan pipelines/opcua_demo.py      # shows the Read calls and monitored items

The OPC UA simulator (``flowcollect.simulator.opcua``) is started in-process on a free loopback
port before collection and points both readers at itself, so no PLC is needed. One reader polls
(one Read call per tick for the due nodes), the other subscribes (a monitored item per node;
the server pushes changes with their source times). Addresses are browse paths with the
plant's namespace URI, so they survive a server that renumbers its namespaces. Values go to
``out/opcua_demo.csv`` (replaced on each run). The run ends by itself after 20 s.
"""

from __future__ import annotations

from flowcollect import DataCollectionContext, Pipeline, ValueType, Variable
from flowcollect.readers import OpcUaDataReader
from flowcollect.simulator.opcua import NAMESPACE_URI, EmbeddedOpcUaSimulator
from flowcollect.writers import CsvFileDataWriter

# The endpoint is a placeholder: the simulator picks a free port when it starts and points the
# readers at it.
polled = OpcUaDataReader("opcua", "opc.tcp://127.0.0.1:4840/flowcollect", timeout_s=1.0)
pushed = OpcUaDataReader("opcua-sub", "opc.tcp://127.0.0.1:4840/flowcollect", mode="subscribe", timeout_s=1.0)


def line1(vid: int, name: str, value_type: ValueType, reader: str = "opcua") -> Variable:
    return Variable(
        id=vid, address=f"nsu={NAMESPACE_URI};/Plant/Line1/{name}", value_type=value_type, reader=reader
    )


pipeline = Pipeline(
    name="opcua_demo",
    description="The simulated OPC UA plant, polled every 500 ms and subscribed, into out/opcua_demo.csv",
    devices=[EmbeddedOpcUaSimulator([polled, pushed], name="simulated OPC UA plant")],
    readers=[polled, pushed],
    writers=[CsvFileDataWriter("out/opcua_demo.csv", append=False)],
    contexts=[
        # Polled: the process values every 500 ms.
        DataCollectionContext(
            id=1,
            interval_ms=500,
            duration_s=20,
            variables=[
                line1(1, "Temperature", "float"),
                line1(2, "Pressure", "float"),
                line1(3, "Counter", "int"),
                line1(4, "Running", "bool"),
                line1(5, "State", "str"),
            ],
        ),
        # Subscribed: the server pushes each change (sampled every second).
        DataCollectionContext(
            id=2,
            interval_ms=1000,
            duration_s=20,
            variables=[
                line1(11, "Temperature", "float", "opcua-sub"),
                line1(12, "Level", "int", "opcua-sub"),
                line1(13, "Flaky", "float", "opcua-sub"),
            ],
        ),
    ],
)
