"""Soak benchmark: 10,000 variables at 100 ms into CSV and VictoriaMetrics for 10 minutes. Prints JSON.

    .venv/bin/python bench/soak.py                  # 10 minutes after a 60 s warm-up
    .venv/bin/python bench/soak.py --seconds 30     # what tests/reliability/test_soak.py runs
    .venv/bin/python bench/soak.py --no-server      # CSV only

One context of ``--variables`` variables (``RandomDataReader``, no I/O) at ``--interval-ms``:
100,000 values/s into ``CsvFileDataWriter`` and ``InfluxDBDataWriter`` posting to a real
VictoriaMetrics process on this machine, with the interpreter's defaults (as ``flowcollect run``
runs: no ``gc.freeze()``, the 5 ms switch interval). Figures:

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

**The faults mode** (``--faults``; 30 minutes unless ``--seconds``/``--minutes`` say otherwise)::

    .venv/bin/python bench/soak.py --faults                 # 30 minutes, about 32 with the checks
    .venv/bin/python bench/soak.py --faults --seconds 90    # what tests/reliability/test_soak.py runs

5,000 variables (five ``flowcollect simulate`` processes, 1,000 holding registers each, one
reader and one context per device, every ``--interval-ms``, default 1 s) collected by a real
``flowcollect run`` process from a pipeline file this script writes: an InfluxDB 1.x writer
(a real ``influxd``) behind a ``SpooledWriter``. The faults, at times scaled from the 30-minute
schedule (``Schedule.scaled``):

- a device restarted every 2 minutes, in turn (its process stopped, kept away 1.5 intervals
  as a device's reboot would be, and started again on its port), away from the outages and the
  kill so each fault's values are told apart;
- InfluxDB stopped for 60 s at 10 and 20 minutes (at least 8 s in a short run);
- the spool's ``max_bytes`` is half of what one outage spools: each outage reaches it and drops
  its oldest values (``max_in_flight_values`` is 2 s of values, so the writer's memory does not
  keep them all);
- ``flowcollect run`` killed with SIGKILL halfway (its metrics scraped just before), and started
  again on the same spool with the rest of the schedule as its contexts' ``duration_s``, so
  its windows end exactly.

Then every value is accounted for (``ledger``): produced = each context's due instants in each
run's window x its variables = written + failed + dropped + missed + lost at the kill.

- ``written`` is counted on the server: points per (instant, device) from InfluxQL ``count``.
- From the counts: ``failed`` (values read with an error while a device was down, acknowledged
  failed), ``dropped`` (the spool's budget) and ``missed`` (instants skipped) are run 1's
  counters scraped just before the kill plus run 2's ``--json`` summary.
- Lost at the kill: run 1's instants after the last one it had appended to the spool (the
  newest record in the spool's files as the kill left them, or the newest on the server then,
  since acknowledged segments are deleted): read, or being read, in the killed process's
  memory. Cross-checked with the server at the end (nothing later filled them) and with run
  1's counters (its instants not delivered, plus what the engine still queued).
- From the server: each (instant, device) short of its 1,000 points is put down to a cause by
  when it is: a device's restart, an outage and the drops until the writer's next retry, the
  kill; anything else is ``unexplained``. Each cause's count must equal the counters'.

RSS and threads of the ``flowcollect run`` process are sampled from ``/proc`` every few
seconds; ``judge`` states the rule (``RSS_GROWTH_MB``, ``RSS_SLOPE_MB_PER_H``,
``THREADS_SPREAD``) and lists every breach in ``problems``; the exit code is 1 if any.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from flowcollect import CollectedVariable, DataCollectionContext, DataCollector, DataWriter, Variable
from flowcollect.readers import RandomDataReader
from flowcollect.stats import percentile
from flowcollect.writers import CsvFileDataWriter

# The server helper lives with the tests, which are not an installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.influxdb1 import InfluxDB1, find_influxd
from tests.support.victoria import VictoriaMetrics, find_binary, free_port

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


# ------------------------------------------------------------------------------- faults mode
#
# ``--faults``: the collector as a ``flowcollect run`` process (so a SIGKILL is a real one),
# devices as ``flowcollect simulate`` processes, InfluxDB 1.x as an ``influxd`` process; this
# process only schedules the faults, samples the collector's memory and threads, scrapes its
# metrics, and at the end accounts for every value from the server and from the counts.

FAULTS_DEVICES = 5
FAULTS_BULK = 1000  # holding 1000..1999 on the simulator: register 1000 + k holds k
FAULTS_DATABASE = "soak"
FAULTS_MEASUREMENT = "soak"
FULL_S = 1800.0  # the schedule below is written for 30 minutes; shorter runs scale it


def drops_after(outage_s: float) -> float:
    """How long after InfluxDB is back the spool may still drop: its backlog grows until the
    writer's next retry, whose pause doubles while the server is down (at most the outage's
    length) up to 30 s."""
    return min(30.0, outage_s) + 5.0


SEGMENT_BYTES = 64 << 10  # the spool's smallest default segment
BYTES_PER_VALUE = 41
"""What a value costs on the spool's disk here, measured: a segment holds the variable table of
each context it has batches of (38 KB for 1,000 variables) besides the batches (2.8 KB per
1,000 ints), so 64 KiB segments hold about two batches and a table each."""

FAULTS_PIPELINE = """\
# Written by bench/soak.py --faults: {devices} simulated devices, {per_device} variables each.
import os

from flowcollect import DataCollectionContext, Pipeline, Variable
from flowcollect.readers import ModbusDataReader
from flowcollect.writers import InfluxDBDataWriter, SpooledWriter

PORTS = {ports!r}
PER_DEVICE = {per_device}
# Run 1 runs until it is killed; run 2 is given the rest of the schedule, so its contexts end
# at a known instant (start + duration) and its instants are known exactly.
DURATION = float(os.environ["SOAK_CONTEXT_S"]) if os.environ.get("SOAK_CONTEXT_S") else None

readers = [
    ModbusDataReader(f"dev{{k}}", host="127.0.0.1", port=port, timeout_s=0.5)
    for k, port in enumerate(PORTS, 1)
]
influx = InfluxDBDataWriter(
    {url!r}, api="v1", database={database!r}, measurement={measurement!r},
    flush_interval_ms=200, timeout_s=5,
)
spooled = SpooledWriter(
    influx, {spool!r}, max_bytes={max_bytes}, segment_bytes={segment_bytes},
    max_in_flight_values={in_flight}, close_timeout_s=30,
)
pipeline = Pipeline(
    name="soak-faults",
    readers=readers,
    writers=[spooled],
    contexts=[
        DataCollectionContext(
            id=k,
            interval_ms={interval_ms},
            duration_s=DURATION,
            variables=[
                Variable(
                    id=(k - 1) * PER_DEVICE + i + 1,
                    reader=f"dev{{k}}",
                    address=f"holding:{{1000 + i}}",
                    value_type="int",
                )
                for i in range(PER_DEVICE)
            ],
        )
        for k in range(1, len(PORTS) + 1)
    ],
    close_timeout_s=60,
)
"""


@dataclass
class Schedule:
    """When each fault happens, in seconds from the start of run 1 (scaled from 30 minutes)."""

    seconds: float
    restarts: list[tuple[float, int]]  # (when, device 1..N)
    outages: list[tuple[float, float]]  # (stop, start) of InfluxDB
    kill_s: float
    warmup_s: float

    @classmethod
    def scaled(cls, seconds: float, devices: int) -> Schedule:
        f = seconds / FULL_S
        # InfluxDB down 60 s every 10 minutes; at least 8 s in a short run (so its backlog
        # outgrows the spool's budget, which must stay well above the normal backlog).
        outage = max(60 * f, 8.0)
        outages = [(round(f * 600 * k, 1), round(f * 600 * k + outage, 1)) for k in (1, 2)]
        # The kill halfway, but at least 15 s after the first outage, so the backlog it left
        # is settled (a short run's outage is longer than its share).
        kill = max(seconds / 2, outages[0][1] + 15)
        # A device every 2 minutes, in turn, 100 s into each 2 minutes: never near an outage
        # and the drops after it (until the writer's next retry, at most 30 s after InfluxDB is
        # back) nor the kill, so each fault's values are told apart on the server. (A short
        # run, whose outages are longer than their share, skips those.)
        keep_clear = [(a - 8, b + drops_after(outage)) for a, b in outages] + [(kill - 5, kill + 8)]
        restarts, j = [], 0
        while (t := f * (100 + 120 * j)) < seconds - f * 30:
            if not any(a <= t <= b for a, b in keep_clear):
                restarts.append((round(t, 1), j % devices + 1))
            j += 1
        return cls(seconds, restarts, outages, round(kill, 1), round(max(10.0, 120 * f), 1))


@dataclass
class Sample:
    t_s: float
    run: int
    rss_mb: float
    threads: int


def _proc_status(pid: int) -> tuple[float, int] | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    rss = threads = None
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    return None if rss is None or threads is None else (rss, threads)


def _wait_port(port: int, process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the simulator on port {port} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the simulator on port {port} did not listen in {timeout_s} s") from None
            time.sleep(0.05)


class Device:
    """``flowcollect simulate --port P``: one device in a process of its own, restartable."""

    def __init__(self, port: int, log: Path, min_down_s: float = 0.0) -> None:
        self.port = port
        self.log = log
        # A restart keeps the device away at least this long (1.5 intervals), as a device's own
        # reboot does: a process that came back between two instants would be a fault no read
        # ever saw, and the run would prove nothing about reads failing while a device is down.
        self.min_down_s = min_down_s
        self.process: subprocess.Popen[bytes] | None = None
        self.down: list[tuple[float, float]] = []  # (stopped, listening again), wall clock

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "flowcollect", "simulate", "--port", str(self.port), "-l", "warning"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        _wait_port(self.port, self.process)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def restart(self) -> None:
        stopped = time.time()
        self.stop()
        away = self.min_down_s - (time.time() - stopped)
        if away > 0:
            time.sleep(away)
        self.start()
        self.down.append((stopped, time.time()))

    def restart_soon(self) -> threading.Thread:
        """Restart on a thread of its own, so the schedule and the samples never wait for it."""
        thread = threading.Thread(target=self.restart, name=f"restart-{self.port}", daemon=True)
        thread.start()
        return thread


def _metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The run's Prometheus metrics: (name, sorted labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)", line)
        if m is None:
            continue
        labels = tuple(sorted(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or "")))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def _metric_sum(
    metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> int:
    return round(
        sum(
            v
            for (n, ls), v in metrics.items()
            if n == name and all((k, val) in ls for k, val in labels.items())
        )
    )


def run1_counts(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> dict[str, int]:
    """Run 1's figures from its last scrape: what its counters said just before the SIGKILL."""
    return {
        "delivered": _metric_sum(metrics, "flowcollect_context_delivered_total"),
        "missed_instants": _metric_sum(metrics, "flowcollect_context_missed_instants_total"),
        "reader_errors": _metric_sum(metrics, "flowcollect_reader_errors_total"),
        "written": _metric_sum(metrics, "flowcollect_writer_written_total"),
        "failed": _metric_sum(metrics, "flowcollect_writer_failed_total"),
        "dropped": _metric_sum(metrics, "flowcollect_writer_dropped_total"),
        "queued": _metric_sum(metrics, "flowcollect_writer_queued_values"),
        "spool_dropped_by_policy": _metric_sum(
            metrics, "flowcollect_writer_stat", stat="spool_dropped_by_policy"
        ),
        "spool_dropped_segments": _metric_sum(
            metrics, "flowcollect_writer_stat", stat="spool_dropped_segments"
        ),
        "spool_values": _metric_sum(metrics, "flowcollect_writer_stat", stat="spool_values"),
        "spool_thread_errors": _metric_sum(metrics, "flowcollect_writer_stat", stat="spool_thread_errors"),
        "inner_failed": _metric_sum(metrics, "flowcollect_writer_stat", stat="failed"),
    }


def spool_instants(spool: Path) -> dict[int, dict[int, int]]:
    """Context -> instant (ms) -> values, of every batch record in the spool's segment files."""
    from flowcollect.writers.spool import _records as rec
    from flowcollect.writers.spool._store import iter_records

    out: dict[int, dict[int, int]] = {}
    for segment in sorted(spool.glob("*.seg")):
        data = segment.read_bytes()
        tables: dict[int, Any] = {}
        for record in iter_records(data, len(rec.MAGIC), len(data)):
            if record.kind == rec.KIND_SPECS:
                list_id, specs = rec.decode_specs(record.payload)
                tables[list_id] = specs
            else:
                batch = rec.decode_batch(record.payload, record.t_ms, tables)
                ctx = out.setdefault(batch.context_id, {})
                ctx[batch.t_ms] = ctx.get(batch.t_ms, 0) + len(batch.variables)
    return out


def _influxql(server: InfluxDB1, statement: str) -> list[dict[str, Any]]:
    """Rows of a SELECT (tags merged in), with time to count millions of points: the test
    helper's 10 s deadline is for small answers."""
    params = urllib.parse.urlencode({"q": statement, "db": FAULTS_DATABASE, "epoch": "ns"}).encode()
    request = urllib.request.Request(f"{server.url}/query", data=params)  # noqa: S310 - our loopback server
    request.add_header("Content-Type", "application/x-www-form-urlencoded")
    with urllib.request.urlopen(request, timeout=300) as response:  # noqa: S310 - as above
        body = json.load(response)
    rows: list[dict[str, Any]] = []
    for result in body["results"]:
        if "error" in result:
            raise RuntimeError(f"{statement!r}: {result['error']}")
        for series in result.get("series", []):
            for values in series["values"]:
                rows.append(
                    {**dict(zip(series["columns"], values, strict=True)), **(series.get("tags") or {})}
                )
    return rows


def server_counts(
    server: InfluxDB1, first_ms: int, last_ms: int, interval_ms: int
) -> dict[tuple[int, int], int]:
    """(instant ms, device) -> points stored, per grid instant (InfluxQL count, by reader)."""
    out: dict[tuple[int, int], int] = {}
    step = 120_000  # two minutes a query: 600,000 points at most
    for a in range(first_ms, last_ms + 1, step):
        b = min(last_ms, a + step - 1)
        query = (
            f'SELECT count("value_int") FROM "{FAULTS_MEASUREMENT}" '  # noqa: S608 - our own figures
            f'WHERE time >= {a}ms AND time <= {b}ms GROUP BY time({interval_ms}ms), "reader" fill(none)'
        )
        for row in _influxql(server, query):
            t_ms = int(row["time"]) // 1_000_000
            out[(t_ms, int(row["reader"].removeprefix("dev")))] = int(row["count"])
    return out


def server_total(server: InfluxDB1) -> int:
    rows = _influxql(server, f'SELECT count("value_int") FROM "{FAULTS_MEASUREMENT}"')  # noqa: S608
    return int(rows[0]["count"]) if rows else 0


def _started_at(log: Path, since: int) -> dict[int, int]:
    """Context id -> its start (epoch ms) from ``context N started at ...`` lines after byte ``since``."""
    text = log.read_bytes()[since:].decode(errors="replace")
    out = {}
    for m in re.finditer(r"context (\d+) started at (\S+ \S+)", text):
        out[int(m.group(1))] = round(datetime.fromisoformat(m.group(2)).timestamp() * 1000)
    return out


def _grid(since_ms: int, until_ms: int, interval_ms: int) -> range:
    """The context's due instants: multiples of its interval in [since, until)."""
    first = -(-since_ms // interval_ms) * interval_ms
    return range(first, until_ms, interval_ms)


def _slope_mb_per_h(samples: list[Sample]) -> float:
    if len(samples) < 3:
        return 0.0
    xs = [s.t_s for s in samples]
    ys = [s.rss_mb for s in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 0.0 if den == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den * 3600


def faults(  # noqa: PLR0912 - one scenario, told in order
    seconds: float, interval_ms: int, out: Path, influxd: str
) -> dict[str, Any]:
    n_dev, per = FAULTS_DEVICES, FAULTS_BULK
    n_vars = n_dev * per
    plan = Schedule.scaled(seconds, n_dev)
    values_per_s = n_vars * 1000 / interval_ms
    outage_s = plan.outages[0][1] - plan.outages[0][0]
    # The budget: half of what one outage spools (so each outage reaches it and drops its
    # oldest values), never under 3 s of values (the normal backlog, acknowledged within the
    # writer's 200 ms flush, stays far below it).
    max_bytes = int(values_per_s * BYTES_PER_VALUE * max(0.5 * outage_s, 3.0))
    segment_bytes = SEGMENT_BYTES
    # Values the writer holds in memory for the spool: 2 s of them. A dropped segment whose
    # batches the writer holds loses nothing (the writer stores them), so an outage drops
    # values only once its backlog outgrows both.
    in_flight = int(values_per_s * 2)
    spool = out / "spool"
    run_log = out / "run.log"
    summary_path = out / "run2.json"
    load_before = os.getloadavg()

    with ExitStack() as stack:
        server = InfluxDB1(influxd, out / "influxdb")
        stack.callback(server.close)
        server.query(f"CREATE DATABASE {FAULTS_DATABASE}")
        devices = [
            Device(free_port(), out / f"device{k}.log", min_down_s=1.5 * interval_ms / 1000)
            for k in range(1, n_dev + 1)
        ]
        for d in devices:
            stack.callback(d.stop)
            d.start()
        metrics_port = free_port()
        pipeline = out / "soak_faults.py"
        pipeline.write_text(
            FAULTS_PIPELINE.format(
                devices=n_dev,
                per_device=per,
                ports=[d.port for d in devices],
                url=server.url,
                database=FAULTS_DATABASE,
                measurement=FAULTS_MEASUREMENT,
                spool=str(spool),
                max_bytes=max_bytes,
                segment_bytes=segment_bytes,
                in_flight=in_flight,
                interval_ms=interval_ms,
            )
        )

        def launch(context_s: float | None) -> subprocess.Popen[bytes]:
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            env.pop("SOAK_CONTEXT_S", None)
            if context_s is not None:
                env["SOAK_CONTEXT_S"] = f"{context_s:.3f}"
            command = [sys.executable, "-m", "flowcollect", "run", str(pipeline), "--status-every", "0"]
            command += ["--metrics-port", str(metrics_port), "--log-level", "info"]
            if context_s is not None:
                command.append("--json")
            with run_log.open("ab") as log, summary_path.open("wb") as summary:
                process = subprocess.Popen(
                    command, stdout=summary, stderr=log, stdin=subprocess.DEVNULL, env=env, cwd=out
                )
            stack.callback(lambda: process.poll() is None and process.kill())
            return process

        events: list[tuple[float, str, int]] = [(t, "restart", k) for t, k in plan.restarts]
        for stop_s, start_s in plan.outages:
            events += [(stop_s, "influx-stop", 0), (start_s, "influx-start", 0)]
        events.append((plan.kill_s, "kill", 0))
        events.sort()
        done: list[dict[str, Any]] = []
        samples: list[Sample] = []
        sample_every = max(1.0, min(5.0, seconds / 300))
        outages_wall: list[tuple[float, float]] = []
        restarting: list[threading.Thread] = []

        t0_wall = time.time()
        t0 = time.monotonic()
        log_mark = 0
        process = launch(None)
        run = 1
        run1: dict[str, Any] = {}
        run2_context_s = 0.0
        last_scrape: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        scrapes: list[dict[str, int]] = []
        next_sample = t0 + 2.0
        while True:
            now = time.monotonic()
            if events and now - t0 >= events[0][0]:
                _at, kind, k = events.pop(0)
                wall = time.time()
                if kind == "restart":
                    restarting.append(devices[k - 1].restart_soon())
                    done.append({"t_s": round(wall - t0_wall, 1), "fault": f"device {k} restarted"})
                elif kind == "influx-stop":
                    server.stop()
                    outages_wall.append((wall, wall))
                    done.append({"t_s": round(wall - t0_wall, 1), "fault": "influxdb stopped"})
                elif kind == "influx-start":
                    server.start()
                    outages_wall[-1] = (outages_wall[-1][0], time.time())
                    done.append({"t_s": round(wall - t0_wall, 1), "fault": "influxdb started"})
                else:
                    # The kill: its counters as they were a moment before (a scrape just before
                    # the signal), then the spool as the kill left it, then run 2 on it.
                    try:
                        last_scrape = _metrics(metrics_port)
                    except OSError as exc:
                        raise RuntimeError(
                            f"run 1's metrics could not be read before the kill: {exc}"
                        ) from exc
                    scraped_wall = time.time()
                    process.send_signal(signal.SIGKILL)
                    process.wait(10)
                    killed_wall = time.time()
                    done.append({"t_s": round(killed_wall - t0_wall, 1), "fault": "collector SIGKILLed"})
                    run1 = {
                        "started": _started_at(run_log, log_mark),
                        "killed_ms": round(killed_wall * 1000),
                        "scraped_before_kill_ms": round((killed_wall - scraped_wall) * 1000, 1),
                        "counts": run1_counts(last_scrape),
                        "counts_a_scrape_earlier": scrapes[-1] if scrapes else None,
                        "spool_at_kill": spool_instants(spool),
                        # What run 1 had stored: the server is up at the kill (no outage near it).
                        # (Its last two minutes are enough to find its newest instant.)
                        "server_at_kill": server_counts(
                            server,
                            round(max(t0_wall, killed_wall - 120) * 1000),
                            round(killed_wall * 1000) + 1000,
                            interval_ms,
                        ),
                    }
                    log_mark = run_log.stat().st_size
                    run2_context_s = round(seconds - (time.monotonic() - t0), 3)
                    process = launch(run2_context_s)
                    run = 2
                continue
            if now >= next_sample:
                next_sample += sample_every
                status = _proc_status(process.pid)
                # Run 2 is sampled while it collects, not while it closes and exits.
                if status is not None and now - t0 < seconds - 1:
                    samples.append(Sample(round(now - t0, 1), run, round(status[0], 1), status[1]))
                if run == 1:
                    with contextlib.suppress(OSError):
                        scrapes.append(run1_counts(_metrics(metrics_port)))
            if run == 2 and process.poll() is not None:
                break
            if now - t0 > seconds + 300:
                raise RuntimeError("run 2 did not end within 5 minutes of its schedule")
            time.sleep(0.05)
        ended_wall = time.time()
        code = process.returncode
        for thread in restarting:
            thread.join(30)
        run2 = json.loads(summary_path.read_text() or "{}")
        run2_started = _started_at(run_log, log_mark)
        if not server.running:
            server.start()

        # ---- produced: each context's due instants in each run's window (run 2's contexts
        # end by their own duration, SOAK_CONTEXT_S as given to it, so their end is exact)
        produced: dict[int, list[int]] = {}
        windows: dict[str, dict[int, tuple[int, int]]] = {"run1": {}, "run2": {}}
        for k in range(1, n_dev + 1):
            s1 = run1["started"][k]
            w1 = (s1, run1["killed_ms"] + 1)
            s2 = run2_started[k]
            w2 = (s2, s2 + math.ceil(run2_context_s * 1000))
            windows["run1"][k], windows["run2"][k] = w1, w2
            produced[k] = [*_grid(*w1, interval_ms), *_grid(*w2, interval_ms)]
        produced_total = sum(len(v) for v in produced.values()) * per

        first_ms = min(v[0] for v in produced.values())
        last_ms = max(v[-1] for v in produced.values())
        stored = server_counts(server, first_ms - 60_000, last_ms + 60_000, interval_ms)
        total_on_server = server_total(server)

        # ---- classify what the server lacks, per (instant, device)
        def within(t_ms: int, spans: list[tuple[float, float]], before_s: float, after_s: float) -> bool:
            return any(a - before_s <= t_ms / 1000 <= b + after_s for a, b in spans)

        spool_at_kill: dict[int, dict[int, int]] = run1["spool_at_kill"]
        lost_after: dict[int, int] = {}
        for k in range(1, n_dev + 1):
            # The last instant run 1 appended to the spool: the newest record left in its files,
            # or, when acknowledged segments were deleted, the newest the server had then.
            spooled = [t for t in spool_at_kill.get(k, {}) if t <= run1["killed_ms"]]
            spooled += [t for (t, dev), n in run1["server_at_kill"].items() if dev == k and n > 0]
            lost_after[k] = max(spooled) if spooled else windows["run1"][k][0] - 1
        classes = {"errors": 0, "dropped": 0, "lost_at_kill": 0, "missed": 0, "unexplained": 0}
        examples: dict[str, list[tuple[int, int, int]]] = {key: [] for key in classes}
        produced_set = set()
        for k, instants in produced.items():
            in_run1 = set(_grid(*windows["run1"][k], interval_ms))
            for t in instants:
                produced_set.add((t, k))
                have = stored.get((t, k), 0)
                lack = per - have
                if lack <= 0:
                    continue
                if t in in_run1 and t > lost_after[k]:
                    kind = "lost_at_kill"
                elif within(t, devices[k - 1].down, interval_ms / 1000 + 0.5, 3 * interval_ms / 1000 + 2):
                    kind = "errors"
                elif within(t, outages_wall, 5.0, drops_after(outage_s)):
                    kind = "dropped"
                elif lack == per:
                    kind = "missed"
                else:
                    kind = "unexplained"
                classes[kind] += lack
                if len(examples[kind]) < 5:
                    examples[kind].append((t, k, lack))
        stored_in_windows = sum(n for key, n in stored.items() if key in produced_set)
        stored_outside = sum(n for key, n in stored.items() if key not in produced_set)

        # ---- the counts: run 1's last scrape, run 2's --json summary
        c1 = run1["counts"]
        w2 = next(iter(run2.get("writers", {}).values()), {})
        extra2 = w2.get("extra", {})
        counts = {
            "failed": c1["failed"] + int(run2.get("failed", 0)),
            "reader_errors": c1["reader_errors"] + int(run2.get("errors", 0)),
            "dropped": c1["dropped"] + int(run2.get("dropped", 0)),
            "spool_dropped_by_policy": c1["spool_dropped_by_policy"]
            + int(extra2.get("spool_dropped_by_policy", 0)),
            "spool_dropped_segments": c1["spool_dropped_segments"]
            + int(extra2.get("spool_dropped_segments", 0)),
            "missed": (c1["missed_instants"] + int(run2.get("missed", 0))) * per,
            "pending_at_end": int(run2.get("pending", 0)),
            "written": c1["written"] + int(run2.get("written", 0)),
            "replayed": int(run2.get("replayed", 0)),
            "refused_by_server": c1["inner_failed"] + int(extra2.get("failed", 0)),
            "spool_thread_errors": c1["spool_thread_errors"] + int(extra2.get("spool_thread_errors", 0)),
        }
        # What was lost at the kill, from the spool: the instants of run 1 after the last one
        # the spool holds (read, or being read, in the killed process's memory).
        lost_from_spool = sum(
            sum(1 for t in _grid(*windows["run1"][k], interval_ms) if t > lost_after[k]) * per
            for k in range(1, n_dev + 1)
        )
        # And from run 1's counters, scraped just before the kill: its instants not delivered
        # to the writer (nor missed), plus what it delivered that still sat in the engine's
        # queue (the spool had not taken it).
        produced1 = sum(len(_grid(*windows["run1"][k], interval_ms)) for k in range(1, n_dev + 1)) * per
        lost_from_counts = produced1 - (c1["delivered"] - c1["queued"]) - c1["missed_instants"] * per
        episodes = len(re.findall(r"max_bytes=\d+ reached", run_log.read_text(errors="replace")))
        ledger_counts = (
            stored_in_windows + counts["failed"] + counts["dropped"] + counts["missed"] + lost_from_spool
        )
        ledger_server = stored_in_windows + sum(classes.values())

    def flat(run_no: int, warm: float) -> dict[str, Any]:
        mine = [s for s in samples if s.run == run_no]
        start = mine[0].t_s if mine else 0.0
        after = [s for s in mine if s.t_s >= start + warm]
        # The stretch after this run's outage and its drain (the writer's backlog is memory
        # the run holds once, a high-water mark): there the line must be flat.
        settle = max(30.0, outage_s)
        drained = [s for s in after if any(start < b and s.t_s >= b + settle for _, b in plan.outages)]
        rss = [s.rss_mb for s in after]
        threads = [s.threads for s in after]
        slope = round(_slope_mb_per_h(after), 1)
        return {
            "samples": len(after),
            "span_s": round(after[-1].t_s - after[0].t_s, 1) if after else 0.0,
            "rss_mb_series": [s.rss_mb for s in after[:: max(1, len(after) // 30)]],
            "rss_mb_first_last": [rss[0], rss[-1]] if rss else None,
            "rss_mb_min_max": [min(rss), max(rss)] if rss else None,
            "rss_slope_mb_per_h": slope,
            "after_outage_samples": len(drained),
            "after_outage_span_s": round(drained[-1].t_s - drained[0].t_s, 1) if drained else 0.0,
            "after_outage_rss_slope_mb_per_h": round(_slope_mb_per_h(drained), 1),
            "threads_min_max": [min(threads), max(threads)] if threads else None,
            "threads_first_last": [threads[0], threads[-1]] if threads else None,
        }

    memory = {"run1": flat(1, plan.warmup_s), "run2": flat(2, plan.warmup_s)}
    happened = {
        "device_restarts": sum(len(d.down) for d in devices),
        "device_restarts_planned": len(plan.restarts),
        "influxdb_outages": len(outages_wall),
        "influxdb_outages_planned": len(plan.outages),
        "spool_budget_reached": counts["spool_dropped_by_policy"] > 0,
        "spool_drop_episodes": episodes,
        "killed": bool(run1),
        "run2_exit_code": code,
    }
    return {
        "benchmark": "soak --faults",
        "seconds": seconds,
        "devices": n_dev,
        "variables": n_vars,
        "interval_ms": interval_ms,
        "values_per_s": values_per_s,
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "schedule": {
            "device_restarts_s": plan.restarts,
            "influxdb_outages_s": plan.outages,
            "kill_s": plan.kill_s,
            "warmup_s": plan.warmup_s,
            "spool_max_bytes": max_bytes,
            "spool_segment_bytes": segment_bytes,
            "spool_max_in_flight_values": in_flight,
        },
        "faults_done": done,
        "samples": [[x.t_s, x.run, x.rss_mb, x.threads] for x in samples],
        "happened": happened,
        "produced": produced_total,
        "server": {
            "stored_in_windows": stored_in_windows,
            "stored_outside_windows": stored_outside,
            "stored_total": total_on_server,
            "missing_by_cause": classes,
            "missing_examples": examples,
        },
        "counts": counts,
        "run1": {k: v for k, v in run1.items() if k not in ("spool_at_kill", "server_at_kill")},
        "lost_at_kill": {
            "from_spool": lost_from_spool,
            "from_run1_counts": lost_from_counts,
            "from_server": classes["lost_at_kill"],
            "last_spooled_ms": lost_after,
        },
        "ledger": {
            "produced": produced_total,
            "from_counts": ledger_counts,
            "from_server": ledger_server,
            "unaccounted_counts": produced_total - ledger_counts,
            "unaccounted_server": classes["unexplained"],
            "errors_server_vs_counts": [classes["errors"], counts["reader_errors"]],
            "dropped_server_vs_counts": [classes["dropped"], counts["dropped"]],
            "missed_server_vs_counts": [classes["missed"], counts["missed"]],
        },
        "memory": memory,
        "run2_summary": {
            k: run2.get(k)
            for k in (
                "reason",
                "elapsed_s",
                "written",
                "failed",
                "dropped",
                "pending",
                "replayed",
                "missed",
                "problems",
            )
        },
        "run_s": round(ended_wall - t0_wall, 1),
    }


RSS_GROWTH_MB = 25.0
"""Flat memory, first: a run's RSS at its end is less than this above its level after warm-up.
An outage raises it once (the writer holds up to 50,000 values in flight, the spool reads its
backlog back): a high-water mark, not growth."""
RSS_SLOPE_MB_PER_H = 20.0
"""Flat memory, second: after its outage has drained (and over at least 5 minutes), a
least-squares line through the run's RSS samples rises less than this (a leak of one byte per
value, 5,000 values a second, would show as 18 MB/h)."""
THREADS_SPREAD = 2
"""Flat threads: after warm-up, the count moves by at most this much (a reconnect's short-lived
helper) and ends where it started."""


def judge(report: dict[str, Any]) -> list[str]:  # noqa: PLR0912 - one check per line
    """What the faults run got wrong, in words; empty when every value is accounted for, every
    fault happened and memory and threads stayed flat."""
    problems = []
    h, led, srv = report["happened"], report["ledger"], report["server"]
    if h["device_restarts"] < max(1, h["device_restarts_planned"]):
        problems.append(f"device restarts: {h['device_restarts']} of {h['device_restarts_planned']}")
    if h["influxdb_outages"] < h["influxdb_outages_planned"]:
        problems.append(f"influxdb outages: {h['influxdb_outages']} of {h['influxdb_outages_planned']}")
    if not h["spool_budget_reached"]:
        problems.append("the spool never reached max_bytes (nothing dropped by policy)")
    if not h["killed"]:
        problems.append("the collector was not killed")
    if h["run2_exit_code"] != 0:
        problems.append(f"run 2 exited with {h['run2_exit_code']}")
    if led["unaccounted_counts"] != 0:
        problems.append(f"{led['unaccounted_counts']:,} values unaccounted for by the counts")
    if led["unaccounted_server"] != 0:
        problems.append(f"{led['unaccounted_server']:,} values missing on the server for no known cause")
    a, b = led["errors_server_vs_counts"]
    if a != b:
        problems.append(f"errors: the server lacks {a:,} values for them, the counts say {b:,}")
    # Dropped and missed are told apart on the server by time (a drop is near an outage), so
    # they are compared together: a skipped instant (an overrun) near an outage is no error.
    a = led["dropped_server_vs_counts"][0] + led["missed_server_vs_counts"][0]
    b = led["dropped_server_vs_counts"][1] + led["missed_server_vs_counts"][1]
    if a != b:
        problems.append(f"dropped and missed: the server lacks {a:,} values for them, the counts say {b:,}")
    lost = report["lost_at_kill"]
    if lost["from_spool"] != lost["from_server"]:
        problems.append(
            f"lost at the kill: {lost['from_spool']:,} by the spool, {lost['from_server']:,} by the server"
        )
    # Run 1's counters were scraped a few ms before the signal: an instant delivered in between
    # is lost by them, not by the spool, the one difference they may show (a tick per device).
    if not 0 <= lost["from_run1_counts"] - lost["from_spool"] <= report["variables"]:
        problems.append(
            f"lost at the kill: {lost['from_spool']:,} by the spool, "
            f"{lost['from_run1_counts']:,} by run 1's counters"
        )
    if srv["stored_outside_windows"]:
        problems.append(f"{srv['stored_outside_windows']:,} points stored outside the runs' instants")
    if srv["stored_total"] != srv["stored_in_windows"] + srv["stored_outside_windows"]:
        problems.append("the server's total differs from its per-instant counts")
    if report["counts"]["pending_at_end"]:
        problems.append(f"{report['counts']['pending_at_end']:,} values still pending at the end")
    if report["counts"]["spool_thread_errors"]:
        problems.append(f"spool threads raised {report['counts']['spool_thread_errors']} times")
    for run, m in report["memory"].items():
        if not m["samples"]:
            problems.append(f"{run}: no memory samples after warm-up")
            continue
        first, last = m["rss_mb_first_last"]
        if last - first >= RSS_GROWTH_MB:
            problems.append(f"{run}: RSS grew {last - first:.1f} MB after warm-up")
        slope = m["after_outage_rss_slope_mb_per_h"]
        if m["after_outage_span_s"] >= 300 and slope >= RSS_SLOPE_MB_PER_H:
            problems.append(f"{run}: RSS rises {slope} MB/h after its outage drained")
        lo, hi = m["threads_min_max"]
        t_first, t_last = m["threads_first_last"]
        if hi - lo > THREADS_SPREAD or t_first != t_last:
            problems.append(f"{run}: threads {t_first} -> {t_last} (min {lo}, max {hi}) after warm-up")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, default=10.0, help="measured run length (default 10)")
    length.add_argument("--seconds", type=float, help="measured run length in seconds instead")
    parser.add_argument("--warmup", type=float, help="seconds before the start figures (default 10 %%, 5-60)")
    parser.add_argument("--variables", type=int, default=10_000)
    parser.add_argument("--interval-ms", type=int, help="default 100; 1000 with --faults")
    parser.add_argument(
        "--faults",
        action="store_true",
        help="the faults mode: Modbus devices restarted, InfluxDB stopped, the collector killed (docs)",
    )
    parser.add_argument("--no-server", action="store_true", help="CSV only, no VictoriaMetrics")
    parser.add_argument(
        "--out", type=Path, help="where the CSV file and the server's data go (default: temp)"
    )
    args = parser.parse_args()
    seconds = args.seconds if args.seconds is not None else args.minutes * 60
    if args.faults:
        main_faults(args, seconds if args.seconds is not None or args.minutes != 10.0 else FULL_S)
        return
    args.interval_ms = args.interval_ms or 100
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


def main_faults(args: argparse.Namespace, seconds: float) -> None:
    influxd = find_influxd()
    if influxd is None:
        print(json.dumps({"error": "influxd is not installed (make servers)"}))
        sys.exit(2)
    with ExitStack() as stack:
        out = args.out or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-faults-")))
        out.mkdir(parents=True, exist_ok=True)
        report = faults(seconds, args.interval_ms or 1000, out, influxd)
    report["problems"] = judge(report)
    print(json.dumps(report, indent=2))
    sys.exit(1 if report["problems"] else 0)


if __name__ == "__main__":
    main()
