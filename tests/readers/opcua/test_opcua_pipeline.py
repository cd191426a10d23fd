"""The shipped OPC UA pipeline runs against its embedded simulator, polled and subscribed."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from flowcollect.pipeline import load_pipeline

PIPELINE = Path(__file__).resolve().parents[3] / "pipelines" / "opcua_demo.py"


@pytest.mark.slow  # 6-8 s of real processes: make test-slow (CI) runs it
def test_the_opcua_demo_pipeline_collects_from_its_embedded_simulator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    pipeline = load_pipeline(PIPELINE)
    summary = pipeline.run(duration_s=2.2)
    with (tmp_path / "out" / "opcua_demo.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert rows, summary
    # A subscribed variable's first instant may come before the server's first notification
    # (sample and hold has nothing yet); after that, and for every polled value, no error.
    errors = [r for r in rows if r["error"]]
    assert all(r["error"] == "no value pushed yet" and r["context_id"] == "2" for r in errors), errors
    assert len({r["time"] for r in errors}) <= 1, errors
    ids = {int(r["id"]) for r in rows}
    assert {1, 2, 3, 4, 5} <= ids  # polled
    assert {11, 12, 13} <= ids  # subscribed, sampled and held
    assert {r["value"] for r in rows if r["id"] == "4"} <= {"True", "False"}


def test_flowcollect_plan_shows_the_read_calls_and_monitored_items(tmp_path: Path) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "flowcollect", "plan", str(PIPELINE)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "reader opcua (OpcUaDataReader) on lane opc.tcp://" in done.stdout
    assert "Read: 5 node(s) (nsu=urn:flowcollect:simulator;/Plant/Line1/Temperature" in done.stdout
    assert "monitored items: 3 (3 every 1000 ms), pushed by the server, no request per tick" in done.stdout
