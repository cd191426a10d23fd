"""A writer to a CSV file: one row per value."""

from __future__ import annotations

import csv
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from flowcollect.values import CollectedVariable
from flowcollect.writers.base import DataWriter

__all__ = ["CsvFileDataWriter"]

HEADER = ("id", "context_id", "address", "value", "time", "error")


class CsvFileDataWriter(DataWriter):
    """Writes ``id, context_id, address, value, time, error`` rows, ``time`` in ISO-8601.

    The header is written once: when the file is new or empty. With ``append=False`` an existing
    file is replaced when the writer first writes. Safe to share between threads.
    """

    def __init__(self, path: str | os.PathLike[str], append: bool = True) -> None:
        self.path = Path(path)
        self.append = append
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        self._writer: Any = None  # csv's writer type is private to the stdlib's stubs
        self.rows = 0

    @property
    def name(self) -> str:
        return f"csv:{self.path}"

    def _open(self) -> Any:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        mode = "a" if self.append else "w"
        file = self._file = open(self.path, mode, newline="", encoding="utf-8")  # noqa: SIM115
        writer = self._writer = csv.writer(file)
        if file.tell() == 0:
            writer.writerow(HEADER)
        return writer

    def write(self, values: Sequence[CollectedVariable]) -> None:
        rows = [
            (
                v.id,
                v.context_id,
                v.address,
                "" if v.value is None else v.value,
                v.time.isoformat() if v.time is not None else "",
                v.error or "",
            )
            for v in values
        ]
        with self._lock:
            writer = self._writer if self._writer is not None else self._open()
            writer.writerows(rows)
            self.rows += len(rows)

    def flush(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
                self._writer = None
