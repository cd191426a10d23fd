"""Helpers for running the real ``flowcollect`` command in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest

REPO = Path(__file__).resolve().parents[2]
PIPELINES = REPO / "pipelines"
INFLUX_ENV = (
    "INFLUX_URL",
    "INFLUX_TOKEN",
    "INFLUX_ORG",
    "INFLUX_BUCKET",
    "INFLUX_API",
    "INFLUX_DATABASE",
    "INFLUX_USERNAME",
    "INFLUX_PASSWORD",
)


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without InfluxDB settings (pipelines fall back to CSV), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in INFLUX_ENV}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "flowcollect", *args]


def flowcollect(
    *args: str, cwd: Path, timeout: float = 60.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m flowcollect ARGS`` to completion (``env``: added to a clean environment)."""
    return subprocess.run(
        command(*args),
        cwd=cwd,
        env=clean_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def write_pipeline(folder: Path, body: str, name: str = "pipe.py") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(body))
    return path


class Running:
    """A ``flowcollect`` process whose stderr lines are collected as they come."""

    def __init__(self, *args: str, cwd: Path) -> None:
        self.proc = subprocess.Popen(
            command(*args),
            cwd=cwd,
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.out: list[str] = []
        self._lock = threading.Lock()
        # Both pipes are drained by threads of their own (communicate() would race the stderr
        # reader for lines), so the child never blocks on a full pipe.
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stderr, self.lines), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, pipe: IO[str] | None, into: list[str]) -> None:
        assert pipe is not None
        for line in pipe:
            with self._lock:
                into.append(line)

    def stderr(self) -> str:
        with self._lock:
            return "".join(self.lines)

    def wait_for(self, found: Callable[[str], object], timeout_s: float = 15.0) -> object:
        """Poll stderr until ``found(stderr)`` is truthy; fail with stderr on the deadline."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            result = found(self.stderr())
            if result:
                return result
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        result = found(self.stderr())
        if not result:
            self.kill()
            pytest.fail(f"not seen within {timeout_s} s; stderr:\n{self.stderr()}")
        return result

    def finish(self, timeout_s: float) -> tuple[int, str, str]:
        """Wait for the exit; return (code, stdout, stderr)."""
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"did not exit within {timeout_s} s; stderr:\n{self.stderr()}")
        self._drain()
        with self._lock:
            return code, "".join(self.out), "".join(self.lines)

    def _drain(self) -> None:
        for reader in self._readers:
            reader.join(5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._drain()


@pytest.fixture
def running() -> Iterator[list[Running]]:
    """Processes started by a test; killed if the test leaves one behind."""
    started: list[Running] = []
    yield started
    for proc in started:
        proc.kill()
