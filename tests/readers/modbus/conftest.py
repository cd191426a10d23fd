"""Fixtures of the Modbus tests: the in-process simulator, a simulator process, raw devices."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from modbus_helpers import LoopThread, RawDevice, Respond, ServerProcess, on_loop

from flowcollect.readers.modbus import ModbusDataReader
from flowcollect.simulator import Simulator


@pytest.fixture(scope="session")
def _session_simulator() -> Iterator[Simulator]:
    with Simulator() as simulator:
        yield simulator


@pytest.fixture
def sim(_session_simulator: Simulator) -> Simulator:
    """The in-process simulator on a free loopback port, its request counters at zero."""
    _session_simulator.reset_counters()
    return _session_simulator


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    """An event loop on a thread of its own, where the loop runtime awaits readers."""
    loop = LoopThread()
    yield loop
    loop.stop()


@pytest.fixture(params=["thread", "loop"])
def path(request: pytest.FixtureRequest, loop_thread: LoopThread) -> LoopThread | None:
    """Which way a test's reads go: a thread calling ``read`` (the sync client), or the event
    loop awaiting ``read_batch_async`` (pymodbus's asyncio client). None: the thread."""
    return loop_thread if request.param == "loop" else None


@pytest.fixture
def make_reader(sim: Simulator, path: LoopThread | None) -> Iterator[Callable[..., ModbusDataReader]]:
    """Build readers (default: to the simulator), opened, closed after the test; read through
    both paths (``path``)."""
    readers: list[ModbusDataReader] = []

    def make(**options: Any) -> ModbusDataReader:
        options.setdefault("host", sim.host)
        options.setdefault("port", sim.port)
        options.setdefault("timeout_s", 1.0)
        reader = ModbusDataReader("modbus", **options)
        if path is not None:
            on_loop(reader, path)
        readers.append(reader)
        reader.open()
        return reader

    yield make
    for reader in readers:
        reader.close()


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path / "simulator.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def raw_device() -> Iterator[Callable[[Respond], RawDevice]]:
    devices: list[RawDevice] = []

    def make(respond: Respond) -> RawDevice:
        device = RawDevice(respond)
        devices.append(device)
        return device

    yield make
    for device in devices:
        device.stop()
