"""Helpers of the line tests: simulated lines (socat pty pairs, RTU over TCP) and a lane's ticks.

Nothing here is a mock: the readers talk RTU to pymodbus servers over a pty pair made by socat,
or over loopback TCP.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from flowcollect.readers.modbus import ModbusDataReader, ModbusLine
from flowcollect.simulator import UNIT_REGISTER, LineSimulator
from flowcollect.values import ValueBatch, VariableSpec

REQUIRE_SERVERS_ENV = "FLOWCOLLECT_REQUIRE_SERVERS"
BAUD = 115_200


def require_socat() -> None:
    """Skip without socat, or fail when the servers are required (CI)."""
    if shutil.which("socat") is None:
        message = "socat is not installed (make servers installs it)"
        if os.environ.get(REQUIRE_SERVERS_ENV) == "1":
            pytest.fail(message)
        pytest.skip(message)


def line_for(sim: LineSimulator, **options: object) -> ModbusLine:
    if sim.serial:
        return ModbusLine(sim.pty, baudrate=BAUD, **options)  # type: ignore[arg-type]
    return ModbusLine(host=sim.host, port=sim.port, framer="rtu", baudrate=BAUD, **options)  # type: ignore[arg-type]


def specs(
    interval_ms: int, addresses: Sequence[str] = (f"holding:{UNIT_REGISTER}", "holding:1005")
) -> list[VariableSpec]:
    """Variables of one context due every ``interval_ms`` (default: the unit's id and 5)."""
    return [
        VariableSpec(i + 1, 1, address, "int", "modbus", interval_ms) for i, address in enumerate(addresses)
    ]


@dataclass
class Tick:
    t_ms: int
    values: dict[int, list[object]]
    errors: dict[int, list[str | None]]


def run_lane(
    readers: Sequence[ModbusDataReader], variables: Sequence[VariableSpec], interval_ms: int, ticks: int
) -> list[Tick]:
    """Call every reader once per instant on the grid, one after another on this thread, as the
    engine's lane does; an instant found already past (this thread was late) is skipped."""
    for reader in readers:
        reader.plan_changed(variables)
    result: list[Tick] = []
    now_ms = time.time() * 1000
    t = (int(now_ms) // interval_ms + 1) * interval_ms
    while len(result) < ticks:
        wait = (t - time.time() * 1000) / 1000
        if wait > 0:
            time.sleep(wait)
        elif -wait * 1000 >= interval_ms:
            t += interval_ms  # a whole interval late: the engine would skip this instant
            continue
        tick = Tick(t, {}, {})
        for reader in readers:
            batch = ValueBatch(t, variables)
            reader.read_batch(batch)
            tick.values[reader.unit] = list(batch.values)
            tick.errors[reader.unit] = list(batch.errors)
        result.append(tick)
        t += interval_ms
    return result


def alternates(exchanges: Sequence[tuple[str, int]]) -> bool:
    """Every request is followed by its own unit's answer (or its silence) before the next one."""
    expecting: int | None = None
    for kind, unit in exchanges:
        if kind == "request":
            if expecting is not None:
                return False
            expecting = unit
        else:
            if expecting != unit:
                return False
            expecting = None
    return True
