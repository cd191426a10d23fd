"""Delivery benchmark: what a writer sink costs between the engine's hand-over and the writer.
Prints JSON.

    .venv/bin/python bench/sink.py            # 2,000,000 values per case
    .venv/bin/python bench/sink.py --quick    # 200,000

Each case puts batches of 10,000 values (one tick of 10,000 variables) into one ``WriterSink``
and closes it; the figure is the process CPU time per million values (best of three), so a
loaded machine changes it less than wall time. Cases: a ``write_batch`` writer that only counts
(the sink's own cost), the same acknowledging every batch from its thread (receipts), both again
with batches of 10 values (a small context: the per-batch cost), the CSV
writer from columnar batches, and the CSV writer from the per-value lists the engine of the
first design still hands over (converted to batches by the sink). Every case checks that the
sink's figures say every value written.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from flowcollect import CollectedVariable, DataWriter
from flowcollect._sink import WriterSink
from flowcollect.values import ValueBatch, VariableSpec
from flowcollect.writers import CsvFileDataWriter

BATCH = 10_000
LOG = logging.getLogger("bench.sink")


class Counting(DataWriter):
    def __init__(self) -> None:
        self.n = 0

    def write_batch(self, batch: ValueBatch) -> None:
        self.n += len(batch)


class AckCounting(Counting):
    acknowledges = True

    def write_batch(self, batch: ValueBatch) -> None:
        self.n += len(batch)
        self.acknowledge(batch, len(batch))


def batches(n: int, size: int = BATCH) -> list[ValueBatch]:
    specs = [VariableSpec(i, 1, f"room/{i}", "float", "random", 100) for i in range(size)]
    values = [15.5 + i / 1000 for i in range(size)]
    t0 = 1_764_158_400_000
    return [ValueBatch(t0 + 100 * k, specs, values, [None] * size, context_id=1) for k in range(n // size)]


def lists(n: int) -> list[list[CollectedVariable]]:
    t0 = datetime(2026, 11, 25, 12, tzinfo=UTC)
    return [
        [
            CollectedVariable(
                i,
                1,
                f"room/{i}",
                "float",
                "random",
                100,
                15.5 + i / 1000,
                t0 + timedelta(milliseconds=100 * k),
            )
            for i in range(BATCH)
        ]
        for k in range(n // BATCH)
    ]


def run(make: Callable[[], DataWriter], items: Sequence[ValueBatch | list[CollectedVariable]]) -> float:
    best = float("inf")
    for _ in range(3):
        writer = make()
        sink = WriterSink(writer, LOG, limit=10_000_000)  # no drops: the cost of delivery alone
        started = time.process_time()
        for item in items:
            sink.put(item)
        if not sink.close(time.monotonic() + 120):
            raise SystemExit(f"{writer.name} did not close in time")
        cpu = time.process_time() - started
        stats = sink.snapshot()
        total = sum(len(item) for item in items)
        if (stats.received, stats.written) != (total, total):
            raise SystemExit(f"{writer.name}: {stats}")
        best = min(best, cpu)
    return round(best / (sum(len(item) for item in items) / 1e6), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = 200_000 if args.quick else 2_000_000
    folder = Path(tempfile.mkdtemp(prefix="flowcollect-bench-sink-"))
    columnar, per_value, small = batches(n), lists(min(n, 500_000)), batches(n // 10, 10)
    counter = iter(range(1_000_000))

    def csv_writer() -> DataWriter:
        return CsvFileDataWriter(folder / f"out{next(counter)}.csv", append=False)

    report = {
        "benchmark": "sink",
        "values_per_case": n,
        "batch_values": BATCH,
        "cpu_s_per_million": {
            "count_write_batch": run(Counting, columnar),
            "count_acknowledged": run(AckCounting, columnar),
            "count_write_batch_of_10": run(Counting, small),
            "count_acknowledged_of_10": run(AckCounting, small),
            "csv_from_batches": run(csv_writer, columnar),
            "csv_from_lists": run(csv_writer, per_value),
        },
    }
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
