"""The CSV, log and memory writers."""

from __future__ import annotations

import csv
import logging
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from flowcollect import CollectedVariable
from flowcollect.writers import CsvFileDataWriter, LogDataWriter, MemoryDataWriter

WHEN = datetime(2026, 11, 25, 12, 0, 0, 100000, tzinfo=UTC)


def value(vid: int, v: object = 1.5, error: str | None = None, cid: int = 1) -> CollectedVariable:
    return CollectedVariable(vid, cid, f"holding:{vid}", "float", "plc", 100, v, WHEN, error)


def read_rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_csv_rows_and_header_once_across_writers(tmp_path: Path) -> None:
    path = tmp_path / "out" / "values.csv"
    w = CsvFileDataWriter(path)
    w.write([value(1), value(2, None, "timeout")])
    w.close()
    again = CsvFileDataWriter(path)  # append=True: no second header
    again.write([value(3, 'say "hi", ok')])
    again.close()
    rows = read_rows(path)
    assert rows == [
        ["id", "context_id", "address", "value", "time", "error", "name", "quality", "tags", "source_time"],
        ["1", "1", "holding:1", "1.5", "2026-11-25T12:00:00.100+00:00", "", "", "", "", ""],
        ["2", "1", "holding:2", "", "2026-11-25T12:00:00.100+00:00", "timeout", "", "", "", ""],
        ["3", "1", "holding:3", 'say "hi", ok', "2026-11-25T12:00:00.100+00:00", "", "", "", "", ""],
    ]


def test_csv_append_false_replaces_the_file(tmp_path: Path) -> None:
    path = tmp_path / "values.csv"
    path.write_text("old\n", encoding="utf-8")
    w = CsvFileDataWriter(path, append=False)
    w.write([value(1)])
    w.close()
    assert read_rows(path)[0][0] == "id"
    assert len(read_rows(path)) == 2


def test_csv_is_safe_under_concurrent_writes(tmp_path: Path) -> None:
    path = tmp_path / "values.csv"
    w = CsvFileDataWriter(path)

    def writer(cid: int) -> None:
        for n in range(200):
            w.write([value(n, n, cid=cid) for n in range(n, n + 5)])

    threads = [threading.Thread(target=writer, args=(cid,)) for cid in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    w.close()
    rows = read_rows(path)
    assert rows[0][0] == "id"
    assert len(rows) == 1 + 4 * 200 * 5
    assert all(len(r) == 10 for r in rows)


def test_csv_flush_makes_rows_visible(tmp_path: Path) -> None:
    path = tmp_path / "values.csv"
    w = CsvFileDataWriter(path)
    w.write([value(1)])
    w.flush()
    assert len(read_rows(path)) == 2
    w.close()
    w.close()


def test_log_writer_logs_values_and_errors(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.values")
    w = LogDataWriter(logger)
    with caplog.at_level(logging.INFO, logger="test.values"):
        w.write([value(1, 2.5), value(2, None, "timeout")])
    assert [r.levelno for r in caplog.records] == [logging.INFO, logging.WARNING]
    assert "variable=1 holding:1=2.5" in caplog.records[0].getMessage()
    assert "timeout" in caplog.records[1].getMessage()


def test_memory_writer_snapshot_and_clear() -> None:
    w = MemoryDataWriter()
    w.write([value(1)])
    snap = w.snapshot()
    w.write([value(2)])
    assert len(snap) == 1 and len(w.values) == 2 and w.writes == 2
    w.clear()
    assert w.values == []
