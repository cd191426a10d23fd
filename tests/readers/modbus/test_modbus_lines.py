"""Several units on one line (a serial pty pair, RTU over TCP): shared connection, per-unit faults.

Real peers only: pymodbus's serial server on one end of a socat pty pair serving three units,
and pymodbus's TCP server speaking RTU frames as a gateway does.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import serial
from line_helpers import BAUD, alternates, line_for, require_socat, run_lane, specs
from modbus_helpers import LoopThread, collected, on_loop

from flowcollect.readers.modbus import ModbusDataReader, ModbusLine
from flowcollect.simulator import HOLE_START, UNIT_REGISTER, LineSimulator
from flowcollect.values import ValueBatch

pytestmark = [pytest.mark.server, pytest.mark.realtime]

UNITS = (1, 2, 3)
SKIPPED = "skipped: the line is busy until the next tick"
TICK_MS = 250
TIMEOUT_S = 0.1
# Tests of something else than the grid read at instant 0 with an hourly interval: the line's
# next instant is then at most an hour away, and never close enough to skip a request.
OFF_GRID_MS = 3_600_000


@pytest.fixture(params=["serial", "rtu-tcp"])
def sim(request: pytest.FixtureRequest) -> Iterator[LineSimulator]:
    serial_line = request.param == "serial"
    if serial_line:
        require_socat()
    simulator = LineSimulator(UNITS, serial=serial_line, baudrate=BAUD)
    simulator.start()
    try:
        yield simulator
    finally:
        simulator.close()


@pytest.fixture
def readers(sim: LineSimulator, path: LoopThread | None) -> Iterator[list[ModbusDataReader]]:
    """The three units' readers, read by a thread or awaited on the event loop (``path``: the
    gateway over pymodbus's asyncio client; a serial port on the line's own thread)."""
    line = line_for(sim)
    made = [ModbusDataReader(f"unit{u}", line=line, unit=u, timeout_s=TIMEOUT_S) for u in UNITS]
    if path is not None:
        made = [on_loop(reader, path) for reader in made]
    try:
        yield made
    finally:
        for reader in made:
            reader.close()


def test_every_unit_answers_with_its_own_values_one_request_at_a_time(
    sim: LineSimulator, readers: list[ModbusDataReader]
) -> None:
    assert len({r.lane for r in readers}) == 1
    assert readers[0].lane.startswith("modbus+rtu://" if sim.serial else "modbus+rtu-tcp://")
    variables = specs(TICK_MS)
    ticks = run_lane(readers, variables, TICK_MS, ticks=6)
    for tick in ticks:
        for unit in UNITS:
            # A tick may only lose values to a late lane (skipped, and counted).
            if tick.errors[unit] != [SKIPPED, SKIPPED]:
                assert tick.errors[unit] == [None, None]
                assert tick.values[unit] == [unit, 5]
    delivered = sum(1 for tick in ticks for unit in UNITS if tick.errors[unit] == [None, None])
    assert delivered >= len(ticks) * len(UNITS) // 2
    # The two values of a unit are 505 registers apart: two requests per unit and tick, each
    # counted at the unit itself.
    for reader in readers:
        stats = reader.stats()
        assert stats["requests"] + stats["skipped_requests"] == 2 * len(ticks)
        assert sim.requests_by_unit.get(reader.unit, 0) == stats["requests"]
        assert stats["connect_attempts"] == 1  # one connection, shared by the three units
    assert alternates(sim.exchanges)


def test_readers_called_from_several_threads_still_never_overlap(
    sim: LineSimulator, readers: list[ModbusDataReader]
) -> None:
    # Before the engine runs a line's readers on one lane, each has a thread of its own: the
    # line's connection still carries one request at a time.
    wrong: list[object] = []

    def hammer(reader: ModbusDataReader) -> None:
        for _ in range(15):
            # The per-value path, without an instant (so nothing is ever skipped).
            variables = collected([f"holding:{UNIT_REGISTER}", "holding:1005"])
            reader.read(variables)
            if [v.value for v in variables] != [reader.unit, 5]:
                wrong.append((reader.unit, [(v.value, v.error) for v in variables]))

    threads = [threading.Thread(target=hammer, args=(r,)) for r in readers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert wrong == []
    assert sim.requests_by_unit == {1: 30, 2: 30, 3: 30}
    assert alternates(sim.exchanges)


@pytest.mark.slow
def test_a_silent_unit_costs_one_timeout_per_back_off_and_the_others_keep_their_ticks(
    sim: LineSimulator, readers: list[ModbusDataReader], caplog: pytest.LogCaptureFixture
) -> None:
    variables = specs(TICK_MS, [f"holding:{UNIT_REGISTER}"])
    # The answering units' own timeouts are not what this test is about: 0.1 s was at times
    # too short for the in-process simulator (its thread shares the interpreter with the test,
    # the loop and whatever earlier tests left running), failing a full slow run now and then.
    # The silent unit keeps TIMEOUT_S: its timeouts and back-offs are what is counted.
    for answering in (readers[0], readers[2]):
        answering.timeout_s = 10 * TIMEOUT_S
    run_lane(readers, variables, TICK_MS, ticks=2)
    sim.silence(2)
    sim.reset_counters()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING):
        ticks = run_lane(readers, variables, TICK_MS, ticks=16)
    elapsed = time.monotonic() - started
    for tick in ticks:
        for unit in (1, 3):
            assert tick.errors[unit] in ([None], [SKIPPED])
            if tick.errors[unit] == [None]:
                assert tick.values[unit] == [unit]
        assert tick.values[2] == [None]
        assert tick.errors[2] == ["no response within 0.1 s"]
    kept = sum(1 for tick in ticks for unit in (1, 3) if tick.errors[unit] == [None])
    assert kept >= len(ticks)  # at least half of the two units' values, whatever the load
    silent = readers[1].stats()
    # Asked again after 0.2 s, 0.4 s, 0.8 s, ...: one timeout per back-off period.
    periods = 1
    at, delay = TIMEOUT_S, 2 * TIMEOUT_S
    while at + delay < elapsed:
        at += delay + TIMEOUT_S
        delay = min(2 * delay, 5.0)
        periods += 1
    assert 1 <= silent["timeouts"] <= periods
    assert sim.requests_by_unit.get(2, 0) == silent["timeouts"]
    assert silent["backoff_skips"] == len(ticks) - silent["timeouts"]
    assert silent["connected"] == 1  # the silent unit closed nothing
    assert alternates(sim.exchanges)
    # The reader reports the failure; pymodbus's own ERROR lines for it are not printed.
    assert [r for r in caplog.records if r.name.startswith("pymodbus")] == []

    sim.silence(2, False)
    # Back within the back-off delay after the last attempt (at most 3.2 s here) and a tick.
    back = run_lane(readers, variables, TICK_MS, ticks=15)
    assert back[-1].values[2] == [2]


def test_the_line_gone_and_back_returns_every_unit_within_two_ticks(
    sim: LineSimulator, readers: list[ModbusDataReader]
) -> None:
    variables = specs(TICK_MS, [f"holding:{UNIT_REGISTER}"])
    before = run_lane(readers, variables, TICK_MS, 2)
    assert all(t.values[1] == [1] or t.errors[1] == [SKIPPED] for t in before)
    sim.stop()  # the port (or the gateway) goes away
    down = run_lane(readers, variables, TICK_MS, ticks=4)
    for tick in down:
        for unit in UNITS:
            error = tick.errors[unit][0]
            assert error is not None
            assert error.startswith(("connection lost", "not connected"))
    assert readers[0].stats()["connected"] == 0
    sim.start()
    back_at = time.time() * 1000
    after = run_lane(readers, variables, TICK_MS, ticks=3)
    # Every unit's value within two ticks of the line coming back (instants on the grid).
    first = {u: min((t.t_ms for t in after if t.values[u] == [u]), default=None) for u in UNITS}
    for t_ms in first.values():
        assert t_ms is not None
        assert t_ms <= back_at + 2 * TICK_MS
    assert readers[0].stats()["reconnects"] == 1


def test_a_bus_gone_silent_returns_every_unit_within_two_ticks(
    sim: LineSimulator, readers: list[ModbusDataReader]
) -> None:
    # The port stays open but no unit answers (the bus cable pulled, the gateway's serial side
    # dead). Each unit alone would back off for seconds; with the whole bus silent the line
    # asks one unit per instant instead, and the first answer brings every unit back.
    variables = specs(TICK_MS, [f"holding:{UNIT_REGISTER}"])
    run_lane(readers, variables, TICK_MS, 2)
    if sim.serial:
        sim.stop(keep_port=True)
    else:
        for unit in UNITS:
            sim.silence(unit)
    silent = run_lane(readers, variables, TICK_MS, ticks=12)
    assert all(t.errors[u][0] is not None for t in silent for u in UNITS)
    asked = sum(r.stats()["timeouts"] for r in readers)
    assert asked <= len(silent) + len(UNITS) - 1  # one request per instant once all are silent
    assert all(r.stats()["unit_failures"] >= 1 for r in readers)
    assert readers[0].stats()["connected"] == 1
    if sim.serial:
        sim.start()
    else:
        for unit in UNITS:
            sim.silence(unit, False)
    back_at = time.time() * 1000
    after = run_lane(readers, variables, TICK_MS, ticks=3)
    first = {u: min((t.t_ms for t in after if t.values[u] == [u]), default=None) for u in UNITS}
    for t_ms in first.values():
        assert t_ms is not None
        assert t_ms <= back_at + 2 * TICK_MS


def test_a_request_that_would_overrun_the_next_instant_is_skipped_and_counted(
    sim: LineSimulator, readers: list[ModbusDataReader]
) -> None:
    variables = specs(TICK_MS)
    now = [1_000_000.249]
    reader = ModbusDataReader(
        "clocked", line=readers[0].line, unit=1, timeout_s=TIMEOUT_S, clock=lambda: now[0]
    )
    # This reader's clock says the next instant is 1 ms away: no request fits before it.
    batch = ValueBatch(1_000_000_000, variables)
    reader.read_batch(batch)
    assert batch.errors == [SKIPPED, SKIPPED]
    assert reader.stats()["skipped_requests"] == 2
    assert sim.requests_by_unit.get(1, 0) == 0
    # With the whole tick ahead, the requests run.
    now[0] = 1_000_000.000
    batch = ValueBatch(1_000_000_000, variables)
    reader.read_batch(batch)
    assert batch.values == [1, 5]
    reader.close()


@pytest.mark.parametrize("kind", ["serial"])
def test_a_port_another_program_holds_is_reported_busy(kind: str) -> None:
    require_socat()
    with LineSimulator((1,), serial=True, baudrate=BAUD) as sim:
        holder = serial.serial_for_url(sim.pty, baudrate=BAUD, exclusive=True)
        try:
            line = ModbusLine(sim.pty, baudrate=BAUD)
            reader = ModbusDataReader("meter", line=line, unit=1, timeout_s=TIMEOUT_S)
            batch = ValueBatch(0, specs(TICK_MS))
            reader.read_batch(batch)
            assert batch.errors == ["not connected: port busy (another program has it open)"] * 2
            reader.close()
        finally:
            holder.close()


def test_unit_ids_on_rtu_lines_are_0_to_247() -> None:
    line = ModbusLine("/dev/ttyUSB0")
    ModbusDataReader("broadcast", line=line, unit=0)
    ModbusDataReader("last", line=line, unit=247)
    with pytest.raises(ValueError, match=r"unit: must be an int 0\.\.247 on line modbus\+rtu:///dev/ttyUSB0"):
        ModbusDataReader("beyond", line=line, unit=248)
    ModbusDataReader("tcp", host="127.0.0.1", port=502, unit=255)


def test_the_standalone_simulator_prints_the_pty_to_open() -> None:
    require_socat()
    process = subprocess.Popen(
        [sys.executable, "-m", "flowcollect.simulator", "--serial", "--baudrate", str(BAUD)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"serial port (\S+) \(115200 baud, 8N1\), units 1, 2, 3", line)
        assert match is not None, line
        reader = ModbusDataReader(
            "meter", line=ModbusLine(match.group(1), baudrate=BAUD), unit=3, timeout_s=1.0
        )
        variables = collected([f"holding:{UNIT_REGISTER}"])
        reader.read(variables)
        assert (variables[0].value, variables[0].error) == (3, None)
        reader.close()
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()
    assert not os.path.exists(match.group(1))  # the pty pair went with the simulator


def test_a_line_with_nothing_to_read_lets_go_of_its_port() -> None:
    # A lane handed to another collector (or whose contexts all stopped) hears an empty plan:
    # the port is closed, so its new owner can open it; a later plan opens it again.
    require_socat()
    with LineSimulator((1,), serial=True, baudrate=BAUD) as sim:
        reader = ModbusDataReader("meter", line=ModbusLine(sim.pty, baudrate=BAUD), unit=1, timeout_s=1.0)
        variables = specs(OFF_GRID_MS, [f"holding:{UNIT_REGISTER}"])
        reader.plan_changed(variables)
        batch = ValueBatch(0, variables)
        reader.read_batch(batch)
        assert batch.values == [1]
        reader.plan_changed([])
        other = serial.serial_for_url(sim.pty, baudrate=BAUD, exclusive=True)  # free now
        other.close()
        reader.plan_changed(variables)
        batch = ValueBatch(0, variables)
        reader.read_batch(batch)
        assert batch.values == [1]
        reader.close()


@pytest.fixture
def gateway() -> Iterator[LineSimulator]:
    with LineSimulator(UNITS, baudrate=BAUD) as simulator:
        yield simulator


def test_retries_are_per_unit_and_spent_only_while_it_answers(gateway: LineSimulator) -> None:
    line = line_for(gateway)
    patient = ModbusDataReader("patient", line=line, unit=1, timeout_s=0.05, retries=2)
    hasty = ModbusDataReader("hasty", line=line, unit=2, timeout_s=0.05)
    variables = specs(OFF_GRID_MS, [f"holding:{UNIT_REGISTER}"])
    gateway.silence(1)
    gateway.silence(2)
    for reader in (patient, hasty):
        batch = ValueBatch(0, variables)
        reader.read_batch(batch)
        assert batch.errors == ["no response within 0.05 s"]
    assert gateway.requests_by_unit == {1: 3, 2: 1}  # the first try and two retries; no retry
    time.sleep(0.25)  # past the first back-off (2 x 0.05 s)
    batch = ValueBatch(0, variables)
    patient.read_batch(batch)
    assert gateway.requests_by_unit[1] == 4  # a unit already failing gets one attempt
    patient.close()
    hasty.close()


def test_what_a_unit_taught_is_its_own_and_shared_by_its_readers(gateway: LineSimulator) -> None:
    line = line_for(gateway)
    first = ModbusDataReader("first", line=line, unit=1, timeout_s=0.5)
    again = ModbusDataReader("again", line=line, unit=1, timeout_s=0.5)
    other = ModbusDataReader("other", line=line, unit=2, timeout_s=0.5)
    hole = specs(OFF_GRID_MS, [f"holding:{r}" for r in range(HOLE_START, HOLE_START + 10)])
    batch = ValueBatch(0, hole)
    first.read_batch(batch)  # split on the exception, learned: 405 is bad
    assert batch.errors.count(None) == 9
    assert first.stats()["learned_bad_registers"] >= 1
    gateway.reset_counters()
    for reader in (again, other):
        reader.read_batch(ValueBatch(0, hole))
    # Unit 1's other reader plans around the hole at once (3 requests, no split); unit 2 has
    # taught nothing yet, so its reader tries the merged request and splits on its own.
    assert again.stats()["splits"] == 0
    assert gateway.requests_by_unit[1] == 3
    assert other.stats()["splits"] == 1
    for reader in (first, again, other):
        reader.close()


def test_frames_are_kept_apart_by_the_silent_interval_and_the_pause(sim: LineSimulator) -> None:
    line = line_for(sim, pause_between_requests_ms=20)
    gap_s = line.gap_s
    assert gap_s == pytest.approx(0.020 + (0.00175 if sim.serial else 0.0))
    readers = [ModbusDataReader(f"u{u}", line=line, unit=u, timeout_s=0.5) for u in UNITS]
    variables = specs(OFF_GRID_MS, [f"holding:{UNIT_REGISTER}"])
    readers[0].read_batch(ValueBatch(0, variables))  # connect, and one exchange before timing
    started = time.monotonic()
    for reader in readers:
        batch = ValueBatch(0, variables)
        reader.read_batch(batch)
        assert batch.values == [reader.unit]
    # Three requests after an exchange: each waits for the line's gap first.
    assert time.monotonic() - started >= 3 * gap_s
    for reader in readers:
        reader.close()
