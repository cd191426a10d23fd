"""Series on the wall-clock grid, checked against the contract rather than this machine's speed.

Under load a lane may skip an instant (its read still running when the next came): the engine
counts it as an overrun. It may never deliver an instant twice, or off the grid. So a series
is checked for that, and its missing instants are returned for the test to compare with the
overruns the engine reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

__all__ = ["missing_on_grid"]


def missing_on_grid(times_ms: Sequence[int], step_ms: int) -> int:
    """How many instants of the ``step_ms`` grid are missing between the first and the last of
    ``times_ms`` (ascending epoch ms); fails when one is doubled or off the grid."""
    gaps = [b - a for a, b in pairwise(times_ms)]
    wrong = [g for g in gaps if g <= 0 or g % step_ms]
    assert not wrong, f"instants doubled or off the {step_ms} ms grid: gaps {wrong}"
    return sum(g // step_ms - 1 for g in gaps)
