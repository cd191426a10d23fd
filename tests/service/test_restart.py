"""Contexts started or changed through the API come back after kill -9 (``--state-dir``)."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.service.conftest import TOKEN, Api

pytestmark = pytest.mark.realtime


def context(cid: int, duration_s: float | None) -> dict[str, object]:
    return {
        "id": cid,
        "interval_ms": 200,
        "duration_s": duration_s,
        "variables": [{"id": 1, "address": "holding:2:float32", "reader": "plc", "name": "temp_2"}],
    }


def parse(date: str) -> datetime:
    return datetime.fromisoformat(date.replace("Z", "+00:00"))


def test_api_contexts_survive_kill_9_with_their_dates(
    tmp_path: Path, apis: list[Api], token_file: Path
) -> None:
    args = ("--http", "127.0.0.1:0", "--token-file", str(token_file), "--state-dir", str(tmp_path / "state"))
    first = Api(tmp_path, *args)
    apis.append(first)
    status, kept = first.post("/api/v1/contexts", context(10, 3600), token=TOKEN)
    assert status == 201, kept
    assert first.post("/api/v1/contexts/10/pause", token=TOKEN)[0] == 200
    status, brief = first.post("/api/v1/contexts", context(11, 1.5), token=TOKEN)
    assert status == 201, brief
    assert first.post("/api/v1/contexts", context(12, None), token=TOKEN)[0] == 201
    assert first.post("/api/v1/contexts/12/stop", token=TOKEN)[0] == 200
    assert first.post("/api/v1/contexts/1/pause", token=TOKEN)[0] == 200  # a pipeline's context
    recorded = json.loads((tmp_path / "state" / "contexts.json").read_text())
    assert sorted(recorded["contexts"]) == ["1", "10", "11"]
    first.kill()  # SIGKILL: nothing runs at exit

    # Context 11's duration ends while the process is down.
    brief_end = parse(brief["start_date"]) + timedelta(seconds=1.5)
    time.sleep(max(0.0, (brief_end - datetime.now(brief_end.tzinfo)).total_seconds() + 0.1))
    second = Api(tmp_path, *args)
    apis.append(second)
    again = second.get("/api/v1/contexts/10")
    assert again["state"] == "paused"
    assert again["start_date"] == kept["start_date"] and again["duration_s"] == 3600
    ended = second.get("/api/v1/contexts/11")
    assert ended["state"] == "stopped" and ended["delivered"] == 0
    assert ended["start_date"] == brief["start_date"]
    assert parse(ended["end_date"]) == brief_end
    assert "context 11: ended at" in second.log()
    assert second.call("GET", "/api/v1/contexts/12")[0] == 404  # stopped: not restored
    assert second.get("/api/v1/contexts/1")["state"] == "paused"

    # Resumed, it collects again and still counts from its original start.
    status, body = second.post("/api/v1/contexts/10/resume", token=TOKEN)
    assert (status, body["state"], body["start_date"]) == (200, "running", kept["start_date"])
    got = second.wait_for("/api/v1/values?context=10", lambda v: v["total"] == 1)
    assert got["values"][0]["error"] is None
    recorded = json.loads((tmp_path / "state" / "contexts.json").read_text())
    assert sorted(recorded["contexts"]) == ["1", "10"]
    assert recorded["contexts"]["10"]["paused"] is False
    assert recorded["contexts"]["10"]["start_date"] == kept["start_date"]
    # A clean stop keeps them too (closing stops contexts, but that is not an API stop).
    assert second.stop() == 0
    recorded = json.loads((tmp_path / "state" / "contexts.json").read_text())
    assert sorted(recorded["contexts"]) == ["1", "10"]
