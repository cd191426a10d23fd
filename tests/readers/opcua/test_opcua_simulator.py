"""The simulator as a command: ``flowcollect simulate --opcua`` serves until a signal."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from opcua_helpers import read, specs

from flowcollect.readers import OpcUaDataReader

pytestmark = pytest.mark.server


@pytest.mark.parametrize("signum", [signal.SIGTERM])
def test_flowcollect_simulate_opcua_serves_until_a_signal(tmp_path: Path, signum: signal.Signals) -> None:
    command = [sys.executable, "-m", "flowcollect", "simulate", "--opcua", "--port", "0"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        found = re.search(r"OPC UA on (opc\.tcp://\S+)", line)
        assert found, line
        reader = OpcUaDataReader("plc", found.group(1), timeout_s=2.0)
        reader.open()
        try:
            assert reader.wait_connected(15), reader.connection_error
            batch = read(reader, specs(["nsu=urn:flowcollect:simulator;s=Types.String"], "str"))
            assert (batch.values, batch.errors) == (["hello"], [None])
        finally:
            reader.close()
        process.send_signal(signum)
        _out, err = process.communicate(timeout=10)
        assert process.returncode == 0, err
        assert "Traceback" not in err
        assert len(err.splitlines()) < 20  # asyncua's start-up chatter stays out of the log
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)
