"""``--once``: read every variable of a pipeline once, through the real engine, write nothing."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flowcollect._logs import QUIET
from flowcollect.models import DataCollectionContext
from flowcollect.pipeline._devices import start_devices, stop_devices
from flowcollect.values import CollectedVariable
from flowcollect.writers.base import DataWriter

if TYPE_CHECKING:
    from flowcollect.pipeline._model import Pipeline

__all__ = ["OnceResult", "OnceRow", "read_once"]

_log = logging.getLogger("flowcollect.pipeline")


@dataclass(frozen=True, slots=True)
class OnceRow:
    """One variable of one context, read once: its value, or why there is none."""

    context_id: int
    variable_id: int
    reader: str
    address: str
    value: Any
    error: str | None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class OnceResult:
    rows: tuple[OnceRow, ...]

    @property
    def errors(self) -> int:
        return sum(1 for row in self.rows if row.error is not None)


class _FirstValues(DataWriter):
    """Keeps the first value of each (context, variable) and says when every one has come."""

    def __init__(self, wanted: set[tuple[int, int]]) -> None:
        self._wanted = set(wanted)
        self._lock = threading.Lock()
        self.first: dict[tuple[int, int], CollectedVariable] = {}
        self.complete = threading.Event()
        if not self._wanted:
            self.complete.set()

    @property
    def name(self) -> str:
        return "once"

    def write(self, values: Sequence[CollectedVariable]) -> None:
        with self._lock:
            for value in values:
                key = (value.context_id, value.id)
                if key in self._wanted and key not in self.first:
                    self.first[key] = value
            if len(self.first) == len(self._wanted):
                self.complete.set()


def _one_shot(pipeline: Pipeline, context: DataCollectionContext) -> DataCollectionContext:
    """The context with every variable at one interval: the smallest its limits allow, so each
    is due at the next instant of that grid."""
    readers = {reader.type: reader for reader in pipeline.readers}
    limit = max([context.min_interval_ms, *(readers[v.reader].min_interval_ms for v in context.variables)])
    variables = [v.model_copy(update={"interval_ms": None}) for v in context.variables]
    return context.model_copy(update={"interval_ms": limit, "variables": variables}, deep=True)


def read_once(
    pipeline: Pipeline, context_ids: Iterable[int] | None = None, *, timeout_s: float = 10.0
) -> OnceResult:
    """``Pipeline.read_once`` (see there)."""
    from flowcollect.errors import ConfigError

    contexts = pipeline.select(context_ids)
    problems = pipeline.check([c.id for c in contexts], logger=QUIET)
    if problems:
        raise ConfigError(problems)
    shots = [_one_shot(pipeline, c) for c in contexts]
    wanted = {(c.id, v.id) for c in shots for v in c.variables}
    sink = _FirstValues(wanted)
    devices = start_devices(pipeline.devices, _log)
    try:
        # The pipeline's readers, none of its writers or listeners: --once only reads.
        collector = pipeline._collector((), writers=[sink], own_listeners=False, logger=_log)
        try:
            for context in shots:
                collector.start(context)
            deadline = time.monotonic() + timeout_s
            # Each hand-over to the sink is on its own thread; wait for it, then for the queue.
            sink.complete.wait(timeout_s)
            collector.flush(max(0.0, deadline - time.monotonic()))
        finally:
            collector.close()
    finally:
        stop_devices(devices, _log)
    rows = []
    for context in shots:
        for variable in context.variables:
            got = sink.first.get((context.id, variable.id))
            value: Any
            error: str | None
            if got is None:
                value, error = None, f"no value within {timeout_s:g} s"
            else:
                value, error = got.value, got.error
            rows.append(
                OnceRow(
                    context.id,
                    variable.id,
                    variable.reader,
                    variable.address,
                    value,
                    error,
                    getattr(variable, "name", None),
                )
            )
    return OnceResult(tuple(rows))
