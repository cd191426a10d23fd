"""Reload (POST /api/v1/reload, SIGHUP, --watch) against a real process: only the difference of
the pipeline's contexts is applied; an unchanged context misses no instant and gets no double."""

from __future__ import annotations

import csv
import itertools
import signal
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.service.conftest import PIPELINE, TOKEN, Api

pytestmark = pytest.mark.realtime

THIRD = """\
        DataCollectionContext(
            id=3, interval_ms=300, duration_s=None, variables=[var(4, "holding:7:int16", "level")]
        ),
    ],
)
"""


def edited(*, slower: bool = False, third: bool = False, broken: bool = False) -> str:
    text = PIPELINE
    if slower:
        text = text.replace("id=2, interval_ms=500", "id=2, interval_ms=1000")
    if third:
        text = text.replace("    ],\n)\n", THIRD)
    if broken:
        text = text.replace("id=1,\n            interval_ms=200", "id=1,\n            interval_ms=-5")
    return text


def instants(folder: Path, context: int, variable: int) -> list[int]:
    with (folder / "out" / "api.csv").open() as handle:
        rows = [
            r for r in csv.DictReader(handle) if r["context_id"] == str(context) and r["id"] == str(variable)
        ]
    return [ms(r["time"]) for r in rows]


def ms(date: str) -> int:
    """An ISO 8601 time (the CSV's, or the API's with ``Z``) in epoch milliseconds."""
    return round(datetime.fromisoformat(date.replace("Z", "+00:00")).timestamp() * 1000)


def test_reload_applies_the_difference_and_unchanged_contexts_miss_nothing(
    tmp_path: Path, apis: list[Api], token_file: Path
) -> None:
    api = Api(tmp_path, "--http", "127.0.0.1:0", "--token-file", str(token_file))
    apis.append(api)
    pipe = tmp_path / "pipe.py"
    one = api.get("/api/v1/contexts/1")
    two = api.get("/api/v1/contexts/2")
    time.sleep(1.5)
    assert "reload" not in api.log()  # without --watch, only when asked

    pipe.write_text(edited(slower=True, third=True))
    status, result = api.post("/api/v1/reload", token=TOKEN)
    assert status == 200, result
    assert (result["added"], result["changed"], result["unchanged"], result["removed"]) == ([3], [2], [1], [])
    assert api.get("/api/v1/contexts/1")["start_date"] == one["start_date"]  # untouched
    two_after = api.get("/api/v1/contexts/2")
    assert two_after["interval_ms"] == 1000 and two_after["start_date"] > two["start_date"]
    assert api.get("/api/v1/contexts/3")["state"] == "running"
    assert "reload: added [3]; changed [2]; unchanged [1]" in api.log()

    # A broken file changes nothing and says why, by field.
    pipe.write_text(edited(slower=True, third=True, broken=True))
    status, body = api.post("/api/v1/reload", token=TOKEN)
    assert status == 422 and "interval_ms" in " ".join(body["problems"]), body
    assert api.get("/api/v1/contexts/3")["state"] == "running"
    assert api.post("/api/v1/reload")[0] == 401  # a change: the token rules apply

    # SIGHUP: the third context is gone from the file, so it is stopped.
    pipe.write_text(edited(slower=True))
    api.proc.send_signal(signal.SIGHUP)
    api.wait_log(r"reload: removed \[3\]; unchanged \[1, 2\]")
    three = api.get("/api/v1/contexts/3")
    assert three["state"] == "stopped"
    time.sleep(0.6)
    assert api.stop() == 0

    # Context 1 ran through both reloads: every 200 ms instant once, none missing, none twice.
    times = instants(tmp_path, 1, 1)
    assert times[0] < ms(two_after["start_date"]) < ms(three["end_date"]) < times[-1], times
    assert all(b - a == 200 for a, b in itertools.pairwise(times)), times


def test_watch_reloads_when_the_file_changes(tmp_path: Path, apis: list[Api], token_file: Path) -> None:
    api = Api(tmp_path, "--http", "127.0.0.1:0", "--token-file", str(token_file), "--watch")
    apis.append(api)
    (tmp_path / "pipe.py").write_text(edited(third=True))
    api.wait_log(r"reload: added \[3\]; unchanged \[1, 2\]", timeout_s=10)
    assert api.get("/api/v1/contexts/3")["state"] == "running"
    (tmp_path / "pipe.py").write_text(edited(third=True, broken=True))
    api.wait_log(r"reload refused, nothing changed: .*interval_ms", timeout_s=10)
    assert api.get("/api/v1/contexts/1")["interval_ms"] == 200
    assert api.stop() == 0


def test_a_writer_replaced_on_the_same_file_continues_it_and_a_variable_added_restarts_its_context(
    tmp_path: Path, apis: list[Api], token_file: Path
) -> None:
    # The CSV writer (append=False) gets another flush interval: the same file, replaced. The
    # new writer must continue the file: replacing it at its first write, as append=False does
    # at a run's start, would cut away every row written before the reload.
    api = Api(tmp_path, "--http", "127.0.0.1:0", "--token-file", str(token_file))
    apis.append(api)
    pipe = tmp_path / "pipe.py"
    one = api.wait_for("/api/v1/contexts/1", lambda c: c["delivered"] >= 16)  # 8 instants
    text = PIPELINE.replace("append=False)", "append=False, flush_interval_s=0.25)").replace(
        'var(3, "coil:0", "pump_running")]', 'var(3, "coil:0", "pump_running"), var(5, "coil:1", "valve")]'
    )
    assert text.count("flush_interval_s=0.25") == 1 and "valve" in text
    pipe.write_text(text)
    status, result = api.post("/api/v1/reload", token=TOKEN)
    assert status == 200, result
    assert result["writers"] == {"replaced": ["csv:out/api.csv"], "added": [], "removed": []}
    assert (result["added"], result["changed"], result["unchanged"]) == ([], [2], [1])
    api.wait_for("/api/v1/values?context=2&name=valve", lambda v: v["total"] == 1)
    time.sleep(1.0)
    assert api.stop() == 0

    lines = (tmp_path / "out" / "api.csv").read_text().splitlines()
    assert sum(line.startswith("id,") for line in lines) == 1, lines[:3]  # one header, at the top
    assert lines[0].startswith("id,")
    times = sorted(instants(tmp_path, 1, 1))
    start = ms(one["start_date"])
    # Context 1 from its first instant (kept through the swap) to the end: each once.
    assert times[0] - start <= 200, (start, times[:3])
    assert len(times) >= 12 and all(b - a == 200 for a, b in itertools.pairwise(times)), times
    assert instants(tmp_path, 2, 5), "the variable added is written"


SPOOLED = PIPELINE.replace(
    "from flowcollect.writers import CsvFileDataWriter",
    "from flowcollect.writers import CsvFileDataWriter, SpoolOptions",
).replace(
    '    name="api",\n',
    '    name="api",\n    spools={"csv:out/api.csv": SpoolOptions(path="spool", max_bytes=1 << 24)},\n',
)


@pytest.mark.slow  # a real browser or process for 8-15 s: make test-slow (CI) runs it
def test_a_spooled_writer_whose_inner_options_change_takes_over_its_spool_without_a_gap(
    tmp_path: Path, apis: list[Api], token_file: Path
) -> None:
    # The writer behind the spool gets another flush interval: the spooled writer is replaced
    # on its own folder (it was refused: "options change with a restart"). The new one opens
    # the folder once the old one has closed and continues the CSV file.
    assert "spools=" in SPOOLED
    (tmp_path / "pipe.py").write_text(SPOOLED)
    api = Api(tmp_path, "--http", "127.0.0.1:0", "--token-file", str(token_file))
    apis.append(api)
    one = api.wait_for("/api/v1/contexts/1", lambda c: c["delivered"] >= 16)  # 8 instants
    text = SPOOLED.replace("append=False)", "append=False, flush_interval_s=0.25)")
    assert text.count("flush_interval_s=0.25") == 1
    (tmp_path / "pipe.py").write_text(text)
    status, result = api.post("/api/v1/reload", token=TOKEN)
    assert status == 200, result
    assert result["writers"] == {"replaced": ["csv:out/api.csv"], "added": [], "removed": []}
    assert (result["added"], result["changed"], result["unchanged"]) == ([], [], [1, 2])
    time.sleep(1.5)
    assert api.stop() == 0
    assert "in use" not in api.log() and "failed to write" not in api.log(), api.log()

    times = instants(tmp_path, 1, 1)
    start = ms(one["start_date"])
    assert times[0] - start <= 200, (start, times[:3])
    # Context 1 through the take-over: every 200 ms instant once, in order, none missing.
    assert len(times) >= 15 and all(b - a == 200 for a, b in itertools.pairwise(times)), times
    assert not list((tmp_path / "spool").glob("*.corrupt")), "nothing moved aside"
