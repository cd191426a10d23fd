"""MQTT benchmark against a real Mosquitto process (Debian's). Prints JSON.

    .venv/bin/python bench/mqtt.py            # full
    .venv/bin/python bench/mqtt.py --quick    # smaller runs, for a smoke check

1. instant: ``MqttDataWriter(layout="instant", qos=0)`` alone, fed ``ValueBatch``es of 1,000
   values (one context, one instant each) as fast as it takes them; values/s from the first
   ``write_batch`` until the last receipt, and this process's CPU seconds (every thread) per
   million values. The limit, in the same run: a bare paho loop (``loop_start``) publishing the
   same number of pre-encoded payloads of the same size at QoS 0, counting ``on_publish``.
2. value_qos1: ``MqttDataWriter(layout="value", qos=1)``, batches of 100 values, until every
   PUBACK came back: acknowledged messages/s and CPU per million. The limit: a bare paho loop
   publishing pre-encoded payloads at QoS 1 with the same in-flight window (20), until every
   ``on_publish``; the writer's share of it is the figure issue 18 sets at >= 80 %.
3. reader: ``mosquitto_pub`` (another process) floods one topic with numbers at QoS 0;
   ``MqttDataReader`` in a ``DataCollector`` (one variable, held and sampled every second,
   ``report="every"``) turns each into a value pushed into the engine (``emit``, the held
   store): messages/s from the first to the last, and the collector process's CPU per million
   messages. References: a bare paho subscriber counting messages (paho reads each header byte
   by byte), and a bare socket loop reading 64 KiB blocks and counting the PUBLISH packets in
   them (what the broker and ``mosquitto_pub`` deliver at most here). The reader has its own
   block-reading receive path (``flowcollect.mqtt.MqttReceiver``). (With ``report="change"``
   each message is also a batch through the graph to the writers: ``--change`` measures that.)

The broker runs on this machine, so the client and the broker share its cores; the load
average is printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from flowcollect import DataCollectionContext, DataCollector, Variable
from flowcollect.readers import MqttDataReader
from flowcollect.values import ValueBatch, VariableSpec
from flowcollect.writers import MemoryDataWriter, MqttDataWriter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.mosquitto import Mosquitto, find_binary

T0 = 1_796_638_500_000


def cpu() -> float:
    return time.process_time()


def broker_cpu_s(pid: int | None) -> float:
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Counter:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.n = 0
        self.done = threading.Event()
        self.target = 0

    def add(self, k: int = 1) -> None:
        with self.lock:
            self.n += k
            if self.n >= self.target:
                self.done.set()


def bare_client(url_port: int, inflight: int = 20) -> paho.Client:
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5
    )
    client.max_inflight_messages_set(inflight)
    client.connect("127.0.0.1", url_port)
    client.loop_start()
    return client


def bare_publish(port: int, payloads: list[tuple[str, bytes]], qos: int) -> dict[str, float]:
    """paho alone: publish pre-encoded payloads, wait for every on_publish."""
    counter = Counter()
    counter.target = len(payloads)
    client = bare_client(port)
    client.on_publish = lambda *_a: counter.add()
    time.sleep(0.3)
    began, c0 = time.perf_counter(), cpu()
    for topic, payload in payloads:
        client.publish(topic, payload, qos)
    counter.done.wait(120)
    wall, used = time.perf_counter() - began, cpu() - c0
    client.disconnect()
    client.loop_stop()
    return {"messages": counter.n, "seconds": wall, "messages_per_s": counter.n / wall, "cpu_s": used}


def writer_run(port: int, layout: str, qos: int, batches: list[ValueBatch]) -> dict[str, float]:
    topic = "bench/{context}" if layout == "instant" else "bench/{context}/{name}"
    w = MqttDataWriter(f"mqtt://127.0.0.1:{port}", topic=topic, layout=layout, qos=qos)  # type: ignore[arg-type]
    values = sum(len(b) for b in batches)
    counter = Counter()
    counter.target = values
    w.attach(lambda r: counter.add(r.written + r.failed + r.dropped))
    # connect first (the first write starts the connection), not timed
    w.write_batch(ValueBatch(T0 - 1000, batches[0].variables[:1], [0.0], context_id=1))
    deadline = time.monotonic() + 10
    while w.stats().get("connected") != 1.0 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    counter.n = 0
    counter.done.clear()
    written0 = w.stats()["written"]
    began, c0 = time.perf_counter(), cpu()
    for batch in batches:
        while w.stats()["buffered"] > 50_000:  # never near the buffer limit: nothing dropped
            time.sleep(0.001)
        w.write_batch(batch)
    counter.done.wait(120)
    wall, used = time.perf_counter() - began, cpu() - c0
    stats = w.stats()
    w.close()
    written = stats["written"] - written0
    return {
        "values": written,
        "messages": stats["messages"],
        "dropped": stats["dropped"],
        "seconds": wall,
        "values_per_s": written / wall,
        "cpu_s_per_million_values": used / written * 1e6,
    }


def make_batches(n_batches: int, per_batch: int, start_ms: int) -> list[ValueBatch]:
    specs = tuple(
        VariableSpec(i, 1, f"r{i}", "float", "random", 100, f"v{i}") for i in range(1, per_batch + 1)
    )
    values = [17.0 + i / 7 for i in range(per_batch)]
    return [ValueBatch(start_ms + k * 100, specs, values, context_id=1) for k in range(n_batches)]


def reader_run(port: int, n: int, report: str) -> dict[str, float]:
    reader = MqttDataReader(f"mqtt://127.0.0.1:{port}", qos=0, stale_after_ms=None)
    memory = MemoryDataWriter()
    with DataCollector([reader], [memory]) as collector:
        collector.start(
            DataCollectionContext(
                id=1,
                interval_ms=1000,
                variables=[Variable(id=1, address="flood/v", reader="mqtt", report=report)],  # type: ignore[arg-type]
            )
        )
        deadline = time.monotonic() + 10
        while reader.stats().get("subscriptions") != 1.0 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        m0, c0 = reader.stats()["messages"], cpu()
        began = first = None
        pub = subprocess.Popen(
            ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t", "flood/v", "-q", "0", "-l"],
            stdin=subprocess.PIPE,
        )
        assert pub.stdin is not None
        began = time.perf_counter()
        pub.stdin.write(b"".join(b"%d\n" % i for i in range(n)))
        pub.stdin.close()
        last_n, last_t = m0, time.perf_counter()
        while True:
            time.sleep(0.05)
            now_n = reader.stats()["messages"]
            if first is None and now_n > m0:
                first = time.perf_counter()
            if now_n - m0 >= n or (now_n == last_n and time.perf_counter() - last_t > 2.0):
                break
            if now_n != last_n:
                last_n, last_t = now_n, time.perf_counter()
        got = reader.stats()["messages"] - m0
        end = last_t if got < n else time.perf_counter()
        used = cpu() - c0
        pub.wait(30)
    wall = end - (first or began)
    return {
        "messages_sent": n,
        "messages_into_engine": got,
        "seconds": wall,
        "messages_per_s": got / wall,
        "cpu_s_per_million": used / max(got, 1) * 1e6,
    }


def bare_subscribe(port: int, n: int) -> dict[str, float]:
    counter = Counter()
    counter.target = n
    client = bare_client(port)
    client.on_message = lambda *_a: counter.add()
    client.subscribe("flood/v", 0)
    time.sleep(0.5)
    pub = subprocess.Popen(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t", "flood/v", "-q", "0", "-l"],
        stdin=subprocess.PIPE,
    )
    assert pub.stdin is not None
    began, c0 = time.perf_counter(), cpu()
    pub.stdin.write(b"".join(b"%d\n" % i for i in range(n)))
    pub.stdin.close()
    counter.done.wait(15)
    wall, used = time.perf_counter() - began, cpu() - c0
    pub.wait(30)
    client.disconnect()
    client.loop_stop()
    return {
        "messages": counter.n,
        "seconds": wall,
        "messages_per_s": counter.n / wall,
        "cpu_s_per_million": used / max(counter.n, 1) * 1e6,
    }


def bare_socket_subscribe(port: int, n: int) -> dict[str, float]:
    """The limit without any MQTT library: read blocks, count PUBLISH packets (QoS 0, MQTT 3.1.1)."""
    import socket
    import struct

    def s16(b: bytes) -> bytes:
        return struct.pack("!H", len(b)) + b

    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    body = s16(b"MQTT") + bytes([4, 0x02]) + struct.pack("!H", 30) + s16(b"bench-raw")
    sock.sendall(bytes([0x10, len(body)]) + body)
    sock.recv(4)
    sub = struct.pack("!H", 1) + s16(b"flood/v") + b"\x00"
    sock.sendall(bytes([0x82, len(sub)]) + sub)
    sock.recv(5)
    time.sleep(0.3)
    pub = subprocess.Popen(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t", "flood/v", "-q", "0", "-l"],
        stdin=subprocess.PIPE,
    )
    assert pub.stdin is not None
    pub.stdin.write(b"".join(b"%d\n" % i for i in range(n)))
    pub.stdin.close()
    buf, count, first, c0 = b"", 0, None, cpu()
    sock.settimeout(5)
    try:
        while count < n:
            data = sock.recv(1 << 16)
            if not data:
                break
            if first is None:
                first = time.perf_counter()
            buf += data
            pos, end = 0, len(buf)
            while end - pos >= 2:
                length, shift, i = 0, 0, pos + 1
                while i < end:
                    byte = buf[i]
                    length |= (byte & 127) << shift
                    shift += 7
                    i += 1
                    if not byte & 128:
                        break
                else:
                    break
                if i + length > end:
                    break
                if buf[pos] >> 4 == 3:
                    count += 1
                pos = i + length
            buf = buf[pos:]
    except TimeoutError:
        pass
    wall = time.perf_counter() - (first or time.perf_counter())
    used = cpu() - c0
    pub.wait(30)
    sock.close()
    return {
        "messages": count,
        "seconds": wall,
        "messages_per_s": count / max(wall, 1e-9),
        "cpu_s_per_million": used / max(count, 1) * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--change", action="store_true", help="the reader's variable reports changes")
    parser.add_argument("--rounds", type=int, default=3, help="writer runs alternated with bare ones")
    args = parser.parse_args()
    binary = find_binary()
    if binary is None:
        raise SystemExit("mosquitto is not installed (make servers)")
    scale = 1 if args.quick else 5
    out: dict[str, Any] = {
        "python": sys.version.split()[0],
        "load_before": os.getloadavg(),
        "cpus": os.cpu_count(),
    }
    with (
        tempfile.TemporaryDirectory() as folder,
        Mosquitto(binary, Path(folder) / "broker", extra_config="max_queued_messages 0") as broker,
    ):
        port = broker.port
        # Each pair alternated `rounds` times and the best of each kept: on a shared machine a
        # neighbour's burst otherwise decides which looks faster.
        document = {
            "time": "2026-12-07T10:15:00.000Z",
            "values": {f"v{i}": 17.0 + i / 7 for i in range(1000)},
        }
        size = len(json.dumps({**document, "errors": {}}, separators=(",", ":")).encode())
        ours_i: list[dict[str, float]] = []
        bare_i: list[dict[str, float]] = []
        ours_v: list[dict[str, float]] = []
        bare_v: list[dict[str, float]] = []
        for _ in range(args.rounds):
            # 1. instant layout at QoS 0
            batches = make_batches(200 * scale, 1000, T0)
            b0 = broker_cpu_s(broker.pid)
            ours = writer_run(port, "instant", 0, batches)
            ours["broker_cpu_s"] = broker_cpu_s(broker.pid) - b0
            ours_i.append(ours)
            bare = bare_publish(port, [("bench/1", b"x" * size)] * len(batches), 0)
            bare["values_per_s"] = bare["messages_per_s"] * 1000
            bare["cpu_s_per_million_values"] = bare["cpu_s"] / (bare["messages"] * 1000) * 1e6
            bare_i.append(bare)
            # 2. value layout at QoS 1
            batches = make_batches(100 * scale, 100, T0)
            ours = writer_run(port, "value", 1, batches)
            ours["messages_per_s"] = ours["values_per_s"]
            ours_v.append(ours)
            payload = b'{"value":17.142857142857142,"time":"2026-12-07T10:15:00.100Z"}'
            bare_v.append(
                bare_publish(port, [(f"bench/1/v{i}", payload) for i in range(100)] * (100 * scale), 1)
            )
        best_i = max(ours_i, key=lambda r: r["values_per_s"])
        best_bi = max(bare_i, key=lambda r: r["values_per_s"])
        out["instant_qos0"] = {
            "writer": best_i,
            "bare_paho": best_bi,
            "payload_bytes": size,
            "rounds": ours_i,
        }
        best_v = max(ours_v, key=lambda r: r["messages_per_s"])
        best_bv = max(bare_v, key=lambda r: r["messages_per_s"])
        out["value_qos1"] = {
            "writer": best_v,
            "bare_paho": best_bv,
            "share_of_bare": best_v["messages_per_s"] / best_bv["messages_per_s"],
            "rounds": [
                (o["messages_per_s"], b["messages_per_s"]) for o, b in zip(ours_v, bare_v, strict=True)
            ],
        }
        # 3. the reader
        n = 20_000 * scale
        report = "change" if args.change else "every"
        out["reader"] = {
            "report": report,
            "reader": reader_run(port, n, report),
            "bare_paho": bare_subscribe(port, n),
            "bare_socket": bare_socket_subscribe(port, n),
        }
    out["load_after"] = os.getloadavg()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
