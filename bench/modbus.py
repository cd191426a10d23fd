"""Modbus benchmark: requests per tick and values/s through the engine against raw pymodbus.

Prints one JSON object. The simulator runs in its own process, so the device's CPU does not
share the collector's interpreter lock (a real PLC does not either). Each throughput figure is
taken twice: against the simulator answering as fast as loopback allows (~0.2 ms a request),
and against the simulator waiting ``--delay-ms`` (default 2 ms) before each answer, as a real
PLC's scan does.

- ``requests_per_tick``: 1,000 holding registers due at the same tick; the plan, and the
  requests one real read sent, against the minimum ceil(1000 / 125) = 8. Target: equal.
- ``raw_values_per_s``: a bare pymodbus loop reading the same registers in 125-register
  requests, as fast as it can.
- ``reader_alone_values_per_s``: ``ModbusDataReader.read`` called back to back with fresh
  values (what the engine does each tick, minus the clock): the reader's own cost.
- ``engine_values_per_s``: ``DataCollector`` collecting the 1,000 variables at a 1 ms interval
  (so it is never idle: ticks that find the previous read still running are skipped and
  counted), into a writer that only counts, with the interpreter's defaults (as ``flowcollect
  run``: no ``gc.freeze()``). Reads start only on the 1 ms grid, so a 2.1 ms tick is followed
  by a wait for the 3 ms instant: this figure is bounded by the grid, not by the engine.
- ``engine_capacity_values_per_s``: the same run's values per tick over the reader thread's
  whole time on a tick (``tick_ms_p50``: building the values, the read, the split per context,
  the hand-over to the writer): what the engine collects per second of reader-thread time.
  Target: at least 80% of the raw loop.

Lines (``lines``): three units on one RTU-over-TCP line (the simulator process with ``--rtu``),
each reader 100 holding registers, read on a 100 ms grid by one thread, unit after unit, as the
engine's lane for the line does:

- ``requests_per_tick``: requests the three units cost per tick (planned, and counted by the
  readers over the run) against the minimum, one per unit. Target: equal.
- ``one_silent``: the same run with unit 2 silent (``timeout_s`` 60 ms): the values units 1 and
  3 delivered against the run with all three answering. Target: at least 99 %.
- ``reader_vs_raw``: the reader's time per tick (the three ``read_batch`` calls, given the
  current grid instant) against a bare pymodbus RTU-over-TCP client doing the same three
  requests, alternating back to back; medians, raw over reader (the reader's rate against the
  raw loop's). Requests skipped near a grid instant (they would overrun it) are counted and
  reported. Target: at least 80 %.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from pymodbus.client import ModbusTcpClient
from pymodbus.framer import FramerType

from flowcollect import DataCollectionContext, DataCollector, DataWriter, Variable
from flowcollect.readers import ModbusDataReader, ModbusLine
from flowcollect.simulator import BULK_COUNT, BULK_START
from flowcollect.values import CollectedVariable, ValueBatch, VariableSpec

ADDRESSES = [f"holding:{BULK_START + k}" for k in range(BULK_COUNT)]
MAX_REGISTERS = 125


class CountingWriter(DataWriter):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values = 0
        self.errors = 0

    def write(self, values: Sequence[CollectedVariable]) -> None:
        errors = sum(1 for v in values if v.error is not None)
        with self.lock:
            self.values += len(values)
            self.errors += errors


def start_simulator(delay_ms: float = 0.0, *options: str) -> tuple[subprocess.Popen[str], int]:
    process = subprocess.Popen(
        [sys.executable, "-m", "flowcollect.simulator", "--port", "0", "--delay-ms", str(delay_ms), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r":(\d+)[ ,]", line)
    if match is None:
        process.kill()
        raise SystemExit(f"the simulator did not start: {line!r}")
    return process, int(match.group(1))


def requests_per_tick(port: int) -> dict[str, int]:
    reader = ModbusDataReader("modbus", "127.0.0.1", port=port)
    planned = len(reader.plan_requests(ADDRESSES))
    reader.open()
    before = reader.stats()["requests"]
    variables = [CollectedVariable(i, 1, a, "int", "modbus", 1) for i, a in enumerate(ADDRESSES)]
    reader.read(variables)
    sent = int(reader.stats()["requests"] - before)
    reader.close()
    if any(v.error is not None or v.value != i for i, v in enumerate(variables)):
        raise SystemExit("the reader read wrong values")
    return {"planned": planned, "sent": sent, "minimum": math.ceil(BULK_COUNT / MAX_REGISTERS)}


def raw_loop(port: int, seconds: float) -> dict[str, float]:
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=1.0, retries=0)
    if not client.connect():
        raise SystemExit("raw client cannot connect")
    starts = range(BULK_START, BULK_START + BULK_COUNT, MAX_REGISTERS)
    rounds = 0
    began = time.perf_counter()
    deadline = began + seconds
    while time.perf_counter() < deadline:
        for start in starts:
            count = min(MAX_REGISTERS, BULK_START + BULK_COUNT - start)
            response = client.read_holding_registers(start, count=count, device_id=1)
            if response.isError() or len(response.registers) != count:
                raise SystemExit(f"raw read failed: {response}")
        rounds += 1
    elapsed = time.perf_counter() - began
    client.close()
    return {"values_per_s": rounds * BULK_COUNT / elapsed, "ms_per_round": 1000 * elapsed / rounds}


def reader_alone(port: int, seconds: float) -> dict[str, float]:
    """The reader called back to back with fresh values, as the engine calls it: no ticks."""
    reader = ModbusDataReader("modbus", "127.0.0.1", port=port)
    reader.open()
    ticks = 0
    began = time.perf_counter()
    deadline = began + seconds
    while time.perf_counter() < deadline:
        variables = [CollectedVariable(i, 1, a, "int", "modbus", 1) for i, a in enumerate(ADDRESSES)]
        reader.read(variables)
        ticks += 1
    elapsed = time.perf_counter() - began
    reader.close()
    return {"values_per_s": ticks * BULK_COUNT / elapsed, "ms_per_tick": 1000 * elapsed / ticks}


def engine(port: int, seconds: float) -> dict[str, float]:
    reader = ModbusDataReader("modbus", "127.0.0.1", port=port, min_interval_ms=1)
    writer = CountingWriter()
    variables = [
        Variable(id=i + 1, address=a, value_type="int", reader="modbus") for i, a in enumerate(ADDRESSES)
    ]
    context = DataCollectionContext(
        id=1, variables=variables, interval_ms=1, min_interval_ms=1, duration_s=seconds + 60
    )
    with DataCollector(readers=[reader], writers=[writer]) as collector:
        collector.start(context)
        # Let the first ticks connect and plan, then measure a steady window.
        time.sleep(0.5)
        with writer.lock:
            first_values, first_errors = writer.values, writer.errors
        began = time.perf_counter()
        time.sleep(seconds)
        with writer.lock:
            values, errors = writer.values - first_values, writer.errors - first_errors
        elapsed = time.perf_counter() - began
        stats = collector.stats().readers["modbus"]
        collector.stop(1)
    return {
        "values_per_s": values / elapsed,
        "errors": errors,
        "ticks": stats.ticks,
        "overruns": stats.overruns,
        "read_ms_p50": stats.read_ms_p50 or 0.0,
        "tick_ms_p50": stats.tick_ms_p50 or 0.0,
        "tick_ms_p99": stats.tick_ms_p99 or 0.0,
        "read_ms_p99": stats.read_ms_p99 or 0.0,
        "lateness_ms_p50": stats.lateness_ms_p50 or 0.0,
        "lateness_ms_p99": stats.lateness_ms_p99 or 0.0,
    }


def throughput(delay_ms: float, seconds: float) -> dict[str, object]:
    process, port = start_simulator(delay_ms)
    try:
        raw = raw_loop(port, seconds)
        alone = reader_alone(port, seconds)
        through_engine = engine(port, seconds)
    finally:
        stop_simulator(process)
    ratio = through_engine["values_per_s"] / raw["values_per_s"]
    capacity = BULK_COUNT / (through_engine["tick_ms_p50"] / 1000) if through_engine["tick_ms_p50"] else 0.0
    capacity_ratio = capacity / raw["values_per_s"]
    return {
        "device_delay_ms": delay_ms,
        "raw_values_per_s": round(raw["values_per_s"]),
        "raw_ms_per_round": round(raw["ms_per_round"], 3),
        "reader_alone_values_per_s": round(alone["values_per_s"]),
        "reader_alone_ms_per_tick": round(alone["ms_per_tick"], 3),
        "reader_alone_vs_raw": round(alone["values_per_s"] / raw["values_per_s"], 3),
        "engine_values_per_s": round(through_engine["values_per_s"]),
        "engine_vs_raw": round(ratio, 3),
        "engine_capacity_values_per_s": round(capacity),
        "engine_capacity_vs_raw": round(capacity_ratio, 3),
        "engine_target_met": capacity_ratio >= 0.8,
        "engine": {k: round(v, 3) for k, v in through_engine.items() if k != "values_per_s"},
    }


# ---------------------------------------------------------------------------- lines

LINE_UNITS = (1, 2, 3)
LINE_REGISTERS = 100
LINE_TICK_MS = 100
LINE_TIMEOUT_S = 0.06


def line_readers(port: int) -> list[ModbusDataReader]:
    line = ModbusLine(host="127.0.0.1", port=port, framer="rtu")
    return [ModbusDataReader(f"unit{u}", line=line, unit=u, timeout_s=LINE_TIMEOUT_S) for u in LINE_UNITS]


def line_specs() -> list[VariableSpec]:
    return [
        VariableSpec(k + 1, 1, f"holding:{BULK_START + k}", "int", "modbus", LINE_TICK_MS)
        for k in range(LINE_REGISTERS)
    ]


def line_lane(port: int, seconds: float) -> dict[str, object]:
    """One thread reading the three units on the 100 ms grid, as the engine's lane does."""
    readers = line_readers(port)
    variables = line_specs()
    for reader in readers:
        reader.plan_changed(variables)
    planned = sum(len(r.plan_requests([v.address for v in variables])) for r in readers)
    good = dict.fromkeys(LINE_UNITS, 0)
    ticks = late = 0
    t = (int(time.time() * 1000) // LINE_TICK_MS + 1) * LINE_TICK_MS
    end = t + seconds * 1000
    while t < end:
        wait = (t - time.time() * 1000) / 1000
        if wait > 0:
            time.sleep(wait)
        elif -wait * 1000 >= LINE_TICK_MS:
            late += 1
            t += LINE_TICK_MS
            continue
        for reader in readers:
            batch = ValueBatch(t, variables)
            reader.read_batch(batch)
            good[reader.unit] += sum(
                1 for k, e in enumerate(batch.errors) if e is None and batch.values[k] == k
            )
        ticks += 1
        t += LINE_TICK_MS
    stats = [r.stats() for r in readers]
    for reader in readers:
        reader.close()
    return {
        "ticks": ticks,
        "instants_missed_by_the_thread": late,
        "planned_per_tick": planned,
        "sent_per_tick": round(sum(s["requests"] for s in stats) / ticks, 3),
        "skipped_requests": int(sum(s["skipped_requests"] for s in stats)),
        "values_by_unit": good,
        "silent_unit_timeouts": int(stats[1]["timeouts"]),
    }


def line_reader_vs_raw(port: int, seconds: float) -> dict[str, float]:
    """Time per tick: the three readers' ``read_batch`` calls against a bare pymodbus client
    doing the same three requests, alternating back to back (so machine load drifts hit both
    alike). The readers get the current grid instant, as the lane would."""
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=1.0, retries=0, framer=FramerType.RTU)
    if not client.connect():
        raise SystemExit("raw client cannot connect")
    readers = line_readers(port)
    variables = line_specs()
    for reader in readers:
        reader.plan_changed(variables)
    raw_ms: list[float] = []
    reader_ms: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        began = time.perf_counter()
        for unit in LINE_UNITS:
            response = client.read_holding_registers(BULK_START, count=LINE_REGISTERS, device_id=unit)
            if response.isError() or len(response.registers) != LINE_REGISTERS:
                raise SystemExit(f"raw read failed: {response}")
        raw_ms.append(1000 * (time.perf_counter() - began))
        t = int(time.time() * 1000) // LINE_TICK_MS * LINE_TICK_MS
        began = time.perf_counter()
        for reader in readers:
            batch = ValueBatch(t, variables)
            reader.read_batch(batch)
            errors += len(batch.errors) - batch.errors.count(None)
        reader_ms.append(1000 * (time.perf_counter() - began))
    client.close()
    skipped = sum(r.stats()["skipped_requests"] for r in readers)
    for reader in readers:
        reader.close()
    raw, ours = statistics.median(raw_ms), statistics.median(reader_ms)
    return {
        "ticks": len(reader_ms),
        "raw_ms_per_tick_p50": round(raw, 3),
        "reader_ms_per_tick_p50": round(ours, 3),
        "reader_skipped_requests": skipped,
        "reader_errors": errors,
        "reader_vs_raw": round(raw / ours, 3),
    }


def lines(seconds: float) -> dict[str, object]:
    process, port = start_simulator(0.0, "--rtu")
    try:
        answering = line_lane(port, seconds)
        speed = line_reader_vs_raw(port, min(seconds, 3.0))
    finally:
        stop_simulator(process)
    process, port = start_simulator(0.0, "--rtu", "--silent", "2")
    try:
        silent = line_lane(port, seconds)
    finally:
        stop_simulator(process)
    others = [1, 3]
    all_answering = sum(answering["values_by_unit"][u] for u in others)  # type: ignore[index]
    one_silent = sum(silent["values_by_unit"][u] for u in others)  # type: ignore[index]
    # Per tick served, so a tick the thread itself missed (machine load) counts against neither.
    ratio = (one_silent / silent["ticks"]) / (all_answering / answering["ticks"])  # type: ignore[operator]
    return {
        "units": len(LINE_UNITS),
        "registers_per_unit": LINE_REGISTERS,
        "tick_ms": LINE_TICK_MS,
        "requests_per_tick": {
            "planned": answering["planned_per_tick"],
            "sent": answering["sent_per_tick"],
            "minimum": len(LINE_UNITS),
        },
        "requests_target_met": answering["planned_per_tick"] == answering["sent_per_tick"] == len(LINE_UNITS),
        "all_answering": answering,
        "one_silent": silent,
        "others_delivered_vs_all_answering": round(ratio, 4),
        "silent_target_met": ratio >= 0.99,
        "reader_vs_raw": speed,
        "reader_target_met": speed["reader_vs_raw"] >= 0.8,
    }


def stop_simulator(process: subprocess.Popen[str]) -> None:
    process.kill()
    process.wait()
    if process.stdout is not None:
        process.stdout.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each throughput run")
    parser.add_argument("--delay-ms", type=float, default=2.0, help="the slower device's answer delay")
    parser.add_argument("--lines-only", action="store_true", help="run only the lines part")
    parser.add_argument("--line-seconds", type=float, default=10.0, help="length of each line run")
    args = parser.parse_args()
    if args.lines_only:
        print(json.dumps({"benchmark": "modbus", "lines": lines(args.line_seconds)}, indent=2))
        return
    process, port = start_simulator()
    try:
        requests = requests_per_tick(port)
    finally:
        stop_simulator(process)
    runs = [throughput(0.0, args.seconds), throughput(args.delay_ms, args.seconds)]
    print(
        json.dumps(
            {
                "benchmark": "modbus",
                "registers": BULK_COUNT,
                "requests_per_tick": requests,
                "requests_target_met": requests["planned"] == requests["sent"] == requests["minimum"],
                "throughput": runs,
                "lines": lines(args.line_seconds),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
