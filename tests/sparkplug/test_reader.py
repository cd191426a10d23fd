"""``MqttDataReader`` on Sparkplug B addresses: an edge node (``SparkplugDataWriter``) and the
tests' own client publish to a real Mosquitto, the reader's values land in the engine."""

from __future__ import annotations

import threading
import time
from typing import Any

from flowcollect import CollectedVariable, DataCollectionContext, DataCollector, Variable
from flowcollect.readers import MqttDataReader
from flowcollect.sparkplug._schema import DataType, Payload
from flowcollect.values import ValueBatch, VariableSpec
from flowcollect.writers import MemoryDataWriter, SparkplugDataWriter
from tests.support.mqtt_peer import Peer
from tests.support.waiting import wait_until

FAST: dict[str, Any] = {"interval_ms": 50, "min_interval_ms": 10}
SPECS = (
    VariableSpec(1, 1, "temp", "float", "plc1", 100, name="Line/Temp"),
    VariableSpec(2, 1, "holding:1:int16", "int", "plc1", 100, name="Level"),
)


class Collected(MemoryDataWriter):
    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()

    def last(self, variable_id: int) -> CollectedVariable | None:
        got = [v for v in self.snapshot() if v.id == variable_id]
        return got[-1] if got else None


def now_ms() -> int:
    return time.time_ns() // 100_000_000 * 100


def test_metrics_of_an_edge_node_on_the_grid(mosquitto_factory: Any) -> None:
    broker = mosquitto_factory()
    reader = MqttDataReader(broker.url)
    memory = Collected()
    variables = [
        Variable(id=1, address="spBv1.0/Plant/DDATA/edge1/plc1:Line/Temp", reader="mqtt"),
        Variable(id=2, address="spBv1.0/Plant/DDATA/edge1/plc1:Level", reader="mqtt", value_type="int"),
    ]
    edge = SparkplugDataWriter(broker.url, group_id="Plant", edge_node_id="edge1")
    try:
        t0 = now_ms()
        edge.write_batch(ValueBatch(t0, SPECS, [20.5, -3], context_id=1))
        wait_until(lambda: edge.stats()["written"] == 2, what="the edge node born")
        with Peer(broker.url) as peer, DataCollector([reader], [memory]) as collector:
            collector.start(DataCollectionContext(id=1, variables=variables, **FAST))
            # The reader asks the node for its births as it starts watching it: it learns the aliases
            # (or, if they came before its subscription did, asks again at the first DDATA).
            wait_until(lambda: edge.stats()["births"] >= 2, what="a rebirth the reader asked for")

            def subscribed() -> bool:  # the reader's SUBACK is not observable: a message it counts is
                peer.publish("spBv1.0/Plant/PROBE/edge1", b"")
                return reader.stats().get("messages", 0) > 0

            wait_until(subscribed, what="the reader's subscriptions in place")
            for k in range(1, 4):
                edge.write_batch(ValueBatch(t0 + 100 * k, SPECS, [20.5 + k, -3 - k], context_id=1))
            wait_until(lambda: (v := memory.last(2)) is not None and v.value == -6, what="the newest values")
            temp = memory.last(1)
            assert temp is not None and temp.value == 23.5 and temp.error is None
            assert (
                temp.time is not None and int(temp.time.timestamp() * 1000) == t0 + 300
            )  # the metric's time
    finally:
        edge.close()
    # The clean stop's DDEATH/NDEATH arrive while the collector may already be closed: no matter.


def birth(seq: int, alias: int = 7) -> tuple[bytes, bytes]:
    nbirth = Payload(timestamp=1, seq=seq)
    nbirth.metrics.add(name="bdSeq", datatype=DataType.Int64, long_value=3)
    dbirth = Payload(timestamp=1, seq=seq + 1)
    dbirth.metrics.add(name="Speed", alias=alias, datatype=DataType.Double, double_value=1.0, timestamp=1)
    return nbirth.SerializeToString(), dbirth.SerializeToString()


def ddata(seq: int, value: float, alias: int = 7) -> bytes:
    payload = Payload(timestamp=2, seq=seq)
    payload.metrics.add(alias=alias, double_value=value, timestamp=time.time_ns() // 1_000_000)
    return payload.SerializeToString()


def test_a_seq_gap_asks_for_a_rebirth_and_bad_payloads_are_errors(mosquitto_factory: Any) -> None:
    broker = mosquitto_factory()
    reader = MqttDataReader(broker.url)
    memory = Collected()
    variables = [Variable(id=1, address="spBv1.0/G/DDATA/E/D:Speed", reader="mqtt", report="change")]
    with Peer(broker.url) as peer, DataCollector([reader], [memory]) as collector:
        peer.subscribe("spBv1.0/G/NCMD/E")
        collector.start(DataCollectionContext(id=1, variables=variables, **FAST))
        wait_until(lambda: peer.count() == 1, what="the rebirth asked when the node is first watched")

        def subscribed() -> bool:  # the reader's SUBACK is not observable: a message it counts is
            peer.publish("spBv1.0/G/PROBE/E", b"")
            return reader.stats().get("messages", 0) > 0

        wait_until(subscribed, what="the reader's subscriptions in place")
        nbirth, dbirth = birth(0)
        peer.publish("spBv1.0/G/NBIRTH/E", nbirth)
        peer.publish("spBv1.0/G/DBIRTH/E/D", dbirth)
        peer.publish("spBv1.0/G/DDATA/E/D", ddata(2, 5.5))
        wait_until(lambda: (v := memory.last(1)) is not None and v.value == 5.5, what="an aliased value")
        assert peer.count() == 1  # in sequence: no rebirth asked
        time.sleep(5.1)  # the reader asks a node at most every 5 s
        peer.publish("spBv1.0/G/DDATA/E/D", ddata(4, 6.5))  # seq 3 never came
        wait_until(lambda: peer.count() == 2, what="a rebirth asked after the gap")
        topic, payload, _ = peer.taken()[1]
        (metric,) = Payload.FromString(payload).metrics
        assert topic == "spBv1.0/G/NCMD/E" and metric.name == "Node Control/Rebirth" and metric.boolean_value
        wait_until(
            lambda: (v := memory.last(1)) is not None and v.value == 6.5, what="the value is still taken"
        )
        peer.publish("spBv1.0/G/DDATA/E/D", b"\xff\xff\xff\xff")  # no crash, nothing delivered
        peer.publish("spBv1.0/G/DDEATH/E/D", Payload(timestamp=3, seq=5).SerializeToString())
        wait_until(
            lambda: (v := memory.last(1)) is not None and v.error == "device offline (DDEATH)",
            what="the device's death as an error",
        )
