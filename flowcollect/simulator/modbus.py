"""A Modbus TCP device to collect from without hardware: a small plant and fixed test registers.

Runs on pymodbus's server. In-process (tests, the demo pipeline)::

    with Simulator() as sim:          # a free loopback port, served from a thread
        reader = ModbusDataReader("modbus", sim.host, sim.port)

Standalone: ``serve(port=5020)`` (blocks until Ctrl-C), ``python -m flowcollect.simulator
--port 5020`` or ``flowcollect simulate --port 5020``.

The register map (``REGISTER_MAP``; ``docs/modbus.md`` has it as a table):

- the plant, changing over time (``PLANT``): holding 0..17, coils 0..2, discrete inputs 0..1;
- fixed values of every numeric type in every byte order (``KNOWN``): holding and input
  registers 100..227, at ``100 + 16 * type + 4 * order`` (``known_offset``);
- fixed strings: holding and input 300..323; fixed bits: coils and discrete inputs 100..115;
- a hole: holding 400..409 is readable except 405, which answers "illegal data address";
- the unit's id: holding 500 (0 on the TCP simulator, which answers every unit id);
- a bulk block: holding 1000..1999, register ``1000 + k`` holds ``k``.

Several units on one line: ``LineSimulator`` serves units 1, 2, 3 (each the map above) on a
serial line (a pty pair made by ``socat``; ``pty`` is the end to open) or over RTU-over-TCP,
and can make one unit silent or slow (``silence``, ``slow``).

Offsets outside these areas answer "illegal data address" (bit tables: beyond 115).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import math
import os
import shutil
import ssl
import struct
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusBaseServer, ModbusSerialServer, ModbusTcpServer, ModbusTlsServer
from pymodbus.simulator import DataType, SimData, SimDevice

from flowcollect.simulator._loop import run_bounded

__all__ = [
    "BULK_COUNT",
    "BULK_START",
    "HOLE_INVALID",
    "HOLE_START",
    "KNOWN",
    "KNOWN_BITS",
    "KNOWN_TYPES",
    "LineSimulator",
    "UNIT_REGISTER",
    "PLANT",
    "REGISTER_MAP",
    "ORDERS",
    "SimPoint",
    "Simulator",
    "known_offset",
    "main",
    "serve",
    "serve_line",
]

_log = logging.getLogger("flowcollect.simulator")


@dataclass(frozen=True, slots=True)
class SimPoint:
    """One value the simulator serves: a name, its flowcollect address, what it holds."""

    name: str
    address: str
    value_type: str
    """The ``Variable.value_type`` to collect it as."""
    description: str
    value: int | float | str | bool | None = None
    """The fixed value, for points that never change; ``None`` for the plant's live values."""


# ---------------------------------------------------------------------------- the plant

PLANT_NAME: Final = "Mixer line 1"
PLANT: Final[tuple[SimPoint, ...]] = (
    SimPoint("temperature_1", "holding:0:float32", "float", "mixer temperature, °C, 21 ± 1.5, 60 s period"),
    SimPoint("temperature_2", "holding:2:float32", "float", "jacket temperature, °C, 65 ± 8, 45 s period"),
    SimPoint("counter", "holding:4:uint32", "int", "parts produced, +1 every 100 ms"),
    SimPoint("pump_speed", "holding:6:uint16", "int", "pump speed, rpm, 1450 ± 30, 20 s period"),
    SimPoint("level", "holding:7:int16", "int", "tank level from nominal, mm, ±250, 120 s period"),
    SimPoint("name", "holding:10:string8", "str", f"line name, fixed: {PLANT_NAME!r}", PLANT_NAME),
    SimPoint("pump_running", "coil:0", "bool", "pump on: 15 s of every 20 s"),
    SimPoint("valve_open", "coil:1", "bool", "valve open: 4 s of every 8 s"),
    SimPoint("high_temperature", "coil:2", "bool", "alarm: temperature_2 above 71 °C"),
    SimPoint("door_closed", "discrete:0", "bool", "fixed: True", True),
    SimPoint("heartbeat", "discrete:1", "bool", "toggles every second"),
)
_PLANT_REGISTERS: Final = 18


def plant_state(t: float) -> tuple[list[int], list[bool], list[bool]]:
    """The plant at ``t`` seconds after start: holding 0..17, coils 0..15, discrete 0..15."""
    temperature_1 = 21.0 + 1.5 * math.sin(2 * math.pi * t / 60)
    temperature_2 = 65.0 + 8.0 * math.sin(2 * math.pi * t / 45)
    counter = int(t * 10) & 0xFFFFFFFF
    speed = 1450 + round(30 * math.sin(2 * math.pi * t / 20))
    level = round(250 * math.sin(2 * math.pi * t / 120))
    registers = [0] * _PLANT_REGISTERS
    registers[0:2] = _words(">f", temperature_1)
    registers[2:4] = _words(">f", temperature_2)
    registers[4:6] = _words(">I", counter)
    registers[6] = speed
    registers[7] = level & 0xFFFF
    registers[10:18] = _string_words(PLANT_NAME, 8)
    coils = [False] * 16
    coils[0] = t % 20 < 15
    coils[1] = t % 8 < 4
    coils[2] = temperature_2 > 71.0
    discrete = [False] * 16
    discrete[0] = True
    discrete[1] = int(t) % 2 == 0
    return registers, coils, discrete


# ---------------------------------------------------------------------------- fixed registers

KNOWN_TYPES: Final[tuple[str, ...]] = (
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "uint64",
    "float32",
    "float64",
)
ORDERS: Final[tuple[str, ...]] = ("ABCD", "CDAB", "BADC", "DCBA")
_KNOWN_START: Final = 100
_STRUCT: Final[dict[str, str]] = {
    "int16": "h",
    "uint16": "H",
    "int32": "i",
    "uint32": "I",
    "int64": "q",
    "uint64": "Q",
    "float32": "f",
    "float64": "d",
}
# Every byte of each value differs from the others, so a wrong order never decodes by luck.
# The float32 is stored rounded to float32, so it is listed as exactly what comes back.
_KNOWN_NUMBERS: Final[dict[str, int | float]] = {
    "int16": -12345,
    "uint16": 54321,
    "int32": -123456789,
    "uint32": 3456789012,
    "int64": -1234567890123456789,
    "uint64": 12345678901234567890,
    "float32": struct.unpack(">f", struct.pack(">f", 1234.5678))[0],
    "float64": -2.718281828459045,
}
# The byte positions, in the big-endian value, that each order puts on the wire.
_WIRE_BYTES: Final[dict[tuple[str, int], tuple[int, ...]]] = {
    ("ABCD", 2): (0, 1),
    ("CDAB", 2): (0, 1),
    ("BADC", 2): (1, 0),
    ("DCBA", 2): (1, 0),
    ("ABCD", 4): (0, 1, 2, 3),
    ("CDAB", 4): (2, 3, 0, 1),
    ("BADC", 4): (1, 0, 3, 2),
    ("DCBA", 4): (3, 2, 1, 0),
    ("ABCD", 8): (0, 1, 2, 3, 4, 5, 6, 7),
    ("CDAB", 8): (6, 7, 4, 5, 2, 3, 0, 1),
    ("BADC", 8): (1, 0, 3, 2, 5, 4, 7, 6),
    ("DCBA", 8): (7, 6, 5, 4, 3, 2, 1, 0),
}


def known_offset(type_name: str, order: str) -> int:
    """Where the fixed value of ``type_name`` in byte ``order`` starts (holding and input)."""
    return _KNOWN_START + 16 * KNOWN_TYPES.index(type_name) + 4 * ORDERS.index(order)


def _known_points() -> tuple[SimPoint, ...]:
    points: list[SimPoint] = []
    for table in ("holding", "input"):
        for type_name in KNOWN_TYPES:
            value = _KNOWN_NUMBERS[type_name]
            value_type = "float" if type_name.startswith("float") else "int"
            for order in ORDERS:
                points.append(
                    SimPoint(
                        f"{table}_{type_name}_{order.lower()}",
                        f"{table}:{known_offset(type_name, order)}:{type_name}:{order}",
                        value_type,
                        f"fixed {type_name} in byte order {order}",
                        value,
                    )
                )
        points += [
            SimPoint(f"{table}_string", f"{table}:300:string6", "str", "fixed string", "flowcollect"),
            SimPoint(
                f"{table}_string_badc",
                f"{table}:310:string6:BADC",
                "str",
                "the same string, low byte first",
                "flowcollect",
            ),
            SimPoint(
                f"{table}_string_full", f"{table}:320:string4", "str", "8 characters, no NUL", "ABCDEFGH"
            ),
        ]
    for table in ("coil", "discrete"):
        points += [
            SimPoint(f"{table}_bit_{i}", f"{table}:{100 + i}", "bool", "fixed bit", bit)
            for i, bit in enumerate(KNOWN_BITS)
        ]
    return tuple(points)


KNOWN_BITS: Final[tuple[bool, ...]] = (
    True,
    False,
    True,
    True,
    False,
    False,
    False,
    True,
    True,
    True,
    False,
    True,
    False,
    True,
    True,
    False,
)
KNOWN: Final[tuple[SimPoint, ...]] = _known_points()
HOLE_START: Final = 400
HOLE_INVALID: Final = 405
HOLE_END: Final = 410
UNIT_REGISTER: Final = 500
"""Holding 500 holds the unit's id (0 on the TCP simulator, which answers every unit)."""
BULK_START: Final = 1000
BULK_COUNT: Final = 1000

REGISTER_MAP: Final[tuple[SimPoint, ...]] = (
    *PLANT,
    *KNOWN,
    *(
        SimPoint(f"hole_{r}", f"holding:{r}", "int", "fixed: its own offset", r)
        for r in range(HOLE_START, HOLE_END)
        if r != HOLE_INVALID
    ),
    SimPoint("hole_invalid", f"holding:{HOLE_INVALID}", "int", "always answers 'illegal data address'"),
    SimPoint(
        "bulk_first", f"holding:{BULK_START}", "int", f"bulk block of {BULK_COUNT}: 1000 + k holds k", 0
    ),
)


def _words(code: str, value: int | float) -> list[int]:
    data = struct.pack(code, value)
    return list(struct.unpack(f">{len(data) // 2}H", data))


def _string_words(text: str, width: int, *, low_byte_first: bool = False) -> list[int]:
    data = text.encode("latin-1").ljust(2 * width, b"\x00")
    return list(struct.unpack(f"{'<' if low_byte_first else '>'}{width}H", data))


def _known_registers() -> list[int]:
    """Registers 100..227: each known number, in each order, laid out by ``_WIRE_BYTES``."""
    registers = [0] * (16 * len(KNOWN_TYPES))
    for type_name in KNOWN_TYPES:
        big_endian = struct.pack(">" + _STRUCT[type_name], _KNOWN_NUMBERS[type_name])
        for order in ORDERS:
            wire = bytes(big_endian[i] for i in _WIRE_BYTES[(order, len(big_endian))])
            at = known_offset(type_name, order) - _KNOWN_START
            words = struct.unpack(f">{len(wire) // 2}H", wire)
            registers[at : at + len(words)] = words
    return registers


def _string_registers() -> list[int]:
    """Registers 300..323."""
    registers = [0] * 24
    registers[0:6] = _string_words("flowcollect", 6)
    registers[10:16] = _string_words("flowcollect", 6, low_byte_first=True)
    registers[20:24] = _string_words("ABCDEFGH", 4)
    return registers


def _registers(address: int, values: list[int]) -> SimData:
    return SimData(address, values=values, datatype=DataType.REGISTERS, readonly=True)


def _bits(address: int, values: Sequence[bool]) -> SimData:
    return SimData(address, values=list(values), datatype=DataType.BITS)


# ---------------------------------------------------------------------------- the server


@dataclass(frozen=True, slots=True)
class ReceivedRequest:
    """A request the simulator received, for tests that count requests at the device."""

    function_code: int
    address: int
    count: int
    t_ns: int = 0
    """When it arrived (epoch ns): tests bucket requests by due instant (no instant read twice)."""


class Simulator:
    """The simulated device, served from a background thread (``start``) or this one (``run``).

    ``port=0`` picks a free port; ``port`` holds the real one once started. Counters of what
    the device received: ``requests``, ``connections``, ``request_log`` (see
    ``reset_counters``). ``response_delay_s`` makes every answered read wait that long, as a
    real PLC's scan does (loopback answers in a fraction of a millisecond).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        response_delay_s: float = 0.0,
        *,
        sslctx: ssl.SSLContext | None = None,
    ) -> None:
        if not 0 <= response_delay_s <= 10:
            raise ValueError(f"Simulator response_delay_s: must be 0..10 seconds, got {response_delay_s!r}")
        self.host = host
        self.port = port
        self.response_delay_s = response_delay_s
        """How long each answered read waits before its answer, like a real device's scan."""
        self.sslctx = sslctx
        """A server context: the device speaks Modbus/TCP Security (TLS) with it."""
        self._started_at = time.monotonic()
        self._lock = threading.Lock()
        self._requests = 0
        self._connections = 0
        self._log: deque[ReceivedRequest] = deque(maxlen=100_000)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: ModbusBaseServer | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._on_ready: Callable[[Simulator], None] | None = None
        self._stop_requested = False

    # -- counters

    @property
    def requests(self) -> int:
        """Requests received since start (or ``reset_counters``)."""
        with self._lock:
            return self._requests

    @property
    def connections(self) -> int:
        """Client connections accepted since start (or ``reset_counters``)."""
        with self._lock:
            return self._connections

    @property
    def request_log(self) -> list[ReceivedRequest]:
        """The last 100,000 requests received, oldest first."""
        with self._lock:
            return list(self._log)

    def reset_counters(self) -> None:
        with self._lock:
            self._requests = 0
            self._connections = 0
            self._log.clear()

    # -- lifecycle

    def start(self, timeout_s: float = 10.0) -> Simulator:
        """Serve from a daemon thread; return once listening (``RuntimeError`` if it cannot)."""
        if self._thread is not None:
            raise RuntimeError("the simulator is already started")
        self._ready.clear()
        self._thread = threading.Thread(target=self._thread_main, name="modbus-simulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError(f"the simulator did not start listening within {timeout_s} s")
        if self._error is not None:
            self._thread.join(timeout_s)
            self._thread = None
            raise RuntimeError(f"the simulator could not listen on {self.host}:{self.port}: {self._error}")
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Close the listener and every connection, and end the thread. Idempotent."""
        thread, loop, server = self._thread, self._loop, self._server
        if thread is None:
            return
        if loop is not None and server is not None and not loop.is_closed():
            # RuntimeError: the loop ended by itself between the check and the call.
            with contextlib.suppress(RuntimeError):
                asyncio.run_coroutine_threadsafe(_close(server), loop).result(timeout_s)
        thread.join(timeout_s)
        self._thread = None

    def run(self, on_ready: Callable[[Simulator], None] | None = None) -> None:
        """Serve from this thread until Ctrl-C, SIGTERM (on the main thread) or ``stop`` from
        another thread.

        ``on_ready`` is called once listening, when ``port`` holds the real port.
        """
        self._on_ready = on_ready
        self._stop_requested = False
        try:
            run_bounded(
                self._serve(),
                self._request_stop,
                signals=threading.current_thread() is threading.main_thread(),
            )
        except KeyboardInterrupt:
            self._stop_requested = True
        if self._stop_requested:
            _log.info("simulator on %s stopped", self._where())

    def _request_stop(self) -> None:
        # On the loop's thread (a signal handler the loop runs): _serve then closes the server.
        self._stop_requested = True
        server = self._server
        if server is not None and not server.serving.done():
            server.serving.set_result(True)

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals

    def _thread_main(self) -> None:
        self._error = None
        self._stop_requested = False
        try:
            run_bounded(self._serve(), self._request_stop, signals=False)
        except BaseException as exc:  # reported to start(), which raises it
            self._error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._started_at = time.monotonic()
        server = self._make_server()
        await server.serve_forever(background=True)
        sockets: Any = getattr(server.transport, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        self._server = server
        _log.info("simulator listening on %s", self._where())
        self._ready.set()
        if self._on_ready is not None:
            self._on_ready(self)
        try:
            if not self._stop_requested:  # a signal may have come while the server started
                await server.serving
        finally:
            await _close(server)

    def _where(self) -> str:
        return f"{self.host}:{self.port}"

    def _make_server(self) -> ModbusBaseServer:
        if self.sslctx is not None:
            return ModbusTlsServer(
                self._device(0),
                address=(self.host, self.port),
                sslctx=self.sslctx,
                trace_pdu=self._trace_pdu,
                trace_connect=self._trace_connect,
            )
        return ModbusTcpServer(
            self._device(0),
            address=(self.host, self.port),
            trace_pdu=self._trace_pdu,
            trace_connect=self._trace_connect,
        )

    def _device(self, unit: int) -> SimDevice:
        plant, coils, discrete = plant_state(0.0)
        hole_low = list(range(HOLE_START, HOLE_INVALID))
        hole_high = list(range(HOLE_INVALID + 1, HOLE_END))
        holding = [
            _registers(0, plant),
            _registers(_KNOWN_START, _known_registers()),
            _registers(300, _string_registers()),
            _registers(HOLE_START, hole_low),
            _registers(HOLE_INVALID + 1, hole_high),
            _registers(UNIT_REGISTER, [unit]),
            _registers(BULK_START, list(range(BULK_COUNT))),
        ]
        inputs = [
            _registers(_KNOWN_START, _known_registers()),
            _registers(300, _string_registers()),
        ]
        coil_bits = [_bits(0, coils), _bits(100, KNOWN_BITS)]
        discrete_bits = [_bits(0, discrete), _bits(100, KNOWN_BITS)]
        return SimDevice(
            unit,
            simdata=(coil_bits, discrete_bits, holding, inputs),
            action=functools.partial(self._action, unit),
        )

    def _delay_s(self, unit: int) -> float:
        return self.response_delay_s

    async def _action(
        self,
        unit: int,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        # pymodbus calls this before answering, with the table's live registers: the plant is
        # brought up to date only when someone looks, so an idle simulator costs nothing.
        delay = self._delay_s(unit)
        if delay:
            await asyncio.sleep(delay)
        if start_address != 0 or address >= _PLANT_REGISTERS:
            return None
        plant, coils, discrete = plant_state(time.monotonic() - self._started_at)
        if function_code == 3:
            registers[0:_PLANT_REGISTERS] = plant
        elif function_code == 1 and set_values is None:
            registers[0] = _pack_bits(coils)
        elif function_code == 2:
            registers[0] = _pack_bits(discrete)
        return None

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            with self._lock:
                self._requests += 1
                self._log.append(
                    ReceivedRequest(
                        pdu.function_code,
                        getattr(pdu, "address", 0),
                        getattr(pdu, "count", 0),
                        time.time_ns(),
                    )
                )
        return pdu

    def _trace_connect(self, connected: bool) -> None:
        if connected:
            with self._lock:
                self._connections += 1


Exchange = tuple[str, int]
"""One event on a simulated line: ``("request", unit)``, ``("answer", unit)`` or
``("silent", unit)`` (a request the unit was told not to answer)."""


class LineSimulator(Simulator):
    """Several units on one Modbus RTU line, served from a background thread.

    ``serial=True``: a serial line. ``socat`` makes a pty pair; the simulator's pymodbus serial
    server holds one end and ``pty`` is the other, the port a reader opens (its path stays the
    same across ``stop()`` and ``start()``, as a USB adapter's does when it is replugged).
    Otherwise RTU framing over TCP on ``host``:``port``, as a serial-to-Ethernet gateway
    speaks it.

    ``link``: a path of your choosing for the pty (a symbolic link socat makes and removes), the
    same on every start, for a pipeline file or a service unit to name.

    A unit the line does not serve never answers, as on a real bus (its requests are received,
    counted and logged as ``("silent", unit)``): no exception response, no log line.
    ``silence(unit)`` makes a served unit stop answering the same way, ``slow(unit, seconds)``
    delays its answers. ``requests_by_unit`` and
    ``exchanges`` (the order of requests and answers the line carried) are what tests check.
    """

    def __init__(
        self,
        units: Sequence[int] = (1, 2, 3),
        *,
        serial: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
        baudrate: int = 19_200,
        parity: str = "N",
        directory: str | None = None,
        link: str | None = None,
    ) -> None:
        super().__init__(host, port)
        if not units or any(not 1 <= u <= 247 for u in units):
            raise ValueError(f"LineSimulator units: must be 1..247, got {list(units)!r}")
        if link is not None and not serial:
            raise ValueError("LineSimulator link: only a serial line (serial=True) has a pty to link")
        if link is not None and os.path.lexists(link) and not os.path.islink(link):
            raise ValueError(f"LineSimulator link: {link} exists and is not a symbolic link; pick another")
        self.link = os.path.abspath(link) if link is not None else None
        self.units = tuple(units)
        self.serial = serial
        self.baudrate = baudrate
        self.parity = parity
        self._directory = directory
        self._socat: subprocess.Popen[bytes] | None = None
        self._silent: set[int] = set()
        self._delays: dict[int, float] = {}
        self._by_unit: dict[int, int] = {}
        self._exchanges: deque[Exchange] = deque(maxlen=100_000)

    # -- what the line carried

    @property
    def pty(self) -> str:
        """The serial port a reader opens (``serial=True`` only)."""
        if not self.serial:
            raise RuntimeError("an RTU-over-TCP simulator has no pty: use host and port")
        return self.link if self.link is not None else os.path.join(self._dir(), "client")

    @property
    def requests_by_unit(self) -> dict[int, int]:
        with self._lock:
            return dict(self._by_unit)

    @property
    def exchanges(self) -> list[Exchange]:
        """Requests and answers in the order the line carried them (the last 100,000)."""
        with self._lock:
            return list(self._exchanges)

    def reset_counters(self) -> None:
        super().reset_counters()
        with self._lock:
            self._by_unit.clear()
            self._exchanges.clear()

    # -- faults on demand

    def silence(self, unit: int, silent: bool = True) -> None:
        """Make ``unit`` stop answering (``silent=False``: answer again)."""
        with self._lock:
            if silent:
                self._silent.add(unit)
            else:
                self._silent.discard(unit)

    def slow(self, unit: int, delay_s: float) -> None:
        """Delay ``unit``'s answers by ``delay_s`` (0: as fast as it can)."""
        with self._lock:
            self._delays[unit] = delay_s

    # -- lifecycle

    def start(self, timeout_s: float = 10.0) -> LineSimulator:
        if self.serial and self._socat is None:
            self._start_socat(timeout_s)
        try:
            super().start(timeout_s)
        except BaseException:
            self._stop_socat()
            raise
        return self

    def stop(self, timeout_s: float = 10.0, *, keep_port: bool = False) -> None:
        """Stop serving; on a serial line the pty pair goes too (the reader's port is gone),
        unless ``keep_port``: then the port stays and every unit falls silent, as when a bus's
        cable is pulled."""
        super().stop(timeout_s)
        if not keep_port:
            self._stop_socat()

    def close(self) -> None:
        """Stop, and remove the pty folder if this simulator made it."""
        self.stop()
        if self._directory is not None and self._made_directory:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    _made_directory = False

    def _dir(self) -> str:
        if self._directory is None:
            self._directory = tempfile.mkdtemp(prefix="flowcollect-line-")
            self._made_directory = True
        return self._directory

    def _start_socat(self, timeout_s: float) -> None:
        socat = shutil.which("socat")
        if socat is None:
            raise RuntimeError("a serial line simulator needs socat (apt-get install socat)")
        ends = [os.path.join(self._dir(), "server"), self.pty]
        for end in ends:
            # Only a link (ours, left by a simulator that was killed): the constructor refused
            # a path that is anything else.
            if os.path.islink(end):
                os.unlink(end)
        self._socat = subprocess.Popen(  # noqa: S603 - a fixed program, our own paths
            [socat, *(f"pty,raw,echo=0,link={end}" for end in ends)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while not all(os.path.exists(end) for end in ends):
            if self._socat.poll() is not None or time.monotonic() > deadline:
                self._stop_socat()
                raise RuntimeError("socat did not make the pty pair")
            time.sleep(0.005)

    def _stop_socat(self) -> None:
        process, self._socat = self._socat, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    # -- serving

    def _make_server(self) -> ModbusBaseServer:
        # Device 0 is pymodbus's catch-all for ids without a device of their own: without it, a
        # request to another unit fails inside pymodbus's datastore (a traceback logged per
        # request, and exception 4 sent back). With it, that request is served and its answer
        # withheld in _trace_packet: the unit stays silent, as an absent unit on a bus does.
        devices = [self._device(unit) for unit in self.units] + [self._absent()]
        if self.serial:
            return ModbusSerialServer(
                devices,
                framer=FramerType.RTU,
                port=os.path.join(self._dir(), "server"),
                baudrate=self.baudrate,
                parity=self.parity,
                ignore_missing_devices=True,
                trace_pdu=self._trace_pdu,
                trace_packet=self._trace_packet,
                trace_connect=self._trace_connect,
            )
        return ModbusTcpServer(
            devices,
            framer=FramerType.RTU,
            address=(self.host, self.port),
            ignore_missing_devices=True,
            trace_pdu=self._trace_pdu,
            trace_packet=self._trace_packet,
            trace_connect=self._trace_connect,
        )

    def _absent(self) -> SimDevice:
        bits, registers = [_bits(0, [False])], [_registers(0, [0])]
        return SimDevice(0, simdata=(bits, bits, registers, registers))

    def _where(self) -> str:
        return self.pty if self.serial else f"{self.host}:{self.port} (RTU over TCP)"

    def _delay_s(self, unit: int) -> float:
        with self._lock:
            return self._delays.get(unit, self.response_delay_s)

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            with self._lock:
                self._by_unit[pdu.dev_id] = self._by_unit.get(pdu.dev_id, 0) + 1
                self._exchanges.append(("request", pdu.dev_id))
        return super()._trace_pdu(sending, pdu)

    def _trace_packet(self, sending: bool, packet: bytes) -> bytes:
        if not sending or not packet:
            return packet
        unit = packet[0]  # an RTU frame starts with the unit id
        with self._lock:
            if unit in self._silent or unit not in self.units:
                self._exchanges.append(("silent", unit))
                return b""
            self._exchanges.append(("answer", unit))
        return packet


async def _close(server: ModbusBaseServer) -> None:
    """Stop listening, let accepts under way finish, then close every connection.

    On Python 3.11, closing an asyncio server while a just-accepted connection is still being
    set up fails that setup and leaks its socket; so accepting stops first, and a few loop
    turns (not a timed wait) let the pending set-ups complete before the close.
    """
    loop = asyncio.get_running_loop()
    listening: Any = getattr(server.transport, "sockets", None) or ()
    for sock in listening:
        loop.remove_reader(sock.fileno())
    for _ in range(3):
        await asyncio.sleep(0)
    await server.shutdown()  # type: ignore[no-untyped-call]
    # Closing a connection only schedules its socket's close: one more turn runs it before
    # the loop is torn down.
    await asyncio.sleep(0)


def _pack_bits(bits: Sequence[bool]) -> int:
    return sum(1 << i for i, bit in enumerate(bits) if bit)


def serve(host: str = "127.0.0.1", port: int = 5020, response_delay_s: float = 0.0) -> None:
    """Run the simulator in the foreground until Ctrl-C; prints where it listens."""
    Simulator(host, port, response_delay_s).run(on_ready=_announce)


def serve_line(
    units: Sequence[int] = (1, 2, 3),
    *,
    serial: bool = True,
    host: str = "127.0.0.1",
    port: int = 5020,
    baudrate: int = 19_200,
    silent: Sequence[int] = (),
    link: str | None = None,
) -> None:
    """Serve several units on one line in the foreground until Ctrl-C: a serial line (a pty
    pair; prints the pty to open, ``link`` when given) or RTU over TCP (prints where it
    listens). ``silent`` units receive requests but never answer (nor do units not served)."""
    simulator = LineSimulator(units, serial=serial, host=host, port=port, baudrate=baudrate, link=link)
    for unit in silent:
        simulator.silence(unit)
    if serial:
        simulator._start_socat(10.0)
    try:
        simulator.run(on_ready=_announce_line)
    finally:
        simulator.close()


def _announce(simulator: Simulator) -> None:
    # The one line the standalone command prints; scripts and tests read the port from it.
    print(
        f"flowcollect simulator: Modbus TCP on {simulator.host}:{simulator.port} (Ctrl-C stops)", flush=True
    )


def _announce_line(simulator: Simulator) -> None:
    if not isinstance(simulator, LineSimulator):
        return
    units = ", ".join(str(u) for u in simulator.units)
    with simulator._lock:
        silent = sorted(simulator._silent)
    if silent:
        units += f" ({', '.join(str(u) for u in silent)} silent)"
    if simulator.serial:
        where = f"Modbus RTU on serial port {simulator.pty} ({simulator.baudrate} baud, 8N1)"
    else:
        where = f"Modbus RTU over TCP on {simulator.host}:{simulator.port}"
    print(f"flowcollect simulator: {where}, units {units} (Ctrl-C stops)", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m flowcollect.simulator",
        description="Serve the flowcollect Modbus device simulator until Ctrl-C.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5020, help="TCP port; 0 picks a free one (default 5020)")
    parser.add_argument(
        "--delay-ms",
        type=float,
        default=0.0,
        help="wait this long before each answer, like a real PLC (default 0)",
    )
    parser.add_argument(
        "--serial",
        action="store_true",
        help="units 1, 2, 3 on a serial line (a pty pair made by socat); prints the pty to open",
    )
    parser.add_argument("--rtu", action="store_true", help="units 1, 2, 3 speaking RTU over TCP (a gateway)")
    parser.add_argument("--baudrate", type=int, default=19_200, help="the serial line's baud rate")
    parser.add_argument(
        "--silent", type=int, action="append", default=[], help="a unit that never answers (repeatable)"
    )
    parser.add_argument("--link", help="with --serial: a stable path for the pty (a symbolic link)")
    args = parser.parse_args(argv)
    if args.serial or args.rtu:
        serve_line(
            serial=args.serial,
            host=args.host,
            port=args.port,
            baudrate=args.baudrate,
            silent=args.silent,
            link=args.link,
        )
        return
    serve(args.host, args.port, args.delay_ms / 1000)
