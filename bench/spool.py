"""Spool benchmark: append and replay rates per sync mode, and an outage end to end. Prints JSON.

    .venv/bin/python bench/spool.py                 # full: the end-to-end part has a 60 s outage
    .venv/bin/python bench/spool.py --outage-s 10   # shorter outage
    .venv/bin/python bench/spool.py --quick         # smaller runs, no end to end
    .venv/bin/python bench/spool.py --engine-only --engine-s 40   # only the engine_outage case

1. append: ``SpooledWriter.write_batch`` of ready batches (1,000 values of one instant: floats,
   ints, bools and strings; and batches of 20, a tenth as many values) as fast as it takes them,
   for each ``sync`` mode, the writer behind it down (nothing is sent: only appending counts).
   values/s over the wall time; CPU is this process's (every thread) per million values.
2. power_cut_exposure: steady appends (100,000 values/s) for ``--exposure-s`` per ``sync`` mode,
   sampling ``spool_unsynced_age_s``/``_values``: what a power cut could take at that moment.
3. replay: a spool of that size left by a closed writer, opened again in front of a writer that
   stores at once: read back, decoded and handed over in order, until the backlog is empty.
4. engine_outage: through a ``DataCollector`` (``RandomDataReader``, 100,000 values/s) into a
   spooled writer whose destination never acknowledges: RSS as the backlog grows. The engine
   and the spool keep a small object per batch until its receipt; the spool releases its values
   beyond its in-memory budget (200,000 values), so RSS should stay flat once that is full.
5. end_to_end (needs victoria-metrics): a feeder thread offers ``--rate`` values/s (2,000
   variables every 10 ms, by absolute deadlines) to ``SpooledWriter(InfluxDBDataWriter ->
   VictoriaMetrics)``; after ``--before-s`` the server is stopped for ``--outage-s``, then started
   again; the run goes on until the backlog is drained, then ``--after-s`` more. Reports: values
   offered and stored (counted by the server, deduplicated per series and time), the drain time
   after the server returned, the backlog's peak on disk, RSS sampled each second (during the
   outage: first, last, max), the feeder's lateness (did appends keep up), and CPU.

The server runs on this machine, sharing its cores with the collector.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flowcollect.values import ValueBatch, VariableSpec
from flowcollect.writers import DataWriter, SpooledWriter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.victoria import VictoriaMetrics, find_binary

BATCH = 1000
SMALL = 20  # a small context: 20 variables per instant


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def mixed_batch(k: int, specs: list[VariableSpec], rng: random.Random) -> ValueBatch:
    values: list[Any] = []
    for i in range(len(specs)):
        kind = i % 8
        if kind < 5:
            values.append(rng.random() * 100)
        elif kind == 5:
            values.append(rng.randrange(1 << 20))
        elif kind == 6:
            values.append(rng.random() < 0.5)
        else:
            values.append(f"state-{k % 7}")
    return ValueBatch(1_700_000_000_000 + 10 * k, specs, values, context_id=1, reader="bench")


def specs_for(n: int, context_id: int = 1, interval_ms: int = 10, mixed: bool = True) -> list[VariableSpec]:
    types = ["float"] * 5 + ["int", "bool", "str"] if mixed else ["float"]
    return [
        VariableSpec(i, context_id, f"v{i}", types[i % len(types)], "bench", interval_ms) for i in range(n)
    ]


class Down(DataWriter):
    """A destination that never stores: acknowledges nothing."""

    acknowledges = True

    def write_batch(self, batch: ValueBatch) -> None:
        pass


class Counting(DataWriter):
    """A destination that stores at once (its write returning is the acknowledgement)."""

    def __init__(self) -> None:
        self.values = 0

    def write_batch(self, batch: ValueBatch) -> None:
        self.values += len(batch)


def append_and_replay(sync: str, values: int, size: int, folder: Path) -> dict[str, Any]:
    rng = random.Random(1)
    specs = specs_for(size)
    batches = [mixed_batch(k, specs, rng) for k in range(values // size)]
    path = folder / f"append-{sync}-{size}"
    writer = SpooledWriter(
        Down(), path, max_bytes=8 << 30, sync=sync, max_in_flight_values=1, close_timeout_s=0
    )  # type: ignore[arg-type]
    writer.write_batch(batches[0])  # opens the folder and starts its threads: not timed
    cpu0, t0 = time.process_time(), time.perf_counter()
    for batch in batches[1:]:
        writer.write_batch(batch)
    writer.flush()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    n = (len(batches) - 1) * size
    spool_bytes = writer.stats()["spool_bytes"]
    writer.close()

    sink = Counting()
    replayer = SpooledWriter(sink, path, max_bytes=8 << 30, sync=sync, close_timeout_s=0)  # type: ignore[arg-type]
    cpu1, t1 = time.process_time(), time.perf_counter()
    replayer.write_batch(mixed_batch(10**6, specs, rng))  # opening starts the replay
    while replayer.stats()["spool_values"] > 0:
        time.sleep(0.005)
    rwall, rcpu = time.perf_counter() - t1, time.process_time() - cpu1
    replayed = sink.values
    replayer.close()
    return {
        "sync": sync,
        "batch_values": size,
        "append_values": n,
        "append_values_per_s": round(n / wall),
        "append_cpu_s_per_million": round(cpu / n * 1e6, 3),
        "bytes_per_value": round(spool_bytes / values, 2),
        "replay_values": replayed,
        "replay_values_per_s": round(replayed / rwall),
        "replay_cpu_s_per_million": round(rcpu / replayed * 1e6, 3),
    }


def exposure(sync: str, seconds: float, folder: Path) -> dict[str, Any]:
    """Appends at a steady 100,000 values/s; samples what a power cut could take (not yet fsynced)."""
    rng = random.Random(3)
    specs = specs_for(BATCH)
    batch = mixed_batch(0, specs, rng)
    writer = SpooledWriter(
        Down(), folder / f"exposure-{sync}", max_bytes=8 << 30, sync=sync, close_timeout_s=0
    )  # type: ignore[arg-type]
    ages: list[float] = []
    values: list[float] = []
    start = time.monotonic()
    k = 0
    while (now := time.monotonic()) < start + seconds:
        due = start + k * 0.01
        if due > now:
            time.sleep(due - now)
        writer.write_batch(ValueBatch(batch.t_ms + 10 * k, specs, batch.values, context_id=1, reader="bench"))
        k += 1
        if k % 5 == 0:
            stats = writer.stats()
            ages.append(stats["spool_unsynced_age_s"])
            values.append(stats["spool_unsynced_values"])
    writer.close()
    return {
        "sync": sync,
        "seconds": seconds,
        "unsynced_age_s_max": round(max(ages), 3),
        "unsynced_values_max": int(max(values)),
    }


def engine_outage(seconds: float, folder: Path) -> dict[str, Any]:
    """Through the engine, the destination down: how the process's memory follows the backlog.

    ``RandomDataReader`` with 1,000 float variables every 10 ms (100,000 values/s) through a
    ``DataCollector`` into ``SpooledWriter(a writer that never acknowledges)``: the engine is
    attached for receipts and holds each batch (a small object of the writer's own, its values
    released by the spool beyond its in-memory budget) until its receipt: this measures that cost.
    """
    from flowcollect import DataCollectionContext, DataCollector, Variable
    from flowcollect.readers import RandomDataReader

    writer = SpooledWriter(Down(), folder / "engine", max_bytes=8 << 30, close_timeout_s=0)  # type: ignore[arg-type]
    context = DataCollectionContext(
        id=1,
        interval_ms=10,
        min_interval_ms=10,
        variables=[Variable(id=n, address=f"v{n}", reader="random") for n in range(1, 1001)],
    )
    rss: list[float] = []
    with DataCollector([RandomDataReader()], [writer]) as collector:
        collector.start(context)
        time.sleep(1.0)
        start_values = writer.stats()["spool_values"]
        rss.append(rss_mb())
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(1.0)
            rss.append(rss_mb())
        spooled = writer.stats()["spool_values"] - start_values
    return {
        "seconds": seconds,
        "values_spooled": int(spooled),
        "rss_mb_first": rss[0],
        "rss_mb_last": rss[-1],
        "rss_mb_max": max(rss),
        "rss_mb_per_million_values": round((rss[-1] - rss[0]) / max(1, spooled) * 1e6, 1),
        "rss_mb_samples_every_s": [round(r, 1) for r in rss],
    }


def stored_count(vm: VictoriaMetrics, measurement: str, window_s: int) -> int:
    query = f'sum(count_over_time({{__name__=~"{measurement}_.*"}}[{window_s}s]))'
    url = vm.url + "/api/v1/query?" + urllib.parse.urlencode({"query": query, "time": f"{time.time():.3f}"})
    with urllib.request.urlopen(url, timeout=120) as response:  # noqa: S310 - loopback
        data = json.loads(response.read())
    result = data["data"]["result"]
    return int(float(result[0]["value"][1])) if result else 0


def end_to_end(args: argparse.Namespace, folder: Path, binary: str) -> dict[str, Any]:
    from flowcollect.writers import InfluxDBDataWriter

    measurement = "spoolbench"
    vm = VictoriaMetrics(binary, folder / "vm", args=["-dedup.minScrapeInterval=1ms"])
    per_tick = args.rate // 100  # a batch every 10 ms
    specs = specs_for(per_tick, mixed=False)
    inner = InfluxDBDataWriter(
        vm.url,
        token="t",  # noqa: S106 - the test server takes any token
        org="o",
        bucket="b",
        measurement=measurement,
        batch_size=args.influx_batch,
    )
    inner.gzip = False  # same machine: compression costs both sides CPU for nothing
    writer = SpooledWriter(
        inner,
        folder / "e2e",
        max_bytes=16 << 30,
        sync="batch",
        close_timeout_s=60,
        max_in_flight_values=args.in_flight,
    )
    stop = threading.Event()
    offered = [0]
    late: list[float] = []
    rng = random.Random(2)

    def feed() -> None:
        start_ms = (int(time.time() * 1000) // 10 + 10) * 10
        k = 0
        while not stop.is_set():
            t_ms = start_ms + 10 * k
            wait = t_ms / 1000 - time.time()
            if wait > 0:
                time.sleep(wait)
            else:
                late.append(-wait)
            values = [rng.random() for _ in range(per_tick)]
            writer.write_batch(ValueBatch(t_ms, specs, values, context_id=1, reader="bench"))
            offered[0] += per_tick
            k += 1

    samples: list[dict[str, float]] = []
    phase = ["before"]

    def sample() -> Mapping[str, float]:
        stats = writer.stats()
        row = {
            "t": round(time.monotonic() - t0, 1),
            "phase": phase[0],
            "rss_mb": round(rss_mb(), 1),
            "backlog_values": stats.get("spool_values", 0),
            "spool_bytes": stats.get("spool_bytes", 0),
            "unsynced_age_s": round(stats.get("spool_unsynced_age_s", 0.0), 3),
        }
        samples.append(row)  # type: ignore[arg-type]
        return stats

    t0 = time.monotonic()
    cpu0 = time.process_time()
    started = time.time()
    feeder = threading.Thread(target=feed, name="feeder", daemon=True)
    feeder.start()
    end = time.monotonic() + args.before_s
    while time.monotonic() < end:
        time.sleep(1)
        sample()
    phase[0] = "outage"
    vm.stop()
    outage_started = time.monotonic()
    while time.monotonic() < outage_started + args.outage_s:
        time.sleep(1)
        sample()
    phase[0] = "drain"
    vm.start()
    returned = time.monotonic()
    drained_s = None
    # Drained: the backlog is back to what the steady state keeps in flight (under a second's worth).
    while time.monotonic() < returned + max(120.0, 3 * args.outage_s):
        time.sleep(1)
        stats = sample()
        if stats.get("spool_values", 0) < args.rate:
            drained_s = round(time.monotonic() - returned, 1)
            break
    phase[0] = "after"
    end = time.monotonic() + args.after_s
    while time.monotonic() < end:
        time.sleep(1)
        sample()
    stop.set()
    feeder.join()
    writer.close()
    cpu = time.process_time() - cpu0
    final = writer.stats()
    vm.force_flush()
    window = int(time.time() - started) + 60
    stored = 0
    for _ in range(30):
        stored = stored_count(vm, measurement, window)
        if stored >= offered[0]:
            break
        time.sleep(1)
        vm.force_flush()
    vm.close()
    outage_rss = [s["rss_mb"] for s in samples if s["phase"] == "outage"]
    late.sort()
    return {
        "rate_values_per_s": args.rate,
        "influx_batch_size": args.influx_batch,
        "max_in_flight_values": args.in_flight,
        "outage_s": args.outage_s,
        "offered_values": offered[0],
        "stored_values": stored,
        "all_stored": stored == offered[0],
        "drained_after_return_s": drained_s,
        "backlog_peak_values": max(s["backlog_values"] for s in samples),
        "backlog_peak_bytes": max(s["spool_bytes"] for s in samples),
        "rss_mb_outage_first": outage_rss[0] if outage_rss else None,
        "rss_mb_outage_last": outage_rss[-1] if outage_rss else None,
        "rss_mb_outage_max": max(outage_rss) if outage_rss else None,
        "rss_mb_max": max(s["rss_mb"] for s in samples),
        "unsynced_age_s_max": max(s["unsynced_age_s"] for s in samples),
        "feeder_late_ticks": len(late),
        "feeder_late_p99_ms": round(late[int(len(late) * 0.99)] * 1000, 1) if late else 0.0,
        "cpu_s_per_million": round(cpu / max(1, offered[0]) * 1e6, 3),
        "spool": {k: v for k, v in final.items() if k.startswith("spool_")},
        "writer": {k: v for k, v in final.items() if not k.startswith("spool_")},
        "samples_every_s": samples,
    }


def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs, no end to end")
    parser.add_argument("--values", type=int, default=2_000_000, help="values appended per sync mode")
    parser.add_argument("--rate", type=int, default=200_000, help="end to end: values/s offered")
    parser.add_argument("--before-s", type=float, default=20.0)
    parser.add_argument("--outage-s", type=float, default=60.0)
    parser.add_argument("--after-s", type=float, default=10.0)
    parser.add_argument("--skip-end-to-end", action="store_true")
    parser.add_argument("--engine-s", type=float, default=20.0, help="seconds of the engine outage run")
    parser.add_argument("--engine-only", action="store_true", help="run only the engine_outage case")
    parser.add_argument(
        "--exposure-s", type=float, default=5.0, help="seconds of steady appends per sync mode"
    )
    parser.add_argument("--influx-batch", type=int, default=10_000, help="the InfluxDB writer's batch_size")
    parser.add_argument("--in-flight", type=int, default=100_000, help="the spool's max_in_flight_values")
    args = parser.parse_args()
    values = 200_000 if args.quick else args.values
    report: dict[str, Any] = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="flowcollect-bench-spool-") as tmp:
        folder = Path(tmp)
        if args.engine_only:
            report["engine_outage"] = engine_outage(args.engine_s, folder)
            print(json.dumps(report, indent=2))
            return
        report["power_cut_exposure"] = [
            exposure(sync, 1.0 if args.quick else args.exposure_s, folder)
            for sync in ("batch", "always", "never")
        ]
        report["append_and_replay"] = [
            append_and_replay(sync, values if size == BATCH else values // 10, size, folder)
            for size in (BATCH, SMALL)
            for sync in ("batch", "always", "never")
        ]
        report["engine_outage"] = engine_outage(3.0 if args.quick else args.engine_s, folder)
        binary = find_binary()
        if args.quick or args.skip_end_to_end:
            report["end_to_end"] = "skipped"
        elif binary is None:
            report["end_to_end"] = "skipped: victoria-metrics is not installed (make servers)"
        else:
            report["end_to_end"] = end_to_end(args, folder, binary)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
