"""Sparkplug B benchmark: DDATA of 1,000 metrics per device per instant. Prints JSON.

    .venv/bin/python bench/sparkplug.py            # full
    .venv/bin/python bench/sparkplug.py --quick    # smaller runs, for a smoke check

1. encode: one DDATA payload of 1,000 Double metrics (alias, value, timestamp), by the
   writer's hand encoder and by the protobuf library's message objects (``Payload.metrics.add``
   then ``SerializeToString``), microseconds per metric. The library is the reference the tests
   decode with.
2. writer: ``SparkplugDataWriter`` (QoS 0) against a real Mosquitto on this machine, fed ready
   ``ValueBatch``es of 1,000 values (one device) as fast as it takes them. Values/s from the
   first ``write_batch`` to the last value's receipt (written: handed to the socket), and this
   process's CPU seconds (every thread: the driver, paho's network thread, the feeder) per
   million values. ``write_batch`` blocks while 200,000 values wait for the driver, so nothing
   is dropped.
3. host_decode: the reading side alone (``SparkplugHost.received``, what ``MqttDataReader``
   runs per Sparkplug message): the same DDATA payloads, 1,000 metrics each, decoded by the
   protobuf library and turned into values by name; values/s on one thread.
4. bare_paho: the limit, in the same run: a plain paho client (``loop_start``) publishing the
   same number of pre-encoded DDATA payloads of the same size at QoS 0 to the same broker,
   until paho has written the last one; values/s counts 1,000 per message.

The broker runs on this machine and shares its cores. Default interpreter settings.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from flowcollect.sparkplug import DataEncoder, DataType, MetricDef, Payload
from flowcollect.values import Receipt, ValueBatch, VariableSpec
from flowcollect.writers import SparkplugDataWriter

# The broker helper lives with the tests, which are not an installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.mosquitto import Mosquitto, find_binary

METRICS = 1000


def cpu_s() -> float:
    return time.process_time()


def broker_cpu_s(pid: int | None) -> float:
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_encode(rounds: int) -> dict[str, Any]:
    metrics = [MetricDef.make(f"Line/M{i}", i + 1, DataType.Double) for i in range(METRICS)]
    encoder = DataEncoder(metrics)
    values = [random.uniform(0, 100) for _ in range(METRICS)]
    errors: list[str | None] = [None] * METRICS
    t_ms = time.time_ns() // 1_000_000
    began = time.perf_counter()
    for k in range(rounds):
        encoder.encode(t_ms + k, k % 256, values, errors, None, now_ms=t_ms)
    hand = time.perf_counter() - began
    began = time.perf_counter()
    for k in range(rounds):
        payload = Payload(timestamp=t_ms, seq=k % 256)
        for m, v in zip(metrics, values, strict=True):
            payload.metrics.add(alias=m.alias, double_value=v, timestamp=t_ms + k)
        payload.SerializeToString()
    library = time.perf_counter() - began
    n = rounds * METRICS
    return {
        "metrics_per_payload": METRICS,
        "payloads": rounds,
        "hand_us_per_metric": round(hand / n * 1e6, 3),
        "protobuf_us_per_metric": round(library / n * 1e6, 3),
        "speedup": round(library / hand, 2),
    }


def bench_writer(url: str, broker_pid: int | None, instants: int) -> dict[str, Any]:
    specs = tuple(
        VariableSpec(i + 1, 1, f"m{i}", "float", "plc1", 1000, name=f"Line/M{i}") for i in range(METRICS)
    )
    values = [random.uniform(0, 100) for _ in range(METRICS)]
    t0 = time.time_ns() // 1_000_000 // 1000 * 1000
    batches = [ValueBatch(t0 + k, specs, values, context_id=1) for k in range(instants)]
    total = instants * METRICS
    lock = threading.Lock()
    done = threading.Event()
    counts = [0, 0, 0]

    def on_receipt(receipt: Receipt) -> None:
        with lock:
            counts[0] += receipt.written
            counts[1] += receipt.failed
            counts[2] += receipt.dropped
            if sum(counts) >= total:
                done.set()

    writer = SparkplugDataWriter(url, group_id="Bench", edge_node_id="edge1", max_pending=20_000)
    writer.attach(on_receipt)
    # Connect and be born before the clock starts.
    writer.write_batch(ValueBatch(t0 - 1000, specs, values, context_id=1))
    deadline = time.monotonic() + 30
    while writer.stats().get("written", 0) < METRICS and time.monotonic() < deadline:
        time.sleep(0.01)
    with lock:
        counts[:] = [0, 0, 0]
    cpu0, broker0 = cpu_s(), broker_cpu_s(broker_pid)
    began = time.perf_counter()
    for batch in batches:
        writer.write_batch(batch)
    done.wait(300)
    elapsed = time.perf_counter() - began
    cpu = cpu_s() - cpu0
    broker = broker_cpu_s(broker_pid) - broker0
    writer.close()
    written, failed, dropped = counts
    return {
        "values": total,
        "written": written,
        "failed": failed,
        "dropped": dropped,
        "seconds": round(elapsed, 3),
        "values_per_s": round(written / elapsed),
        "cpu_s_per_million": round(cpu / (total / 1e6), 3),
        "broker_cpu_s_per_million": round(broker / (total / 1e6), 3),
        "messages": int(writer.stats().get("messages", 0)),
    }


def bench_host(rounds: int) -> dict[str, Any]:
    from flowcollect.sparkplug import EdgeNode, Publish, SparkplugHost, parse_address

    specs = tuple(
        VariableSpec(i + 1, 1, f"m{i}", "float", "plc1", 1000, name=f"Line/M{i}") for i in range(METRICS)
    )
    node = EdgeNode("Bench", "edge1", device_of=lambda s: s.reader)
    host = SparkplugHost()
    host.set_wanted([parse_address(f"spBv1.0/Bench/DDATA/edge1/plc1:Line/M{i}") for i in range(METRICS)])
    t0 = time.time_ns() // 1_000_000
    node.will(t0)
    messages = [a for a in node.connected(t0) if isinstance(a, Publish)]
    values = [random.uniform(0, 100) for _ in range(METRICS)]
    for k in range(rounds + 1):
        messages += [
            a
            for a in node.data(ValueBatch(t0 + k, specs, values, context_id=1), t0)
            if isinstance(a, Publish)
        ]
    for m in messages[:2]:  # NBIRTH, DBIRTH: aliases learned
        host.received(m.topic, m.payload, t0)
    data = messages[2:]
    began = time.perf_counter()
    got = 0
    for m in data:
        got += len(host.received(m.topic, m.payload, t0).values)
    elapsed = time.perf_counter() - began
    return {"messages": len(data), "values": got, "values_per_s": round(got / elapsed)}


def bench_bare(url: str, broker_pid: int | None, instants: int) -> dict[str, Any]:
    metrics = [MetricDef.make(f"Line/M{i}", i + 1, DataType.Double) for i in range(METRICS)]
    values = [random.uniform(0, 100) for _ in range(METRICS)]
    t_ms = time.time_ns() // 1_000_000
    payload, _ = DataEncoder(metrics).encode(t_ms, 1, values, [None] * METRICS, None, now_ms=t_ms)
    host, port = url.removeprefix("mqtt://").split(":")
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id="bench-bare",
        protocol=MQTTProtocolVersion.MQTTv311,
    )
    published = [0]
    done = threading.Event()
    connected = threading.Event()

    def on_publish(*_a: Any) -> None:
        published[0] += 1
        if published[0] >= instants:
            done.set()

    client.on_publish = on_publish
    client.on_connect = lambda *_a: connected.set()
    client.max_queued_messages_set(0)
    client.connect(host, int(port))
    client.loop_start()
    connected.wait(10)
    topic = "spBv1.0/Bench/DDATA/bare/plc1"
    cpu0, broker0 = cpu_s(), broker_cpu_s(broker_pid)
    began = time.perf_counter()
    for _ in range(instants):
        client.publish(topic, payload, 0)
    done.wait(300)
    elapsed = time.perf_counter() - began
    cpu = cpu_s() - cpu0
    broker = broker_cpu_s(broker_pid) - broker0
    client.disconnect()
    client.loop_stop()
    total = instants * METRICS
    return {
        "messages": published[0],
        "payload_bytes": len(payload),
        "seconds": round(elapsed, 3),
        "values_per_s": round(published[0] * METRICS / elapsed),
        "cpu_s_per_million": round(cpu / (total / 1e6), 3),
        "broker_cpu_s_per_million": round(broker / (total / 1e6), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    instants = 300 if args.quick else 3000
    binary = find_binary()
    if binary is None:
        raise SystemExit("mosquitto is not installed (make servers)")
    out: dict[str, Any] = {"load_before": os.getloadavg()}
    out["encode"] = bench_encode(50 if args.quick else 500)
    out["host_decode"] = bench_host(50 if args.quick else 300)
    with tempfile.TemporaryDirectory() as folder, Mosquitto(binary, Path(folder)) as broker:
        out["writer"] = bench_writer(broker.url, broker.pid, instants)
        out["bare_paho"] = bench_bare(broker.url, broker.pid, instants)
    out["writer_vs_bare"] = round(out["writer"]["values_per_s"] / out["bare_paho"]["values_per_s"], 3)
    out["load_after"] = os.getloadavg()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
