"""The cyclic garbage collector's settings for a process whose main job is collecting.

Measured at 2,000 Modbus devices (``bench/scale.py``, docs/performance.md): a started collector
holds about half a million objects the cyclic collector tracks (variables, plans, lanes,
connections), all of them alive until the collector closes. Every read leaves objects in flight
across the loop's passes (its task, futures, batch, pymodbus's transaction) that outlive the
interpreter's young generations (a collection every 700 allocations) and are promoted to the
oldest one; its collections then come every second or two and walk everything, 0.2-0.25 s each,
stalling the event loop: requests late by up to that much, ticks running into the next instant,
and a third of the engine's CPU. Two changes take that away:

- larger young generations (``THRESHOLDS``): a read's objects die young, as they should. A
  real-time ``DataCollector`` does this itself from its first ``start`` to its ``close``
  (``gc_tuning=True``, the default), because every user of the engine needs it: collections of
  the oldest generation come a few times a minute instead of every second;
- optionally, the collector's own structures, built by ``start``, frozen out of the cyclic
  collector's reach (``gc.freeze``): a full collection then walks only what came after. This is
  the program's call, never the library's: whatever the program holds at that moment is frozen
  too, and cyclic garbage among it is never collected. ``tune_gc()`` after the ``start`` calls.

Both are process-wide: the settings are put back when the last collector (or ``tune_gc`` caller)
that asked for them is done. ``FLOWCOLLECT_GC=default`` keeps the interpreter's own settings.
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Callable

__all__ = ["GC_ENV", "THRESHOLDS", "tune_gc"]

THRESHOLDS = (20_000, 20, 10)
"""``gc.set_threshold``'s three numbers under ``tune_gc``: a young collection every 20,000
allocations (a millisecond's walk at most), the middle generation every 20 of those."""

GC_ENV = "FLOWCOLLECT_GC"
"""``default``: ``tune_gc`` changes nothing (the interpreter's own settings)."""


class _Tuning:
    """Runs in progress that asked for the settings (two pipelines run by one program, in two
    threads): the first sets them, the last one to end puts the earlier ones back."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.holders = 0  # guarded by lock
        self.saved: tuple[int, int, int] | None = None  # guarded by lock: the settings before
        self.froze = False  # guarded by lock: did any holder freeze?

    def hold(self, freeze: bool) -> Callable[[], None]:
        with self.lock:
            if self.holders == 0:
                self.saved = gc.get_threshold()
                self.froze = False
            self.holders += 1
            gc.set_threshold(*THRESHOLDS)
            if freeze:
                gc.freeze()  # again for a later holder: what it built since is frozen too
                self.froze = True
        released = threading.Event()

        def restore() -> None:
            with self.lock:
                if released.is_set():
                    return  # once per hold
                released.set()
                self.holders -= 1
                if self.holders == 0 and self.saved is not None:
                    gc.set_threshold(*self.saved)
                    if self.froze:
                        gc.unfreeze()

        return restore


_tuning = _Tuning()


def tune_gc(*, freeze: bool = True) -> Callable[[], None]:
    """Set the collector-friendly settings above; returns the call that puts the earlier ones
    back (and unfreezes what was frozen) once every holder that asked for them is done. With
    ``freeze``, call it after the collector's ``start`` calls, so what they built is frozen.
    With ``FLOWCOLLECT_GC=default`` in the environment it does nothing (and neither does the
    call it returns)."""
    if os.environ.get(GC_ENV, "").strip().lower() == "default":
        return _nothing
    return _tuning.hold(freeze)


def _nothing() -> None:
    return None
