"""Engine benchmark: tick lateness, throughput and lane isolation. Prints JSON.

    .venv/bin/python bench/engine.py            # full: about 2 minutes
    .venv/bin/python bench/engine.py --quick    # shorter runs, for a smoke check

Every run uses the interpreter's defaults: no ``gc.freeze()``, the default switch interval.

1. ``timing``: 5,000 variables (a third each at 100, 200 and 500 ms) on one per-value reader
   (``read(variables)``) doing no I/O, 15 s. Lateness is from the grid instant to the reader's
   call (p50/p99/max); every due instant must arrive exactly once (missed, doubled, partial).
2. ``batch_throughput``: 100,000 variables at 100 ms (1,000,000 values/s offered) from
   ``RandomDataReader`` (its ``read_batch``) to a ``write_batch`` writer that only counts: % of
   the offered values delivered, and the process's CPU seconds per million values. Then lower
   rates until one is delivered in full: the highest rate delivered in full.
3. ``per_value_throughput``: 50,000 variables at 100 ms (500,000 values/s) through the per-value
   API: a ``read(variables)`` reader to a ``write(values)`` writer.
4. ``blocked_lane``: two lanes of 1,000 variables at 100 ms; the reader of one blocks for 2 s in
   one read. The other lane's lateness p99 with and without the block.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections import Counter
from collections.abc import Sequence
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
from flowcollect.readers import RandomDataReader
from flowcollect.stats import percentile
from flowcollect.values import ValueBatch


class NoIOReader(DataReader):
    """A per-value reader setting a constant: what is measured is the engine, not a device. It
    notes how long after its grid instant each read call came."""

    def __init__(self, type: str = "noio", block_s: float = 0.0) -> None:  # noqa: A002
        self._type = type
        self.call_delay_ms: list[float] = []
        self.block_s = block_s
        self.blocked = threading.Event()

    @property
    def type(self) -> str:
        return self._type

    def read(self, variables: Sequence[CollectedVariable]) -> None:
        when = variables[0].time
        if when is not None:
            self.call_delay_ms.append(time.time() * 1000 - when.timestamp() * 1000)
        if self.block_s and len(self.call_delay_ms) == 20 and not self.blocked.is_set():
            self.blocked.set()
            time.sleep(self.block_s)
        for v in variables:
            v.value = 1.0


class CountingBatchWriter(DataWriter):
    """Counts values per instant through ``write_batch``: its own cost is one call per batch."""

    def __init__(self) -> None:
        self.count = 0
        self.per_instant: Counter[int] = Counter()

    def write_batch(self, batch: ValueBatch) -> None:
        n = len(batch)
        self.count += n
        self.per_instant[batch.t_ms] += n


class CountingValueWriter(DataWriter):
    """The per-value API: takes ``CollectedVariable``s and counts them per instant."""

    def __init__(self) -> None:
        self.count = 0
        self.per_instant: Counter[int] = Counter()

    def write(self, values: Sequence[CollectedVariable]) -> None:
        # Values of one instant share one datetime object: group in C, convert once per group,
        # so the writer's own CPU stays small beside the engine's.
        for when, group in groupby(values, key=attrgetter("time")):
            if when is not None:
                self.per_instant[round(when.timestamp() * 1000)] += sum(1 for _ in group)
        self.count += len(values)


def context(cid: int, n: int, intervals: Sequence[int], seconds: float, reader: str) -> DataCollectionContext:
    variables = [
        Variable(id=i + 1, address=f"r{i}", reader=reader, interval_ms=intervals[i % len(intervals)])
        for i in range(n)
    ]
    return DataCollectionContext(id=cid, variables=variables, min_interval_ms=1, duration_s=seconds)


def collect(
    readers: Sequence[DataReader], writer: DataWriter, contexts: Sequence[DataCollectionContext]
) -> tuple[DataCollector, float, float]:
    """Run the contexts to their end; return the collector (closed), and the wall and CPU
    seconds from the start (once compiled: building 100,000 pydantic models is set-up, not
    collection) to the writers' last value."""
    collector = DataCollector(readers, [writer], queue_limit=5_000_000)
    try:
        for ctx in contexts:
            collector.start(ctx)
        cpu0, wall0 = time.process_time(), time.monotonic()
        while collector.is_running():
            time.sleep(0.05)
        collector.flush(60)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    finally:
        collector.close()
    return collector, wall, cpu


def accounting(
    ctx: DataCollectionContext, n: int, intervals: Sequence[int], per_instant: Counter[int]
) -> dict[str, object]:
    assert ctx.start_date is not None and ctx.end_date is not None
    start_ms = round(ctx.start_date.timestamp() * 1000)
    end_ms = round(ctx.end_date.timestamp() * 1000)
    grid = min(intervals)
    due = [
        t for t in range((start_ms // grid + 1) * grid, end_ms, grid) if any(t % i == 0 for i in intervals)
    ]
    counts = Counter(intervals[i % len(intervals)] for i in range(n))
    expected = {t: sum(c for i, c in counts.items() if t % i == 0) for t in due}
    offered = sum(expected.values())
    delivered = sum(min(per_instant.get(t, 0), expected[t]) for t in due)
    seconds = (end_ms - start_ms) / 1000
    return {
        "seconds": round(seconds, 2),
        "due_instants": len(due),
        "missed_instants": sum(1 for t in due if per_instant.get(t, 0) == 0),
        "doubled_instants": sum(1 for t in due if per_instant.get(t, 0) > expected[t]),
        "partial_instants": sum(1 for t in due if 0 < per_instant.get(t, 0) < expected[t]),
        "values_offered": offered,
        "values_delivered": delivered,
        "delivered_pct": round(100 * delivered / offered, 2) if offered else None,
        "values_offered_per_s": round(offered / seconds),
    }


def lateness(delays: Sequence[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(delays, 50) or 0, 3),
        "p99": round(percentile(delays, 99) or 0, 3),
        "max": round(max(delays, default=0), 3),
    }


def timing(seconds: float) -> dict[str, object]:
    n, intervals = 5000, (100, 200, 500)
    reader, writer = NoIOReader(), CountingBatchWriter()
    ctx = context(1, n, intervals, seconds, "noio")
    collector, _, _ = collect([reader], writer, [ctx])
    stats = collector.stats().readers["noio"]
    return {
        "variables": n,
        "intervals_ms": list(intervals),
        "lateness_to_read_call_ms": lateness(reader.call_delay_ms),
        "engine_tick_lateness_ms_p99": round(stats.lateness_ms_p99 or 0, 3),
        "overruns": stats.overruns,
        **accounting(ctx, n, intervals, writer.per_instant),
    }


def batch_throughput(n: int, seconds: float) -> dict[str, object]:
    writer = CountingBatchWriter()
    ctx = context(1, n, (100,), seconds, "random")
    _, wall, cpu = collect([RandomDataReader()], writer, [ctx])
    result = accounting(ctx, n, (100,), writer.per_instant)
    delivered = int(result["values_delivered"])  # type: ignore[call-overload]
    result.update(
        {
            "variables": n,
            "cpu_s": round(cpu, 2),
            "wall_s": round(wall, 2),
            "cpu_s_per_million_values": round(cpu / delivered * 1e6, 3) if delivered else None,
        }
    )
    return result


def per_value_throughput(n: int, seconds: float) -> dict[str, object]:
    reader, writer = NoIOReader(), CountingValueWriter()
    ctx = context(1, n, (100,), seconds, "noio")
    _, _wall, cpu = collect([reader], writer, [ctx])
    result = accounting(ctx, n, (100,), writer.per_instant)
    delivered = int(result["values_delivered"])  # type: ignore[call-overload]
    result.update(
        {
            "variables": n,
            "cpu_s": round(cpu, 2),
            "cpu_s_per_million_values": round(cpu / delivered * 1e6, 3) if delivered else None,
        }
    )
    return result


def blocked_lane(seconds: float) -> dict[str, object]:
    out: dict[str, object] = {}
    for label, block_s in (("without_block", 0.0), ("with_block_2s", 2.0)):
        steady, blocking = NoIOReader("steady"), NoIOReader("blocking", block_s=block_s)
        writer = CountingBatchWriter()
        contexts = [
            context(1, 1000, (100,), seconds, "steady"),
            context(2, 1000, (100,), seconds, "blocking"),
        ]
        collector, _, _ = collect([steady, blocking], writer, contexts)
        stats = collector.stats().readers
        out[label] = {
            "steady_lane_lateness_to_read_call_ms": lateness(steady.call_delay_ms),
            "steady_overruns": stats["steady"].overruns,
            "blocking_overruns": stats["blocking"].overruns,
            "blocked": blocking.blocked.is_set(),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs, for a smoke check")
    args = parser.parse_args()
    timing_s, throughput_s, lane_s = (5.0, 4.0, 4.0) if args.quick else (15.0, 10.0, 6.0)
    result: dict[str, object] = {"benchmark": "engine", "gc_freeze": False, "switch_interval": "default"}
    result["timing_5000_vars_100_200_500ms"] = timing(timing_s)
    full = batch_throughput(100_000, throughput_s)
    result["batch_throughput_100000_vars_100ms"] = full
    # The highest rate delivered in full: the offered rate if it was, else lower ones.
    highest = None
    for n in (100_000, 75_000, 50_000, 25_000):
        run = full if n == 100_000 else batch_throughput(n, throughput_s)
        if n != 100_000:
            result[f"batch_throughput_{n}_vars_100ms"] = run
        if run["delivered_pct"] == 100.0 and not run["missed_instants"]:
            highest = run["values_offered_per_s"]
            break
    result["batch_highest_rate_delivered_in_full_values_per_s"] = highest
    result["per_value_throughput_50000_vars_100ms"] = per_value_throughput(50_000, throughput_s)
    result["blocked_lane"] = blocked_lane(lane_s)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
