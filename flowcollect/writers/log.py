"""A writer to a logger: for a look at what is collected."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from flowcollect.values import CollectedVariable
from flowcollect.writers.base import DataWriter

__all__ = ["LogDataWriter"]


class LogDataWriter(DataWriter):
    """Logs one INFO line per value (or WARNING for a value with an error)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger("flowcollect.values")

    def write(self, values: Sequence[CollectedVariable]) -> None:
        log = self.logger
        if not log.isEnabledFor(logging.INFO):
            return
        for v in values:
            when = v.time.isoformat() if v.time is not None else "-"
            if v.error is None:
                log.info("context=%s variable=%s %s=%r at %s", v.context_id, v.id, v.address, v.value, when)
            else:
                log.warning(
                    "context=%s variable=%s %s failed at %s: %s", v.context_id, v.id, v.address, when, v.error
                )
