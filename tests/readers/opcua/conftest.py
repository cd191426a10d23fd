"""Fixtures of the OPC UA tests: one in-process simulator per module, readers closed after use."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opcua_helpers import ServerProcess

try:
    import asyncua  # noqa: F401
except ImportError:  # pragma: no cover - the dev extra installs it
    if os.environ.get("FLOWCOLLECT_REQUIRE_SERVERS") == "1":
        raise
    pytest.skip("asyncua is not installed (pip install flowcollect[opcua])", allow_module_level=True)

from flowcollect.readers.opcua import OpcUaDataReader
from flowcollect.simulator.opcua import OpcUaSimulator


@pytest.fixture(scope="session")
def sim() -> Iterator[OpcUaSimulator]:
    """An in-process simulator shared by the tests (a server costs seconds to start): Line1
    changes every 0.2 s, MaxNodesPerRead = 10, 40 bulk nodes. Tests that change it put it back,
    or change what no other test reads (Setpoint is written before each use; B39 is deleted)."""
    with OpcUaSimulator(period_s=0.2, max_nodes_per_read=10, bulk=40) as simulator:
        yield simulator


@pytest.fixture
def make_reader(sim: OpcUaSimulator) -> Iterator[Callable[..., OpcUaDataReader]]:
    """Build readers (default: to the module's simulator), opened and connected; closed after."""
    readers: list[OpcUaDataReader] = []

    def make(connect: bool = True, **options: Any) -> OpcUaDataReader:
        options.setdefault("endpoint", sim.endpoint)
        options.setdefault("timeout_s", 2.0)
        reader = OpcUaDataReader("opc", **options)
        readers.append(reader)
        reader.open()
        if connect:
            assert reader.wait_connected(15), reader.connection_error
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
