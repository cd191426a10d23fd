"""Every file in pipelines/: imports without side effects, checks, plans, and runs briefly."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

from flowcollect import Pipeline
from flowcollect.pipeline import load_pipeline
from tests.cli.conftest import INFLUX_ENV, PIPELINES, flowcollect
from tests.support.influxdb1 import InfluxFactory, influxdb1_factory
from tests.support.victoria import VictoriaMetrics, sample_count, victoria

__all__ = ["influxdb1_factory", "victoria"]  # the server fixtures, shared by this module's tests

SHIPPED = sorted(p for p in PIPELINES.glob("*.py") if not p.name.startswith("_"))


def test_the_shipped_pipelines_are_there() -> None:
    assert {p.name for p in SHIPPED} >= {"demo.py", "plant_modbus_influx.py", "random_csv.py"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_importing_a_pipeline_does_nothing(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in INFLUX_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    threads = set(threading.enumerate())
    pipeline = load_pipeline(path)
    assert isinstance(pipeline, Pipeline)
    assert set(threading.enumerate()) == threads, "importing started a thread"
    assert list(tmp_path.iterdir()) == [], "importing wrote a file"
    assert pipeline.check() == []


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_a_pipeline_runs_briefly_from_the_command(path: Path, tmp_path: Path) -> None:
    # A copy in a folder of its own, run from elsewhere: its relative paths are beside it.
    folder = tmp_path / "pipes"
    folder.mkdir()
    copy = folder / path.name
    shutil.copy(path, copy)
    result = flowcollect("run", str(copy), "--duration", "1.5", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["reason"] == "duration"
    assert summary["values_read"] > 0
    assert summary["errors"] == 0, result.stderr
    assert summary["dropped"] == 0
    assert summary["failed"] == 0
    assert summary["written"] == summary["delivered"] * len(summary["writers"])
    # Without InfluxDB settings every shipped pipeline writes CSV under out/ in its folder.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipes"], "wrote beside the caller"
    csv_files = list((folder / "out").glob("*.csv"))
    assert len(csv_files) == 1
    rows = csv_files[0].read_text().splitlines()
    assert len(rows) - 1 == summary["written"]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_a_pipeline_checks_and_plans(path: Path, tmp_path: Path) -> None:
    result = flowcollect("check", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"pipeline {load_pipeline(path).name}: OK")
    for fmt, start in (("text", "pipeline "), ("mermaid", "flowchart LR"), ("dot", "digraph ")):
        result = flowcollect("plan", str(path), "--format", fmt, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith(start)
    assert list(tmp_path.iterdir()) == [], "check or plan wrote a file"


@pytest.mark.server
@pytest.mark.parametrize("name", ["demo", "plant_modbus_influx"])
def test_with_influx_settings_the_values_go_to_the_server_too(
    name: str, tmp_path: Path, victoria: VictoriaMetrics
) -> None:
    env = {"INFLUX_URL": victoria.url, "INFLUX_TOKEN": "t", "INFLUX_ORG": "o", "INFLUX_BUCKET": name}
    result = flowcollect(
        "run", str(PIPELINES / f"{name}.py"), "--duration", "1.5", "--json", cwd=tmp_path, env=env
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    influx = summary["writers"][f"influxdb:{name}"]
    assert influx["written"] == summary["delivered"] > 0
    assert influx["extra"]["written"] == summary["delivered"], "the writer's own count of stored points"
    measurement = {"demo": "flowcollect_demo", "plant_modbus_influx": "plant"}[name]
    # The writer's typed schema: value (float), value_int, value_bool, value_str (docs/influxdb.md).
    series = victoria.wait_for_samples(f'{{__name__=~"{measurement}_value.*"}}', summary["delivered"])
    assert sample_count(series) == summary["delivered"]
    delivering = {cid for cid, c in summary["context_states"].items() if c["delivered"]}
    assert {s.labels["context"] for s in series} == delivering


@pytest.mark.server
def test_the_demo_against_influxdb_1x_says_what_is_wrong_and_runs_with_api_v1(
    tmp_path: Path, influxdb1_factory: InfluxFactory
) -> None:
    server = influxdb1_factory()
    server.query("CREATE DATABASE plant")
    demo = str(PIPELINES / "demo.py")
    # As a new user first tries it: the v2 settings against a 1.x server.
    env = {"INFLUX_URL": server.url, "INFLUX_TOKEN": "t", "INFLUX_ORG": "o", "INFLUX_BUCKET": "plant"}
    result = flowcollect("check", demo, cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert "no bucket" not in result.stderr and "has no v2 write endpoint" in result.stderr
    assert 'use api="v1" with database=' in result.stderr
    # What the message says to do, through the demo's environment.
    env = {"INFLUX_URL": server.url, "INFLUX_API": "v1", "INFLUX_DATABASE": "plant"}
    result = flowcollect("run", demo, "--duration", "1.5", "--json", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["writers"]["influxdb:plant"]["written"] == summary["delivered"] > 0
    rows = server.select("SELECT * FROM flowcollect_demo", "plant")
    assert len(rows) == summary["delivered"], "one point per value, each stored once"
    # A setting missing for the chosen API is named.
    result = flowcollect("check", demo, cwd=tmp_path, env={"INFLUX_URL": server.url, "INFLUX_API": "v1"})
    assert result.returncode != 0 and "INFLUX_DATABASE" in result.stderr


def test_the_plant_runs_until_stopped() -> None:
    """A pipeline meant to run as a service must not stop after a day (the 24 h default)."""
    pipeline = load_pipeline(PIPELINES / "plant_modbus_influx.py")
    assert [c.duration_s for c in pipeline.contexts] == [None] * len(pipeline.contexts)
