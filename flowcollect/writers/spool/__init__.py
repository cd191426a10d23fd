"""A write-ahead spool on disk in front of any writer: store and forward (see docs/spool.md)."""

from __future__ import annotations

from flowcollect.writers.spool.options import SpoolOptions
from flowcollect.writers.spool.writer import SpooledWriter, Sync, spool_writers

__all__ = ["SpoolOptions", "SpooledWriter", "Sync", "spool_writers"]
