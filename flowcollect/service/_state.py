"""Contexts that outlive the process: one JSON file in ``--state-dir``, replaced atomically.

Each write goes to a temporary file beside it, is fsynced, renamed over the old one and the
folder fsynced: after a crash or kill -9 the file is the old one or the new one, never half of
either.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from flowcollect.errors import ConfigError

__all__ = ["StateStore"]

FILE = "contexts.json"
VERSION = 1


class StateStore:
    """Records by context id: ``{"context": <model fields>, "start_date": iso, "duration_s": float
    | None, "paused": bool}``; ``put`` and ``drop`` write the file before they return."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / FILE
        self._lock = threading.Lock()
        """Guards ``_records`` and the file: API threads and the collector's listener write."""
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--state-dir {folder}: cannot create it: {exc.strerror}") from None
        self._records: dict[int, dict[str, Any]] = self._read()

    def _read(self) -> dict[int, dict[str, Any]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ConfigError(f"--state-dir: cannot read {self.path}: {exc.strerror}") from None
        try:
            data = json.loads(text)
            if data.get("version") != VERSION or not isinstance(data.get("contexts"), dict):
                raise ValueError(f"not a version {VERSION} state file")
            return {int(cid): dict(record) for cid, record in data["contexts"].items()}
        except (ValueError, AttributeError, TypeError) as exc:
            raise ConfigError(
                f"--state-dir: {self.path} is not a flowcollect state file ({exc}); move it away"
            ) from None

    def records(self) -> dict[int, dict[str, Any]]:
        with self._lock:
            return {cid: dict(record) for cid, record in self._records.items()}

    def put(self, context_id: int, record: dict[str, Any]) -> None:
        with self._lock:
            self._records[context_id] = record
            self._write()

    def update(self, context_id: int, **fields: Any) -> None:
        with self._lock:
            record = self._records.get(context_id)
            if record is None:
                return
            record.update(fields)
            self._write()

    def drop(self, context_id: int) -> None:
        with self._lock:
            if self._records.pop(context_id, None) is not None:
                self._write()

    def _write(self) -> None:
        data = {"version": VERSION, "contexts": {str(k): v for k, v in sorted(self._records.items())}}
        folder = self.path.parent
        fd, temp = tempfile.mkstemp(prefix=".contexts-", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle, indent=1)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, self.path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        # The rename itself is durable only once the folder is.
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
