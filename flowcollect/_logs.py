"""Logging that does not flood: one line per distinct problem per window."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable

QUIET = logging.Logger("flowcollect.quiet", logging.CRITICAL + 1)
"""A logger that says nothing (``Pipeline.check`` without a logger is as quiet already)."""
QUIET.addHandler(logging.NullHandler())
QUIET.propagate = False


class RateLimitedLog:
    """Logs a given (key) problem at most once per ``window_s``, counting what it held back.

    Faulty parts fail on every tick; one line a minute per distinct error tells the operator
    everything, a line per tick buries it.
    """

    def __init__(
        self,
        logger: logging.Logger,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 10_000,
    ) -> None:
        self._logger = logger
        self._window = window_s
        self._clock = clock
        self._max_keys = max_keys
        self._last: dict[Hashable, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def log(self, level: int, key: Hashable, message: str, *args: object) -> bool:
        """Log unless ``key`` was logged less than a window ago; return whether it logged."""
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last[0] < self._window:
                self._last[key] = (last[0], last[1] + 1)
                return False
            held_back = last[1] if last is not None else 0
            if len(self._last) >= self._max_keys:
                # A flood of distinct keys must not grow memory without bound.
                self._last.clear()
            self._last[key] = (now, 0)
        if held_back:
            message += " (%d more like it in the last %.0f s)"
            args = (*args, held_back, self._window)
        self._logger.log(level, message, *args)
        return True

    def warning(self, key: Hashable, message: str, *args: object) -> bool:
        return self.log(logging.WARNING, key, message, *args)

    def error(self, key: Hashable, message: str, *args: object) -> bool:
        return self.log(logging.ERROR, key, message, *args)
