"""What ``flowcollect run --group ...`` says about membership, validated before anything starts."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from flowcollect.errors import ConfigError
from flowcollect.group._access import EtcdAccess
from flowcollect.group._address import GroupAddress, parse_address
from flowcollect.group._hrw import Pin

__all__ = ["GroupOptions", "parse_pins"]

_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def parse_pins(texts: Iterable[str], field: str = "--pin") -> tuple[Pin, ...]:
    """``LANE_GLOB=LABEL`` each (``modbus+rtu://*=serial-a``): the lanes only members labelled so may own."""
    pins = []
    for text in texts:
        pattern, sep, label = text.rpartition("=")
        if not sep or not pattern or not label:
            raise ConfigError(f"{field}: {text!r} is not LANE_GLOB=LABEL (e.g. 'modbus+rtu://*=serial-a')")
        _check_label(label, field)
        pins.append(Pin(pattern, label))
    return tuple(pins)


def _check_label(label: str, field: str) -> None:
    if not label or not set(label) <= _LABEL_CHARS:
        raise ConfigError(f"{field}: label {label!r} must be letters, digits, '_', '.' or '-'")


@dataclass(frozen=True, slots=True)
class GroupOptions:
    """The group a run joins and how: address, member id, labels, pins and lease TTL."""

    address: GroupAddress
    member_id: str | None = None
    labels: tuple[str, ...] = ()
    pins: tuple[Pin, ...] = ()
    ttl_s: int = 10
    etcd: EtcdAccess | None = None  # TLS and credentials; None: from FLOWCOLLECT_ETCD_* at join

    @classmethod
    def parse(
        cls,
        group: str,
        member_id: str | None = None,
        labels: Iterable[str] = (),
        pins: Iterable[str] = (),
        ttl_s: int = 10,
    ) -> GroupOptions:
        """From the command line's words; a ``ConfigError`` names the option at fault."""
        problems: list[str] = []
        address: GroupAddress | None = None
        try:
            address = parse_address(group)
        except ConfigError as exc:
            problems.extend(exc.problems)
        if member_id is not None and (not member_id.strip() or "/" in member_id):
            problems.append(f"--member: {member_id!r} must be a non-empty id without '/'")
        label_list = tuple(labels)
        for label in label_list:
            try:
                _check_label(label, "--label")
            except ConfigError as exc:
                problems.extend(exc.problems)
        pin_list: tuple[Pin, ...] = ()
        try:
            pin_list = parse_pins(pins)
        except ConfigError as exc:
            problems.extend(exc.problems)
        etcd: EtcdAccess | None = None
        try:
            etcd = EtcdAccess.from_env()  # checked here, before anything starts
        except ConfigError as exc:
            problems.extend(f"FLOWCOLLECT_ETCD_*: {p}" for p in exc.problems)
        if ttl_s < 2:
            problems.append(f"--group-ttl: {ttl_s} s is below etcd's minimum lease TTL (2 s)")
        if problems or address is None:
            raise ConfigError(problems)
        return cls(address, member_id, label_list, pin_list, ttl_s, etcd)
