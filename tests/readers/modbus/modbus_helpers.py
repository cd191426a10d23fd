"""Helpers of the Modbus tests: values for a tick, a simulator process, a raw misbehaving device.

Nothing here is a mock: every test talks TCP on loopback to a server that answers (or fails to)
the way a device would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from flowcollect.readers.modbus import ModbusDataReader
from flowcollect.values import CollectedVariable, ValueBatch, VariableSpec

T = TypeVar("T")

# ----------------------------------------------------------------------------- helpers


def collected(addresses: Sequence[str], value_types: Sequence[str] | str = "int") -> list[CollectedVariable]:
    """Fresh values for one tick, as the engine would hand them to ``read``."""
    if isinstance(value_types, str):
        value_types = [value_types] * len(addresses)
    return [
        CollectedVariable(
            id=i + 1,
            context_id=1,
            address=address,
            value_type=value_type,
            reader="modbus",
            interval_ms=100,
        )
        for i, (address, value_type) in enumerate(zip(addresses, value_types, strict=True))
    ]


def timed_read(reader: ModbusDataReader, variables: list[CollectedVariable]) -> float:
    """Read and return how long it took, in seconds."""
    started = time.monotonic()
    reader.read(variables)
    return time.monotonic() - started


def wait_until(condition: Callable[[], bool], timeout_s: float, step_s: float = 0.02) -> bool:
    """Poll ``condition`` until it holds or ``timeout_s`` passes; return whether it held."""
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step_s)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ----------------------------------------------------------------------------- the simulator


# ----------------------------------------------------------------------------- a simulator process


class ServerProcess:
    """``python -m flowcollect.simulator`` in a child process: a device that can really die."""

    def __init__(self, log_path: Path) -> None:
        self.port = 0
        self._log_path = log_path
        self._process: subprocess.Popen[str] | None = None

    def start(self, timeout_s: float = 30.0) -> None:
        """Start (on the same port as before, after the first start) and wait until listening."""
        if self._process is not None:
            raise RuntimeError("already running")
        with self._log_path.open("a") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "flowcollect.simulator", "--port", str(self.port)],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        self._process = process
        line = _read_line(process, timeout_s)
        match = re.search(r":(\d+) ", line)
        if match is None:
            self.stop()
            raise RuntimeError(f"the simulator process did not start: {line!r}")
        self.port = int(match.group(1))

    def stop(self) -> None:
        """Kill the process, as a power cut would: no goodbye on its connections."""
        process = self._process
        if process is None:
            return
        process.kill()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()
        self._process = None


def _read_line(process: subprocess.Popen[str], timeout_s: float) -> str:
    stdout = process.stdout
    if stdout is None:
        raise RuntimeError("no stdout")
    with selectors.DefaultSelector() as selector:
        selector.register(stdout, selectors.EVENT_READ)
        if not selector.select(timeout_s):
            return ""
    return stdout.readline()


# ----------------------------------------------------------------------------- a raw device

CLOSE = object()
"""What a raw device's ``respond`` returns to hang up on the request."""

Respond = Callable[[int, int, bytes], "bytes | object | None"]
"""(transaction id, unit, request PDU) -> the bytes to send, ``None`` to stay silent, or CLOSE."""


def adu(transaction: int, unit: int, pdu: bytes, protocol: int = 0) -> bytes:
    """A Modbus TCP frame around ``pdu``."""
    return struct.pack(">HHHB", transaction, protocol, len(pdu) + 1, unit) + pdu


def parse_read(pdu: bytes) -> tuple[int, int, int]:
    """(function code, address, count) of a read request PDU."""
    function_code, address, count = struct.unpack(">BHH", pdu[:5])
    return function_code, address, count


def registers_answer(function_code: int, values: Sequence[int]) -> bytes:
    return struct.pack(f">BB{len(values)}H", function_code, 2 * len(values), *values)


def second_time_only() -> Respond:
    """A device that leaves the first request unanswered and answers every later one."""
    asked: list[int] = []

    def respond(transaction: int, unit: int, pdu: bytes) -> bytes | None:
        asked.append(transaction)
        return echo_registers(transaction, unit, pdu) if len(asked) > 1 else None

    return respond


def echo_registers(transaction: int, unit: int, pdu: bytes) -> bytes:
    """A well-behaved device whose register ``n`` holds ``n``."""
    function_code, address, count = parse_read(pdu)
    return adu(transaction, unit, registers_answer(function_code, range(address, address + count)))


class RawDevice:
    """A TCP server speaking just enough Modbus framing to misbehave on purpose.

    ``respond`` decides each answer and may be swapped while the device runs.
    """

    def __init__(self, respond: Respond) -> None:
        self.respond = respond
        self.requests: list[tuple[int, int, int]] = []
        self.connections = 0
        self.hung_up = 0
        """Connections the client closed (the device read their end)."""
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port = int(self._listener.getsockname()[1])
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._sockets.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            with self._lock:
                self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.05)
        buffer = b""
        while not self._stopping.is_set():
            try:
                data = conn.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                self._hung_up()
                return
            if not data:
                self._hung_up()
                return
            buffer += data
            while len(buffer) >= 7:
                transaction, _protocol, length, unit = struct.unpack(">HHHB", buffer[:7])
                if len(buffer) < 6 + length:
                    break
                pdu, buffer = buffer[7 : 6 + length], buffer[6 + length :]
                with self._lock:
                    self.requests.append(parse_read(pdu))
                answer = self.respond(transaction, unit, pdu)
                if answer is CLOSE:
                    with contextlib.suppress(OSError):
                        conn.shutdown(socket.SHUT_RDWR)
                    return
                if isinstance(answer, bytes):
                    with contextlib.suppress(OSError):
                        conn.sendall(answer)

    def _hung_up(self) -> None:
        with self._lock:
            self.hung_up += 1

    def stop(self) -> None:
        self._stopping.set()
        self._listener.close()
        with self._lock:
            threads, sockets = list(self._threads), list(self._sockets)
        for thread in threads:
            thread.join(5)
        for sock in sockets:
            sock.close()


# ----------------------------------------------------------------------------- the event loop path


class LoopThread:
    """An asyncio event loop on a thread of its own: where the engine's loop runtime awaits
    ``read_batch_async`` and calls an asynchronous reader's ``open`` and ``close``."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-loop", daemon=True)
        self._thread.start()

    def run(self, awaitable: Coroutine[Any, Any, T], timeout_s: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(awaitable, self.loop).result(timeout_s)

    def call(self, function: Callable[[], T]) -> T:
        async def on_loop() -> T:
            return function()

        return self.run(on_loop())

    def stop(self) -> None:
        async def drain() -> None:
            await asyncio.sleep(0.05)  # let closing transports say goodbye

        self.run(drain())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def batch_of(variables: Sequence[CollectedVariable]) -> ValueBatch:
    """The engine's batch for ``variables`` (their instant, or now)."""
    when = variables[0].time if variables else None
    t_ms = round(when.timestamp() * 1000) if when is not None else round(time.time() * 1000)
    specs = [
        VariableSpec(v.id, v.context_id, v.address, v.value_type, v.reader, v.interval_ms) for v in variables
    ]
    return ValueBatch(t_ms, specs)


async def read_async(reader: ModbusDataReader, variables: Sequence[CollectedVariable]) -> None:
    """``reader.read(variables)`` the way the loop runtime reads: a batch, awaited. Variables
    without an instant are read off the grid, as ``read`` reads them (never skipped)."""
    batch = batch_of(variables)
    if variables and variables[0].time is None and reader.line.kind == "serial":
        worker = reader._lease().worker()  # the serial line's own thread, as read_batch_async uses
        await asyncio.wrap_future(worker.submit(ModbusDataReader.read, reader, variables))
        return
    if variables and variables[0].time is None:
        columns = (batch.values, batch.errors)
        key = tuple(v.address for v in variables)
        types = [v.value_type for v in variables]
        intervals = frozenset(v.interval_ms for v in variables)
        await reader._read_columns_async(key, batch.variables, types, intervals, None, columns)
    else:
        await reader.read_batch_async(batch)
    for variable, value, error in zip(variables, batch.values, batch.errors, strict=True):
        variable.value = value
        variable.error = error


def on_loop(reader: ModbusDataReader, loop: LoopThread) -> ModbusDataReader:
    """Route the reader's ``read``, ``read_batch``, ``open`` and ``close`` through ``loop`` as the
    loop runtime calls them (``abort`` stays on the caller's thread, as it comes from the closing one), so a
    test written against ``read`` runs the event-loop path."""
    sync_open, sync_close = reader.open, reader.close
    reader.read = lambda variables: loop.run(read_async(reader, variables))  # type: ignore[method-assign]
    reader.read_batch = lambda batch: loop.run(reader.read_batch_async(batch))  # type: ignore[method-assign]
    reader.open = lambda: loop.call(sync_open)  # type: ignore[method-assign]
    reader.close = lambda: loop.call(sync_close)  # type: ignore[method-assign]
    return reader


# ----------------------------------------------------------------------------- many devices


class DeviceFarm:
    """Many Modbus TCP devices on loopback ports, served by one asyncio loop in a process of its
    own (``device_farm.py``; in this process it would share the interpreter lock with the
    collector under test, which no real device does).

    ``answering`` devices hold 20 holding registers (register ``r`` of device ``d`` holds
    ``d + r``); ``hung`` ones accept and never answer; ``garbage`` ones answer every request with
    bytes that are no Modbus frame. ``refusing`` gives ports nothing listens on (the OS refuses).
    """

    def __init__(self, answering: int, hung: int = 0, garbage: int = 0, refusing: int = 0) -> None:
        script = Path(__file__).with_name("device_farm.py")
        self._process = subprocess.Popen(
            [sys.executable, str(script), str(answering), str(hung), str(garbage)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = _read_line(self._process, 60.0)
        ports = json.loads(line)
        self.answering: list[int] = ports["answer"]
        self.hung: list[int] = ports["hang"]
        self.garbage: list[int] = ports["garbage"]
        self.refusing = [free_port() for _ in range(refusing)]

    def stop(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()  # the farm ends when its input does
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()
