"""Soak benchmark: 10,000 variables at 100 ms into CSV and VictoriaMetrics for 10 minutes. Prints JSON.

    .venv/bin/python bench/soak.py                  # 10 minutes after a 60 s warm-up
    .venv/bin/python bench/soak.py --seconds 30     # what tests/reliability/test_soak.py runs
    .venv/bin/python bench/soak.py --no-server      # CSV only

One context of ``--variables`` variables (``RandomDataReader``, no I/O) at ``--interval-ms``:
100,000 values/s into ``CsvFileDataWriter`` and ``InfluxDBDataWriter`` posting to a real
VictoriaMetrics process on this machine, the way ``flowcollect run`` runs it (``gc.freeze()``
after start, a 1 ms switch interval). Figures:

- ``rss_mb_start`` / ``rss_mb_end``: this process's resident memory once warmed up and at the end
  of the run, both while collecting (target: growth under 10 MB); ``rss_mb_samples`` at every
  tenth of the run.
- ``values_lost``: values read (the collector's reader stats) minus rows in the CSV file, and
  minus samples the server holds for the run (target: 0 for both). The context is stopped
  explicitly, so every value read belongs to it.
- ``lateness_ms_p99``: the engine's tick lateness (over its last 4,096 ticks, ~7 minutes at
  100 ms); ``read_call_delay_ms``: scheduled instant to the reader's ``read`` call for every tick
  of the run (lateness plus building the 10,000 values).
- ``threads_left``: collector threads alive after ``close()`` (target: none).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from flowcollect import CollectedVariable, DataCollectionContext, DataCollector, DataWriter, Variable
from flowcollect.readers import RandomDataReader
from flowcollect.stats import percentile
from flowcollect.writers import CsvFileDataWriter

# The server helper lives with the tests, which are not an installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.victoria import VictoriaMetrics, find_binary

MEASUREMENT = "soak"
SERVER = {"token": "soak", "org": "soak", "bucket": "soak", "measurement": MEASUREMENT}


class TimedRandomReader(RandomDataReader):
    """Random values; notes how long after its scheduled instant each read call came."""

    def __init__(self) -> None:
        super().__init__(seed=1)
        self.call_delay_ms: list[float] = []

    def read(self, variables: Sequence[CollectedVariable]) -> None:
        when = variables[0].time
        if when is not None:
            self.call_delay_ms.append(time.time() * 1000 - when.timestamp() * 1000)
        super().read(variables)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def csv_rows(path: Path) -> int:
    """Data rows in the file (lines minus the header), counted from the file itself."""
    lines = 0
    with path.open("rb") as file:
        while chunk := file.read(1 << 22):
            lines += chunk.count(b"\n")
    return max(0, lines - 1)


def server_samples(vm: VictoriaMetrics, start_s: float, end_s: float) -> int:
    """Samples of the soak's series stored with timestamps in [start_s, end_s]."""
    window = max(1, int(end_s - start_s) + 2)
    query = f"sum(count_over_time({MEASUREMENT}_value[{window}s]))"
    params = urllib.parse.urlencode({"query": query, "time": f"{end_s + 1:.3f}", "nocache": "1"})
    vm.force_flush()
    url = f"{vm.url}/api/v1/query?{params}"
    with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 - our loopback server
        body = json.load(response)
    result = body["data"]["result"]
    return int(float(result[0]["value"][1])) if result else 0


def wait_server_samples(vm: VictoriaMetrics, start_s: float, end_s: float, target: int) -> int:
    """Poll until the server shows ``target`` samples (fresh ones take a moment), or 60 s pass."""
    deadline = time.monotonic() + 60
    while (count := server_samples(vm, start_s, end_s)) < target and time.monotonic() < deadline:
        time.sleep(0.5)
    return count


def collector_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("flowcollect-") and t.is_alive()]


def soak(
    seconds: float, warmup_s: float, n_vars: int, interval_ms: int, out_dir: Path, vm: VictoriaMetrics | None
) -> dict[str, Any]:
    reader = TimedRandomReader()
    csv_writer = CsvFileDataWriter(out_dir / "soak.csv", append=False)
    writers: list[DataWriter] = [csv_writer]
    if vm is not None:
        from flowcollect.writers import InfluxDBDataWriter

        writers.append(InfluxDBDataWriter(vm.url, **SERVER))  # type: ignore[arg-type]
    variables = [Variable(id=i, address=f"soak/{i}", reader="random") for i in range(1, n_vars + 1)]
    context = DataCollectionContext(id=1, variables=variables, interval_ms=interval_ms)
    threads_before = len(threading.enumerate())
    collector = DataCollector([reader], writers)
    samples: list[float] = []
    try:
        collector.start(context)
        gc.freeze()  # as `flowcollect run` does once its contexts have started
        sys.setswitchinterval(0.001)  # as `flowcollect run` does: the clock thread waits less for the GIL
        started = time.monotonic()
        time.sleep(warmup_s)
        rss_start = rss_mb()
        measured_from = time.monotonic()
        step = seconds / 10
        for k in range(1, 11):
            time.sleep(max(0.0, measured_from + k * step - time.monotonic()))
            samples.append(round(rss_mb(), 1))
        rss_end = rss_mb()
        running = collector.stats()
        collector.stop(1)
        stopped = time.monotonic()
        flushed = collector.flush(120)
    finally:
        collector.close()
        gc.unfreeze()
    closed = time.monotonic()
    threads_left = collector_threads()
    stats = collector.stats()
    rstats = stats.readers["random"]
    read = rstats.values
    assert context.start_date is not None and context.end_date is not None
    start_s, end_s = context.start_date.timestamp(), context.end_date.timestamp()
    rows = csv_rows(csv_writer.path)
    lost = {"csv": read - rows}
    writer_stats = {
        name: {
            "written": w.written,
            "failed": w.failed,
            "dropped": w.dropped,
            **{k: v for k, v in w.extra.items() if k in ("written", "failed", "dropped", "retries")},
        }
        for name, w in stats.writers.items()
    }
    stored = None
    if vm is not None:
        stored = wait_server_samples(vm, start_s, end_s, read)
        lost["server"] = read - stored
    delays = reader.call_delay_ms
    return {
        "benchmark": "soak",
        "variables": n_vars,
        "interval_ms": interval_ms,
        "offered_values_per_s": round(n_vars * 1000 / interval_ms),
        "warmup_s": warmup_s,
        "measured_s": round(stopped - measured_from, 1),
        "run_s": round(stopped - started, 1),
        "writers": [w.name for w in writers],
        "rss_mb_start": round(rss_start, 1),
        "rss_mb_end": round(rss_end, 1),
        "rss_growth_mb": round(rss_end - rss_start, 1),
        "rss_mb_samples": samples,
        "ticks": rstats.ticks,
        "overruns": rstats.overruns,
        "values_read": read,
        "csv_rows": rows,
        "server_samples": stored,
        "values_lost": lost,
        "flushed_in_time": flushed,
        "writer_queue_at_end": {name: w.queued for name, w in running.writers.items()},
        "writer_stats": writer_stats,
        "lateness_ms_p50": round(rstats.lateness_ms_p50 or 0, 2),
        "lateness_ms_p99": round(rstats.lateness_ms_p99 or 0, 2),
        "lateness_ms_max": round(rstats.lateness_ms_max or 0, 2),
        "read_call_delay_ms": {
            "p50": round(percentile(delays, 50) or 0, 2),
            "p99": round(percentile(delays, 99) or 0, 2),
            "max": round(max(delays, default=0), 2),
            "ticks": len(delays),
        },
        "stop_to_closed_s": round(closed - stopped, 2),
        "threads_left": threads_left,
        "threads_before_and_after": [threads_before, len(threading.enumerate())],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, default=10.0, help="measured run length (default 10)")
    length.add_argument("--seconds", type=float, help="measured run length in seconds instead")
    parser.add_argument("--warmup", type=float, help="seconds before the start figures (default 10 %%, 5-60)")
    parser.add_argument("--variables", type=int, default=10_000)
    parser.add_argument("--interval-ms", type=int, default=100)
    parser.add_argument("--no-server", action="store_true", help="CSV only, no VictoriaMetrics")
    parser.add_argument(
        "--out", type=Path, help="where the CSV file and the server's data go (default: temp)"
    )
    args = parser.parse_args()
    seconds = args.seconds if args.seconds is not None else args.minutes * 60
    warmup = args.warmup if args.warmup is not None else min(60.0, max(5.0, seconds / 10))
    with ExitStack() as stack:
        out = args.out or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
        out.mkdir(parents=True, exist_ok=True)
        vm = None
        if not args.no_server:
            binary = find_binary()
            if binary is None:
                print(
                    json.dumps(
                        {"error": "victoria-metrics is not installed (make servers), or use --no-server"}
                    )
                )
                sys.exit(2)
            vm = stack.enter_context(VictoriaMetrics(binary, out / "vm"))
        result = soak(seconds, warmup, args.variables, args.interval_ms, out, vm)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
