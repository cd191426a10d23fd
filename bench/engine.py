"""Engine benchmark: tick lateness and drift, and delivered throughput. Prints JSON.

    .venv/bin/python bench/engine.py            # full: 15 s timing run, 10 s throughput run
    .venv/bin/python bench/engine.py --quick    # 5 s + 4 s, for a smoke check

1. Timing: 5,000 variables (a third each at 100, 200 and 500 ms) on one reader doing no I/O.
   Lateness is measured when the read starts, against the tick's scheduled instant; drift is the
   change of mean lateness between the first and the last fifth of the run (a relative timer
   would show it growing); every due instant must arrive exactly once.
2. Throughput: 50,000 variables at 100 ms (500,000 values/s offered) to a counting writer,
   against a plain Python loop building the same values; once as a library user gets it, once
   with ``gc.freeze()`` after start (what ``flowcollect run`` does): at this rate the cyclic
   GC's full collections over the start-up heap cost a third of a core.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import threading
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from itertools import groupby
from operator import attrgetter

from flowcollect import (
    CollectedVariable,
    DataCollectionContext,
    DataCollector,
    DataReader,
    DataWriter,
    Variable,
)
from flowcollect.stats import percentile


class NoIOReader(DataReader):
    """Sets a constant: what is measured is the engine, not a device.

    It notes how long after its tick each read call came; the engine's own lateness (taken
    before the values are built) is in its stats. Drift shows in either as a trend.
    """

    def __init__(self) -> None:
        self.call_delay_ms: list[float] = []

    @property
    def type(self) -> str:
        return "noio"

    def read(self, variables: Sequence[CollectedVariable]) -> None:
        when = variables[0].time
        if when is not None:
            self.call_delay_ms.append(time.time() * 1000 - when.timestamp() * 1000)
        for v in variables:
            v.value = 1.0


class CountingWriter(DataWriter):
    def __init__(self) -> None:
        self.count = 0
        self.per_instant: Counter[int] = Counter()
        self.lock = threading.Lock()

    def write(self, values: Sequence[CollectedVariable]) -> None:
        # Values of one tick share one datetime object: group in C, convert once per group, so the
        # writer's own CPU stays small beside the engine's.
        instants: Counter[int] = Counter()
        for when, group in groupby(values, key=attrgetter("time")):
            instants[round(when.timestamp() * 1000)] += sum(1 for _ in group)
        with self.lock:
            self.count += len(values)
            self.per_instant.update(instants)


def context(n: int, intervals: Sequence[int], seconds: float) -> DataCollectionContext:
    variables = [
        Variable(id=i + 1, address=f"r{i}", reader="noio", interval_ms=intervals[i % len(intervals)])
        for i in range(n)
    ]
    return DataCollectionContext(id=1, variables=variables, min_interval_ms=1, duration_s=seconds)


def expected_per_instant(n: int, intervals: Sequence[int], t: int) -> int:
    return sum(1 for i in range(n) if t % intervals[i % len(intervals)] == 0)


def run(n: int, intervals: Sequence[int], seconds: float, freeze: bool = False) -> dict[str, object]:
    reader, writer = NoIOReader(), CountingWriter()
    ctx = context(n, intervals, seconds)
    gc.collect()
    with DataCollector([reader], [writer]) as collector:
        collector.start(ctx)  # the context ends by itself after `seconds`
        if freeze:
            gc.freeze()  # what `flowcollect run` does once its contexts have started
        while collector.is_running():
            time.sleep(0.05)
        collector.flush()
        stats = collector.stats().readers["noio"]
    assert ctx.start_date is not None and ctx.end_date is not None
    start_ms = round(ctx.start_date.timestamp() * 1000)
    end_ms = round(ctx.end_date.timestamp() * 1000)
    # Every due instant of the run by the grid, and what arrived for each.
    grid = min(intervals)
    due = [
        t for t in range((start_ms // grid + 1) * grid, end_ms, grid) if any(t % i == 0 for i in intervals)
    ]
    expected = {t: expected_per_instant(n, intervals, t) for t in due}
    per = writer.per_instant
    offered = sum(expected.values())
    delivered = sum(min(per.get(t, 0), expected[t]) for t in due)
    delays = reader.call_delay_ms
    fifth = max(1, len(delays) // 5)
    return {
        "variables": n,
        "intervals_ms": list(intervals),
        "gc_freeze_after_start": freeze,
        "seconds": round((end_ms - start_ms) / 1000, 2),
        "ticks": stats.ticks,
        "overruns": stats.overruns,
        "lateness_ms_p50": round(stats.lateness_ms_p50 or 0, 3),
        "lateness_ms_p99": round(stats.lateness_ms_p99 or 0, 3),
        "lateness_ms_max": round(stats.lateness_ms_max or 0, 3),
        "drift_ms": round(statistics.fmean(delays[-fifth:]) - statistics.fmean(delays[:fifth]), 3),
        "read_call_delay_ms_p99": round(percentile(delays, 99) or 0, 3),
        "read_and_fanout_ms_p50": round(stats.read_ms_p50 or 0, 3),
        "due_instants": len(due),
        "missed_instants": sum(1 for t in due if per.get(t, 0) == 0),
        "doubled_instants": sum(1 for t in due if per.get(t, 0) > expected[t]),
        "partial_instants": sum(1 for t in due if 0 < per.get(t, 0) < expected[t]),
        "values_offered": offered,
        "values_delivered": delivered,
        "delivered_pct": round(100 * delivered / offered, 2) if offered else None,
        "values_offered_per_s": round(offered / ((end_ms - start_ms) / 1000)),
        "values_delivered_per_s": round(delivered / ((end_ms - start_ms) / 1000)),
    }


def plain_loop(n: int, ticks: int) -> dict[str, object]:
    """The reference: the same values built and counted by a bare loop, no engine."""
    count = 0
    t0 = time.perf_counter()
    for _ in range(ticks):
        when = datetime.now(UTC)
        batch = [
            CollectedVariable(i + 1, 1, f"r{i}", "float", "noio", 100, None, when, None) for i in range(n)
        ]
        for v in batch:
            v.value = 1.0
        count += len(batch)
    elapsed = time.perf_counter() - t0
    return {"variables": n, "ticks": ticks, "values_per_s": round(count / elapsed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs, for a smoke check")
    args = parser.parse_args()
    timing_s, throughput_s = (5.0, 4.0) if args.quick else (15.0, 10.0)
    result = {
        "benchmark": "engine",
        "timing_5000_vars_100_200_500ms": run(5000, (100, 200, 500), timing_s),
        "throughput_50000_vars_100ms": run(50_000, (100,), throughput_s),
        "throughput_50000_vars_100ms_gc_frozen": run(50_000, (100,), throughput_s, freeze=True),
        "reference_plain_loop_50000_vars": plain_loop(50_000, 20),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
