"""Reload of readers and writers against a real ``flowcollect run --http`` process: a writer
whose path changed is replaced, a Modbus reader whose port changed hands over to the new one, a
reader added serves a new context; unchanged contexts miss no instant and get no double, and a
broken file changes nothing."""

from __future__ import annotations

import csv
import itertools
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from flowcollect.simulator import Simulator
from tests.service.conftest import TOKEN, Api

pytestmark = pytest.mark.realtime

PIPELINE = """\
from flowcollect import DataCollectionContext, Pipeline, Variable
from flowcollect.pipeline import EmbeddedModbusSimulator
from flowcollect.readers import ModbusDataReader, RandomDataReader
from flowcollect.writers import CsvFileDataWriter

plc = ModbusDataReader("plc", host="127.0.0.1", port=502, timeout_s=0.5)
far = ModbusDataReader("far", host="127.0.0.1", port={far_port}, timeout_s=0.5)
readers = [plc, far]
contexts = [
    DataCollectionContext(
        id=1,
        interval_ms=200,
        duration_s=None,
        variables=[Variable(id=1, address="holding:0:float32", reader="plc", name="temp_1")],
    ),
    DataCollectionContext(
        id=4,
        interval_ms=250,
        duration_s=None,
        variables=[Variable(id=1, address="holding:6:uint16", reader="far", name="speed")],
    ),
]
if {random}:
    readers.append(RandomDataReader(seed=3))
    contexts.append(
        DataCollectionContext(
            id=5,
            interval_ms=100,
            duration_s=None,
            variables=[Variable(id=1, address="r1", reader="random", name="r1")],
        )
    )

pipeline = Pipeline(
    name="parts",
    devices=[EmbeddedModbusSimulator([plc], name="line")],
    readers=readers,
    writers=[CsvFileDataWriter("out/all.csv", append=False), CsvFileDataWriter("{side}", append=False)],
    contexts=contexts,
)
"""


def text(far_port: int, side: str = "out/side-1.csv", *, random: bool = False) -> str:
    return PIPELINE.format(far_port=far_port, side=side, random=random)


def rows(path: Path, context: int) -> list[dict[str, str]]:
    with path.open() as handle:
        return [r for r in csv.DictReader(handle) if r["context_id"] == str(context)]


def ms(row: dict[str, str]) -> int:
    return round(datetime.fromisoformat(row["time"]).timestamp() * 1000)


def every(times: list[int], step: int) -> bool:
    return all(b - a == step for a, b in itertools.pairwise(times))


@pytest.fixture
def simulators() -> Iterator[list[Simulator]]:
    started = [Simulator("127.0.0.1", 0).start(), Simulator("127.0.0.1", 0).start()]
    yield started
    for simulator in started:
        simulator.stop()


def test_reload_replaces_the_readers_and_writers_that_changed_and_nothing_else(
    tmp_path: Path, apis: list[Api], token_file: Path, simulators: list[Simulator]
) -> None:
    a, b = simulators
    pipe = tmp_path / "pipe.py"
    pipe.write_text(text(a.port))
    api = Api(tmp_path, "--http", "127.0.0.1:0", "--token-file", str(token_file))
    apis.append(api)
    one = api.get("/api/v1/contexts/1")
    api.wait_for("/api/v1/contexts/4", lambda c: c["delivered"] >= 4)
    lanes_before = api.get("/api/v1/status")["lanes"]
    assert f"modbus+tcp://127.0.0.1:{a.port}" in lanes_before

    # The far device moved to another port, the side file is another, a reader is added.
    pipe.write_text(text(b.port, "out/side-2.csv", random=True))
    status, result = api.post("/api/v1/reload", token=TOKEN)
    assert status == 200, result
    assert result["readers"] == {"replaced": ["far"], "added": ["random"], "removed": []}
    assert result["writers"] == {
        "replaced": [],
        "added": ["csv:out/side-2.csv"],
        "removed": ["csv:out/side-1.csv"],
    }
    assert (result["added"], result["changed"], result["unchanged"]) == ([5], [], [1, 4])
    assert "readers replaced ['far']; readers added ['random']" in api.log()
    lanes = api.get("/api/v1/status")["lanes"]
    assert f"modbus+tcp://127.0.0.1:{b.port}" in lanes and "reader:random" in lanes
    assert f"modbus+tcp://127.0.0.1:{a.port}" not in lanes
    # The far device's old port goes away: the new reader reads the new one.
    a.stop()
    api.wait_for("/api/v1/contexts/5", lambda c: c["delivered"] >= 5)
    time.sleep(1.0)

    # A broken file (a reader's option refused) changes nothing and says why.
    broken = text(b.port, "out/side-2.csv", random=True)
    pipe.write_text(broken.replace("timeout_s=0.5)\nreaders", "timeout_s=-1)\nreaders"))
    status, body = api.post("/api/v1/reload", token=TOKEN)
    assert status == 422 and "timeout_s" in " ".join(body["problems"]), body
    assert api.get("/api/v1/contexts/5")["state"] == "running"
    figures = api.get("/api/v1/status")["writers"]
    side = figures["csv:out/side-1.csv"]  # closed: every value it received written
    assert side["received"] == side["written"] > 0 and side["queued"] == side["in_flight"] == 0, side
    assert api.get("/api/v1/contexts/1")["start_date"] == one["start_date"]
    assert api.stop() == 0
    # The run's summary names the file of the writer the reload added, and the replaced one's.
    summary = api.log().split("stopped on request")[-1]
    assert "writer csv:out/side-2.csv: " in summary and "side-2.csv)" in summary, summary
    assert "writer csv:out/side-1.csv: " in summary, summary

    out = tmp_path / "out"
    # Context 1 (its reader kept): every 200 ms instant once in the file every writer kept...
    times = [ms(r) for r in rows(out / "all.csv", 1)]
    assert len(times) > 10 and every(times, 200), times
    # ... and across the side files: the old one up to the swap, the new one after, no double.
    first, second = ([ms(r) for r in rows(out / name, 1)] for name in ("side-1.csv", "side-2.csv"))
    assert first and second and first[-1] < second[0] and every(first + second, 200), (first, second)
    # Context 4 (its reader replaced): each 250 ms instant once, through the hand-over; values,
    # not errors, after the old port went away.
    four = rows(out / "all.csv", 4)
    assert every([ms(r) for r in four], 250), [ms(r) for r in four]
    assert all(not r["error"] for r in four), [r["error"] for r in four if r["error"]]
    assert len(rows(out / "all.csv", 5)) >= 5
