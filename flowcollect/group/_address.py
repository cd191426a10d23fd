"""``etcd://HOST:PORT[,HOST:PORT...]/NAME``: where a group's etcd is and what the group is called."""

from __future__ import annotations

import re
from dataclasses import dataclass

from flowcollect.errors import ConfigError

__all__ = ["DEFAULT_PORT", "GroupAddress", "parse_address"]

DEFAULT_PORT = 2379
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_HOST = re.compile(r"[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\]")


@dataclass(frozen=True, slots=True)
class GroupAddress:
    """The etcd endpoints (tried in turn when one fails) and the group name."""

    endpoints: tuple[tuple[str, int], ...]
    name: str

    @property
    def prefix(self) -> str:
        """Every key of the group lives under this prefix (one etcd can hold many groups)."""
        return f"/flowcollect/{self.name}/"

    def __str__(self) -> str:
        hosts = ",".join(f"{host}:{port}" for host, port in self.endpoints)
        return f"etcd://{hosts}/{self.name}"


def parse_address(text: str, field: str = "--group") -> GroupAddress:
    """Parse ``etcd://HOST:PORT[,HOST:PORT...]/NAME``; a ``ConfigError`` names ``field`` and the fault."""
    scheme, sep, rest = text.partition("://")
    if not sep or scheme != "etcd":
        raise ConfigError(f"{field}: {text!r} is not etcd://HOST:PORT[,HOST:PORT...]/NAME")
    hosts, slash, name = rest.partition("/")
    if not slash or not name:
        raise ConfigError(f"{field}: {text!r} names no group (etcd://HOST:PORT/NAME)")
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"{field}: group name {name!r} must be letters, digits, '_', '.' or '-' (at most 100)"
        )
    endpoints: list[tuple[str, int]] = []
    for part in hosts.split(","):
        host, port = _endpoint(part.strip(), text, field)
        endpoints.append((host, port))
    return GroupAddress(tuple(endpoints), name)


def _endpoint(part: str, text: str, field: str) -> tuple[str, int]:
    if not part:
        raise ConfigError(f"{field}: {text!r} has an empty etcd endpoint")
    host, colon, port_text = part.rpartition(":")
    if not colon or host.endswith(":"):  # no port, or a bare IPv6 address
        host, port_text = part, str(DEFAULT_PORT)
    if not _HOST.fullmatch(host):
        raise ConfigError(f"{field}: {part!r} is not a host name or address")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{field}: port {port_text!r} of {part!r} is not a TCP port (1-65535)")
    return host.strip("[]"), int(port_text)
