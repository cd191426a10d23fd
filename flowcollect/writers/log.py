"""A writer to a logger: for a look at what is collected."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from flowcollect.values import CollectedVariable, ValueBatch
from flowcollect.writers.base import DataWriter
from flowcollect.writers.csvfile import time_text

__all__ = ["LogDataWriter"]


class LogDataWriter(DataWriter):
    """Logs one INFO line per value (or WARNING for a value with an error); times in UTC with
    milliseconds, as the CSV writer writes them."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger("flowcollect.values")

    def write_batch(self, batch: ValueBatch) -> None:
        log = self.logger
        if not log.isEnabledFor(logging.INFO):
            return
        instant = time_text(batch.time)
        values, errors = batch.values, batch.errors
        for i, spec in enumerate(batch.variables):
            when = (
                instant
                if batch.source_ns is None or batch.source_ns[i] is None
                else time_text(batch.time_of(i))
            )
            at = batch.source_time_of(i)
            if at is not None:
                when += f" (source time {time_text(at)})"
            self._line(spec.context_id, spec.id, spec.address, values[i], when, errors[i])

    def write(self, values: Sequence[CollectedVariable]) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        for v in values:
            self._line(v.context_id, v.id, v.address, v.value, time_text(v.time) or "-", v.error)

    def _line(
        self, context_id: int, vid: int, address: str, value: object, when: str, error: str | None
    ) -> None:
        if error is None:
            self.logger.info("context=%s variable=%s %s=%r at %s", context_id, vid, address, value, when)
        else:
            self.logger.warning(
                "context=%s variable=%s %s failed at %s: %s", context_id, vid, address, when, error
            )
