"""The scan's transport: pymodbus's synchronous clients through their public API, read-only."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from flowcollect.errors import ConfigError
from flowcollect.scan._modbus import OK, Outcome, Table

__all__ = ["ModbusTarget", "parse_target", "pymodbus_probe"]

_SCHEMES: Final = {"modbus": "tcp", "modbus+tcp": "tcp", "modbus+rtu-tcp": "rtu-tcp", "modbus+rtu": "serial"}
_READS: Final = {
    "holding": "read_holding_registers",
    "input": "read_input_registers",
    "coil": "read_coils",
    "discrete": "read_discrete_inputs",
}


@dataclass(frozen=True)
class ModbusTarget:
    """Where to scan: ``modbus://HOST:PORT`` (TCP), ``modbus+rtu-tcp://HOST:PORT`` (RTU over
    TCP, a gateway) or ``modbus+rtu:///dev/ttyUSB0?baudrate=19200&parity=E`` (a serial line)."""

    kind: str
    host: str
    port: int
    device: str
    serial: dict[str, Any]

    def __str__(self) -> str:
        if self.kind == "serial":
            return f"modbus+rtu://{self.device}"
        return f"{'modbus' if self.kind == 'tcp' else 'modbus+rtu-tcp'}://{self.host}:{self.port}"


def parse_target(url: str) -> ModbusTarget:
    parts = urlsplit(url)
    kind = _SCHEMES.get(parts.scheme)
    if kind is None:
        raise ConfigError(f"scan {url!r}: the scheme must be one of {', '.join(f'{s}://' for s in _SCHEMES)}")
    if kind == "serial":
        if not parts.path:
            raise ConfigError(f"scan {url!r}: name the serial device, as modbus+rtu:///dev/ttyUSB0")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        serial = {
            "baudrate": int(query.pop("baudrate", "19200")),
            "parity": query.pop("parity", "N").upper(),
            "bytesize": int(query.pop("bytesize", "8")),
            "stopbits": int(query.pop("stopbits", "1")),
        }
        if query:
            raise ConfigError(
                f"scan {url!r}: unknown options {sorted(query)}; use baudrate, parity, bytesize, stopbits"
            )
        return ModbusTarget(kind, "", 0, parts.path, serial)
    if not parts.hostname:
        raise ConfigError(f"scan {url!r}: name the host, as modbus://HOST:PORT")
    return ModbusTarget(kind, parts.hostname, parts.port or 502, "", {})


@contextmanager
def pymodbus_probe(target: ModbusTarget, timeout_s: float) -> Any:
    """A ``Probe`` over one pymodbus client (connected once, closed at the end)."""
    from pymodbus.client import ModbusSerialClient, ModbusTcpClient
    from pymodbus.exceptions import ModbusException
    from pymodbus.framer import FramerType

    client: Any
    if target.kind == "serial":
        client = ModbusSerialClient(
            target.device, framer=FramerType.RTU, timeout=timeout_s, retries=0, **target.serial
        )
    else:
        framer = FramerType.SOCKET if target.kind == "tcp" else FramerType.RTU
        client = ModbusTcpClient(target.host, port=target.port, framer=framer, timeout=timeout_s, retries=0)
    if not client.connect():
        client.close()
        raise ConnectionError(f"scan: cannot connect to {target}")
    # pymodbus logs every timeout and exception answer at ERROR; for a scan they are the data.
    quiet = logging.getLogger("pymodbus")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)

    def probe(table: Table, unit: int, address: int, count: int) -> Outcome:
        try:
            answer = getattr(client, _READS[table])(address, count=count, device_id=unit)
        except ModbusException:
            # No answer in time (or a broken frame): reconnect for the next request, so a late
            # answer cannot be taken for the next one's.
            client.close()
            client.connect()
            return None
        if answer.isError():
            code = getattr(answer, "exception_code", 0)
            return int(code) if code else 4
        return OK

    try:
        yield probe
    finally:
        quiet.setLevel(level)
        client.close()
