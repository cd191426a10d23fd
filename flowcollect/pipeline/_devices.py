"""Devices: what a pipeline starts before collecting and stops after (an embedded simulator)."""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from flowcollect.errors import ConfigError

__all__ = [
    "Device",
    "EmbeddedModbusSimulator",
    "device_name",
    "port_in_use",
    "start_devices",
    "stop_devices",
]


@runtime_checkable
class Device(Protocol):
    """Something a pipeline starts before collecting and stops after: e.g. an embedded simulator.

    ``start()`` returns once the device serves (a reader may connect right after); ``stop()``
    releases it and must be safe to call after a failed or partial ``start()``. A ``name``
    attribute, when present, labels it in logs and plans.
    """

    def start(self) -> object: ...

    def stop(self) -> object: ...


def device_name(device: object) -> str:
    name = getattr(device, "name", None)
    return name if isinstance(name, str) and name else type(device).__name__


class _HostPort(Protocol):
    host: str
    port: int


class EmbeddedModbusSimulator:
    """The Modbus simulator (``flowcollect.simulator``) as a pipeline device.

    Listens on ``host`` at ``port`` (0: a free port, chosen when it starts) and, once it
    listens, points each of ``readers`` (Modbus readers: anything with ``host`` and ``port``)
    at itself; so a pipeline file names no port and two runs never collide. pymodbus's server
    is imported only when it starts.
    """

    def __init__(
        self, readers: Sequence[_HostPort] = (), host: str = "127.0.0.1", port: int = 0, name: str = ""
    ) -> None:
        self.readers = list(readers)
        self.host = host
        self.port = port
        self.name = name or "modbus simulator"
        self.simulator: Any = None
        """The running ``flowcollect.simulator.Simulator``, between start and stop."""

    def start(self) -> None:
        from flowcollect.simulator import Simulator

        if self.port and port_in_use(self.host, self.port):
            raise ConfigError(
                f"port {self.host}:{self.port} is already in use (another simulator or server?)"
            )

        # A new server each time: a stopped one keeps the port it had, which may be gone.
        self.simulator = Simulator(self.host, self.port).start()
        for reader in self.readers:
            reader.host, reader.port = self.simulator.host, self.simulator.port

    def stop(self) -> None:
        simulator, self.simulator = self.simulator, None
        if simulator is not None:
            simulator.stop()

    def __repr__(self) -> str:
        return f"EmbeddedModbusSimulator(name={self.name!r}, host={self.host!r}, port={self.port})"


def port_in_use(host: str, port: int) -> bool:
    """Whether a TCP listener could not bind ``host:port`` now (asyncio's servers bind with
    SO_REUSEADDR, so this does too: a port in TIME_WAIT is free for them as well)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return False  # a name that does not resolve: the server's own error says it better
    family, kind, proto, _name, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def start_devices(devices: Sequence[Device], log: logging.Logger) -> list[Device]:
    """Start each device in order; on a failure stop those started (and the failed one, which may
    have got half way: a bound socket, a thread) and raise ``ConfigError`` naming it."""
    started: list[Device] = []
    for device in devices:
        name = device_name(device)
        try:
            device.start()
        except Exception as exc:
            stop_devices([*started, device], log)
            why = "; ".join(exc.problems) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
            raise ConfigError(f"device {name} failed to start: {why}") from exc
        started.append(device)
        log.info("device %s started", name)
    return started


def stop_devices(devices: Sequence[Device], log: logging.Logger) -> None:
    """Stop the devices in reverse order; one device's failure never leaves the others running."""
    for device in reversed(devices):
        try:
            device.stop()
        except Exception as exc:
            log.error("device %s failed to stop: %s: %s", device_name(device), type(exc).__name__, exc)
