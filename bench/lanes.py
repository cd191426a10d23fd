"""Lanes benchmark: many lanes on the event-loop runtime (issue 23). Prints JSON.

    .venv/bin/python bench/lanes.py                # 2,000 lanes, 8 s per run: about 1.5 minutes
    .venv/bin/python bench/lanes.py --quick        # 4 s per run
    .venv/bin/python bench/lanes.py --lanes 500
    PYTHONPATH=<a checkout before issue 23> .venv/bin/python bench/lanes.py --only sync   # before

Every run uses the interpreter's defaults: no ``gc.freeze()``, the default switch interval.

Each run: ``--lanes`` devices of 20 variables, each device its own lane, all in one context, to
a ``write_batch`` writer that only counts, for ``--seconds`` after one interval of warm-up:

- ``async``: ``flowcollect.testing.AsyncDataReader`` (``read_batch_async``: one
  ``asyncio.sleep(0)``, then the values), awaited on the loop;
- ``sync``: ``flowcollect.testing.StaticDataReader`` (a per-value ``read``), on the worker pool;

at 1 s and at 100 ms. Figures: ``delivered_pct`` (values of the window's instants delivered),
request lateness (grid instant -> read started) and delivery time (grid instant -> values
handed to the writers), each as the median and the 99th percentile over lanes of the lanes'
own p50/p99; CPU seconds per million values; the process's threads; RSS growth per device;
``start()`` (and the part of it that is compiling, timed by ``check()``), ``stats()``
(mean of 5) and ``close()``.

The limit, measured in the same run: ``bare_asyncio``, one asyncio task per device that sleeps
to its next grid instant, does ``asyncio.sleep(0)`` and builds the 20 values: its lateness and
CPU per million values.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import resource
import statistics
import threading
import time
from collections import Counter
from typing import Any

from flowcollect import DataCollectionContext, DataCollector, DataWriter, Variable
from flowcollect.stats import percentile
from flowcollect.testing import StaticDataReader
from flowcollect.values import ValueBatch

VARIABLES = 20


class CountingWriter(DataWriter):
    """Counts values per instant: its own cost is one call per batch."""

    def __init__(self) -> None:
        self.per_instant: Counter[int] = Counter()

    def write_batch(self, batch: ValueBatch) -> None:
        self.per_instant[batch.t_ms] += len(batch)


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def spread(samples: list[float]) -> dict[str, float | None]:
    return {
        "median": round(statistics.median(samples), 2) if samples else None,
        "p99": None if not samples else round(percentile(samples, 99) or 0.0, 2),
    }


def run(kind: str, lanes: int, interval_ms: int, seconds: float, workers: int | None) -> dict[str, object]:
    values = {f"a{i}": float(i) for i in range(VARIABLES)}
    if kind == "async":
        from flowcollect.testing import AsyncDataReader  # not in the engine before issue 23

        readers: list[Any] = [AsyncDataReader(values, type=f"d{n}") for n in range(lanes)]
    else:
        readers = [StaticDataReader(values, type=f"d{n}") for n in range(lanes)]
    context = DataCollectionContext(
        id=1,
        interval_ms=interval_ms,
        min_interval_ms=10,
        variables=[
            Variable(id=n * VARIABLES + i + 1, address=f"a{i}", reader=f"d{n}")
            for n in range(lanes)
            for i in range(VARIABLES)
        ],
    )
    writer = CountingWriter()
    rss0 = rss_mb()
    collector = DataCollector(readers, [writer], **({} if workers is None else {"reader_workers": workers}))
    began = time.perf_counter()
    collector.check(context)
    compile_s = time.perf_counter() - began
    began = time.perf_counter()
    started = collector.start(context)
    start_s = time.perf_counter() - began
    assert started.start_date is not None
    t0 = math.floor(started.start_date.timestamp() * 1000)
    # The window: whole instants after one interval of warm-up.
    first = (t0 // interval_ms + 2) * interval_ms
    time.sleep(max(0.0, first / 1000 - time.time()))
    cpu0 = cpu_s()
    time.sleep(seconds)
    cpu = cpu_s() - cpu0
    last = math.floor(time.time() * 1000) // interval_ms * interval_ms - interval_ms
    threads = threading.active_count()
    rss = rss_mb() - rss0
    stats_s = []
    for _ in range(5):
        began = time.perf_counter()
        stats = collector.stats()
        stats_s.append(time.perf_counter() - began)
    began = time.perf_counter()
    collector.close()
    close_s = time.perf_counter() - began
    instants = range(first, last + 1, interval_ms)
    expected = lanes * VARIABLES * len(instants)
    delivered = sum(min(writer.per_instant.get(t, 0), lanes * VARIABLES) for t in instants)
    per_reader = list(stats.readers.values())
    return {
        "kind": kind,
        "reader_workers": workers,
        "lanes": lanes,
        "interval_ms": interval_ms,
        "instants": len(instants),
        "delivered_pct": round(100 * delivered / expected, 2) if expected else None,
        "lateness_ms_p50": spread([r.lateness_ms_p50 for r in per_reader if r.lateness_ms_p50 is not None]),
        "lateness_ms_p99": spread([r.lateness_ms_p99 for r in per_reader if r.lateness_ms_p99 is not None]),
        # (getattr: the engine before issue 23, run with --only sync for a before/after, has none)
        "delivery_ms_p50": spread(
            [x for r in per_reader if (x := getattr(r, "delivery_ms_p50", None)) is not None]
        ),
        "delivery_ms_p99": spread(
            [x for r in per_reader if (x := getattr(r, "delivery_ms_p99", None)) is not None]
        ),
        "overruns": sum(r.overruns for r in per_reader),
        "cpu_s_per_million_values": round(cpu / max(1, delivered) * 1e6, 2),
        "cpu_cores": round(cpu / seconds, 3),
        "threads": threads,
        "rss_mb_per_device": round(rss / lanes, 4),
        "compile_s": round(compile_s, 3),
        "start_s": round(start_s, 3),
        "stats_ms": round(1000 * statistics.mean(stats_s), 2),
        "close_s": round(close_s, 3),
    }


def bare(lanes: int, interval_ms: int, seconds: float) -> dict[str, object]:
    """The limit: one asyncio task per device on the grid, nothing else."""
    lateness: list[list[float]] = [[] for _ in range(lanes)]
    counted = [0]

    async def device(n: int, until: float) -> None:
        mine = lateness[n]
        while True:
            now = time.time() * 1000
            due = (math.floor(now) // interval_ms + 1) * interval_ms
            if due / 1000 > until:
                return
            await asyncio.sleep((due - now) / 1000)
            mine.append(time.time() * 1000 - due)
            await asyncio.sleep(0)
            values = [float(i) for i in range(VARIABLES)]
            counted[0] += len(values)

    async def main() -> float:
        until = time.time() + seconds + interval_ms / 1000
        tasks = [asyncio.ensure_future(device(n, until)) for n in range(lanes)]
        await asyncio.sleep(interval_ms / 1000)  # warm-up: the first instant
        cpu0 = cpu_s()
        base = counted[0]
        await asyncio.gather(*tasks)
        cpu = cpu_s() - cpu0
        return cpu / max(1, counted[0] - base) * 1e6

    per_million = asyncio.run(main())
    return {
        "kind": "bare_asyncio",
        "lanes": lanes,
        "interval_ms": interval_ms,
        "lateness_ms_p50": spread([percentile(x, 50) or 0.0 for x in lateness if x]),
        "lateness_ms_p99": spread([percentile(x, 99) or 0.0 for x in lateness if x]),
        "cpu_s_per_million_values": round(per_million, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lanes", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--workers", type=int, help="DataCollector(reader_workers=...); default: its own")
    parser.add_argument("--quick", action="store_true", help="4 s per run")
    parser.add_argument("--only", choices=["async", "sync", "bare"], action="append")
    args = parser.parse_args()
    seconds = 4.0 if args.quick else args.seconds
    kinds = args.only or ["async", "sync", "bare"]
    results = []
    for interval_ms in (1000, 100):
        for kind in kinds:
            if kind == "bare":
                results.append(bare(args.lanes, interval_ms, seconds))
            else:
                results.append(run(kind, args.lanes, interval_ms, seconds, args.workers))
    with open("/proc/loadavg") as load:
        loadavg = load.read().split()[:3]
    print(json.dumps({"bench": "lanes", "loadavg": loadavg, "results": results}, indent=2))


if __name__ == "__main__":
    main()
