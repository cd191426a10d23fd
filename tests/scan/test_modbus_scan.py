"""``flowcollect scan``: against the Modbus simulator, a simulated RTU line with a silent unit,
and a pymodbus server of the test's own with gaps, an exception range and a request-size limit.
The scan must find exactly what each serves, and never write."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from flowcollect import ConfigError
from flowcollect.scan import report_csv, report_text, scan_modbus
from flowcollect.scan._modbus import OK, scan_units
from flowcollect.simulator import LineSimulator, Simulator
from flowcollect.tags import read_csv
from tests.support.victoria import free_port

READS = {1, 2, 3, 4}


@pytest.fixture(scope="module")
def simulator() -> Iterator[Simulator]:
    with Simulator() as sim:
        yield sim


def test_the_simulators_map_is_found_exactly_and_nothing_is_written(simulator: Simulator) -> None:
    before = len(simulator.request_log)
    report = scan_modbus(
        f"modbus://127.0.0.1:{simulator.port}", units=[1], tables=["holding", "coil"], first=0, last=620,
        pause_s=0,
    )  # fmt: skip
    [unit] = report.units
    holding, coils = unit.tables
    assert holding.readable == [(0, 17), (100, 227), (300, 323), (400, 404), (406, 409), (500, 500)]
    assert holding.refused == [
        (18, 99, 2), (228, 299, 2), (324, 399, 2), (405, 405, 2), (410, 499, 2), (501, 620, 2)
    ]  # fmt: skip
    assert (holding.largest_request, holding.largest_is_lower_bound) == (125, False)
    assert coils.readable[0][0] == 0 and coils.largest_request is not None
    requests = simulator.request_log[before:]
    assert len(requests) == report.requests
    assert {r.function_code for r in requests} <= READS, "a scan only ever reads"


class Device:
    """A pymodbus server of the test's own: unit 1 with gaps, an exception range (device failure
    on 100..109) and at most 50 registers a request; unit 2 a short map. (A unit that never
    answers is the RTU line's silenced unit, below: pymodbus answers an unknown unit id.)"""

    def __init__(self) -> None:
        self.port = free_port()
        self.codes: list[int] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._server: ModbusTcpServer | None = None

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        values: object,
    ) -> ExcCodes | None:
        self.codes.append(function_code)
        if count > 50:
            return ExcCodes.ILLEGAL_VALUE
        if address < 110 and address + count > 100:
            return ExcCodes.DEVICE_FAILURE
        return None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        bit = [SimData(0, values=[False], datatype=DataType.BITS)]
        register = [SimData(0, values=[0], datatype=DataType.REGISTERS)]
        holding1 = [
            SimData(0, values=list(range(200)), datatype=DataType.REGISTERS),
            SimData(200, values=[7] * 30, datatype=DataType.REGISTERS),
        ]
        holding2 = [SimData(10, values=[1, 2, 3], datatype=DataType.REGISTERS)]
        unit1 = SimDevice(1, simdata=(bit, bit, holding1, register), action=self._action)
        unit2 = SimDevice(2, simdata=(bit, bit, holding2, register))

        async def serve() -> None:
            # pymodbus makes its transport on the running loop.
            self._server = ModbusTcpServer([unit1, unit2], address=("127.0.0.1", self.port))
            await self._server.serve_forever(background=True)
            self._ready.set()
            await self._server.serving

        self._loop.run_until_complete(serve())
        self._loop.close()

    def __enter__(self) -> Device:
        self._thread.start()
        assert self._ready.wait(10), "the test device did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        asyncio.run_coroutine_threadsafe(self._server.shutdown(), self._loop).result(10)
        self._thread.join(10)


def test_gaps_exception_ranges_and_request_limits() -> None:
    with Device() as device:
        report = scan_modbus(f"modbus://127.0.0.1:{device.port}", units=[1, 2], first=0, last=299, pause_s=0)
    one, two = report.units
    assert (one.answers, two.answers) == (True, True)
    [holding] = one.tables
    assert holding.readable == [(0, 99), (110, 229)]
    assert holding.refused == [(100, 109, 4), (230, 299, 2)]
    assert (holding.largest_request, holding.largest_is_lower_bound) == (50, False)
    assert two.tables[0].readable == [(10, 12)]
    assert (two.tables[0].largest_request, two.tables[0].largest_is_lower_bound) == (3, True)
    assert set(device.codes) <= READS
    text = report_text("modbus://device", report)
    assert "unit 1: answers\n  holding: readable 0-99, 110-229\n" in text
    assert "    exception 4 (device failure): 100-109\n" in text
    assert "    largest request: 50 registers\n" in text
    assert "    largest request: at least 3 registers\n" in text
    assert text.endswith(f"{report.requests} requests in {report.elapsed_s:.1f} s, complete\n")


def test_a_silent_unit_on_an_rtu_line_is_asked_once() -> None:
    with LineSimulator((1, 2, 3), serial=False) as line:
        line.silence(3)
        report = scan_modbus(
            f"modbus+rtu-tcp://127.0.0.1:{line.port}",
            units=[1, 2, 3],
            first=0,
            last=20,
            pause_s=0,
            timeout_s=0.3,
        )
        asked = line.requests_by_unit
    assert report.answering == [1, 2]
    assert asked[3] == 1
    assert "no answer from unit(s) 3\n" in report_text("line", report)
    assert report.units[0].tables[0].readable == [(0, 17)]


def test_the_whole_scan_is_bounded_in_time_and_says_where_it_stopped() -> None:
    now = [0.0]

    def probe(table: str, unit: int, address: int, count: int) -> int | None:
        now[0] += 1.0  # every request takes a second of virtual time
        return OK

    report = scan_units(probe, range(1, 248), ["holding"], 0, 9999, pause_s=0.5, max_time_s=10,
                        clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))  # fmt: skip
    assert not report.complete
    assert report.requests == 7  # 1.5 s each: the eighth would start past the deadline
    assert report.stopped_at.startswith("unit 1 holding ")


def test_resolution_trades_requests_for_exactness() -> None:
    readable = set(range(0, 40)) | {100}

    def probe(table: str, unit: int, address: int, count: int) -> int | None:
        return OK if all(a in readable for a in range(address, address + count)) else 2

    exact = scan_units(probe, [1], ["holding"], 0, 499, pause_s=0)
    coarse = scan_units(probe, [1], ["holding"], 0, 499, pause_s=0, resolution=16)
    assert exact.units[0].tables[0].readable == [(0, 39), (100, 100)]
    assert coarse.units[0].tables[0].readable[0][0] == 0
    assert (100, 100) not in coarse.units[0].tables[0].readable  # an island under 16 is missed
    assert coarse.requests * 4 < exact.requests


def test_the_command_prints_a_table_or_a_tag_list(simulator: Simulator, tmp_path: Path) -> None:
    url = f"modbus://127.0.0.1:{simulator.port}"
    done = subprocess.run(
        [sys.executable, "-m", "flowcollect", "scan", url, "--units", "1", "--range", "395-410",
         "--rate", "1000"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("unit 1: answers\n  holding: readable 400-404, 406-409\n")
    listed = subprocess.run(
        [sys.executable, "-m", "flowcollect", "scan", url, "--units", "1", "--range", "400-409",
         "--rate", "1000", "--format", "csv"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    tags = tmp_path / "tags.csv"
    tags.write_text(listed.stdout)
    variables = read_csv(tags, reader="plc")
    assert [v.address for v in variables] == [
        f"holding:{a}" for a in (400, 401, 402, 403, 404, 406, 407, 408, 409)
    ]
    assert variables[0].tags == {"unit": "1"}
    bad = subprocess.run(
        [sys.executable, "-m", "flowcollect", "scan", "http://x", "--units", "1"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert bad.returncode == 1 and bad.stderr.startswith("error: scan 'http://x': the scheme must be one of")


def test_bad_targets_are_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="name the serial device"):
        scan_modbus("modbus+rtu://", units=[1])
    with pytest.raises(ConfigError, match="unknown options \\['speed'\\]"):
        scan_modbus("modbus+rtu:///dev/ttyUSB9?speed=9600", units=[1])


def test_report_csv_lists_readable_addresses_only() -> None:
    def probe(table: str, unit: int, address: int, count: int) -> int | None:
        return OK if address + count <= 2 else 2

    report = scan_units(probe, [5], ["coil"], 0, 3, pause_s=0)
    assert (
        report_csv(report)
        == "name,address,value_type,tag:unit\nu5_coil_0,coil:0,bool,5\nu5_coil_1,coil:1,bool,5\n"
    )
