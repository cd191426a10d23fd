"""The run summary's figures as a user reads them: values apart from writes, reads apart from
deliveries, and values a spool replays from an earlier run.

Real processes: ``flowcollect run`` on pipeline files, a real VictoriaMetrics for the spool.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.cli.conftest import flowcollect, write_pipeline
from tests.support.victoria import Factory, victoria_factory

__all__ = ["victoria_factory"]

pytestmark = pytest.mark.realtime

TWO_WRITERS = """\
from flowcollect import DataCollectionContext, Pipeline, Variable
from flowcollect.readers import RandomDataReader
from flowcollect.writers import CsvFileDataWriter

SHARED = [Variable(id=n, address=f"a{n}", reader="random") for n in (1, 2)]

pipeline = Pipeline(
    name="two",
    readers=[RandomDataReader()],
    writers=[CsvFileDataWriter("a.csv"), CsvFileDataWriter("b.csv")],
    contexts=[
        DataCollectionContext(id=1, interval_ms=100, duration_s=1, variables=SHARED),
        DataCollectionContext(id=2, interval_ms=200, duration_s=1, variables=SHARED),
    ],
)
"""


def figure(text: str, label: str) -> str:
    found = re.search(rf"^  {label}: +(.*)$", text, re.MULTILINE)
    assert found is not None, text
    return found.group(1)


def test_two_writers_say_values_and_writes_apart_and_reads_apart_from_deliveries(tmp_path: Path) -> None:
    (tmp_path / "pipes").mkdir()
    write_pipeline(tmp_path / "pipes", TWO_WRITERS)
    result = flowcollect("run", "pipes/pipe.py", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    files = {name: tmp_path / "pipes" / name for name in ("a.csv", "b.csv")}
    rows = {name: len(path.read_text().splitlines()) - 1 for name, path in files.items()}
    delivered = int(figure(text, "delivered").split()[0].replace(",", ""))
    read = int(figure(text, "values read").split()[0].replace(",", ""))
    assert rows == {"a.csv": delivered, "b.csv": delivered}
    # The two variables are shared: at instants both contexts are due, one read feeds both.
    assert read < delivered
    assert figure(text, "values read").endswith("a variable that several contexts share is read once)")
    assert figure(text, "delivered").endswith("(to the contexts: a shared variable counts in each)")
    # Writes, not values: 2 x delivered writes, and the verdict counts values.
    assert figure(text, "written") == f"{2 * delivered:,} (writes: 2 writers, {delivered:,} values each)"
    assert text.splitlines()[-1] == (
        f"result: OK, {delivered:,} values stored in each of 2 writers (pipes/a.csv, pipes/b.csv)"
    )
    # Each file named where the user finds it from where the run started (not beside the cwd).
    assert re.search(r"^  writer csv:a\.csv: .* \(file pipes/a\.csv\)$", text, re.MULTILINE), text


REPLAY = """\
from flowcollect import DataCollectionContext, Pipeline, Variable
from flowcollect.readers import RandomDataReader
from flowcollect.writers import InfluxDBDataWriter, SpoolOptions

pipeline = Pipeline(
    name="replay",
    readers=[RandomDataReader()],
    writers=[InfluxDBDataWriter("{url}", token="t", org="o", bucket="b", timeout_s=0.5)],
    spools={{"influxdb:b": SpoolOptions(path="spool", max_bytes=10_000_000, close_timeout_s=0.5)}},
    contexts=[
        DataCollectionContext(
            id=1,
            interval_ms=100,
            variables=[Variable(id=n, address=f"a{{n}}", reader="random") for n in (1, 2, 3)],
        )
    ],
)
"""


@pytest.mark.slow
def test_values_replayed_from_a_spool_are_in_the_summary(tmp_path: Path, victoria_factory: Factory) -> None:
    server = victoria_factory(start=False)
    path = write_pipeline(tmp_path, REPLAY.format(url=server.url))
    # The server is down: everything read stays in the spool.
    first = flowcollect("run", str(path), "--duration", "1", "--no-preflight", "--json", cwd=tmp_path)
    kept = json.loads(first.stdout)
    assert kept["written"] == 0 and kept["replayed"] == 0, first.stdout
    backlog = kept["writers"]["influxdb:b"]["extra"]["spool_values"]
    assert backlog > 0, first.stdout
    server.start()
    second = flowcollect("run", str(path), "--duration", "1.5", "--json", cwd=tmp_path)
    summary = json.loads(second.stdout)
    assert second.returncode == 0, second.stderr
    assert summary["replayed"] == summary["writers"]["influxdb:b"]["replayed"] == backlog
    text = flowcollect("run", str(path), "--duration", "0.5", cwd=tmp_path)
    assert "replayed" not in text.stdout  # nothing left from the earlier runs: no line
    # What the text says when there is a replay, from the same figures.
    server.stop()
    flowcollect("run", str(path), "--duration", "0.5", "--no-preflight", cwd=tmp_path)
    server.start()
    again = flowcollect("run", str(path), "--duration", "1", cwd=tmp_path)
    assert re.search(
        r"^  replayed: +[\d,]+ \(values of an earlier run, sent again from a spool\)$", again.stdout, re.M
    )
    assert re.search(
        r"^  writer influxdb:b: .*; [\d,]+ of an earlier run replayed from its spool$", again.stdout, re.M
    )
