"""The CSV writer behind a real sink, on real files: a row counts as written only once the OS
has it, a full disk counts rows failed (and the file stays whole rows), rows reach the file at
least every ``flush_interval_s``, one timestamp format, and ``preflight`` names what cannot work.

A full and a read-only filesystem are real: a tmpfs mounted in a mount namespace of a child
process (``unshare -m``), gone with it.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from flowcollect._sink import WriterSink
from flowcollect.errors import ConfigError, PreflightError
from flowcollect.values import ValueBatch, VariableSpec
from flowcollect.writers import CsvFileDataWriter
from tests.reliability.support import wait_until

LOG = logging.getLogger("flowcollect.test.sink")
T0 = 1_764_158_400_000  # 2025-11-26T12:00:00.000Z
SPECS = [
    VariableSpec(1, 7, "holding:1", "float", "plc", 100, name="temp", tags=(("line", "A"), ("unit", "°C"))),
    VariableSpec(2, 7, "coil:3", "bool", "plc", 100),
]


def batch(k: int, source_ns: list[int | None] | None = None) -> ValueBatch:
    return ValueBatch(
        T0 + 100 * k,
        SPECS,
        [20.5 + k, None],
        [None, "timeout"],
        source_ns=source_ns,
        quality=[None, "Uncertain"],
        context_id=7,
        reader="plc",
    )


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def test_rows_have_one_time_format_and_the_variables_name_tags_and_quality(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    writer = CsvFileDataWriter(path)
    sink = WriterSink(writer, LOG)
    sink.put(batch(0))
    # A source time with microseconds is written to the millisecond, like every other time.
    sink.put(batch(1, source_ns=[(T0 + 42) * 1_000_000 + 123_456, None]))
    assert sink.close(time.monotonic() + 5)
    got = rows(path)
    assert got[0] == {
        "id": "1",
        "context_id": "7",
        "address": "holding:1",
        "value": "20.5",
        "time": "2025-11-26T12:00:00.000+00:00",
        "error": "",
        "name": "temp",
        "quality": "",
        "tags": '{"line":"A","unit":"°C"}',
        "source_time": "",
    }
    assert got[1] == {
        "id": "2",
        "context_id": "7",
        "address": "coil:3",
        "value": "",
        "time": "2025-11-26T12:00:00.000+00:00",
        "error": "timeout",
        "name": "",
        "quality": "Uncertain",
        "tags": "",
        "source_time": "",
    }
    assert [r["time"] for r in got[2:]] == ["2025-11-26T12:00:00.042+00:00", "2025-11-26T12:00:00.100+00:00"]
    for r in got:  # one format: parses, always three fraction digits, UTC
        assert datetime.fromisoformat(r["time"]).tzinfo == UTC
        assert len(r["time"]) == len("2025-11-26T12:00:00.000+00:00")
    s = sink.snapshot()
    assert (s.received, s.written, s.failed, s.in_flight) == (4, 4, 0, 0)


def test_a_source_time_carried_beside_the_value_has_a_column_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "beside.csv"
    sink = WriterSink(CsvFileDataWriter(path), LOG)
    beside = batch(0)
    beside.source_time_ns = [(T0 - 86_400_000) * 1_000_000 + 123_456_789, None]
    sink.put(beside)
    assert sink.close(time.monotonic() + 5)
    got = rows(path)
    # The row's time stays the instant; the source's own time (to the microsecond) is beside it.
    assert [(r["time"], r["source_time"]) for r in got] == [
        ("2025-11-26T12:00:00.000+00:00", "2025-11-25T12:00:00.123456+00:00"),
        ("2025-11-26T12:00:00.000+00:00", ""),
    ]


def test_appending_to_a_file_with_the_nine_columns_before_source_time_keeps_them(tmp_path: Path) -> None:
    path = tmp_path / "nine.csv"
    path.write_text("id,context_id,address,value,time,error,name,quality,tags\r\n")
    sink = WriterSink(CsvFileDataWriter(path), LOG)
    sink.put(batch(0))
    assert sink.close(time.monotonic() + 5)
    with path.open(newline="", encoding="utf-8") as file:
        lines = list(csv.reader(file))
    assert [len(line) for line in lines] == [9, 9, 9]


def test_appending_to_a_file_with_the_older_six_columns_keeps_them(tmp_path: Path) -> None:
    path = tmp_path / "old.csv"
    path.write_text("id,context_id,address,value,time,error\r\n1,1,a,1.5,2025-01-01T00:00:00,\r\n")
    sink = WriterSink(CsvFileDataWriter(path), LOG)
    sink.put(batch(0))
    assert sink.close(time.monotonic() + 5)
    with path.open(newline="", encoding="utf-8") as file:
        lines = list(csv.reader(file))
    assert [len(line) for line in lines] == [6, 6, 6, 6]
    assert lines[2] == ["1", "7", "holding:1", "20.5", "2025-11-26T12:00:00.000+00:00", ""]


def test_rows_reach_the_file_every_flush_interval_and_count_only_once_there(tmp_path: Path) -> None:
    path = tmp_path / "live.csv"
    writer = CsvFileDataWriter(path, flush_interval_s=0.2)
    sink = WriterSink(writer, LOG)
    try:
        for k in range(5):
            sink.put(batch(k))
        # No flush asked for: the sink flushes on the writer's thread within the interval,
        # which is what `tail -f` sees and all a kill -9 could lose.
        assert wait_until(lambda: path.exists() and len(rows(path)) == 10, timeout_s=5)
        for k in range(5, 40):
            sink.put(batch(k))
            # Figures first, file second: what counts as written is always already in the file.
            written = sink.snapshot().written
            assert written <= len(rows(path))
            time.sleep(0.02)
        assert wait_until(lambda: sink.snapshot().written == 80, timeout_s=5)
        assert len(rows(path)) == 80
    finally:
        assert sink.close(time.monotonic() + 5)


def test_a_full_device_counts_every_row_failed_and_logs_it_once(caplog: pytest.LogCaptureFixture) -> None:
    writer = CsvFileDataWriter("/dev/full")
    writer.preflight()  # it opens fine: only writing says the device is full
    sink = WriterSink(writer, LOG)
    with caplog.at_level(logging.WARNING):
        for k in range(20):
            sink.put(batch(k))
            if k % 5 == 4:
                assert sink.flush(5)
        assert sink.close(time.monotonic() + 5)
    s = sink.snapshot()
    assert (s.received, s.written, s.failed, s.dropped, s.queued, s.in_flight) == (40, 0, 40, 0, 0, 0)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "csv:/dev/full: cannot write /dev/full (OSError: No space left on device); "
        "its rows are counted failed until writing works again"
    ]
    assert (writer.rows, writer.failed_rows) == (0, 40)


# -- a real tiny filesystem --------------------------------------------------------------------


def in_tmpfs(tmp_path: Path, options: str, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a child with a tmpfs (``options``) mounted on ``tmp_path / "mnt"`` in a
    mount namespace of its own: the mount is the child's alone and goes with it."""
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "-m", "true"], check=False).returncode != 0:
        pytest.skip("a tmpfs of its own needs `unshare -m` (root, or CAP_SYS_ADMIN)")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    command = 'mount -t tmpfs -o "$1" tmpfs "$2" && shift 2 && exec "$@"'
    return subprocess.run(
        [
            unshare,
            "-m",
            "sh",
            "-c",
            command,
            "sh",
            options,
            str(mnt),
            sys.executable,
            "-c",
            script,
            str(mnt),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )


FILL = textwrap.dedent(
    """
    import csv, json, logging, os, sys, time
    from flowcollect._sink import WriterSink
    from flowcollect.values import ValueBatch, VariableSpec
    from flowcollect.writers import CsvFileDataWriter

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s", stream=sys.stdout)
    mnt = sys.argv[1]
    with open(f"{mnt}/ballast", "wb") as f:
        f.write(b"x" * 24576)  # freed later: the disk gets space again
    path = f"{mnt}/out.csv"
    sink = WriterSink(CsvFileDataWriter(path), logging.getLogger("sink"))
    specs = [VariableSpec(i, 1, f"holding:{i}", "float", "plc", 100, name=f"v{i}") for i in range(1, 21)]

    def put(k):
        sink.put(ValueBatch(1764158400000 + 100 * k, specs, [k + i / 100 for i in range(20)], [None] * 20))

    for k in range(200):  # ~300 KB of rows for 64 KB
        put(k)
        if k % 10 == 9:
            assert sink.flush(10)
    full = sink.snapshot()
    os.unlink(f"{mnt}/ballast")
    for k in range(1000, 1005):
        put(k)
    assert sink.close(time.monotonic() + 10)
    end = sink.snapshot()
    with open(path, newline="", encoding="utf-8") as f:
        lines = list(csv.reader(f))
    print("RESULT " + json.dumps({
        "full": [full.received, full.written, full.failed, full.in_flight],
        "end": [end.received, end.written, end.failed, end.in_flight, end.dropped],
        "header": lines[0],
        "widths": sorted({len(line) for line in lines}),
        "ks": [int(float(line[3])) for line in lines[1:]],
    }))
    """
)


def test_a_full_filesystem_counts_rows_failed_keeps_whole_rows_and_recovers(tmp_path: Path) -> None:
    done = in_tmpfs(tmp_path, "size=64k", FILL)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout.splitlines()
    result = json.loads(next(line for line in out if line.startswith("RESULT "))[7:])
    received, written, failed, in_flight = result["full"]
    assert (received, in_flight) == (4000, 0)
    assert 0 < written < 4000 and written + failed == 4000
    # Every row in the file is whole (a half-written batch was cut away) and each one counted
    # as written is there; after space came back, the last five batches were written.
    assert result["widths"] == [10]
    assert result["end"] == [4100, written + 100, failed, 0, 0]
    ks = result["ks"]
    assert len(ks) == written + 100
    assert ks[-100:] == [k for k in range(1000, 1005) for _ in range(20)]
    assert ks[:-100] == sorted(ks[:-100]) and len(ks[:-100]) == written
    problems = [line for line in out if not line.startswith("RESULT ")]
    assert len(problems) == 2, problems  # once when it starts failing, once when it works again
    assert problems[0].startswith(f"ERROR csv:{tmp_path}/mnt/out.csv: cannot write ")
    assert "No space left on device" in problems[0]
    assert problems[1] == (
        f"WARNING csv:{tmp_path}/mnt/out.csv: writing again ({failed} rows failed while it could not: "
        "OSError: No space left on device)"
    )


# -- preflight ---------------------------------------------------------------------------------


def test_preflight_names_a_path_that_cannot_be_written(tmp_path: Path) -> None:
    afile = tmp_path / "plain"
    afile.write_text("x")
    cases = {
        tmp_path: f"{tmp_path} is a directory, not a file",
        afile / "out.csv": f"cannot create {afile}/out.csv: {afile} is not a directory",
        Path(
            "/proc/flowcollect.csv"
        ): "/proc/flowcollect.csv is in /proc, the kernel's interface, not a place for data",
    }
    for path, message in cases.items():
        with pytest.raises(PreflightError) as caught:
            CsvFileDataWriter(path).preflight()
        assert str(caught.value) == message
    # What can be written passes, and preflight leaves nothing behind.
    fine = tmp_path / "new" / "deeper" / "out.csv"
    CsvFileDataWriter(fine).preflight()
    CsvFileDataWriter(afile).preflight()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain"]
    assert afile.read_text() == "x"


def test_preflight_names_a_read_only_filesystem(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        from flowcollect.errors import PreflightError
        from flowcollect.writers import CsvFileDataWriter
        try:
            CsvFileDataWriter(sys.argv[1] + "/out.csv").preflight()
        except PreflightError as exc:
            print(exc)
        """
    )
    done = in_tmpfs(tmp_path, "ro,size=16k", script)
    assert done.returncode == 0, done.stderr
    assert (
        done.stdout.strip()
        == f"cannot create {tmp_path}/mnt/out.csv: Read-only file system (in {tmp_path}/mnt)"
    )


def test_csv_options_are_checked() -> None:
    with pytest.raises(ConfigError) as caught:
        CsvFileDataWriter("x.csv", flush_interval_s=0, max_buffer_bytes=-1)
    assert caught.value.problems == [
        "CSV writer x.csv: flush_interval_s must be > 0 and <= 3600 s, got 0",
        "CSV writer x.csv: max_buffer_bytes must be a positive int, got -1",
    ]


KILLED = textwrap.dedent(
    """
    import sys, time
    from flowcollect import DataCollectionContext, DataCollector, Variable
    from flowcollect.testing import StaticDataReader
    from flowcollect.writers import CsvFileDataWriter

    collector = DataCollector([StaticDataReader({"a": 1.5})], [CsvFileDataWriter(sys.argv[1])])
    collector.start(
        DataCollectionContext(id=1, interval_ms=100, variables=[Variable(id=1, address="a", reader="static")])
    )
    print("started", flush=True)
    time.sleep(60)
    """
)


@pytest.mark.realtime
def test_a_kill_9_loses_at_most_the_last_flush_interval_of_rows(tmp_path: Path) -> None:
    path = tmp_path / "killed.csv"
    with subprocess.Popen(
        [sys.executable, "-c", KILLED, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    ) as child:
        try:
            assert child.stdout is not None and child.stdout.readline() == "started\n"
            time.sleep(2.5)
            killed_ms = time.time() * 1000
        finally:
            child.kill()  # SIGKILL: no close, no flush, no atexit
            child.wait(10)
    times = [datetime.fromisoformat(r["time"]).timestamp() * 1000 for r in rows(path)]
    assert len(times) >= 10
    # Rows reach the OS at least every flush_interval_s (1 s): what is lost is at most that,
    # plus a tick and the time the writer's thread may wait for the CPU on a loaded machine.
    assert killed_ms - max(times) < 1000 + 100 + 500, killed_ms - max(times)
