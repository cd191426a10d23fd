"""Waiting for a condition in tests that run real threads and processes."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(
    condition: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition", poll_s: float = 0.02
) -> float:
    """Poll ``condition`` until it holds and return the seconds that took; fail the test, naming
    ``what``, when ``timeout_s`` passes first."""
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > timeout_s:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(poll_s)
    return time.monotonic() - began
