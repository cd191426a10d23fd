"""Small pieces of Telegraf's configuration language: durations, option tables, names."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["Options", "duration_ms", "identifier", "slug"]

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_MS: Final = {
    "ns": 1e-6,
    "us": 1e-3,
    "µs": 1e-3,
    "ms": 1.0,
    "s": 1000.0,
    "m": 60_000.0,
    "h": 3_600_000.0,
}


def duration_ms(value: object) -> float:
    """A Go duration (``"1m30s"``, ``"500ms"``) or Telegraf's plain number of seconds, in ms."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        return float(value) * 1000.0
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{value!r} is not a duration")
    text = value.strip()
    position = 0
    total = 0.0
    for match in _DURATION.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNIT_MS[match.group(2)]
        position = match.end()
    if position != len(text) or position == 0:
        raise ValueError(f"{value!r} is not a duration such as '10s' or '500ms'")
    return total


def slug(text: str) -> str:
    """A reader type from a device name: lower case, other characters as '-'."""
    out = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return out or "device"


def identifier(text: str) -> str:
    """A Python variable name from a reader type."""
    name = re.sub(r"\W+", "_", text).strip("_") or "reader"
    return f"r_{name}" if name[0].isdigit() else name


class Options:
    """One Telegraf table; what is taken is carried over, what is left is reported by name."""

    def __init__(self, where: str, table: Mapping[str, Any]) -> None:
        self.where = where
        self._table = dict(table)
        self._taken: set[str] = set()

    def take(self, key: str, default: Any = None) -> Any:
        self._taken.add(key)
        return self._table.get(key, default)

    def has(self, key: str) -> bool:
        return key in self._table

    def left(self) -> list[str]:
        return [key for key in self._table if key not in self._taken]
