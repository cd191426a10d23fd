"""InfluxDB writer benchmark against a real VictoriaMetrics process. Prints JSON.

    .venv/bin/python bench/influx.py            # full
    .venv/bin/python bench/influx.py --quick    # smaller runs, for a smoke check

1. writer: ``InfluxDBDataWriter`` alone, fed ready batches of 10,000 values as fast as it takes
   them (the feeder only waits while more than 200,000 points are queued, far below the
   buffer limit, so nothing is dropped). Points/s counts what the server reports it stored
   (``vm_rows_added_to_storage_total``) over the time from the first ``write()`` to the end of
   ``flush()``. CPU is this process's (every thread) and the server's, per million points.
   Once as configured (gzip), once with ``gzip = False`` to show what compression costs here.
   Then the columnar path: the same points as ``ValueBatch``es of 10,000 through
   ``write_batch`` (what the engine hands a batch writer), receipts counted.
2. end_to_end: ``RandomDataReader`` with 200,000 variables at 1 s through ``DataCollector``
   into the writer and the server: values/s offered, delivered to the writer and stored, and the
   collector process's CPU per million values stored (issue 9's target: <= 1.5 s). It says
   which writer method the engine called (``write`` or ``write_batch``). Default interpreter
   settings: no ``gc.freeze()``.
3. reference: influxdb-client on its own, batches of 5,000 through a synchronous ``WriteApi``:
   building ``Point`` objects and writing them; writing line protocol text joined beforehand
   (not timed), without gzip (the client's default) and with the client's gzip.

The server runs on this machine, so the writer and the server share its cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from flowcollect import CollectedVariable, DataCollectionContext, DataCollector, Variable
from flowcollect.readers import RandomDataReader
from flowcollect.values import Receipt, ValueBatch, VariableSpec
from flowcollect.writers import InfluxDBDataWriter
from flowcollect.writers._lineprotocol import LineSerializer

# The server helper lives with the tests, which are not an installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.victoria import VictoriaMetrics, find_binary

CLIENT_BATCH = 5000
SETTINGS = {"token": "bench", "org": "bench", "bucket": "bench"}


def rows_stored(vm: VictoriaMetrics) -> int:
    with urllib.request.urlopen(vm.url + "/metrics", timeout=10) as response:  # noqa: S310 - loopback
        text = response.read().decode()
    match = re.search(r"^vm_rows_added_to_storage_total (\d+)", text, re.MULTILINE)
    if match is None:
        raise RuntimeError("the server's /metrics has no vm_rows_added_to_storage_total")
    return int(match.group(1))


def server_cpu_s(pid: int | None) -> float:
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_stored(vm: VictoriaMetrics, target: int, timeout_s: float = 30.0) -> int:
    deadline = time.monotonic() + timeout_s
    while (stored := rows_stored(vm)) < target and time.monotonic() < deadline:
        time.sleep(0.05)
    return stored


def tick_batches(n_vars: int, n_ticks: int, start: datetime) -> Iterator[list[CollectedVariable]]:
    for k in range(n_ticks):
        at = start + timedelta(seconds=k)
        yield [
            CollectedVariable(
                i,
                1,
                f"40{i:06d}/holding/float32",
                "float",
                "modbus",
                1000,
                15.0 + (i * 7 + k) % 300 / 100,
                at,
            )
            for i in range(1, n_vars + 1)
        ]


def columnar_batches(n_vars: int, n_ticks: int, start: datetime) -> list[ValueBatch]:
    variables = [
        VariableSpec(i, 1, f"40{i:06d}/holding/float32", "float", "modbus", 1000)
        for i in range(1, n_vars + 1)
    ]
    start_ms = int(start.timestamp() * 1000)
    return [
        ValueBatch(
            start_ms + k * 1000,
            variables,
            [15.0 + (i * 7 + k) % 300 / 100 for i in range(1, n_vars + 1)],
            context_id=1,
            reader="modbus",
        )
        for k in range(n_ticks)
    ]


def start_time() -> datetime:
    return datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)


def measure(vm: VictoriaMetrics, expected: int, run: Callable[[], None]) -> dict[str, float]:
    stored0, cpu0, server0 = rows_stored(vm), time.process_time(), server_cpu_s(vm.pid)
    started = time.perf_counter()
    run()
    elapsed = time.perf_counter() - started
    cpu, server = time.process_time() - cpu0, server_cpu_s(vm.pid) - server0
    stored = wait_stored(vm, stored0 + expected) - stored0
    return {
        "points": expected,
        "stored": stored,
        "seconds": round(elapsed, 3),
        "points_per_s": round(stored / elapsed),
        "client_cpu_s_per_million": round(cpu / expected * 1e6, 2),
        "server_cpu_s_per_million": round(server / expected * 1e6, 2),
    }


def bench_writer(
    vm: VictoriaMetrics, batches: list[list[CollectedVariable]], gzip: bool = True, runs: int = 3
) -> dict[str, Any]:
    """``runs`` runs, each into a measurement of its own (so each creates its series): every run
    and the median, because other work on a shared machine moves single figures by a third."""
    results = []
    for run in range(runs):
        measurement = f"bench_writer_{'gzip' if gzip else 'plain'}_{run}"
        writer = InfluxDBDataWriter(vm.url, measurement=measurement, **SETTINGS)  # type: ignore[arg-type]
        writer.gzip = gzip

        def feed(writer: InfluxDBDataWriter = writer) -> None:
            for batch in batches:
                while writer.stats()["buffered"] > 200_000:
                    time.sleep(0.001)
                writer.write(batch)
            writer.flush()

        result = measure(vm, sum(len(b) for b in batches), feed)
        writer.close()
        stats = writer.stats()
        result["written"], result["dropped"], result["failed"] = (
            stats["written"],
            stats["dropped"],
            stats["failed"],
        )
        results.append(result)
    middle = sorted(results, key=lambda r: r["points_per_s"])[len(results) // 2]
    return {
        "gzip": gzip,
        "target_points_per_s": 500_000,
        "median_points_per_s": middle["points_per_s"],
        "median_client_cpu_s_per_million": middle["client_cpu_s_per_million"],
        "median_server_cpu_s_per_million": middle["server_cpu_s_per_million"],
        "runs": results,
    }


def bench_writer_columnar(vm: VictoriaMetrics, batches: list[ValueBatch], runs: int = 3) -> dict[str, Any]:
    """``write_batch`` with ``ValueBatch``es: the path the engine's columnar batches take."""
    results = []
    for run in range(runs):
        writer = InfluxDBDataWriter(vm.url, measurement=f"bench_columnar_{run}", **SETTINGS)  # type: ignore[arg-type]
        receipts: list[Receipt] = []
        writer.attach(receipts.append)

        def feed(writer: InfluxDBDataWriter = writer) -> None:
            for batch in batches:
                while writer.stats()["buffered"] > 200_000:
                    time.sleep(0.001)
                writer.write_batch(batch)
            writer.flush()

        result = measure(vm, sum(len(b) for b in batches), feed)
        writer.close()
        result["acknowledged_written"] = sum(r.written for r in receipts)
        result["written"] = writer.stats()["written"]
        results.append(result)
    middle = sorted(results, key=lambda r: r["points_per_s"])[len(results) // 2]
    return {
        "median_points_per_s": middle["points_per_s"],
        "median_client_cpu_s_per_million": middle["client_cpu_s_per_million"],
        "median_server_cpu_s_per_million": middle["server_cpu_s_per_million"],
        "runs": results,
    }


class _Observed(InfluxDBDataWriter):
    """The writer, noting which method the engine calls (``write`` or ``write_batch``)."""

    called: set[str]

    def write(self, values: Any) -> None:
        self.called.add("write")
        super().write(values)

    def write_batch(self, batch: ValueBatch) -> None:
        self.called.add("write_batch")
        super().write_batch(batch)


def bench_reference(vm: VictoriaMetrics, n_points: int) -> dict[str, Any]:
    from influxdb_client import InfluxDBClient, Point, WritePrecision
    from influxdb_client.client.write_api import SYNCHRONOUS

    n_vars = 10_000
    values = [v for batch in tick_batches(n_vars, -(-n_points // n_vars), start_time()) for v in batch][
        :n_points
    ]
    chunks = [values[i : i + CLIENT_BATCH] for i in range(0, len(values), CLIENT_BATCH)]
    out: dict[str, Any] = {}

    with InfluxDBClient(url=vm.url, token=SETTINGS["token"], org=SETTINGS["org"]) as client:
        write_api = client.write_api(write_options=SYNCHRONOUS)

        def points() -> None:
            for chunk in chunks:
                batch = [
                    Point("bench_points")
                    .tag("address", v.address)
                    .tag("context", v.context_id)
                    .tag("reader", v.reader)
                    .tag("variable", v.id)
                    .field("value", v.value)
                    .time(v.time, WritePrecision.NS)
                    for v in chunk
                ]
                write_api.write("bench", "bench", batch)

        out["point_objects"] = measure(vm, n_points, points)

        serializer = LineSerializer("bench_text")
        texts = ["\n".join(serializer.serialize(chunk, 0)[0]) for chunk in chunks]

        def text() -> None:
            for body in texts:
                write_api.write("bench", "bench", body)

        out["prejoined_text"] = measure(vm, n_points, text)
        write_api.close()

    with InfluxDBClient(url=vm.url, token=SETTINGS["token"], org=SETTINGS["org"], enable_gzip=True) as client:
        write_api = client.write_api(write_options=SYNCHRONOUS)
        texts = ["\n".join(LineSerializer("bench_gzip").serialize(chunk, 0)[0]) for chunk in chunks]

        def gzipped() -> None:
            for body in texts:
                write_api.write("bench", "bench", body)

        out["prejoined_text_client_gzip"] = measure(vm, n_points, gzipped)
        write_api.close()
    return out


def thread_cpu_s() -> dict[str, float]:
    """CPU seconds of each live thread of this process, by thread name (Linux ``/proc``)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir("/proc/self/task"):
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = names.get(int(tid), f"thread {tid}")
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def bench_end_to_end(vm: VictoriaMetrics, n_vars: int, duration_s: float) -> dict[str, Any]:
    writer = _Observed(vm.url, measurement="bench_e2e", **SETTINGS)  # type: ignore[arg-type]
    writer.called = set()
    variables = [Variable(id=i, address=f"r{i}", reader="random") for i in range(1, n_vars + 1)]
    context = DataCollectionContext(id=1, variables=variables, interval_ms=1000)
    stored0, cpu0, server0 = rows_stored(vm), time.process_time(), server_cpu_s(vm.pid)
    collector = DataCollector(readers=[RandomDataReader(seed=1)], writers=[writer])
    try:
        collector.start(context)
        # From here: collecting, stopping and closing; compiling 200,000 variables is start-up.
        cpu0 = time.process_time()
        started = time.perf_counter()
        threads0 = thread_cpu_s()
        time.sleep(duration_s)
        threads1 = thread_cpu_s()
        collector.stop(1)
        stopped = time.perf_counter()
    finally:
        collector.close()
    closed = time.perf_counter()
    stats = collector.stats()
    delivered = stats.contexts[1].delivered
    stored = wait_stored(vm, stored0 + delivered) - stored0
    seconds = stopped - started
    wstats = writer.stats()
    sink = stats.writers[writer.name]
    return {
        "variables": n_vars,
        "interval_ms": 1000,
        "seconds": round(seconds, 3),
        "offered_values_per_s": n_vars,
        "delivered_values": delivered,
        "delivered_ticks": round(delivered / n_vars, 2),
        "stored_values": stored,
        "stored_values_per_s": round(stored / seconds),
        "all_stored": stored == delivered and sink.dropped == wstats["dropped"] == wstats["failed"] == 0,
        "close_s": round(closed - stopped, 3),
        "collector_cpu_s_per_million_stored": round((time.process_time() - cpu0) / max(1, stored) * 1e6, 2),
        "collector_cpu_s_per_million_delivered": round(
            (time.process_time() - cpu0) / max(1, delivered) * 1e6, 2
        ),
        # While collecting (before stop and close), per thread, per million values offered.
        "thread_cpu_s_per_million_offered": {
            name: round((cpu - threads0.get(name, 0.0)) / (n_vars * duration_s) * 1e6, 3)
            for name, cpu in sorted(threads1.items())
            if cpu - threads0.get(name, 0.0) >= 0.01
        },
        "target_collector_cpu_s_per_million": 1.5,
        "engine_called": sorted(writer.called),
        "server_cpu_s_per_million": round((server_cpu_s(vm.pid) - server0) / max(1, stored) * 1e6, 2),
        "collector_queue_dropped": sink.dropped,
        "writer_stats": {k: wstats[k] for k in ("written", "failed", "dropped", "retries", "requests")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs, for a smoke check")
    parser.add_argument(
        "--only",
        action="append",
        choices=["writer", "writer_without_gzip", "writer_columnar", "reference", "end_to_end"],
        help="run only this part (repeatable)",
    )
    parser.add_argument(
        "--variables", type=int, default=200_000, help="end to end: variables at 1 s (default 200,000)"
    )
    args = parser.parse_args()
    binary = find_binary()
    if binary is None:
        print(json.dumps({"skipped": "victoria-metrics is not installed (make servers)"}))
        return
    ticks = 20 if args.quick else 100
    parts: dict[str, Callable[[VictoriaMetrics], Any]] = {
        "writer": lambda vm: bench_writer(vm, list(tick_batches(10_000, ticks, start_time()))),
        "writer_without_gzip": lambda vm: bench_writer(
            vm, list(tick_batches(10_000, ticks, start_time())), gzip=False
        ),
        "writer_columnar": lambda vm: bench_writer_columnar(
            vm, columnar_batches(10_000, ticks, start_time())
        ),
        "reference": lambda vm: bench_reference(vm, 100_000 if args.quick else 200_000),
        "end_to_end": lambda vm: bench_end_to_end(vm, args.variables, 5.0 if args.quick else 15.0),
    }
    chosen = args.only or list(parts)
    with (
        tempfile.TemporaryDirectory(prefix="bench-influx-") as tmp,
        VictoriaMetrics(binary, Path(tmp) / "data") as vm,
    ):
        report: dict[str, Any] = {
            "server": "VictoriaMetrics (loopback, same machine)",
            "cpus": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in os.getloadavg()],
        }
        for name in chosen:
            report[name] = parts[name](vm)
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
