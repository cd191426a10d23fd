"""A write-ahead spool on disk in front of any writer: store and forward (see docs/spool.md)."""

from __future__ import annotations

from flowcollect.writers.spool._options import SpoolOptions
from flowcollect.writers.spool._writer import SpooledWriter, Sync, spool_writers

__all__ = [
    # the writer and its options
    "SpooledWriter",
    "SpoolOptions",
    "Sync",
    # a pipeline's per-writer option
    "spool_writers",
]
