"""Helpers of the OPC UA tests: a simulator process that tests kill and restart, batches, waits."""

from __future__ import annotations

import re
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from flowcollect.values import ValueBatch, VariableSpec


class ServerProcess:
    """``python -m flowcollect.simulator.opcua`` in a child process: a server that can really die.

    The first start picks a free port; later starts use the same one (a restarted server).
    """

    def __init__(self, log_path: Path) -> None:
        self.port = 0
        self.endpoint = ""
        self._log_path = log_path
        self._process: subprocess.Popen[str] | None = None

    def start(self, *args: str, timeout_s: float = 60.0, cli: bool = False) -> None:
        """Start and wait until it serves; ``cli``: as ``flowcollect simulate --opcua`` (no args)."""
        if self._process is not None:
            raise RuntimeError("already running")
        if cli:
            command = [sys.executable, "-m", "flowcollect", "simulate", "--opcua", "--port", str(self.port)]
        else:
            command = [sys.executable, "-m", "flowcollect.simulator.opcua", "--port", str(self.port), *args]
        with self._log_path.open("a") as log:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
        self._process = process
        line = _read_line(process, timeout_s)
        match = re.search(r"on (opc\.tcp://[\d.]+:(\d+)/\S+)", line)
        if match is None:
            self.stop()
            raise RuntimeError(f"the simulator process did not start: {line!r}")
        self.endpoint = match.group(1)
        self.port = int(match.group(2))

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("not running")
        return self._process.pid

    def terminate(self, timeout_s: float = 10.0) -> tuple[int, str]:
        """SIGTERM, as a service manager stops it: the exit code and what it wrote to stderr."""
        process = self._process
        if process is None:
            raise RuntimeError("not running")
        process.terminate()
        code = process.wait(timeout_s)
        if process.stdout is not None:
            process.stdout.close()
        self._process = None
        return code, self._log_path.read_text()

    def stop(self) -> None:
        """Kill the process, as a power cut would: no goodbye on its sessions."""
        process = self._process
        if process is None:
            return
        process.kill()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()
        self._process = None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _read_line(process: subprocess.Popen[str], timeout_s: float) -> str:
    stdout = process.stdout
    if stdout is None:
        raise RuntimeError("no stdout")
    with selectors.DefaultSelector() as selector:
        selector.register(stdout, selectors.EVENT_READ)
        if not selector.select(timeout_s):
            return ""
    return stdout.readline()


def specs(
    addresses: Sequence[str], value_type: str = "float", interval_ms: int = 100, **extra: Any
) -> list[VariableSpec]:
    """One VariableSpec per address (ids 1..n, context 1, reader "opc")."""
    return [
        VariableSpec(i, 1, address, value_type, "opc", interval_ms, **extra)
        for i, address in enumerate(addresses, 1)
    ]


def read(reader: Any, variables: Sequence[VariableSpec]) -> ValueBatch:
    """One polled tick of ``variables``."""
    batch = ValueBatch(int(time.time() * 1000), list(variables), reader="opc")
    reader.read_batch(batch)
    return batch


def wait_for(condition: Callable[[], bool], timeout_s: float, step_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step_s)
    return condition()


class Pushed:
    """What a pushing reader emitted, by variable id (thread-safe enough: appends only)."""

    def __init__(self) -> None:
        self.batches: list[ValueBatch] = []

    def __call__(self, batch: ValueBatch) -> None:
        self.batches.append(batch)

    def values(self, variable_id: int) -> list[Any]:
        return [cv.value for b in list(self.batches) for cv in b if cv.id == variable_id and cv.error is None]

    def errors(self, variable_id: int) -> list[str]:
        return [
            cv.error for b in list(self.batches) for cv in b if cv.id == variable_id and cv.error is not None
        ]

    def items(self, variable_id: int) -> list[Any]:
        return [cv for b in list(self.batches) for cv in b if cv.id == variable_id]
