"""A Modbus line: one connection (a serial port, an RTU-over-TCP gateway, a Modbus TCP socket)
shared by every unit on it, and what a tick of requests costs on it.

Pure: settings, the line's key and the time requests take on it. The connection itself is
``_connection.py``; a whole plan's estimates are ``estimates.py``.
"""

from __future__ import annotations

import operator
import os
import ssl
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from flowcollect.errors import ConfigError
from flowcollect.readers.modbus.estimates import LineEstimate
from flowcollect.readers.modbus.packing import ModbusRequest
from flowcollect.readers.modbus.timing import silent_interval_s, wire_time_s

__all__ = ["LineKind", "ModbusLine", "ModbusTls"]

LineKind = Literal["serial", "rtu-tcp", "tcp"]

_PARITIES: Final = ("N", "E", "O")
_TLS_PORT: Final = 802
"""Modbus/TCP Security's registered port."""
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
    - Modbus/TCP Security (TLS): ``ModbusLine(host="plc.example", tls=True,
      ca_file="plant-ca.pem", cert_file="collector.pem", key_file="collector.key")`` (port 802
      unless given). The device's certificate and name are verified (``ca_file``: the CA that
      signed it; without it, the system's CAs); ``tls_verify=False`` turns that off (a test
      device only); ``server_name`` is the name its certificate carries when ``host`` is not it.

    Readers on one line share one engine lane (``key``): one thread, one connection, requests
    one at a time. ``pause_between_requests_ms`` adds a pause after every exchange (slow
    gateways and devices want one); ``turnaround_ms`` is the time a device is assumed to take
    before answering, used for estimates only.
    """

    __slots__ = (
        "__key",  # the lane key, made once (not a setting: _SETTINGS skips "__" names)
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
        "tls",
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
        tls: bool = False,
        ca_file: str | os.PathLike[str] | None = None,
        cert_file: str | os.PathLike[str] | None = None,
        key_file: str | os.PathLike[str] | None = None,
        tls_verify: bool = True,
        server_name: str | None = None,
    ) -> None:
        if tls is True and host is not None and port is None:
            port = _TLS_PORT
        kind, port, problems = _check_endpoint(port, host, framer)
        security, tls_problems = _check_tls(kind, tls, ca_file, cert_file, key_file, tls_verify, server_name)
        problems += tls_problems
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
        self.tls: ModbusTls | None = security
        """Modbus/TCP Security settings, or ``None`` for a plain line."""
        self.__key = self._make_key()

    # -- identity

    @property
    def key(self) -> str:
        """The lane key: ``modbus+rtu:///dev/ttyUSB0``, ``modbus+rtu-tcp://10.0.0.5:4001``,
        ``modbus+tcp://127.0.0.1:5020``, ``modbus+tls://10.0.0.7:802``. The same in every
        process. One object per text (interned): the collector, its lanes, plans and the line's
        connection each keep it, four copies a device of 2,000 otherwise. Made once: every read
        asks for it (a line's settings never change after it is built)."""
        return self.__key

    def _make_key(self) -> str:
        if self.kind == "serial":
            return sys.intern(f"modbus+rtu://{self.port}")
        host = f"[{self.host}]" if self.host is not None and ":" in self.host else self.host
        scheme = "tls" if self.tls is not None else self.kind
        return sys.intern(f"modbus+{scheme}://{host}:{self.port}")

    @property
    def max_unit(self) -> int:
        """The highest unit id: 247 on RTU lines (serial and gateways), 255 on Modbus TCP."""
        return _TCP_MAX_UNIT if self.kind == "tcp" else _SERIAL_MAX_UNIT

    @property
    def is_bus(self) -> bool:
        """True for lines with a serial bus (directly or behind a gateway): one frame at a time."""
        return self.kind != "tcp"

    def _settings(self) -> tuple[object, ...]:
        settings: tuple[object, ...] = _settings_of(self)
        return settings

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
_settings_of: Final = operator.attrgetter(*_SETTINGS)


@dataclass(frozen=True, slots=True)
class ModbusTls:
    """A line's Modbus/TCP Security settings (``ModbusLine(..., tls=True, ...)``).

    Paths, not loaded objects: the context is built at each connect (``context``), so a
    certificate renewed on disk is taken at the next reconnect; ``ModbusLine`` builds one when
    it is made, so a file that is missing or does not load is refused before anything opens.
    """

    ca_file: str | None = None
    """The CA certificate(s) (PEM) that signed the device's certificate; None: the system's."""
    cert_file: str | None = None
    """This client's certificate (PEM), for devices that ask for one (the standard's mutual
    authentication); its key in ``key_file``, or in this file when that is None."""
    key_file: str | None = None
    """The client certificate's private key (PEM, unencrypted)."""
    verify: bool = True
    """Check the device's certificate and name (``tls_verify``); False accepts any: a test
    device only, never the default."""
    server_name: str | None = None
    """The name the device's certificate must carry; None: the line's ``host``."""

    def context(self) -> ssl.SSLContext:
        """A client context from these files (TLS 1.2 or later, as the standard asks);
        ``OSError``/``ssl.SSLError`` when one does not load."""
        ctx = ssl.create_default_context(cafile=self.ca_file)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if not self.verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_file is not None:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx

    def files(self) -> str:
        """The files given, as ``ca_file '...', cert_file '...'``."""
        given = (("ca_file", self.ca_file), ("cert_file", self.cert_file), ("key_file", self.key_file))
        return ", ".join(f"{name} {path!r}" for name, path in given if path is not None) or "none"


def _check_tls(
    kind: LineKind,
    tls: object,
    ca_file: object,
    cert_file: object,
    key_file: object,
    verify: object,
    server_name: object,
) -> tuple[ModbusTls | None, list[str]]:
    where = "ModbusLine"
    problems: list[str] = []
    files = {"ca_file": ca_file, "cert_file": cert_file, "key_file": key_file}
    if not isinstance(tls, bool):
        return None, [f"{where} tls: must be True or False, got {tls!r}"]
    if not tls:
        given = [name for name, value in {**files, "server_name": server_name}.items() if value is not None]
        if verify is not True:
            given.append("tls_verify")
        return None, [f"{where} {name}: only with tls=True" for name in given]
    if kind != "tcp":
        return None, [f"{where} tls: Modbus/TCP Security is Modbus TCP only (host= and framer='tcp')"]
    paths: dict[str, str | None] = {}
    for name, value in files.items():
        if value is None:
            paths[name] = None
        elif isinstance(value, str | os.PathLike) and str(os.fspath(value)).strip():
            paths[name] = str(os.fspath(value))
        else:
            problems.append(f"{where} {name}: must be a path (str or Path), got {value!r}")
    if not isinstance(verify, bool):
        problems.append(f"{where} tls_verify: must be True or False, got {verify!r}")
    if server_name is not None and (not isinstance(server_name, str) or not server_name.strip()):
        problems.append(f"{where} server_name: must be a non-empty str, got {server_name!r}")
    if paths.get("key_file") is not None and paths.get("cert_file") is None:
        problems.append(f"{where} key_file: given without cert_file")
    if problems:
        return None, problems
    settings = ModbusTls(
        ca_file=paths["ca_file"],
        cert_file=paths["cert_file"],
        key_file=paths["key_file"],
        verify=bool(verify),
        server_name=server_name if isinstance(server_name, str) else None,
    )
    problems = _load_problems(settings)
    return (None if problems else settings), problems


def _load_problems(settings: ModbusTls) -> list[str]:
    """Each file loaded now, naming the one that does not load."""
    where = "ModbusLine"
    problems: list[str] = []
    try:
        ssl.create_default_context(cafile=settings.ca_file)
    except (OSError, ssl.SSLError) as exc:
        problems.append(f"{where} ca_file: cannot load {settings.ca_file!r}: {load_error(exc)}")
    if settings.cert_file is not None:
        try:
            ssl.create_default_context().load_cert_chain(settings.cert_file, settings.key_file)
        except (OSError, ssl.SSLError) as exc:
            name = "cert_file" if settings.key_file is None else "cert_file/key_file"
            with_key = f" with {settings.key_file!r}" if settings.key_file else ""
            problems.append(
                f"{where} {name}: cannot load {settings.cert_file!r}{with_key}: {load_error(exc)}"
            )
    return problems


def load_error(exc: BaseException) -> str:
    """Why a certificate or key file did not load, in a few words."""
    if isinstance(exc, ssl.SSLError):
        return (exc.reason or str(exc)).replace("_", " ").lower()
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc)


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
