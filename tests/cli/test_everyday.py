"""What a new user reaches for first: --once, paths beside the pipeline file, clear port errors."""

from __future__ import annotations

import contextlib
import csv
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.conftest import PIPELINES, flowcollect, write_pipeline

pytestmark = pytest.mark.realtime


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port something listens on for the test."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def test_once_reads_every_variable_once_and_writes_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "pipes"
    folder.mkdir()
    demo = folder / "demo.py"
    demo.write_text((PIPELINES / "demo.py").read_text())
    result = flowcollect("run", str(demo), "--once", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["context", "variable", "reader", "address", "value", "error"]
    rows = [line.split() for line in lines[1:-1]]
    # Both contexts, each of their variables once (the shared ones once per context).
    assert [(r[0], r[1]) for r in rows] == [
        ("1", "1"), ("1", "2"), ("1", "3"), ("1", "4"), ("1", "7"),
        ("2", "1"), ("2", "3"), ("2", "5"), ("2", "6"), ("2", "8"),
    ]  # fmt: skip
    name = next(line for line in lines if "holding:10:string8" in line)
    assert "'Mixer line 1'" in name
    assert lines[-1] == "pipeline demo: read once: 10 values, 0 errors; nothing written"
    assert not (folder / "out").exists(), "--once wrote something"
    assert not (tmp_path / "out").exists()


def test_once_lists_errors_and_exits_4(tmp_path: Path) -> None:
    path = write_pipeline(
        tmp_path,
        """\
        from flowcollect import DataCollectionContext, Pipeline, Variable
        from flowcollect.testing import StaticDataReader
        from flowcollect.writers import CsvFileDataWriter

        pipeline = Pipeline(
            name="once",
            readers=[StaticDataReader({"a": 1.5})],
            writers=[CsvFileDataWriter("out.csv")],
            contexts=[
                DataCollectionContext(
                    id=1,
                    interval_ms=60_000,
                    variables=[
                        Variable(id=1, address="a", reader="static"),
                        Variable(id=2, address="b", reader="static"),
                    ],
                )
            ],
        )
        """,
    )
    result = flowcollect("run", str(path), "--once", "--json", cwd=tmp_path, timeout=30)
    assert result.returncode == 4, result.stderr
    out = json.loads(result.stdout)
    assert [(v["variable"], v["value"], v["error"] is None) for v in out["values"]] == [
        (1, 1.5, True),
        (2, None, False),
    ]
    assert out["errors"] == 1
    assert not (tmp_path / "out.csv").exists()


def test_relative_paths_are_beside_the_pipeline_and_it_imports_its_neighbours(tmp_path: Path) -> None:
    folder = tmp_path / "plant"
    folder.mkdir()
    (folder / "plant_tags.py").write_text("ADDRESSES = ['t1', 't2']\n")
    write_pipeline(
        folder,
        """\
        from flowcollect import DataCollectionContext, Pipeline, Variable
        from flowcollect.readers import RandomDataReader
        from flowcollect.writers import CsvFileDataWriter

        import plant_tags

        pipeline = Pipeline(
            name="beside",
            readers=[RandomDataReader()],
            writers=[CsvFileDataWriter("data/values.csv")],
            contexts=[
                DataCollectionContext(
                    id=1,
                    interval_ms=100,
                    duration_s=0.5,
                    variables=[
                        Variable(id=n, address=a, reader="random")
                        for n, a in enumerate(plant_tags.ADDRESSES, 1)
                    ],
                )
            ],
        )
        """,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = flowcollect("run", "../plant/pipe.py", "--json", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    written = json.loads(result.stdout)["written"]
    assert written > 0
    rows = (folder / "data" / "values.csv").read_text().splitlines()
    assert len(rows) - 1 == written
    assert list(elsewhere.iterdir()) == []


def test_a_busy_simulator_port_is_one_clear_line(tmp_path: Path, busy_port: int) -> None:
    result = flowcollect("simulate", "--port", str(busy_port), cwd=tmp_path, timeout=30)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: --port {busy_port}: 127.0.0.1:{busy_port} is already in use (another simulator or "
        "server?); pick another port, or 0 for any free one"
    ]


def test_a_busy_port_for_an_embedded_simulator_is_one_clear_line(tmp_path: Path, busy_port: int) -> None:
    path = write_pipeline(
        tmp_path,
        f"""\
        from flowcollect import DataCollectionContext, Pipeline, Variable
        from flowcollect.pipeline import EmbeddedModbusSimulator
        from flowcollect.readers import ModbusDataReader
        from flowcollect.writers import CsvFileDataWriter

        plc = ModbusDataReader("plc", host="127.0.0.1", port=502)
        pipeline = Pipeline(
            name="busy",
            devices=[EmbeddedModbusSimulator([plc], port={busy_port}, name="line sim")],
            readers=[plc],
            writers=[CsvFileDataWriter("out.csv")],
            contexts=[
                DataCollectionContext(id=1, variables=[Variable(id=1, address="coil:0", reader="plc")])
            ],
        )
        """,
    )
    result = flowcollect("run", str(path), "--log-level", "warning", cwd=tmp_path, timeout=30)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: device line sim failed to start: port 127.0.0.1:{busy_port} is already in use "
        "(another simulator or server?)"
    ]


@pytest.fixture
def silent_device() -> Iterator[int]:
    """A TCP device that accepts connections and never answers (a PLC hung mid-scan)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        listener.settimeout(0.1)
        held: list[socket.socket] = []
        stop = threading.Event()

        def accept() -> None:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    held.append(listener.accept()[0])

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        yield listener.getsockname()[1]
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()


def test_modbus_failures_are_reported_once_in_flowcollects_words_not_pymodbus(
    tmp_path: Path, silent_device: int
) -> None:
    path = write_pipeline(
        tmp_path,
        f"""\
        from flowcollect import DataCollectionContext, Pipeline, Variable
        from flowcollect.readers import ModbusDataReader
        from flowcollect.writers import CsvFileDataWriter

        pipeline = Pipeline(
            name="silent",
            readers=[ModbusDataReader("plc", host="127.0.0.1", port={silent_device}, timeout_s=0.2)],
            writers=[CsvFileDataWriter("out.csv")],
            contexts=[
                DataCollectionContext(
                    id=1, interval_ms=200, variables=[Variable(id=1, address="coil:0", reader="plc")]
                )
            ],
        )
        """,
    )
    result = flowcollect("run", str(path), "--duration", "1.5", "--status-every", "0", cwd=tmp_path)
    assert result.returncode == 4, result.stderr  # every value an error
    # pymodbus logs "No response received..." at ERROR itself, for a failure flowcollect reports.
    # The failure is reported by flowcollect: in each value's error (and the summary's count).
    with (tmp_path / "out.csv").open(newline="") as file:
        errors = [row["error"] for row in csv.DictReader(file)]
    assert errors and all(errors), errors
    assert "pymodbus" not in result.stderr, result.stderr


def test_check_and_plan_count_distinct_variables_and_say_1_tick(tmp_path: Path) -> None:
    path = write_pipeline(
        tmp_path,
        """\
        from flowcollect import DataCollectionContext, Pipeline, Variable
        from flowcollect.readers import RandomDataReader
        from flowcollect.writers import CsvFileDataWriter

        SHARED = Variable(id=1, address="a", reader="random")
        pipeline = Pipeline(
            name="counts",
            readers=[RandomDataReader()],
            writers=[CsvFileDataWriter("out.csv")],
            contexts=[
                DataCollectionContext(id=1, interval_ms=1000, variables=[SHARED]),
                DataCollectionContext(id=2, interval_ms=1000, variables=[SHARED]),
            ],
        )
        """,
    )
    checked = flowcollect("check", str(path), cwd=tmp_path)
    assert checked.stdout == "pipeline counts: OK (2 contexts, 1 variable, 1 reader, 1 writer)\n"
    planned = flowcollect("plan", str(path), cwd=tmp_path)
    assert "hyperperiod 1 s: 1 tick, 1 of them with reads" in planned.stdout, planned.stdout
    assert "1 distinct read for 2 wanted variables" in planned.stdout
