"""`flowcollect run` against the clock: signals, durations, contexts that end by themselves."""

from __future__ import annotations

import csv
import json
import re
import signal
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import pytest

from tests.cli.conftest import Running, flowcollect, write_pipeline
from tests.support.grid import missing_on_grid

pytestmark = pytest.mark.realtime

PIPELINE = """\
from pathlib import Path

from flowcollect import DataCollectionContext, Pipeline, Variable
from flowcollect.readers import RandomDataReader
from flowcollect.writers import CsvFileDataWriter

HERE = Path(__file__).parent
A = [Variable(id=n, address=f"a{{n}}", reader="random") for n in range(1, 6)]

pipeline = Pipeline(
    name="signals",
    readers=[RandomDataReader()],
    writers=[CsvFileDataWriter(HERE / "out.csv")],
    contexts=[
        DataCollectionContext(id=1, interval_ms=100, duration_s={duration}, variables=A),
        DataCollectionContext(id=2, interval_ms=300, duration_s={duration}, variables=A[:2]),
    ],
)
"""

STATUS = re.compile(r"status signals: .*?([\d,]+) values,")


def rows_by_series(path: Path) -> dict[tuple[str, str], list[int]]:
    series: dict[tuple[str, str], list[int]] = defaultdict(list)
    with path.open(newline="") as file:
        for row in csv.DictReader(file):
            assert row["error"] == ""
            when = datetime.fromisoformat(row["time"])
            series[(row["context_id"], row["id"])].append(round(when.timestamp() * 1000))
    return series


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_cleanly_with_every_value_written(
    signum: signal.Signals, tmp_path: Path, running: list[Running]
) -> None:
    path = write_pipeline(tmp_path, PIPELINE.format(duration=3600))
    proc = Running("run", str(path), "--status-every", "0.2", "--json", cwd=tmp_path)
    running.append(proc)

    def counted(stderr: str) -> int:
        seen = [int(n.replace(",", "")) for n in STATUS.findall(stderr)]
        return seen[-1] if seen and seen[-1] >= 20 else 0

    read_before = counted(str(proc.wait_for(lambda err: counted(err) and err)))
    proc.proc.send_signal(signum)
    code, out, err = proc.finish(timeout_s=5)
    # A clean stop either way; SIGINT reports itself as 128 + 2, as shells expect of Ctrl-C.
    assert code == (130 if signum == signal.SIGINT else 0), err
    assert "Traceback" not in err
    assert f"stopped by {signum.name}" in err
    summary = json.loads(out)
    assert summary["reason"] == "stopped"
    assert summary["signal"] == signum.name
    assert summary["exit_code"] == code
    assert summary["values_read"] >= read_before
    assert summary["dropped"] == summary["failed"] == 0

    series = rows_by_series(tmp_path / "out.csv")
    assert sum(len(t) for t in series.values()) == summary["written"] == summary["delivered"]
    # Every value read from the start up to the stop is there: each series is on its grid, and
    # an instant is missing only when the reader skipped it and counted it (a loaded machine).
    assert set(series) == {("1", str(n)) for n in range(1, 6)} | {("2", "1"), ("2", "2")}
    overruns = summary["readers"]["random"]["overruns"]
    for (context, _), times in series.items():
        assert missing_on_grid(times, 100 if context == "1" else 300) <= overruns
    assert len(series[("1", "1")]) * 5 >= read_before * 0.9


def test_duration_ends_the_run(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, PIPELINE.format(duration=3600))
    result = flowcollect("run", str(path), "--duration", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # The elapsed time includes starting and closing: at least the duration, a little more.
    headline = re.search(
        r"^pipeline signals: ran for its duration after ([\d.]+) s \(contexts 1, 2\)$", result.stdout, re.M
    )
    assert headline is not None, result.stdout
    assert 1.0 <= float(headline.group(1)) < 5.0
    for label in ("values read:", "written:", "errors", "dropped:", "lateness p99:"):
        assert label in result.stdout
    assert "writer csv:" in result.stdout


def test_the_run_ends_when_every_context_has_ended(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, PIPELINE.format(duration=0.6))
    result = flowcollect("run", str(path), "--json", "--context", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["reason"] == "ended"
    assert summary["contexts"] == [1]
    assert summary["why"] == "context 1 reached its duration_s"
    assert summary["context_states"]["1"]["state"] == "stopped"
    assert summary["context_states"]["1"]["delivered"] == summary["delivered"]
    assert summary["elapsed_s"] < 3
    # 0.6 s at 100 ms: 6 instants of 5 values; one the reader skipped under load is counted.
    overruns = summary["readers"]["random"]["overruns"]
    assert summary["delivered"] <= 6 * 5 <= summary["delivered"] + 5 * overruns
