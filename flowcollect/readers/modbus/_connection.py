"""The connection of a Modbus line, shared by its units: one client, one request at a time.

A registry keyed by the line's key hands every reader of a line the same ``LineConnection``;
it is opened once and closed when the last reader closes. pymodbus's sync clients do the
framing; this module keeps what pymodbus would otherwise decide for the whole line:

- pymodbus closes a client after ``retries + 3`` requests in a row go unanswered, so one dead
  unit would bounce every unit on the line. The counter is reset before each request.
- Timeouts and retries are per unit: set on the client for each request.
- A unit that does not answer is backed off on its own (``UnitState``).
- pymodbus logs an ERROR line for every timeout, refused connect and stray frame. The reader
  reports those failures itself (as value errors and rate-limited log lines), so while a
  request of ours runs, pymodbus's WARNING and ERROR records are dropped (``_QuietFilter``).
"""

from __future__ import annotations

import contextlib
import logging
import re
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from pymodbus.client import ModbusSerialClient, ModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU
from pymodbus.pdu.register_message import ReadHoldingRegistersResponse, ReadInputRegistersResponse

from flowcollect._logs import RateLimitedLog
from flowcollect._text import peer_text
from flowcollect.errors import ConfigError
from flowcollect.readers.modbus.line import ModbusLine
from flowcollect.readers.modbus.timing import Pacer

__all__ = [
    "MAX_RETRY_DELAY_S",
    "Failure",
    "LineConnection",
    "UnitState",
    "acquire",
    "describe_error",
    "quiet_pymodbus",
    "release",
    "retry_delay",
    "short_text",
]

_log = logging.getLogger("flowcollect.readers.modbus")

MAX_RETRY_DELAY_S: Final = 5.0
"""The longest wait between two attempts: to reopen a line, or to ask a unit that is silent."""

# After this many unanswered requests in a row, with no unit of the line answering, a TCP
# connection is taken for dead (a device rebooted without a reset reaches nobody) and reopened.
_DEAD_AFTER_TIMEOUTS: Final = 3
# pymodbus's counter of unanswered requests before it closes the line: never reached.
_NEVER: Final = 1 << 30

# ---------------------------------------------------------------------------- pymodbus's logs

_quiet = threading.local()


class _QuietFilter(logging.Filter):
    """Drops pymodbus's WARNING/ERROR records emitted by a thread inside one of our requests."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING or not getattr(_quiet, "depth", 0)


_PYMODBUS_LOGGER: Final = logging.getLogger("pymodbus.logging")
if not any(isinstance(f, _QuietFilter) for f in _PYMODBUS_LOGGER.filters):
    _PYMODBUS_LOGGER.addFilter(_QuietFilter())


@contextlib.contextmanager
def quiet_pymodbus() -> Iterator[None]:
    """Within: pymodbus's own warnings and errors on this thread are not logged."""
    _quiet.depth = getattr(_quiet, "depth", 0) + 1
    try:
        yield
    finally:
        _quiet.depth -= 1


# ---------------------------------------------------------------------------- clients


def _decode_registers(pdu: ModbusPDU, data: bytes) -> None:
    # pymodbus unpacks a response one register at a time; for 125 registers that is most of
    # the client's CPU per request. One unpack of the whole payload, with the same checks.
    byte_count = data[0]
    if byte_count >= len(data) or byte_count % 2:
        raise ValueError(f"byte count {byte_count} does not fit a {len(data) - 1}-byte register payload")
    pdu.registers = list(struct.unpack_from(f">{byte_count // 2}H", data, 1))


class _FastHoldingResponse(ReadHoldingRegistersResponse):
    def decode(self, data: bytes) -> None:
        _decode_registers(self, data)


class _FastInputResponse(ReadInputRegistersResponse):
    def decode(self, data: bytes) -> None:
        _decode_registers(self, data)


class _TcpClient(ModbusTcpClient):
    """pymodbus's sync TCP client (Modbus TCP or RTU framing), with a quiet connect.

    pymodbus logs an ERROR line for every failed connect; a device down for an hour would log
    one per tick. The response classes are registered on this client's own decoder only.
    """

    connect_error: Exception | None = None

    def __init__(self, host: str, *, port: int, timeout: float, framer: FramerType) -> None:
        super().__init__(host, port=port, timeout=timeout, retries=0, framer=framer)
        self.register(_FastHoldingResponse)
        self.register(_FastInputResponse)

    def connect(self) -> bool:
        if self.socket is not None:
            return True
        params = self.comm_params
        try:
            sock = socket.create_connection((params.host, int(params.port)), timeout=params.timeout_connect)
        except OSError as exc:
            self.connect_error = exc
            return False
        # Requests are small and answered one at a time; never let Nagle hold one back.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.socket = sock
        self.connect_error = None
        return True

    def drain(self) -> None:
        """Drop bytes already received: a late answer must never pass for the next one's."""
        sock = self.socket
        if sock is None:
            return
        with contextlib.suppress(OSError):
            while select.select([sock], [], [], 0)[0]:
                if not sock.recv(4096):
                    return

    def close(self) -> None:
        # pymodbus's own close does the same but is unannotated; strict typing wants ours.
        if self.socket is not None:
            self.socket.close()
        self.socket = None


class _SerialClient(ModbusSerialClient):
    """pymodbus's sync serial client with a quiet connect that keeps the reason it failed.

    The port is opened exclusively (pyserial's ``flock``): a second program (or collector)
    opening the same port fails with ``port busy`` instead of interleaving its frames.
    """

    connect_error: Exception | None = None

    def __init__(self, line: ModbusLine, timeout: float) -> None:
        super().__init__(
            str(line.port),
            framer=FramerType.RTU,
            baudrate=line.baudrate or 19_200,
            bytesize=line.bytesize,
            parity=line.parity,
            stopbits=line.stopbits,
            timeout=timeout,
            retries=0,
        )
        self.register(_FastHoldingResponse)
        self.register(_FastInputResponse)

    def connect(self) -> bool:
        if self.socket is not None:
            return True
        import serial

        params = self.comm_params
        try:
            port = serial.serial_for_url(
                params.host,
                timeout=params.timeout_connect,
                write_timeout=params.timeout_connect,
                bytesize=params.bytesize,
                stopbits=params.stopbits,
                baudrate=params.baudrate,
                parity=params.parity,
                exclusive=True,
            )
        except Exception as exc:  # pyserial raises termios and OS errors as they come
            self.connect_error = exc
            return False
        try:
            port.inter_byte_timeout = self.inter_byte_timeout
        except Exception as exc:  # a port that refuses a setting: close it, or its lock stays
            port.close()
            self.connect_error = exc
            return False
        self.socket = port
        self.connect_error = None
        return True

    def drain(self) -> None:
        # pymodbus's serial send drops whatever waits in the input buffer before each request.
        return

    def close(self) -> None:
        if self.socket is not None:
            with contextlib.suppress(Exception):
                self.socket.close()
        self.socket = None


_Client = _TcpClient | _SerialClient

_READS: Final[dict[str, Callable[[Any, int, int, int], ModbusPDU]]] = {
    "coil": lambda c, start, count, unit: c.read_coils(start, count=count, device_id=unit),
    "discrete": lambda c, start, count, unit: c.read_discrete_inputs(start, count=count, device_id=unit),
    "holding": lambda c, start, count, unit: c.read_holding_registers(start, count=count, device_id=unit),
    "input": lambda c, start, count, unit: c.read_input_registers(start, count=count, device_id=unit),
}


# ---------------------------------------------------------------------------- state


@dataclass(slots=True)
class Failure:
    """Why a request brought no data."""

    text: str
    code: int | None = None
    """The Modbus exception code, when the device answered with one."""
    fatal: bool = False
    """The line's connection is gone: stop this tick for every unit."""
    timeout: bool = False
    """The unit did not answer: the rest of its requests this tick would only wait again."""


@dataclass(slots=True)
class UnitState:
    """What the line knows of one unit, shared by every reader of that unit on the line."""

    unit: int
    failures: int = 0
    """Requests in a row the unit left unanswered."""
    retry_at: float = 0.0
    """Monotonic time before which the unit is not asked again (it is backed off)."""
    last_text: str = ""
    tried_at: float = float("-inf")
    """Monotonic time of the last request to the unit."""
    answer_s: float | None = None
    """A moving average of how long the unit's answered requests took."""
    # What exception answers taught (see ModbusDataReader._learn).
    bad: dict[str, set[int]] = field(default_factory=dict)
    bad_sorted: dict[str, list[int]] = field(default_factory=dict)
    alone: set[tuple[str, int, int]] = field(default_factory=set)
    limits: dict[str, int] = field(default_factory=dict)
    generation: int = 0
    """Bumped whenever the learned facts change: readers drop their cached plans."""

    def backed_off(self, now: float) -> bool:
        return self.failures > 0 and now < self.retry_at

    def answered(self, elapsed_s: float) -> None:
        self.failures = 0
        self.retry_at = 0.0
        self.answer_s = elapsed_s if self.answer_s is None else 0.8 * self.answer_s + 0.2 * elapsed_s

    def missed(self, now: float, timeout_s: float, text: str) -> None:
        self.failures += 1
        self.last_text = text
        # The first back-off is two timeouts, so a silent unit costs the line at most a third
        # of its time from the start, and less and less after.
        self.retry_at = now + retry_delay(self.failures + 1, timeout_s)


def retry_delay(failures: int, timeout_s: float) -> float:
    """Seconds to wait after ``failures`` attempts in a row that each cost up to ``timeout_s``.

    Starts at one timeout, doubles, and never exceeds ``MAX_RETRY_DELAY_S``.
    """
    if failures <= 0:
        return 0.0
    return float(min(MAX_RETRY_DELAY_S, timeout_s * 2 ** min(failures - 1, 16)))


# ---------------------------------------------------------------------------- the connection


class LineConnection:
    """One line's client, shared by its readers; every request holds ``lock``.

    The engine runs a line's readers on one lane thread, so the lock is uncontended there; it
    keeps requests apart when readers of one line are called from several threads anyway.
    """

    def __init__(
        self,
        line: ModbusLine,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.line = line
        self._sleep = sleep
        self.lock = threading.RLock()
        self.users = 0
        self.units: dict[int, UnitState] = {}
        self.intervals: dict[int, frozenset[int]] = {}
        """Per reader (its id), the intervals it serves: when the line's next instant is due."""
        self._line_intervals: frozenset[int] = frozenset()
        self._probed_at: int | None = None
        self._clock = clock
        self._client: _Client | None = None
        self._pacer = Pacer(line.gap_s)
        self._ever_connected = False
        self._retry_at = 0.0
        self._slow_failures = 0
        self._unanswered = 0
        self._stale = False
        self.down_text = "not connected"
        self._down_log = RateLimitedLog(_log, window_s=60.0)
        self.counters: dict[str, int] = dict.fromkeys(
            ("connect_attempts", "connect_failures", "reconnects", "dead_connections"), 0
        )

    # -- state

    @property
    def connected(self) -> bool:
        client = self._client
        return client is not None and client.connected

    def unit(self, unit: int) -> UnitState:
        state = self.units.get(unit)
        if state is None:
            state = self.units[unit] = UnitState(unit)
        return state

    def set_intervals(self, reader: int, intervals: frozenset[int] | None) -> None:
        """What ``reader`` (its id) serves now; ``None``: it left the line."""
        if intervals is None:
            self.intervals.pop(reader, None)
        else:
            self.intervals[reader] = intervals
        union: frozenset[int] = frozenset()
        for each in list(self.intervals.values()):
            union |= each
        self._line_intervals = union

    def line_intervals(self) -> frozenset[int]:
        """The intervals every reader of the line serves: when the line's next instant is due."""
        return self._line_intervals

    def now(self) -> float:
        return self._clock()

    def pacing_s(self) -> float:
        """How long the next request must wait for the line's silence (and pause)."""
        return self._pacer.wait_s(self._clock())

    # -- connecting

    def ensure(self, timeout_s: float, name: str) -> bool:
        """Connect unless connected or backing off; at most one attempt per call."""
        client = self._client
        if client is not None and client.connected:
            return True
        if client is None:
            client = self._client = self._make_client(timeout_s)
        now = self._clock()
        if now < self._retry_at:
            return False
        self.counters["connect_attempts"] += 1
        client.comm_params.timeout_connect = timeout_s
        with quiet_pymodbus():
            ok = client.connect()
        if ok:
            if self._ever_connected:
                self.counters["reconnects"] += 1
                _log.info("modbus %s (reader %r): connected again", self.line.key, name)
            self._ever_connected = True
            self._retry_at = 0.0
            self._slow_failures = 0
            self._unanswered = 0
            self._stale = False
            return True
        self.counters["connect_failures"] += 1
        error = client.connect_error
        # A refusal, or a port that is not there, comes back at once: retrying at the next tick
        # is free and brings values back within two ticks of the device's return. A failure
        # that cost a timeout (an unreachable gateway) backs off.
        slow = isinstance(error, TimeoutError | socket.timeout)
        self.went_down(f"not connected: {describe_error(error)}", slow=slow, name=name, timeout_s=timeout_s)
        return False

    def _make_client(self, timeout_s: float) -> _Client:
        line = self.line
        if line.kind == "serial":
            return _SerialClient(line, timeout_s)
        framer = FramerType.RTU if line.kind == "rtu-tcp" else FramerType.SOCKET
        return _TcpClient(str(line.host), port=int(line.port), timeout=timeout_s, framer=framer)

    def went_down(self, text: str, *, slow: bool, name: str, timeout_s: float) -> None:
        self.down_text = text
        if self._client is not None:
            self._client.close()
        if slow:
            self._slow_failures += 1
            self._retry_at = self._clock() + retry_delay(self._slow_failures, timeout_s)
        else:
            self._retry_at = 0.0
        self._down_log.warning(
            (self.line.key, text), "modbus %s (reader %r): %s; reopening", self.line.key, name, text
        )

    def close(self) -> None:
        client = self._client
        self._client = None
        if client is not None:
            client.close()

    # -- one request

    def request(
        self,
        unit: UnitState,
        table: str,
        start: int,
        count: int,
        *,
        timeout_s: float,
        retries: int,
        name: str,
    ) -> ModbusPDU | Failure:
        """One read request to ``unit``; any trouble comes back as a ``Failure``, never raised."""
        client = self._client
        if client is None or not client.connected:
            return Failure(self.down_text, fatal=True)
        wait = self._pacer.wait_s(self._clock())
        if wait > 0:
            # The line's silent interval (and configured pause): a bus must be quiet between
            # frames, or the next unit cannot tell where the last answer ended.
            self._sleep(wait)
        client.comm_params.timeout_connect = timeout_s
        manager = client.transaction
        # A unit already failing gets one attempt per back-off period, never its retries too.
        manager.retries = retries if unit.failures == 0 else 0
        manager.max_until_disconnect = manager.count_until_disconnect = _NEVER
        if self._stale:
            client.drain()
            self._stale = False
        started = unit.tried_at = self._clock()
        try:
            with quiet_pymodbus():
                response = _READS[table](client, start, count, unit.unit)
        except Exception as exc:  # pymodbus may raise anything on garbage bytes
            return self._failed(exc, unit, started, timeout_s, name)
        finally:
            self._pacer.done(self._clock())
        # Any answer, an exception answer too, shows the unit and the line are alive.
        self._unanswered = 0
        if unit.failures:
            _log.info("modbus %s unit %d (reader %r): answers again", self.line.key, unit.unit, name)
        if unit.failures and self.bus_silent():
            # The first answer after the whole bus was silent: the others were silent for the
            # same reason (a cable, an adapter, the gateway's serial side), not each their own.
            for other in self.units.values():
                other.failures = 0
                other.retry_at = 0.0
        unit.answered(self._clock() - started)
        return response

    def _failed(
        self, exc: Exception, unit: UnitState, started: float, timeout_s: float, name: str
    ) -> Failure:
        """What an exception out of pymodbus means for the line and the unit."""
        if isinstance(exc, ConnectionException) or (self.line.kind == "serial" and _port_failed(exc)):
            # pyserial's termios calls fail outside pymodbus's OSError net when a port vanishes
            # (an adapter unplugged): that is the line gone too, not a bad answer.
            self.went_down(_connection_lost(self.line, exc), slow=False, name=name, timeout_s=timeout_s)
            return Failure(self.down_text, fatal=True)
        self._stale = True
        if isinstance(exc, ModbusIOException) and self._clock() - started >= timeout_s / 2:
            return self._timed_out(unit, timeout_s, name)
        return Failure(f"bad response: {short_text(exc)}")

    def bus_silent(self) -> bool:
        """True when the line has several units and none of them answers."""
        units = list(self.units.values())
        return len(units) > 1 and all(u.failures > 0 for u in units)

    def may_probe(self, unit: UnitState, instant: int) -> bool:
        """May a unit be asked at ``instant`` while the whole bus is silent? Once per instant:
        the line then has nothing else to do, and the first answer brings every unit back
        within two ticks. (A lone unit's silence is its own, and keeps its back-off.)
        """
        if self._probed_at == instant:
            return False
        if unit is not min(self.units.values(), key=lambda u: u.tried_at):
            return False  # another unit's turn: every unit gets asked, one per instant
        self._probed_at = instant
        return True

    def _timed_out(self, unit: UnitState, timeout_s: float, name: str) -> Failure:
        text = f"no response within {timeout_s:g} s"
        unit.missed(self._clock(), timeout_s, text)
        if unit.failures == 1:
            # Once per silence (and at most once a minute): every later probe says the same.
            self._down_log.warning(
                (self.line.key, unit.unit, text),
                "modbus %s unit %d (reader %r): %s; asking again after a back-off",
                self.line.key,
                unit.unit,
                name,
                text,
            )
        self._unanswered += 1
        everyone = all(u.failures > 0 for u in list(self.units.values()))
        if self.line.kind != "serial" and everyone and self._unanswered >= _DEAD_AFTER_TIMEOUTS:
            # Nobody on the line answers: a connection to a device that went away without a
            # reset looks exactly like this. Reopening costs nothing if the device is fine.
            self._unanswered = 0
            self.counters["dead_connections"] += 1
            self.went_down(f"{text} from any unit", slow=False, name=name, timeout_s=timeout_s)
        return Failure(text, timeout=True)


# ---------------------------------------------------------------------------- the registry

_registry: dict[str, LineConnection] = {}
_registry_lock = threading.Lock()


def acquire(line: ModbusLine) -> LineConnection:
    """The line's shared connection (made on first use); ``release`` it when done."""
    with _registry_lock:
        connection = _registry.get(line.key)
        if connection is None:
            connection = _registry[line.key] = LineConnection(line)
        elif connection.line != line:
            differences = ", ".join(connection.line.differences(line))
            raise ConfigError(f"modbus line {line.key} is configured twice: {differences}")
        connection.users += 1
        return connection


def release(connection: LineConnection) -> None:
    """One reader less; the last one closes the connection."""
    with _registry_lock:
        connection.users -= 1
        if connection.users > 0:
            return
        if _registry.get(connection.line.key) is connection:
            del _registry[connection.line.key]
    connection.close()


# ---------------------------------------------------------------------------- texts

_PYMODBUS_PREFIX = re.compile(r"^\s*Modbus Error:\s*\[[^\]]*\]\s*")


def short_text(exc: BaseException, limit: int = 80) -> str:
    """A short, whole-word text for an exception: pymodbus's ``Modbus Error: [...]`` prefix
    dropped, the first line only, cut at a word boundary."""
    text = _PYMODBUS_PREFIX.sub("", str(exc)).strip().splitlines()
    # What a device or library said is escaped before it becomes an error (flowcollect._text).
    first = peer_text(text[0].strip(), 4 * limit) if text else ""
    if not first:
        return type(exc).__name__
    if len(first) <= limit:
        return first
    cut = first.rfind(" ", 0, limit - 3)
    if cut < limit // 2:
        cut = limit - 3
    return first[:cut].rstrip(" ,;:.-") + "..."


# Words of pyserial's and the OS's errors, and what to say instead.
_OPEN_ERRORS: Final = (
    ("No such file or directory", "no such port"),
    ("exclusively lock", "port busy (another program has it open)"),
    ("Resource temporarily unavailable", "port busy (another program has it open)"),
    ("Permission denied", "permission denied"),
)


def describe_error(error: BaseException | None) -> str:
    """Why a connect or open failed, in a few words."""
    if error is None:
        return "connection failed"
    if isinstance(error, TimeoutError | socket.timeout):
        return "connect timed out"
    if isinstance(error, socket.gaierror):
        return f"cannot resolve host ({error.strerror or error})"
    text = str(error)
    said = next((words for marker, words in _OPEN_ERRORS if marker in text), None)
    if said is not None:
        return said
    if isinstance(error, OSError) and error.strerror:
        return peer_text(error.strerror.lower())
    return short_text(error)


def _port_failed(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return True
    try:
        import termios
    except ImportError:  # not POSIX: pyserial raises OSError subclasses there
        return False
    return isinstance(exc, termios.error)


def _connection_lost(line: ModbusLine, exc: Exception) -> str:
    if line.kind == "serial":
        return "connection lost: the port failed"
    if "closed" in str(exc):
        return "connection lost: closed by the device"
    return "connection lost"
