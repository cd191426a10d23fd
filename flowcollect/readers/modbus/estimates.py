"""What a tick of requests costs on a Modbus line, and the busiest tick of each line of a plan.

Pure, no I/O: ``flowcollect plan`` prints ``str(estimate)`` per line and ``check`` warns with
``estimate.warning``. A reader gives its lane's estimate through ``DataReader.estimate_tick``
(``ModbusDataReader`` sums the requests of every unit on the line); the busiest tick of a whole
plan is ``flowcollect.plan.lane_estimates``, of which ``line_estimates`` keeps the Modbus lines.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flowcollect.plan import lane_estimates

if TYPE_CHECKING:
    from flowcollect.compile import CompiledPlan
    from flowcollect.readers.base import DataReader
    from flowcollect.values import VariableSpec

__all__ = ["LineEstimate", "estimate_lane", "line_estimates"]


@dataclass(frozen=True, slots=True)
class LineEstimate:
    """One tick of a line: its requests, their estimated time and the load against the tick."""

    line: str
    requests: int
    time_ms: float | None
    """``None`` when the line's speed is unknown (Modbus TCP, a gateway without ``baudrate``)."""
    tick_ms: float
    baudrate: int | None = None

    @property
    def load(self) -> float | None:
        """Estimated time over the tick: above 1.0 the line cannot serve its requests in time."""
        if self.time_ms is None or self.tick_ms <= 0:
            return None
        return self.time_ms / self.tick_ms

    @property
    def warning(self) -> str | None:
        """A one-line warning when the line cannot serve its due requests within the tick."""
        load = self.load
        if load is None or load <= 1.0:
            return None
        return (
            f"line {self.line}: {self.requests} requests take ~{self.time_ms:.1f} ms "
            f"at {self.baudrate} baud, "
            f"more than the {self.tick_ms:g} ms tick ({load:.0%}); requests that would overrun are skipped"
        )

    def __str__(self) -> str:
        plural = "" if self.requests == 1 else "s"
        if self.time_ms is None or self.load is None:
            return f"line {self.line}: {self.requests} request{plural} per tick"
        return (
            f"line {self.line}: {self.requests} request{plural}, ~{self.time_ms:.1f} ms per tick at "
            f"{self.baudrate} baud, {self.load:.0%} of the {self.tick_ms:g} ms tick"
        )


def estimate_lane(
    due: Iterable[tuple[DataReader, Sequence[VariableSpec]]], tick_ms: float
) -> LineEstimate | None:
    """The estimate for one lane's tick: ``due`` pairs each reader of the lane with the variables
    due at that instant; ``tick_ms`` is the time until the lane's next due instant.

    ``None`` unless the readers are Modbus readers on one line (other lanes have no estimate).
    No I/O: for ``flowcollect plan`` and ``check`` (which warns with ``estimate.warning``).
    """
    pairs = list(due)
    if not pairs:
        return None
    estimate = pairs[0][0].estimate_tick(pairs, tick_ms)
    return estimate if isinstance(estimate, LineEstimate) else None


def line_estimates(compiled: CompiledPlan, readers: Iterable[DataReader]) -> list[LineEstimate]:
    """The busiest tick of every Modbus line of a compiled plan (``flowcollect.compile``).

    Per lane whose readers are Modbus readers on one line: each due pattern of its hyperperiod
    is estimated against the time until the lane's next instant after it, and the one with the
    highest load is kept (the first, on lines without a baud rate).
    """
    return [e for e in lane_estimates(compiled, readers) if isinstance(e, LineEstimate)]
