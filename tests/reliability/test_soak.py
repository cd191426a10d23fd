"""The soak benchmark, 30 seconds of it, as a test: ``bench/soak.py --seconds 30``; and its
faults mode, 90 seconds of it: ``bench/soak.py --faults --seconds 90``.

A SOAK TEST: about 45 s of wall clock (10,000 variables at 100 ms, 100,000 values/s into CSV
and a real VictoriaMetrics server), run in its own process so its memory figures are its own.
The full 10-minute run is ``.venv/bin/python bench/soak.py``; its figures are in
docs/performance.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.influxdb1 import influxd_binary
from tests.support.victoria import victoria_binary

pytestmark = [pytest.mark.realtime, pytest.mark.server, pytest.mark.soak]

ROOT = Path(__file__).resolve().parents[2]
SECONDS = 30
WARMUP_S = 5


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_soak_30_seconds_into_csv_and_victoriametrics(tmp_path: Path) -> None:
    victoria_binary()  # skips (or fails under FLOWCOLLECT_REQUIRE_SERVERS=1) without one
    command = [sys.executable, str(ROOT / "bench" / "soak.py"), "--seconds", str(SECONDS)]
    command += ["--warmup", str(WARMUP_S), "--out", str(tmp_path)]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=200,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    why = json.dumps(report)  # the whole report with any failure

    # Nothing lost: every value read reached the CSV file and the server, and no queue dropped.
    assert report["values_read"] == report["ticks"] * report["variables"], why
    assert report["values_lost"] == {"csv": 0, "server": 0}, why
    assert report["flushed_in_time"] is True, why
    for name, w in report["writer_stats"].items():
        assert w["failed"] == w["dropped"] == 0, (name, w)
    # Every due instant of the run was read or, if the reader could not keep up, counted as an
    # overrun; never silently missed. How many a machine skips is its speed, not the contract
    # (a loaded 2-core box skips many at 100,000 values/s): the benchmark reports it.
    assert report["ticks"] > 0, why
    assert abs(report["ticks"] + report["overruns"] - report["run_s"] * 10) <= 3, why
    # Memory flat once warmed up (the 10-minute target: under 10 MB), but for what the writers
    # had not taken yet at the end: a machine that cannot keep up holds a backlog (bounded by
    # the queue limit), at about 150 bytes a queued value.
    backlog_mb = sum(report["writer_queue_at_end"].values()) * 150 / 1e6
    assert report["rss_growth_mb"] < 10 + backlog_mb, why
    # Lateness is a speed figure (bench/engine.py measures p99 <= 2 ms idle): a tick a whole
    # interval late shows as an overrun above; the report has the percentiles.
    # close() ended every thread of the collector and of its writers.
    assert report["threads_left"] == [], why


FAULTS_SECONDS = 90


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_soak_faults_90_seconds_every_value_accounted_for(tmp_path: Path) -> None:
    """``bench/soak.py --faults --seconds 90``: the 30-minute faults schedule scaled down, so
    every fault happens (a device restarted every 6 s but near the outages and the kill,
    InfluxDB stopped twice for 8 s, the spool's budget reached, ``flowcollect run`` killed
    with SIGKILL and restarted on the same spool); every value produced is stored or counted
    as failed, dropped, missed or lost at the kill, by the server and by the counts alike, and
    the collector's threads stay flat.

    About 110 s of wall clock: 5,000 variables at 1 s from five simulator processes into a real
    influxd. The benchmark judges its own report (``judge``); the test also checks the figures
    it rests on, so a report that judged nothing cannot pass."""
    influxd_binary()  # skips (or fails under FLOWCOLLECT_REQUIRE_SERVERS=1) without one
    command = [sys.executable, str(ROOT / "bench" / "soak.py"), "--faults", "--seconds", str(FAULTS_SECONDS)]
    command += ["--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=400, cwd=ROOT, check=False)
    assert done.stdout, done.stderr[-3000:]
    report = json.loads(done.stdout)
    why = json.dumps({k: v for k, v in report.items() if k not in ("faults_done", "memory")})
    assert report["problems"] == [], why
    assert done.returncode == 0, done.stderr[-3000:]

    # Every fault happened.
    happened = report["happened"]
    assert happened["device_restarts"] == happened["device_restarts_planned"] >= 3, why
    assert happened["influxdb_outages"] == 2, why
    assert happened["killed"] is True, why
    assert happened["spool_drop_episodes"] >= 1, why
    assert report["counts"]["spool_dropped_by_policy"] > 0, why  # values lost to the budget
    assert report["counts"]["failed"] > 0, why  # values read while a device was down

    # Every value accounted for, two ways.
    ledger = report["ledger"]
    assert ledger["produced"] >= 5_000 * (FAULTS_SECONDS - 10), why
    assert ledger["from_counts"] == ledger["from_server"] == ledger["produced"], why
    assert report["server"]["missing_by_cause"]["unexplained"] == 0, why
    for key in ("errors", "dropped", "missed"):
        server, counts = ledger[f"{key}_server_vs_counts"]
        assert server == counts, (key, why)
    lost = report["lost_at_kill"]
    assert lost["from_spool"] == lost["from_server"], why
    assert 0 <= lost["from_run1_counts"] - lost["from_spool"] <= report["variables"], why
    assert report["server"]["stored_outside_windows"] == 0, why

    # Threads flat in both runs (memory is judged by the benchmark's stated rule, above).
    for run in ("run1", "run2"):
        memory = report["memory"][run]
        assert memory["samples"] > 10, why
        low, high = memory["threads_min_max"]
        assert high - low <= 2 and memory["threads_first_last"][0] == memory["threads_first_last"][1], memory
