"""SIGTERM and SIGINT to ``flowcollect run`` writing to a CSV file AND a real VictoriaMetrics server.

(tests/cli covers signals with CSV alone, and bad pipeline files; this is the one case it does
not: two writers, one of them a server behind its own buffer and sender threads.) The process
must exit within a few seconds (0 after SIGTERM, 130 after SIGINT), and every value read before
the signal must be in both outputs: the same values, each series an unbroken grid, as many as
the run reports reading.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.support.grid import missing_on_grid
from tests.support.victoria import VictoriaMetrics

pytestmark = [pytest.mark.realtime, pytest.mark.server]

PIPELINE = """\
from pathlib import Path

from flowcollect import DataCollectionContext, Pipeline, Variable
from flowcollect.readers import RandomDataReader
from flowcollect.writers import CsvFileDataWriter, InfluxDBDataWriter

HERE = Path(__file__).parent
FAST = [Variable(id=n, address=f"fast/{{n}}", reader="random") for n in range(1, 6)]
SLOW = [Variable(id=n, address=f"slow/{{n}}", reader="random") for n in range(1, 4)]

pipeline = Pipeline(
    name="{name}",
    readers=[RandomDataReader()],
    writers=[
        CsvFileDataWriter(HERE / "out.csv"),
        InfluxDBDataWriter("{url}", token="t", org="o", bucket="b", measurement="{name}"),
    ],
    contexts=[
        DataCollectionContext(id=1, interval_ms=100, variables=FAST),
        DataCollectionContext(id=2, interval_ms=300, variables=SLOW),
    ],
)
"""
STEPS = {"1": 100, "2": 300}
EXIT_WITHIN_S = 5.0


@pytest.fixture
def process() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def values_read_so_far(stderr: Path, name: str) -> int:
    """The latest count of values read from the run's status lines, 0 before the first."""
    counts = re.findall(rf"status {name}: .*?([\d,]+) values,", stderr.read_text(errors="replace"))
    return int(counts[-1].replace(",", "")) if counts else 0


def csv_series(path: Path) -> dict[tuple[str, str], dict[int, float]]:
    series: dict[tuple[str, str], dict[int, float]] = {}
    with path.open(newline="", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            assert row["error"] == "", row
            t = round(datetime.fromisoformat(row["time"]).timestamp() * 1000)
            points = series.setdefault((row["context_id"], row["id"]), {})
            assert t not in points, ("a value twice in the CSV file", row)
            points[t] = float(row["value"])
    return series


@pytest.mark.timeout(90)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_ends_the_run_with_every_value_in_csv_and_on_the_server(
    signum: signal.Signals,
    tmp_path: Path,
    victoria: VictoriaMetrics,
    process: list[subprocess.Popen[bytes]],
) -> None:
    name = f"signal_{signum.name.lower()}"
    pipeline = tmp_path / "pipe.py"
    pipeline.write_text(textwrap.dedent(PIPELINE.format(name=name, url=victoria.url)))
    stdout, stderr = tmp_path / "stdout", tmp_path / "stderr"
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFLUX_")} | {"PYTHONUNBUFFERED": "1"}
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flowcollect", "run", str(pipeline), "--status-every", "0.2", "--json"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=err,
        )
    process.append(proc)

    # Let it collect a while (a status line with at least 2 s worth of values), then signal.
    deadline = time.monotonic() + 30
    while (read_before := values_read_so_far(stderr, name)) < 100 and time.monotonic() < deadline:
        assert proc.poll() is None, stderr.read_text()
        time.sleep(0.05)
    assert read_before >= 100, stderr.read_text()
    proc.send_signal(signum)
    signalled = time.monotonic()
    try:
        code = proc.wait(timeout=EXIT_WITHIN_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {EXIT_WITHIN_S} s after {signum.name}:\n{stderr.read_text()}")
    took = time.monotonic() - signalled
    log = stderr.read_text()
    assert code == (130 if signum == signal.SIGINT else 0), log
    assert "Traceback" not in log, log
    assert f"stopped by {signum.name}" in log
    summary = json.loads(stdout.read_text())
    assert summary["reason"] == "stopped"
    assert summary["values_read"] >= read_before
    # Every value read was delivered (the contexts share no variable), nothing failed or dropped.
    assert summary["delivered"] == summary["values_read"]
    assert summary["failed"] == summary["dropped"] == 0, summary
    server_writer = summary["writers"]["influxdb:b"]
    assert server_writer["extra"]["written"] == summary["values_read"], server_writer

    # The CSV file: every series on its grid (an instant missing only when the reader skipped
    # it under load and counted it), as many values as were read.
    in_csv = csv_series(tmp_path / "out.csv")
    assert set(in_csv) == {("1", str(n)) for n in range(1, 6)} | {("2", str(n)) for n in range(1, 4)}
    assert sum(len(points) for points in in_csv.values()) == summary["values_read"]
    overruns = summary["readers"]["random"]["overruns"]
    for (context, _), points in in_csv.items():
        assert missing_on_grid(sorted(points), STEPS[context]) <= overruns

    # The server: the very same values at the very same instants.
    match = f'{{__name__="{name}_value"}}'
    stored = victoria.wait_for_samples(match, count=summary["values_read"], timeout_s=15)
    on_server: dict[tuple[str, str], dict[int, float]] = {}
    for s in stored:
        points = on_server.setdefault((s.labels["context"], s.labels["variable"]), {})
        for t, value in zip(s.timestamps_ms, s.values, strict=True):
            assert t not in points, ("a value twice on the server", s.labels, t)
            points[t] = value
    assert set(on_server) == set(in_csv)
    for key, points in in_csv.items():
        assert set(on_server[key]) == set(points), key
        for t, value in points.items():
            assert math.isclose(on_server[key][t], value, rel_tol=1e-12), (key, t, on_server[key][t], value)
    assert took < EXIT_WITHIN_S
