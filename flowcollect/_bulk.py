"""Building many objects at once (a tag list of 100,000 rows, a context's compilation).

``paused_gc`` holds off the cyclic garbage collector while a bulk step builds objects that form
no reference cycles: each collection the allocations would trigger walks every object built so
far and frees nothing, which measured as about 45 % of ``read_csv``'s time for 100,000 rows
(six full collections over ~400,000 objects). The pause is the step's alone: the collector is
enabled again when the step ends, however it ends; a program that disabled it keeps it disabled.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["paused_gc"]


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """The block runs with the cyclic garbage collector off (reference counting goes on: memory
    freed as usual), restored after. Nested or concurrent pauses restore only what they found:
    the first to pause re-enables it."""
    enabled = gc.isenabled()
    if enabled:
        gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
