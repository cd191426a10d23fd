"""Scale benchmark: many Modbus TCP devices in one process, against a bare asyncio loop (issue 23).

Prints one JSON object. A device farm runs in a process of its own (``--farm``, started by this
script): one asyncio loop serving N loopback ports, each a Modbus TCP device with 20 holding
registers, answering raw frames itself (no pymodbus server: its CPU must stay small beside the
collector's, and it is measured and reported as ``farm_cpu_core``). Each case runs two
collectors, each in a fresh process of its own (``--run``) so threads, RSS and CPU are theirs
alone, against the same farm:

- ``bare``: the limit, a bare asyncio loop over pymodbus's ``AsyncModbusTcpClient``: one task
  per device sleeping to each grid instant, then reading its 20 registers.
- ``flowcollect``: a ``DataCollector`` with N ``ModbusDataReader`` readers (one per device, 20
  variables each, one context) and a writer that counts values per instant.

Per collector and case:

- ``delivered_pct``: values delivered for the due instants of the run against N x 20 per
  instant, after set-up: every line connected, then two instants (the bare loop connects all
  its clients before its first instant; flowcollect's lines connect on its loop from
  ``start()`` on, and it counts from the first instant after ``stats()`` says every reader is
  connected). flowcollect also reports ``connected_s`` (from the ``start()`` call to that) and
  ``delivered_pct_from_start`` (counting from the second instant after ``start()``, connects
  or not).
- ``request_lateness_ms``: p50/p99 of the time from the grid instant to the request arriving at
  the device: the kernel's receive timestamp of the request's bytes on the farm's socket
  (``SO_TIMESTAMPNS``; on loopback, the moment the collector wrote them), so the farm's own turn
  through 2,000 sockets is not counted as the collector's lateness. The same clock and the same
  place for every collector; a request later than a whole interval is counted against the next
  instant, so at 100 ms this figure is only meaningful while ``delivered_pct`` is 100.
- ``cpu_s_per_million_values`` and ``cpu_core``: the collector process's CPU per value delivered.
- Every process starts with the interpreter's defaults; ``gc_thresholds`` reports the garbage
  collector's thresholds during the run (a ``DataCollector`` sets its own while it runs:
  ``flowcollect.runtime.tune_gc``; ``FLOWCOLLECT_GC=default`` keeps the interpreter's).
- Every side is measured over the same steady window (``measured_from_ms`` on): set-up (lines
  connecting, then two instants) counts for no figure (its requests, CPU and values alike),
  half an interval before the first measured instant to the run's end for the CPU.
- ``threads``, ``rss_mb_per_device`` (the process's RSS growth from before the readers or
  clients existed, per device).
- flowcollect only: ``start_s``, ``stats_s`` (p50 and max of ``stats()`` calls once a second),
  ``close_s``, and the engine's own ``lateness_ms_p99`` (worst reader) and delivery p99.

- ``raw`` (with ``--sides``): the bare loop again, each device a prebuilt request frame written
  to an asyncio transport and its answer taken unchecked: below any real client, but still a
  task per device, whose wake-ups interleave with the answers of those sent first.
- ``burst`` (with ``--sides``): ``raw``'s frames, every one written in one pass at the instant
  before any answer is handled, then the answers awaited: the floor of request lateness on
  this machine for one loop.
- ``reader`` (with ``--sides``): the bare loop again, each device read through a
  ``ModbusDataReader.read_batch_async`` instead of the pymodbus call: the reader's own cost,
  without the engine.

Cases (``--cases``, ``DEVICESxINTERVAL_MS``): 10x100, 500x100, 2000x1000; ``--seconds`` per run
(default 10); ``--sides`` (default ``bare,flowcollect``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import resource
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from flowcollect.stats import percentile

REGISTERS = 20
CASES = ("10x100", "500x100", "2000x1000")
SIDES = ("burst", "raw", "bare", "reader", "flowcollect")
WARMUP_INSTANTS = 2


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def raise_file_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


# ----------------------------------------------------------------------------- the device farm


SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
"""Linux's receive timestamps: the kernel stamps each segment as it reaches the socket."""
_ANCILLARY = socket.CMSG_SPACE(16)


class _FarmState:
    def __init__(self) -> None:
        self.interval_ms = 1000.0
        self.arrivals: list[float] = []
        self.registers = b"".join(struct.pack(">H", 100 + r) for r in range(REGISTERS))


def _answer(farm: _FarmState, frame: bytes) -> bytes:
    """One Modbus TCP device: 20 holding (and input) registers; any other request an exception."""
    function = frame[7]
    start, count = struct.unpack_from(">HH", frame, 8) if len(frame) >= 12 else (0, 0)
    if function in (3, 4) and count > 0 and start + count <= REGISTERS:
        pdu = bytes((function, 2 * count)) + farm.registers[2 * start : 2 * (start + count)]
    else:
        pdu = bytes((function | 0x80, 2))
    return frame[:4] + (len(pdu) + 1).to_bytes(2, "big") + frame[6:7] + pdu


def _device(loop: asyncio.AbstractEventLoop, farm: _FarmState, sock: socket.socket) -> None:
    """Serve one accepted connection. A request's arrival is the kernel's receive timestamp of
    its bytes (``SO_TIMESTAMPNS``), not the moment this loop gets to it: with 2,000 devices
    asking at one instant the farm's own turn would otherwise be measured as the collector's
    lateness (tens of milliseconds at the p99)."""
    buffer = b""

    def readable() -> None:
        nonlocal buffer
        try:
            data, ancillary, _flags, _address = sock.recvmsg(4096, _ANCILLARY)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, ancillary = b"", []
        if not data:
            loop.remove_reader(sock.fileno())
            sock.close()
            return
        arrived_ms = time.time() * 1000
        for level, kind, stamp in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(stamp) >= 16:
                seconds, nanoseconds = struct.unpack_from("qq", stamp)
                arrived_ms = seconds * 1000 + nanoseconds / 1e6
        buffer += data
        answers = []
        while len(buffer) >= 8:
            end = 6 + int.from_bytes(buffer[4:6], "big")
            if len(buffer) < end:
                break
            frame, buffer = buffer[:end], buffer[end:]
            farm.arrivals.append(arrived_ms)
            answers.append(_answer(farm, frame))
        if answers:
            # Answers are a few dozen bytes on loopback: the socket's buffer always takes them.
            sock.send(b"".join(answers))

    loop.add_reader(sock.fileno(), readable)


def _listen(loop: asyncio.AbstractEventLoop, farm: _FarmState) -> int:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    server.setblocking(False)

    def accept() -> None:
        while True:
            try:
                sock, _address = server.accept()
            except (BlockingIOError, InterruptedError):
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            _device(loop, farm, sock)

    loop.add_reader(server.fileno(), accept)
    port: int = server.getsockname()[1]
    return port


async def _serve_farm(n: int) -> None:
    farm = _FarmState()
    loop = asyncio.get_running_loop()
    ports = [_listen(loop, farm) for _ in range(n)]
    print(json.dumps({"ports": ports}), flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    cpu0 = cpu_s()
    while line := (await reader.readline()).decode().split():
        if line[0] == "reset":
            farm.interval_ms = float(line[1])
            farm.arrivals = []
            cpu0 = cpu_s()
            print("{}", flush=True)
        elif line[0] == "report":
            seconds, since_ms = float(line[1]), float(line[2])
            cpu = cpu_s() - cpu0
            # The steady run only: the instants where lines connect (and the reader side's
            # connecting read) are set-up, left out of the delivered figures too.
            lateness = [at % farm.interval_ms for at in farm.arrivals if at >= since_ms]
            print(
                json.dumps(
                    {
                        "requests": len(farm.arrivals),
                        "requests_measured": len(lateness),
                        "p50": round(percentile(lateness, 50) or 0, 2),
                        "p99": round(percentile(lateness, 99) or 0, 2),
                        "farm_cpu_s": round(cpu, 2),
                        "farm_cpu_core": round(cpu / seconds, 3),
                    }
                ),
                flush=True,
            )


class Farm:
    """The farm process, and its two commands (``reset`` before a run, ``report`` after)."""

    def __init__(self, n: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--farm", str(n)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.ports: list[int] = json.loads(self._line())["ports"]

    def _line(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the device farm ended")
        return line

    def command(self, text: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()
        result: dict[str, Any] = json.loads(self._line())
        return result

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


# ----------------------------------------------------------------------------- the collectors


def _delivery(
    per_instant: Counter[int], first_ms: int, end_ms: int, interval_ms: int, n: int
) -> dict[str, Any]:
    due = range(first_ms + WARMUP_INSTANTS * interval_ms, end_ms, interval_ms)
    offered = len(due) * n * REGISTERS
    delivered = sum(min(per_instant.get(t, 0), n * REGISTERS) for t in due)
    return {
        "instants": len(due),
        "values_offered": offered,
        "values_delivered": delivered,
        "delivered_pct": round(100 * delivered / offered, 2) if offered else None,
        "missed_instants": sum(1 for t in due if per_instant.get(t, 0) == 0),
    }


def _next_instant(interval_ms: int, ahead: int = 1) -> int:
    return (int(time.time() * 1000) // interval_ms + ahead) * interval_ms


Read = Callable[[int], Awaitable[int]]
"""One device's read at an instant: the values it got."""


async def _pymodbus_devices(ports: Sequence[int], interval_ms: int) -> tuple[list[Read], Callable[[], None]]:
    from pymodbus.client import AsyncModbusTcpClient

    clients = [
        AsyncModbusTcpClient("127.0.0.1", port=port, timeout=interval_ms / 1000, retries=0, reconnect_delay=0)
        for port in ports
    ]

    async def connect(client: AsyncModbusTcpClient) -> None:
        # pymodbus's connect has the request's timeout (one interval): hundreds at once on a
        # busy machine miss it, so try again (set-up, not measured).
        for _ in range(100):
            if await client.connect():
                return

    await asyncio.gather(*(connect(client) for client in clients))

    def reader(client: AsyncModbusTcpClient) -> Read:
        async def read(_t_ms: int) -> int:
            try:
                answer = await client.read_holding_registers(0, count=REGISTERS, device_id=1)
            except Exception:  # a timeout: the values are not delivered
                return 0
            return 0 if answer.isError() else len(answer.registers)

        return read

    def close() -> None:
        for client in clients:
            client.close()

    return [reader(client) for client in clients], close


class _RawClient(asyncio.Protocol):
    """The ``raw`` side's device: a prebuilt request frame written to the transport, the answer
    taken as it comes (no framing beyond one read, no checks): what the hardware and asyncio
    allow, below any real client."""

    def __init__(self) -> None:
        self.waiter: asyncio.Future[int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def data_received(self, data: bytes) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(data[8] // 2 if len(data) > 8 and data[7] == 3 else 0)


_FRAME = struct.pack(">HHHBBHH", 1, 0, 6, 1, 3, 0, REGISTERS)
"""A read of the 20 holding registers of unit 1, prebuilt (the raw and burst sides)."""


async def _raw_clients(ports: Sequence[int]) -> list[_RawClient]:
    loop = asyncio.get_running_loop()
    return [(await loop.create_connection(_RawClient, "127.0.0.1", port))[1] for port in ports]


async def _raw_devices(ports: Sequence[int], interval_ms: int) -> tuple[list[Read], Callable[[], None]]:
    loop = asyncio.get_running_loop()
    clients = await _raw_clients(ports)

    def reader(client: _RawClient) -> Read:
        async def read(_t_ms: int) -> int:
            client.waiter = loop.create_future()
            client.transport.write(_FRAME)
            try:
                return await asyncio.wait_for(client.waiter, interval_ms / 1000)
            except TimeoutError:
                return 0

        return read

    def close() -> None:
        for client in clients:
            client.transport.close()

    return [reader(client) for client in clients], close


async def _burst(
    clients: Sequence[_RawClient], interval_ms: int, first: int, end: int, per_instant: Counter[int]
) -> None:
    """At each instant every request written in one pass, before any answer is handled (the
    issue's "send every due request first"), then the answers awaited: the floor of request
    lateness on this machine, below which no collector on one loop can go."""
    loop = asyncio.get_running_loop()
    t = first
    while t < end:
        await asyncio.sleep(max(0.0, t / 1000 - time.time()))
        for client in clients:
            client.waiter = loop.create_future()
            client.transport.write(_FRAME)
        waiters = [client.waiter for client in clients if client.waiter is not None]
        done, _ = await asyncio.wait(waiters, timeout=interval_ms / 1000)
        per_instant[t] += sum(w.result() for w in done)
        t += interval_ms
        while t < time.time() * 1000 - interval_ms:
            t += interval_ms


async def _flowcollect_readers(
    ports: Sequence[int], interval_ms: int
) -> tuple[list[Read], Callable[[], None]]:
    from flowcollect.readers import ModbusDataReader
    from flowcollect.values import ValueBatch, VariableSpec

    readers = [
        ModbusDataReader(f"d{i}", host="127.0.0.1", port=port, timeout_s=min(1.0, interval_ms / 1000))
        for i, port in enumerate(ports)
    ]
    specs = [VariableSpec(r + 1, 1, f"holding:{r}", "int", "d", interval_ms) for r in range(REGISTERS)]
    for each in readers:
        each.open()
        each.plan_changed(specs)

    def reader(each: ModbusDataReader) -> Read:
        async def read(t_ms: int) -> int:
            batch = ValueBatch(t_ms, specs)
            await each.read_batch_async(batch)
            return sum(1 for error in batch.errors if error is None)

        return read

    def close() -> None:
        for each in readers:
            each.close()

    reads = [reader(each) for each in readers]
    # One read each first: the lines connect (set-up, as the bare loop's connects are).
    await asyncio.gather(*(read(_next_instant(interval_ms, 0)) for read in reads))
    return reads, close


async def _loop(side: str, ports: Sequence[int], interval_ms: int, seconds: float) -> dict[str, Any]:
    """The bare asyncio loop: one task per device, sleeping to each grid instant, then reading
    it through pymodbus (``bare``) or a ``ModbusDataReader`` (``reader``: the reader's own cost,
    without the engine)."""
    burst = await _raw_clients(ports) if side == "burst" else []
    if burst:
        reads: list[Read] = []

        def close() -> None:
            for client in burst:
                client.transport.close()

    else:
        make = {"raw": _raw_devices, "bare": _pymodbus_devices, "reader": _flowcollect_readers}[side]
        reads, close = await make(ports, interval_ms)
    per_instant: Counter[int] = Counter()
    first = _next_instant(interval_ms, 2)
    end = first + round(seconds * 1000)

    async def device(read: Read) -> None:
        t = first
        while t < end:
            await asyncio.sleep(max(0.0, t / 1000 - time.time()))
            got = await read(t)  # (not "+= await": other tasks add to the count meanwhile)
            per_instant[t] += got
            t += interval_ms
            while t < time.time() * 1000 - interval_ms:
                t += interval_ms  # an instant already past: skipped, as a lane skips it

    async def window() -> tuple[float, float]:
        await asyncio.sleep(max(0.0, _cpu_mark_s(first, interval_ms) - time.time()))
        return cpu_s(), time.monotonic()

    await asyncio.sleep(max(0.0, first / 1000 - time.time() - 0.05))
    threads = threading.active_count()
    mark = asyncio.ensure_future(window())
    if burst:
        await _burst(burst, interval_ms, first, end, per_instant)
    else:
        await asyncio.gather(*(device(read) for read in reads))
    cpu0, opened = await mark
    cpu, window_s = cpu_s() - cpu0, time.monotonic() - opened
    close()
    return {
        "per_instant": per_instant,
        "first": first,
        "end": end,
        "cpu_s": cpu,
        "cpu_window_s": window_s,
        "threads": threads,
    }


def run_loop(side: str, ports: Sequence[int], interval_ms: int, seconds: float) -> dict[str, Any]:
    rss0 = rss_mb()
    result = asyncio.run(_loop(side, ports, interval_ms, seconds))
    rss = rss_mb() - rss0
    return _summary(result, interval_ms, len(ports), rss)


def _summary(result: dict[str, Any], interval_ms: int, n: int, rss: float) -> dict[str, Any]:
    delivery = _delivery(result["per_instant"], result["first"], result["end"], interval_ms, n)
    values = delivery["values_delivered"]
    return {
        **delivery,
        "cpu_core": round(result["cpu_s"] / result["cpu_window_s"], 3),
        "cpu_s_per_million_values": round(1e6 * result["cpu_s"] / values, 2) if values else None,
        "threads": result["threads"],
        "rss_mb_per_device": round(rss / n, 4),
        "measured_from_ms": _measured_from(result["first"], interval_ms),
        "gc_thresholds": list(result.get("gc_thresholds", gc.get_threshold())),
    }


def _measured_from(first_ms: int, interval_ms: int) -> int:
    """The first instant the figures count: the ones before are set-up (lines connecting)."""
    return first_ms + WARMUP_INSTANTS * interval_ms


def _cpu_mark_s(first_ms: int, interval_ms: int) -> float:
    """When (wall clock, s) the CPU window opens: half an interval before the first measured
    instant, after the set-up instants' work, the same for every side."""
    return (_measured_from(first_ms, interval_ms) - interval_ms / 2) / 1000


def _all_connected(collector: Any, since: float, timeout_s: float) -> float | None:
    """Seconds from ``since`` (``perf_counter``) until every reader says its line is connected
    (``stats()``'s ``connected``), polled every 10 ms; None if that never happens in
    ``timeout_s`` (the figures then count from the start, as if connected)."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        readers = collector.stats().readers.values()
        if readers and all(r.extra.get("connected") == 1 for r in readers):
            return time.perf_counter() - since
        time.sleep(0.01)
    return None


def run_flowcollect(ports: Sequence[int], interval_ms: int, seconds: float) -> dict[str, Any]:
    from flowcollect import DataCollectionContext, DataCollector, DataWriter, Variable
    from flowcollect.readers import ModbusDataReader
    from flowcollect.values import ValueBatch

    class CountingWriter(DataWriter):
        def __init__(self) -> None:
            self.per_instant: Counter[int] = Counter()
            self.errors = 0

        def write_batch(self, batch: ValueBatch) -> None:
            errors = sum(1 for e in batch.errors if e is not None)
            self.errors += errors
            self.per_instant[batch.t_ms] += len(batch) - errors

    rss0 = rss_mb()
    timeout_s = min(1.0, interval_ms / 1000)
    readers = [
        ModbusDataReader(f"d{i}", host="127.0.0.1", port=port, timeout_s=timeout_s, min_interval_ms=10)
        for i, port in enumerate(ports)
    ]
    variables = [
        Variable(id=i * REGISTERS + r + 1, address=f"holding:{r}", reader=f"d{i}", interval_ms=interval_ms)
        for i in range(len(ports))
        for r in range(REGISTERS)
    ]
    ctx = DataCollectionContext(
        id=1, variables=variables, min_interval_ms=min(100, interval_ms), duration_s=seconds
    )
    writer = CountingWriter()
    collector = DataCollector(readers, [writer], queue_limit=10_000_000)
    started = time.perf_counter()
    running = collector.start(ctx)
    start_s = time.perf_counter() - started
    assert running.start_date is not None
    started_first = (round(running.start_date.timestamp() * 1000) // interval_ms + 1) * interval_ms
    # The bare loop's connects are done before its first instant; ours run on the engine's loop
    # from start() on (500 lines take 100-250 ms there: asyncio's ~0.15 ms a connect, beside
    # the first ticks). The same rule for both: set-up is connecting, plus two instants.
    connected_s = _all_connected(collector, started, timeout_s=30.0)
    connected_ms = time.time() * 1000
    first = max(started_first, (int(connected_ms) // interval_ms + 1) * interval_ms)
    time.sleep(max(0.0, _cpu_mark_s(first, interval_ms) - time.time()))
    cpu0, opened = cpu_s(), time.monotonic()
    stats_s: list[float] = []
    threads = 0
    gc_thresholds = gc.get_threshold()
    rss = 0.0
    try:
        while collector.is_running():
            time.sleep(1.0)
            asked = time.perf_counter()
            stats = collector.stats()
            stats_s.append(time.perf_counter() - asked)
            threads = max(threads, threading.active_count())
            gc_thresholds = gc.get_threshold()  # the collector's while it runs
            rss = max(rss, rss_mb() - rss0)
        cpu, window_s = cpu_s() - cpu0, time.monotonic() - opened
        collector.flush(30)
    finally:
        closing = time.perf_counter()
        collector.close()
        close_s = time.perf_counter() - closing
    assert running.end_date is not None
    end = round(running.end_date.timestamp() * 1000)
    readers_stats = stats.readers.values()
    result = _summary(
        {
            "per_instant": writer.per_instant,
            "first": first,
            "end": end,
            "cpu_s": cpu,
            "cpu_window_s": window_s,
            "threads": threads,
            "gc_thresholds": gc_thresholds,
        },
        interval_ms,
        len(ports),
        rss,
    )
    from_start = _delivery(writer.per_instant, started_first, end, interval_ms, len(ports))
    return {
        **result,
        "value_errors": writer.errors,
        "connected_s": None if connected_s is None else round(connected_s, 3),
        "delivered_pct_from_start": from_start["delivered_pct"],
        "start_s": round(start_s, 3),
        "stats_s": {"p50": round(percentile(stats_s, 50) or 0, 4), "max": round(max(stats_s, default=0), 4)},
        "close_s": round(close_s, 3),
        "engine_lateness_ms_p99": max((r.lateness_ms_p99 or 0 for r in readers_stats), default=None),
        "engine_delivery_ms_p99": max(
            (getattr(r, "delivery_ms_p99", 0) or 0 for r in readers_stats), default=None
        ),
        "overruns": sum(r.overruns for r in readers_stats),
    }


# ----------------------------------------------------------------------------- orchestration


def run_side(side: str, ports: Sequence[int], interval_ms: int, seconds: float) -> dict[str, Any]:
    """One collector in a fresh process of its own."""
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--run",
            side,
            "--interval-ms",
            str(interval_ms),
            "--seconds",
            str(seconds),
        ],
        input=json.dumps(list(ports)),
        capture_output=True,
        text=True,
        timeout=seconds * 4 + 120,
        check=False,
    )
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1:] or [f"exit {done.returncode}"]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run_case(case: str, seconds: float, sides: Sequence[str]) -> dict[str, Any]:
    n, interval_ms = (int(part) for part in case.split("x"))
    farm = Farm(n)
    out: dict[str, Any] = {"devices": n, "interval_ms": interval_ms, "registers": REGISTERS}
    try:
        for side in sides:
            farm.command(f"reset {interval_ms}")
            wall = time.monotonic()
            result = run_side(side, farm.ports, interval_ms, seconds)
            since = result.get("measured_from_ms", 0)
            at_farm = farm.command(f"report {time.monotonic() - wall} {since}")
            result["request_lateness_ms"] = {"p50": at_farm["p50"], "p99": at_farm["p99"]}
            result["requests_at_farm"] = at_farm["requests"]
            result["requests_measured"] = at_farm["requests_measured"]
            result["farm_cpu_core"] = at_farm["farm_cpu_core"]
            out[side] = result
    finally:
        farm.close()
    bare = out.get("bare")
    for side in ("reader", "flowcollect"):
        ours = out.get(side)
        if isinstance(bare, dict) and isinstance(ours, dict) and bare.get("cpu_s_per_million_values"):
            ratio = (ours.get("cpu_s_per_million_values") or 0) / bare["cpu_s_per_million_values"]
            out[f"{side}_cpu_vs_bare"] = round(ratio, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help="DEVICESxINTERVAL_MS, comma separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each run")
    parser.add_argument(
        "--sides",
        default="bare,flowcollect",
        help="which of raw, bare, reader, flowcollect to run (comma separated)",
    )
    parser.add_argument("--farm", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--run", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--interval-ms", type=int, default=1000, help=argparse.SUPPRESS)
    args = parser.parse_args()
    raise_file_limit(16_384)
    if args.farm:
        asyncio.run(_serve_farm(args.farm))
        return
    if args.run:
        ports = json.loads(sys.stdin.read())
        if args.run == "flowcollect":
            result = run_flowcollect(ports, args.interval_ms, args.seconds)
        else:
            result = run_loop(args.run, ports, args.interval_ms, args.seconds)
        print(json.dumps(result))
        return
    sides = [side for side in args.sides.split(",") if side in SIDES]
    with open("/proc/loadavg") as loadavg:
        load_before = loadavg.read().split()[:3]
    results = [run_case(case, args.seconds, sides) for case in args.cases.split(",")]
    with open("/proc/loadavg") as loadavg:
        load_after = loadavg.read().split()[:3]
    revision = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
        cwd=os.path.dirname(__file__),
    ).stdout.strip()
    print(
        json.dumps(
            {
                "benchmark": "scale",
                "python": sys.version.split()[0],
                "revision": revision,
                "cpus": os.cpu_count(),
                "load_before": load_before,
                "load_after": load_after,
                "seconds": args.seconds,
                "cases": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
