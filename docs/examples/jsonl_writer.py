"""A writer of JSON lines: one object per value, one file per day."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from flowcollect import CollectedVariable, DataWriter


class JsonLinesWriter(DataWriter):
    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self._day = ""
        self._file: TextIO | None = None

    def write(self, values: Sequence[CollectedVariable]) -> None:
        # Called on this writer's own thread with a batch; a slow disk delays no reader.
        for v in values:
            if v.time is None:
                continue
            day = v.time.date().isoformat()
            file = self._file if day == self._day and self._file is not None else self._rotate(day)
            record = {"time": v.time.isoformat(), "context": v.context_id, "variable": v.id}
            file.write(json.dumps({**record, "value": v.value, "error": v.error}) + "\n")

    def _rotate(self, day: str) -> TextIO:
        self.close()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._file = (self.folder / f"{day}.jsonl").open("a", encoding="utf-8")
        self._day = day
        return self._file

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
