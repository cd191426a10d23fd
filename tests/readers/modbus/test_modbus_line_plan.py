"""Lines without I/O: settings, keys, timing on the wire, estimates, natural types, texts."""

from __future__ import annotations

import gc
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from flowcollect import DataCollectionContext, Variable
from flowcollect.compile import compile_context, next_due
from flowcollect.errors import ConfigError
from flowcollect.models import ValueType
from flowcollect.readers import RandomDataReader
from flowcollect.readers.modbus import ModbusDataReader, ModbusLine, estimate_lane
from flowcollect.readers.modbus._connection import (
    LineConnection,
    UnitState,
    lines,
    quiet_pymodbus,
    retry_delay,
    short_text,
)
from flowcollect.readers.modbus.packing import ModbusRequest
from flowcollect.readers.modbus.timing import Pacer, answer_bytes, silent_interval_s, wire_time_s
from flowcollect.values import VariableSpec


def spec(address: str, interval_ms: int = 100) -> VariableSpec:
    return VariableSpec(1, 1, address, "int", "meter", interval_ms)


# ----------------------------------------------------------------------------- lines


def test_line_keys_name_the_resource_the_same_in_every_process() -> None:
    assert ModbusLine("/dev/ttyUSB0").key == "modbus+rtu:///dev/ttyUSB0"
    assert ModbusLine(host="10.0.0.5", port=4001, framer="rtu").key == "modbus+rtu-tcp://10.0.0.5:4001"
    assert ModbusLine(host="127.0.0.1", port=5020).key == "modbus+tcp://127.0.0.1:5020"
    assert ModbusLine(host="::1", port=502).key == "modbus+tcp://[::1]:502"
    assert ModbusDataReader("plc", host="127.0.0.1", port=5020).lane == "modbus+tcp://127.0.0.1:5020"
    rs485 = ModbusLine("/dev/ttyS1", baudrate=9600)
    assert {ModbusDataReader(f"m{u}", line=rs485, unit=u).lane for u in (1, 2, 3)} == {
        "modbus+rtu:///dev/ttyS1"
    }


def test_a_line_key_is_one_object_however_often_it_is_asked() -> None:
    # The collector, the lane, the plan and the connection each keep a device's key: one text.
    made = [ModbusLine(host="127.0.0.1", port=5020) for _ in range(2)]
    assert made[0].key is made[0].key is made[1].key
    assert ModbusDataReader("plc", host="127.0.0.1", port=5020).lane is made[0].key


def test_line_defaults_and_kinds() -> None:
    serial = ModbusLine("/dev/ttyUSB0")
    assert (serial.kind, serial.framer, serial.baudrate, serial.parity, serial.bytesize, serial.stopbits) == (
        "serial",
        "rtu",
        19_200,
        "N",
        8,
        1,
    )
    gateway = ModbusLine(host="10.0.0.5", port=4001, framer="rtu")
    assert (gateway.kind, gateway.baudrate, gateway.is_bus) == ("rtu-tcp", None, True)
    tcp = ModbusLine(host="10.0.0.7")
    assert (tcp.kind, tcp.port, tcp.is_bus, tcp.max_unit) == ("tcp", 502, False, 255)
    assert serial.max_unit == gateway.max_unit == 247


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "ModbusLine port: a serial line needs the port's path"),
        ({"port": "/dev/ttyUSB0", "framer": "tcp"}, "ModbusLine framer: a serial line speaks 'rtu'"),
        ({"host": "h", "port": 0}, "ModbusLine port: must be an int 1..65535, got 0"),
        ({"host": "h", "framer": "ascii"}, "ModbusLine framer: must be 'tcp' (Modbus TCP) or 'rtu'"),
        ({"host": "h", "baudrate": 9600}, "ModbusLine baudrate: a Modbus TCP line has no baud rate"),
        ({"port": "/dev/x", "baudrate": 10}, "ModbusLine baudrate: must be an int 50..4000000, got 10"),
        ({"port": "/dev/x", "parity": "X"}, "ModbusLine parity: must be one of N, E, O, got 'X'"),
        ({"port": "/dev/x", "bytesize": 9}, "ModbusLine bytesize: must be 7 or 8, got 9"),
        ({"port": "/dev/x", "stopbits": 3}, "ModbusLine stopbits: must be 1 or 2, got 3"),
        (
            {"port": "/dev/x", "pause_between_requests_ms": -1},
            "ModbusLine pause_between_requests_ms: must be",
        ),
    ],
)
def test_line_settings_are_checked_by_name(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ModbusLine(**options)  # type: ignore[arg-type]
    assert any(p.startswith(message) for p in caught.value.problems), caught.value.problems


def test_one_port_with_two_settings_is_refused_before_anything_opens() -> None:
    first = ModbusLine("/dev/ttyUSB7", baudrate=9600)
    ModbusDataReader("a", line=first, unit=1)
    with pytest.raises(
        ConfigError, match=r"modbus\+rtu:///dev/ttyUSB7 is configured twice: baudrate 9600 != 19200"
    ):
        ModbusDataReader("b", line=ModbusLine("/dev/ttyUSB7", baudrate=19200), unit=2)
    with pytest.raises(ConfigError, match="give either line= or host= and port=, not both"):
        ModbusDataReader("c", host="127.0.0.1", line=first)


def test_one_registry_owns_a_lines_identity_while_any_reader_names_it() -> None:
    # The same refusal whether a reader is made or a connection is leased, and only while a
    # reader still names the line: once the last one is gone, the port may be configured anew.
    reader = ModbusDataReader("a", line=ModbusLine("/dev/ttyUSB8", baudrate=9600), unit=1)
    conflict = lines.claim(ModbusLine("/dev/ttyUSB8", baudrate=19200))
    assert conflict == "modbus line modbus+rtu:///dev/ttyUSB8 is configured twice: baudrate 9600 != 19200"
    with pytest.raises(ConfigError, match="configured twice: baudrate 9600 != 19200"):
        lines.acquire(ModbusLine("/dev/ttyUSB8", baudrate=19200))
    del reader
    gc.collect()
    assert lines.claim(ModbusLine("/dev/ttyUSB8", baudrate=19200)) is None


# ----------------------------------------------------------------------------- timing


def test_silent_interval_is_three_and_a_half_characters_with_a_floor_above_19200() -> None:
    assert silent_interval_s(9600) == pytest.approx(3.5 * 11 / 9600)  # 4.01 ms
    assert silent_interval_s(19_200) == pytest.approx(3.5 * 11 / 19_200)  # 2.005 ms
    assert silent_interval_s(38_400) == 0.00175
    assert silent_interval_s(115_200) == 0.00175


def test_wire_time_counts_both_frames_the_gap_and_the_turnaround() -> None:
    registers = ModbusRequest("holding", 0, 100)
    assert answer_bytes(registers) == 205
    assert answer_bytes(ModbusRequest("coil", 0, 17)) == 5 + 3
    expected = (8 + 205) * 11 / 9600 + 3.5 * 11 / 9600 + 0.005 + 0.002
    assert wire_time_s(registers, 9600, turnaround_s=0.005, pause_s=0.002) == pytest.approx(expected)


def test_next_due_instant_on_the_engine_grid() -> None:
    assert next_due(1000, {100}) == 1100
    assert next_due(1000, {150, 100}) == 1050
    assert next_due(1049, frozenset({150, 100})) == 1050
    assert next_due(1000, set()) is None


def test_pacer_keeps_frames_apart_in_virtual_time() -> None:
    pacer = Pacer(gap_s=0.004)
    assert pacer.wait_s(10.0) == 0.0
    pacer.done(10.0)
    assert pacer.wait_s(10.001) == pytest.approx(0.003)
    assert pacer.wait_s(10.004) == 0.0


def test_a_silent_unit_backs_off_exponentially_up_to_a_cap() -> None:
    unit = UnitState(3)
    now = 100.0
    delays = []
    for _ in range(7):
        unit.missed(now, 0.1, "no response within 0.1 s")
        delays.append(round(unit.retry_at - now, 3))
        assert unit.backed_off(now + 0.0001)
        assert not unit.backed_off(unit.retry_at)
    assert delays == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    unit.answered(0.004)
    assert not unit.backed_off(now)
    assert unit.failures == 0
    assert retry_delay(0, 1.0) == 0.0


# ----------------------------------------------------------------------------- estimates


def test_line_estimate_and_the_check_warning() -> None:
    line = ModbusLine("/dev/ttyUSB3", baudrate=9600)
    meters = [ModbusDataReader(f"meter{u}", line=line, unit=u, max_gap=100) for u in (1, 2, 3)]
    due = [(reader, [spec("holding:0"), spec("holding:99")]) for reader in meters]
    estimate = estimate_lane(due, tick_ms=1000)
    assert estimate is not None
    assert estimate.requests == 3
    per_request = (8 + 205) * 11 / 9600 + 3.5 * 11 / 9600 + 0.005
    assert estimate.time_ms == pytest.approx(3000 * per_request)
    assert estimate.warning is None
    assert "3 requests, ~" in str(estimate) and "of the 1000 ms tick" in str(estimate)
    tight = estimate_lane(due, tick_ms=500)
    assert tight is not None
    assert tight.load is not None and tight.load > 1
    assert tight.warning is not None
    assert tight.warning.startswith("line modbus+rtu:///dev/ttyUSB3: 3 requests take ~")


def test_estimates_of_lanes_without_a_baud_rate_or_modbus() -> None:
    gateway = ModbusLine(host="10.0.0.5", port=4001, framer="rtu")
    reader = ModbusDataReader("g", line=gateway, unit=1)
    estimate = estimate_lane([(reader, [spec("holding:0")])], tick_ms=100)
    assert estimate is not None
    assert (estimate.time_ms, estimate.load, estimate.warning) == (None, None, None)
    assert str(estimate) == "line modbus+rtu-tcp://10.0.0.5:4001: 1 request per tick"
    assert estimate_lane([(RandomDataReader(), [spec("x")])], tick_ms=100) is None


def test_describe_requests_gives_each_request_its_bytes_and_time() -> None:
    reader = ModbusDataReader("m", line=ModbusLine("/dev/ttyUSB4", baudrate=19_200), unit=7)
    lines = reader.describe_requests([spec("holding:0:float32"), spec("holding:8"), spec("coil:3")])
    assert lines[0] == "unit 7: coil 3..3 (1 bit), 8 + 6 bytes, ~15.0 ms"
    assert lines[1].startswith("unit 7: holding 0..8 (9 registers), 8 + 23 bytes, ~")
    tcp = ModbusDataReader("t", host="127.0.0.1", port=502)
    assert tcp.describe_requests([spec("holding:0")]) == ["unit 1: holding 0..0 (1 register)"]
    assert tcp.describe_requests([spec("nonsense")])[0].startswith("unit 1: modbus address 'nonsense'")


def test_natural_value_types_of_addresses() -> None:
    reader = ModbusDataReader("t", host="127.0.0.1", port=502)
    natural = reader.natural_value_type
    assert natural("coil:1") == "bool"
    assert natural("discrete:4") == "bool"
    assert natural("holding:0") == "int"
    assert natural("input:0:int16") == "int"
    assert natural("holding:0:uint64:CDAB") == "int"
    assert natural("holding:0:float32") == "float"
    assert natural("input:0:float64:DCBA") == "float"
    assert natural("holding:0:string8") == "str"
    assert natural("holding:x") is None


@pytest.mark.parametrize(
    ("address", "value_type"),
    [
        ("coil:1", "bool"),
        ("holding:0", "int"),
        ("holding:0:float32", "float"),
        ("holding:0:string8", "str"),
        ("holding:0", "float"),
        ("coil:1", "int"),
        ("holding:0:string8", "float"),
        ("holding:0:string400", "str"),
        ("holding:x", "float"),
    ],
)
def test_validate_as_judges_as_validate_of_a_typed_copy(address: str, value_type: ValueType) -> None:
    """The compiler asks ``validate_as`` for a variable without a type; the Modbus reader
    answers without copying the variable, and must answer as ``validate`` would for the copy."""
    reader = ModbusDataReader("t", host="127.0.0.1", port=502)
    untyped = Variable(id=1, address=address, reader="t")

    def verdict(call: Callable[[], None]) -> str:
        try:
            call()
        except ValueError as exc:
            return str(exc)
        return "ok"

    typed = untyped.model_copy(update={"value_type": value_type})
    assert verdict(lambda: reader.validate_as(untyped, value_type)) == verdict(lambda: reader.validate(typed))


def test_validate_as_still_calls_a_subclass_validate() -> None:
    seen: list[ValueType | None] = []

    class Stricter(ModbusDataReader):
        def validate(self, variable: Variable) -> None:
            seen.append(variable.value_type)
            super().validate(variable)

    reader = Stricter("s", host="127.0.0.1", port=502)
    context = DataCollectionContext(id=1, variables=[Variable(id=1, address="coil:2", reader="s")])
    compile_context(context, {"s": reader})
    assert seen == ["bool"]  # with the type the engine resolved


# ----------------------------------------------------------------------------- texts and logs


def test_short_texts_drop_pymodbus_prefixes_and_never_cut_a_word() -> None:
    exc = Exception(
        "Modbus Error: [Input/Output] No response received after 3 retries, continue with next request"
    )
    assert short_text(exc) == "No response received after 3 retries, continue with next request"
    long_text = "Modbus Error: [Connection] " + " ".join(["internal"] * 30)
    cut = short_text(Exception(long_text), limit=40)
    assert cut.endswith("...")
    assert len(cut) <= 40
    assert all(word == "internal" for word in cut[:-3].split())
    assert short_text(ValueError("")) == "ValueError"


def test_pymodbus_warnings_and_errors_are_quiet_only_inside_our_requests(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("pymodbus.logging")
    with caplog.at_level(logging.DEBUG, logger="pymodbus"):
        with quiet_pymodbus():
            logger.error("No response received after 0 retries, continue with next request")
            logger.debug("frames, for those who debug")
        logger.error("a server's own error, outside any request of ours")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("DEBUG", "frames, for those who debug"),
        ("ERROR", "a server's own error, outside any request of ours"),
    ]


def test_a_silent_bus_is_asked_once_per_instant_each_unit_in_turn() -> None:
    connection = LineConnection(ModbusLine("/dev/ttyUSB5"))
    first, second = connection.unit(1), connection.unit(2)
    assert not connection.bus_silent()
    first.missed(10.0, 0.1, "no response within 0.1 s")
    assert not connection.bus_silent()  # unit 2 still answers: unit 1's silence is its own
    second.missed(10.1, 0.1, "no response within 0.1 s")
    first.tried_at, second.tried_at = 10.0, 10.1
    assert connection.bus_silent()
    assert not connection.may_probe(second, 1000)  # unit 1 waited longer: its turn
    assert connection.may_probe(first, 1000)
    assert not connection.may_probe(first, 1000)  # one request per instant
    first.tried_at = 11.0
    assert connection.may_probe(second, 1100)
    lone = LineConnection(ModbusLine("/dev/ttyUSB6"))
    lone.unit(1).missed(10.0, 0.1, "no response within 0.1 s")
    assert not lone.bus_silent()  # a lone unit keeps its back-off


def test_plan_changed_plans_each_due_set_before_the_first_tick() -> None:
    reader = ModbusDataReader("m", host="127.0.0.1", port=502)
    variables = [
        VariableSpec(1, 1, "holding:0", "int", "m", 100),
        VariableSpec(2, 1, "holding:1", "int", "m", 1000),
        VariableSpec(3, 1, "coil:4", "bool", "m", 100),
    ]
    reader.plan_changed(variables)
    # Due every 100 ms: holding:0 and coil:4; every 1000 ms all three.
    assert reader.stats()["plans"] == 2


def test_pre_planning_walks_a_bounded_number_of_due_instants() -> None:
    # 999 and 1000 ms: a hyperperiod of 999 s with ~2,000 due instants. The first 512 of them
    # (compile.due_patterns) already hold all three patterns: both, 999 alone, 1000 alone.
    reader = ModbusDataReader("m", host="127.0.0.1", port=502)
    reader.plan_changed(
        [VariableSpec(1, 1, "holding:0", "int", "m", 999), VariableSpec(2, 1, "holding:1", "int", "m", 1000)]
    )
    assert reader.stats()["plans"] == 3


def test_line_estimates_of_a_compiled_plan_find_each_lines_busiest_tick() -> None:
    from flowcollect import DataCollectionContext, Variable
    from flowcollect.compile import compile_plan
    from flowcollect.readers.modbus import line_estimates

    rs485 = ModbusLine("/dev/ttyUSB8", baudrate=9600)
    meters = [ModbusDataReader(f"meter{u}", line=rs485, unit=u) for u in (1, 2, 3)]
    plc = ModbusDataReader("plc", host="127.0.0.1", port=5021)
    fast = DataCollectionContext(
        id=1,
        interval_ms=100,
        variables=[Variable(id=u, reader=f"meter{u}", address="holding:0:float32") for u in (1, 2, 3)]
        + [Variable(id=9, reader="plc", address="holding:0")],
    )
    slow = DataCollectionContext(
        id=2,
        interval_ms=1000,
        variables=[Variable(id=10 + u, reader=f"meter{u}", address="holding:50:string40") for u in (1, 2, 3)],
    )
    estimates = line_estimates(compile_plan([fast, slow], [*meters, plc]), [*meters, plc])
    by_line = {e.line: e for e in estimates}
    assert set(by_line) == {"modbus+rtu:///dev/ttyUSB8", "modbus+tcp://127.0.0.1:5021"}
    busiest = by_line["modbus+rtu:///dev/ttyUSB8"]
    # At the whole second both are due: 6 requests, 3 of 85 answer bytes, in the 100 ms to the
    # next instant: far more than 9600 baud carries.
    assert busiest.requests == 6
    assert busiest.tick_ms == 100
    assert busiest.warning is not None
    assert by_line["modbus+tcp://127.0.0.1:5021"].warning is None
    quiet = line_estimates(compile_plan([fast], [*meters, plc]), [*meters, plc])
    assert [e.warning for e in quiet if e.line.startswith("modbus+rtu")] == [None]


PIPELINE = """
from flowcollect import DataCollectionContext, Variable
from flowcollect.pipeline import Pipeline
from flowcollect.readers import ModbusDataReader, ModbusLine
from flowcollect.writers.log import LogDataWriter

rs485 = ModbusLine("/dev/ttyUSB0", baudrate=BAUD)
meters = [ModbusDataReader(f"meter{u}", line=rs485, unit=u) for u in (1, 2, 3)]
pipeline = Pipeline(
    name="meters",
    readers=meters,
    writers=[LogDataWriter()],
    contexts=[
        DataCollectionContext(
            id=1,
            interval_ms=100,
            variables=[Variable(id=u, reader=f"meter{u}", address="holding:0:float32") for u in (1, 2, 3)]
            + [Variable(id=10 + u, reader=f"meter{u}", address="holding:50:string40") for u in (1, 2, 3)],
        )
    ],
)
"""


@pytest.mark.parametrize("baud", [9600, 115200])
def test_plan_prints_each_lines_estimate_and_check_warns_when_it_cannot_keep_up(
    tmp_path: Path, baud: int
) -> None:
    path = tmp_path / "meters.py"
    path.write_text(PIPELINE.replace("BAUD", str(baud)), encoding="utf-8")
    flowcollect = [sys.executable, "-m", "flowcollect"]
    plan = subprocess.run(
        [*flowcollect, "plan", str(path)], capture_output=True, text=True, timeout=60, check=True
    )
    assert "lines (estimated from the baud rate, busiest tick)" in plan.stdout
    assert "  line modbus+rtu:///dev/ttyUSB0: 6 requests, ~" in plan.stdout
    assert f"per tick at {baud} baud" in plan.stdout
    check = subprocess.run(
        [*flowcollect, "check", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert check.returncode == 0, check.stderr
    warned = [line for line in check.stderr.splitlines() if line.startswith("warning: line modbus+rtu")]
    if baud == 9600:  # 6 requests, 3 of 85 answer bytes: ~430 ms of a 100 ms tick
        assert len(warned) == 1
        assert "more than the 100 ms tick" in warned[0]
    else:  # ~69 ms at 115200 baud: it fits
        assert warned == []
