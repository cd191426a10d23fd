"""`flowcollect simulate`: the Modbus simulator standalone, stopped by a signal."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from flowcollect.readers import ModbusDataReader
from flowcollect.values import CollectedVariable
from tests.cli.conftest import Running

pytestmark = pytest.mark.realtime


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_simulate_serves_until_a_signal(
    signum: signal.Signals, tmp_path: Path, running: list[Running]
) -> None:
    proc = Running("simulate", "--port", "0", cwd=tmp_path)
    running.append(proc)
    found = proc.wait_for(lambda err: re.search(r"listening on 127\.0\.0\.1:(\d+)", err))
    assert isinstance(found, re.Match)
    reader = ModbusDataReader("plc", "127.0.0.1", int(found.group(1)))
    name = CollectedVariable(1, 1, "holding:10:string8", "str", "plc", 1000)
    try:
        reader.read([name])
    finally:
        reader.close()
    assert (name.value, name.error) == ("Mixer line 1", None)
    proc.proc.send_signal(signum)
    code, out, err = proc.finish(timeout_s=5)
    assert code == 0, err
    assert f"Modbus TCP on 127.0.0.1:{found.group(1)}" in out
    assert "Traceback" not in err
