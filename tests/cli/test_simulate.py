"""`flowcollect simulate`: the Modbus simulator standalone, stopped by a signal."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from flowcollect.readers import ModbusDataReader
from flowcollect.readers.modbus import ModbusLine
from flowcollect.simulator import UNIT_REGISTER, LineSimulator
from flowcollect.values import CollectedVariable
from tests.cli.conftest import Running, flowcollect
from tests.readers.modbus.line_helpers import require_socat

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


def test_simulate_a_serial_line_with_a_silent_unit_at_a_stable_path(
    tmp_path: Path, running: list[Running]
) -> None:
    require_socat()
    link = tmp_path / "plant-line"
    proc = Running("simulate", "--serial", "--silent", "2", "--link", str(link), cwd=tmp_path)
    running.append(proc)
    proc.wait_for(lambda err: f"listening on {link}" in err)
    line = ModbusLine(str(link), baudrate=19_200)
    readers = {unit: ModbusDataReader(f"u{unit}", line=line, unit=unit, timeout_s=0.3) for unit in (1, 2, 9)}
    got = {}
    try:
        for unit, reader in readers.items():
            value = CollectedVariable(1, 1, f"holding:{UNIT_REGISTER}", "int", f"u{unit}", 1000)
            reader.read([value])
            got[unit] = (value.value, value.error)
    finally:
        for reader in readers.values():
            reader.close()
    assert got[1] == (1, None)
    # Unit 2 (silenced) and unit 9 (not on the line) both stay silent: a timeout, never an
    # exception response ("device failure") and never a traceback in the simulator's output.
    for unit in (2, 9):
        value, error = got[unit]
        assert value is None and error is not None, got
        assert "exception" not in error.lower() and "failure" not in error.lower(), got
        assert "no response" in error, got
    proc.proc.send_signal(signal.SIGTERM)
    code, out, err = proc.finish(timeout_s=5)
    assert code == 0, err
    assert f"Modbus RTU on serial port {link} (19200 baud, 8N1), units 1, 2, 3 (2 silent)" in out
    assert "Traceback" not in err and "Datastore" not in err, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--silent", "2"], "only a line of units (--serial or --rtu) has units to silence"),
        (["--rtu", "--silent", "7"], "the line serves units 1, 2, 3, got [7]"),
        (["--rtu", "--link", "x"], "only a serial line (--serial) has a pty to link"),
    ],
)
def test_simulate_refuses_silent_and_link_where_they_mean_nothing(
    args: list[str], message: str, tmp_path: Path
) -> None:
    result = flowcollect("simulate", "--port", "0", *args, cwd=tmp_path, timeout=30)
    assert result.returncode == 1
    assert message in result.stderr, result.stderr


def test_a_link_that_is_not_a_symbolic_link_is_left_alone(tmp_path: Path) -> None:
    require_socat()
    precious = tmp_path / "precious"
    precious.write_text("keep me")
    with pytest.raises(ValueError, match="exists and is not a symbolic link"):
        LineSimulator(serial=True, link=str(precious))
    assert precious.read_text() == "keep me"


def test_the_linked_pty_keeps_its_path_across_restarts(tmp_path: Path) -> None:
    require_socat()
    link = tmp_path / "line"
    sim = LineSimulator(serial=True, link=str(link))
    try:
        for _ in range(2):
            sim.start()
            assert sim.pty == str(link) and os.path.islink(link)
            reader = ModbusDataReader("u3", line=ModbusLine(str(link), baudrate=sim.baudrate), unit=3)
            value = CollectedVariable(1, 1, f"holding:{UNIT_REGISTER}", "int", "u3", 1000)
            try:
                reader.read([value])
            finally:
                reader.close()
            assert (value.value, value.error) == (3, None)
            sim.stop()
    finally:
        sim.close()
