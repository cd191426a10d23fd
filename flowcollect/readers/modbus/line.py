"""A Modbus line: one connection (a serial port, an RTU-over-TCP gateway, a Modbus TCP socket)
shared by every unit on it, and what a tick of requests costs on it.

Pure: settings, the line's key and the time requests take on it. The connection itself is
``_connection.py``; a whole plan's estimates are ``estimates.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Literal

from flowcollect.errors import ConfigError
from flowcollect.readers.modbus.estimates import LineEstimate
from flowcollect.readers.modbus.packing import ModbusRequest
from flowcollect.readers.modbus.timing import silent_interval_s, wire_time_s

__all__ = ["LineKind", "ModbusLine"]

LineKind = Literal["serial", "rtu-tcp", "tcp"]

_PARITIES: Final = ("N", "E", "O")
_SERIAL_MAX_UNIT: Final = 247
_TCP_MAX_UNIT: Final = 255


class ModbusLine:
    """One Modbus line, shared by every ``ModbusDataReader`` (unit) on it.

    - A serial port: ``ModbusLine("/dev/ttyUSB0", baudrate=19200, parity="E", bytesize=8,
      stopbits=1)`` (``framer="rtu"``, the default for a port path).
    - An RTU-over-TCP gateway: ``ModbusLine(host="10.0.0.5", port=4001, framer="rtu")``; give
      ``baudrate`` (the gateway's serial side) to get time estimates in ``flowcollect plan``.
    - Modbus TCP: ``ModbusLine(host="10.0.0.7", port=502)`` (``framer="tcp"``, the default
      with a host).

    Readers on one line share one engine lane (``key``): one thread, one connection, requests
    one at a time. ``pause_between_requests_ms`` adds a pause after every exchange (slow
    gateways and devices want one); ``turnaround_ms`` is the time a device is assumed to take
    before answering, used for estimates only.
    """

    __slots__ = (
        "__weakref__",
        "baudrate",
        "bytesize",
        "framer",
        "host",
        "kind",
        "parity",
        "pause_between_requests_ms",
        "port",
        "stopbits",
        "turnaround_ms",
    )

    def __init__(
        self,
        port: str | int | None = None,
        *,
        host: str | None = None,
        framer: Literal["rtu", "tcp"] | None = None,
        baudrate: int | None = None,
        parity: str = "N",
        bytesize: int = 8,
        stopbits: int = 1,
        pause_between_requests_ms: float = 0.0,
        turnaround_ms: float = 5.0,
    ) -> None:
        kind, port, problems = _check_endpoint(port, host, framer)
        problems += _check_serial(kind, baudrate, parity, bytesize, stopbits)
        for name, value in (
            ("pause_between_requests_ms", pause_between_requests_ms),
            ("turnaround_ms", turnaround_ms),
        ):
            if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 60_000:
                problems.append(
                    f"ModbusLine {name}: must be a number of milliseconds 0..60000, got {value!r}"
                )
        if problems:
            raise ConfigError(problems)
        self.kind: LineKind = kind
        self.port: str | int = port if isinstance(port, str) else int(port or 0)
        self.host = host
        self.framer: Literal["rtu", "tcp"] = "tcp" if kind == "tcp" else "rtu"
        self.baudrate: int | None = (
            baudrate if baudrate is not None else (19_200 if kind == "serial" else None)
        )
        self.parity = parity.upper()
        self.bytesize = int(bytesize)
        self.stopbits = int(stopbits)
        self.pause_between_requests_ms = float(pause_between_requests_ms)
        self.turnaround_ms = float(turnaround_ms)

    # -- identity

    @property
    def key(self) -> str:
        """The lane key: ``modbus+rtu:///dev/ttyUSB0``, ``modbus+rtu-tcp://10.0.0.5:4001``,
        ``modbus+tcp://127.0.0.1:5020``. The same in every process."""
        if self.kind == "serial":
            return f"modbus+rtu://{self.port}"
        host = f"[{self.host}]" if self.host is not None and ":" in self.host else self.host
        return f"modbus+{self.kind}://{host}:{self.port}"

    @property
    def max_unit(self) -> int:
        """The highest unit id: 247 on RTU lines (serial and gateways), 255 on Modbus TCP."""
        return _TCP_MAX_UNIT if self.kind == "tcp" else _SERIAL_MAX_UNIT

    @property
    def is_bus(self) -> bool:
        """True for lines with a serial bus (directly or behind a gateway): one frame at a time."""
        return self.kind != "tcp"

    def _settings(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in _SETTINGS)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModbusLine) and self._settings() == other._settings()

    def __hash__(self) -> int:
        return hash(self._settings())

    def differences(self, other: ModbusLine) -> list[str]:
        """The settings in which ``other`` differs, as ``name a != b`` texts."""
        return [
            f"{name} {getattr(self, name)!r} != {getattr(other, name)!r}"
            for name in _SETTINGS
            if getattr(self, name) != getattr(other, name)
        ]

    # -- timing

    @property
    def gap_s(self) -> float:
        """What the line waits between two exchanges: the silent interval on a serial port,
        plus ``pause_between_requests_ms`` on every line."""
        pause = self.pause_between_requests_ms / 1000
        if self.kind == "serial" and self.baudrate is not None:
            return silent_interval_s(self.baudrate) + pause
        return pause

    def request_time_s(self, request: ModbusRequest) -> float | None:
        """The estimated line time of one request, or ``None`` when the line's speed is unknown."""
        if self.baudrate is None:
            return None
        return wire_time_s(
            request,
            self.baudrate,
            turnaround_s=self.turnaround_ms / 1000,
            pause_s=self.pause_between_requests_ms / 1000,
        )

    def estimate(self, requests: Sequence[ModbusRequest], tick_ms: float) -> LineEstimate:
        """What ``requests`` (one tick's, of every unit on the line) cost against ``tick_ms``."""
        times = [self.request_time_s(r) for r in requests]
        known = [t for t in times if t is not None]
        total = 1000 * sum(known) if len(known) == len(times) else None
        return LineEstimate(self.key, len(requests), total, float(tick_ms), self.baudrate)

    def __repr__(self) -> str:
        extra = f", baudrate={self.baudrate}" if self.baudrate is not None else ""
        return f"ModbusLine({self.key!r}{extra})"


_SETTINGS: Final = tuple(name for name in ModbusLine.__slots__ if not name.startswith("__"))


def _check_endpoint(
    port: str | int | None, host: str | None, framer: object
) -> tuple[LineKind, str | int | None, list[str]]:
    where = "ModbusLine"
    problems: list[str] = []
    if host is None:
        if not isinstance(port, str) or not port.strip():
            problems.append(
                f"{where} port: a serial line needs the port's path (e.g. '/dev/ttyUSB0'), got {port!r}; "
                "for Modbus TCP or a gateway give host= and port="
            )
        if framer not in (None, "rtu"):
            problems.append(f"{where} framer: a serial line speaks 'rtu', got {framer!r}")
        return "serial", port, problems
    if not isinstance(host, str) or not host.strip():
        problems.append(f"{where} host: must be a non-empty str, got {host!r}")
    if port is None:
        port = 502
    if not _is_int(port) or not 1 <= int(port) <= 65535:
        problems.append(f"{where} port: must be an int 1..65535, got {port!r}")
    if framer not in (None, "tcp", "rtu"):
        problems.append(f"{where} framer: must be 'tcp' (Modbus TCP) or 'rtu' (a gateway), got {framer!r}")
    return ("rtu-tcp" if framer == "rtu" else "tcp"), port, problems


def _check_serial(
    kind: LineKind, baudrate: object, parity: object, bytesize: object, stopbits: object
) -> list[str]:
    where = "ModbusLine"
    problems: list[str] = []
    if baudrate is not None and (not _is_int(baudrate) or not 50 <= int(str(baudrate)) <= 4_000_000):
        problems.append(f"{where} baudrate: must be an int 50..4000000, got {baudrate!r}")
    if kind == "tcp" and baudrate is not None:
        problems.append(
            f"{where} baudrate: a Modbus TCP line has no baud rate (give framer='rtu' for a gateway)"
        )
    if not isinstance(parity, str) or parity.upper() not in _PARITIES:
        problems.append(f"{where} parity: must be one of N, E, O, got {parity!r}")
    if not _is_int(bytesize) or bytesize not in (7, 8):
        problems.append(f"{where} bytesize: must be 7 or 8, got {bytesize!r}")
    if not _is_int(stopbits) or stopbits not in (1, 2):
        problems.append(f"{where} stopbits: must be 1 or 2, got {stopbits!r}")
    return problems


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
