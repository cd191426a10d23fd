"""The simulator itself: start and stop, its register map, the standalone command."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from modbus_helpers import ServerProcess, collected

from flowcollect.models import Variable
from flowcollect.readers.modbus import ModbusDataReader
from flowcollect.simulator import PLANT, REGISTER_MAP, Simulator, plant_state

MakeReader = Callable[..., ModbusDataReader]


def can_connect(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def test_start_serves_on_a_free_port_and_stop_closes_it() -> None:
    first = Simulator().start()
    second = Simulator().start()
    try:
        assert first.port != second.port
        assert first.port > 0
        assert can_connect(first.port)
        assert can_connect(second.port)
    finally:
        first.stop()
        second.stop()
    second.stop()  # idempotent
    assert not can_connect(first.port)
    assert not can_connect(second.port)


def test_a_port_in_use_fails_start_clearly() -> None:
    with (
        Simulator() as running,
        pytest.raises(RuntimeError, match=f"could not listen on 127.0.0.1:{running.port}"),
    ):
        Simulator(port=running.port).start()


def test_counters_count_requests_and_connections(sim: Simulator, make_reader: MakeReader) -> None:
    reader = make_reader()
    reader.read(collected(["holding:0", "input:100"]))
    assert sim.requests == 2
    assert sim.connections == 1
    assert [(r.function_code, r.address, r.count) for r in sim.request_log] == [(4, 100, 1), (3, 0, 1)]
    sim.reset_counters()
    assert (sim.requests, sim.connections, sim.request_log) == (0, 0, [])


def test_every_point_of_the_register_map_validates_and_reads(sim: Simulator, make_reader: MakeReader) -> None:
    reader = make_reader()
    for number, point in enumerate(REGISTER_MAP, start=1):
        reader.validate(Variable(id=number, address=point.address, value_type=point.value_type, reader="m"))  # type: ignore[arg-type]
    variables = collected([p.address for p in REGISTER_MAP], [p.value_type for p in REGISTER_MAP])
    reader.read(variables)
    for point, variable in zip(REGISTER_MAP, variables, strict=True):
        if point.name == "hole_invalid":
            assert variable.error == "modbus exception 2: illegal data address"
            continue
        assert variable.error is None, point
        if point.value is not None:
            assert variable.value == point.value, point
    assert {p.name for p in PLANT} <= {p.name for p in REGISTER_MAP}


@pytest.mark.parametrize("t", [0.0, 7.3, 15.0, 29.9, 61.0, 3600.5])
def test_the_plant_stays_within_its_documented_ranges(t: float) -> None:
    registers, coils, discrete = plant_state(t)
    speed, level = registers[6], registers[7]
    assert 1420 <= speed <= 1480
    assert -250 <= (level - 0x10000 if level & 0x8000 else level) <= 250
    assert (registers[4] << 16 | registers[5]) == int(t * 10)
    assert coils[0] == (t % 20 < 15)
    assert discrete[0] is True


def test_standalone_serves_until_interrupted(server_process: ServerProcess, make_reader: MakeReader) -> None:
    server_process.start()
    reader = make_reader(port=server_process.port)
    variables = collected(["holding:10:string8"], "str")
    reader.read(variables)
    assert variables[0].value == "Mixer line 1"


def test_ctrl_c_stops_the_standalone_simulator_cleanly() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "flowcollect.simulator", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("flowcollect simulator: Modbus TCP on 127.0.0.1:")
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=10)
        assert process.returncode == 0
        assert "Traceback" not in stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_response_delay_makes_every_answer_wait() -> None:
    with Simulator(response_delay_s=0.05) as slow:
        reader = ModbusDataReader("modbus", slow.host, port=slow.port, max_gap=0)
        try:
            reader.open()
            variables = collected(["holding:1000", "holding:1500"])
            started = time.monotonic()
            reader.read(variables)
            elapsed = time.monotonic() - started
        finally:
            reader.close()
    assert [v.value for v in variables] == [0, 500]
    assert elapsed >= 2 * 0.05


@pytest.mark.parametrize("delay", [-0.1, 11.0, float("nan")])
def test_response_delay_is_checked(delay: float) -> None:
    with pytest.raises(ValueError, match=r"Simulator response_delay_s: must be 0\.\.10 seconds"):
        Simulator(response_delay_s=delay)
