"""The object that flows through the engine: one value of one variable for one context."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = ["CollectedVariable"]


# A slotted dataclass, not a pydantic model: the engine builds hundreds of thousands of these
# per second, and a pydantic instance costs about four times as much as this one.
@dataclass(slots=True)
class CollectedVariable:
    """One value of one variable, read for one context at one scheduled instant.

    ``time`` is the scheduled tick (timezone-aware UTC, exactly on the wall-clock grid) unless the
    reader's source supplied its own timestamp. ``error`` is ``None`` or a short text saying why the
    read failed, in which case ``value`` is ``None``.
    """

    id: int
    context_id: int
    address: str
    value_type: str
    reader: str
    interval_ms: int
    value: Any = None
    time: datetime | None = None
    error: str | None = None
