"""The spool's options as a pydantic model, so a pipeline can declare "spool this writer"."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["SpoolOptions"]


class SpoolOptions(BaseModel):
    """How to spool one writer: ``SpooledWriter.from_options(writer, options)``.

    The fields are ``SpooledWriter``'s keyword arguments; see docs/spool.md for what each does.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path
    """The spool's folder (one per writer; created if missing)."""
    max_bytes: int = Field(gt=0)
    """The disk budget; beyond it the oldest segment is dropped."""
    sync: Literal["always", "batch", "never"] = "batch"
    sync_interval_s: float = Field(default=1.0, gt=0, le=60)
    """With ``sync="batch"``: appends reach the disk (fsync) at most this long after they are made."""
    segment_bytes: int | None = Field(default=None, ge=4096)
    """Segment size (default ``max_bytes / 16``, between 64 KiB and 64 MiB); at most
    a quarter of ``max_bytes``."""
    max_in_flight_values: int = Field(default=50_000, gt=0)
    close_timeout_s: float = Field(default=5.0, ge=0)
    destination_preflight: Literal["warn", "fail"] = "warn"
