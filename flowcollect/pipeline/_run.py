"""The run loop: devices, contexts, wait for the end, close, and the summary."""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from flowcollect._logs import QUIET
from flowcollect.collector import DataCollector
from flowcollect.errors import ConfigError, PreflightError
from flowcollect.listeners import DataCollectionListener
from flowcollect.models import DataCollectionContext
from flowcollect.pipeline._devices import start_devices, stop_devices
from flowcollect.pipeline._member import unresolved_member_paths
from flowcollect.pipeline._summary import RunSummary, StopReason
from flowcollect.stats import CollectorStats
from flowcollect.writers.base import DataWriter
from flowcollect.writers.csvfile import CsvFileDataWriter

if TYPE_CHECKING:
    from flowcollect.pipeline._model import Pipeline

__all__ = ["run_pipeline"]

_log = logging.getLogger("flowcollect.pipeline")


def run_pipeline(
    pipeline: Pipeline,
    duration_s: float | None = None,
    *,
    context_ids: Iterable[int] | None = None,
    stop: threading.Event | None = None,
    on_started: Callable[[DataCollector], None] | None = None,
    on_status: Callable[[CollectorStats], None] | None = None,
    status_every_s: float = 1.0,
    logger: logging.Logger | None = None,
    preflight: bool = True,
    keep_running: bool = False,
) -> RunSummary:
    """``Pipeline.run`` (see there)."""
    if duration_s is not None and not (duration_s > 0 and math.isfinite(duration_s)):
        raise ConfigError(f"duration_s must be a positive number of seconds, got {duration_s}")
    if status_every_s <= 0:
        raise ConfigError(f"status_every_s must be positive, got {status_every_s}")
    contexts = pipeline.select(context_ids)
    ids = [c.id for c in contexts]
    # Quietly: start repeats the check and logs its warnings (variables left out) once.
    problems = pipeline.check(ids, logger=QUIET) + unresolved_member_paths(pipeline.writers)
    if problems:
        raise ConfigError(problems)
    if preflight:
        unusable = pipeline.preflight()
        if unusable:
            raise PreflightError("; ".join(unusable))
    stop = stop if stop is not None else threading.Event()
    log = logger or _log
    watcher = _EndWatcher(stop, keep_running)
    began = time.monotonic()
    devices = start_devices(pipeline.devices, log)
    try:
        collector = pipeline._collector([watcher], logger=logger)
    except BaseException:
        stop_devices(devices, log)
        raise
    try:
        for context in contexts:
            # A copy: the pipeline's own models stay as written (no start/end dates), so it
            # can be run again or planned after this run.
            started = collector.start(context.model_copy(deep=True))
            log.info("context %s started at %s", started.id, started.start_date)
        # Contexts that already ended while others started count from here on.
        watcher.arm(collector)
        if on_started is not None:
            on_started(collector)
        reason = _wait(collector, watcher, stop, duration_s, on_status, status_every_s)
    finally:
        try:
            collector.close()
        finally:
            # Even when closing was cut short (a second Ctrl-C): no device left serving.
            stop_devices(devices, log)
    elapsed = time.monotonic() - began
    why = watcher.why() if reason == "ended" else ""
    summary = RunSummary(
        pipeline.name,
        reason,
        elapsed,
        tuple(ids),
        collector.stats(),
        why,
        # The collector's too: a reload may have replaced a file writer (--http).
        files=files_of(pipeline, collector.writers),
    )
    log.info("pipeline %s: %s", pipeline.name, summary.headline())
    return summary


def files_of(pipeline: Pipeline, also: Iterable[DataWriter] = ()) -> dict[str, str]:
    """Writer name -> the file it writes, as the user finds it from where they started: a
    relative path in a file the CLI runs is beside that file (the CLI works in its folder).
    ``also``: more writers (a running collector's, which a reload may have replaced)."""
    out: dict[str, str] = {}
    given, resolved = pipeline._folder_given, pipeline._folder_resolved
    for writer in [*pipeline.writers, *also]:
        inner: object = writer
        while isinstance(getattr(inner, "writer", None), DataWriter):  # a spool in front
            inner = getattr(inner, "writer")  # noqa: B009 - typed as object above
        if not isinstance(inner, CsvFileDataWriter):
            continue
        path = inner.path
        if not path.is_absolute() and given is not None and Path.cwd() == resolved:
            path = Path(os.path.normpath(given / path))
        out[writer.name] = str(path)
    return out


def _wait(
    collector: DataCollector,
    watcher: _EndWatcher,
    stop: threading.Event,
    duration_s: float | None,
    on_status: Callable[[CollectorStats], None] | None,
    status_every_s: float,
) -> StopReason:
    deadline = None if duration_s is None else time.monotonic() + duration_s
    next_status = time.monotonic() + status_every_s
    while True:
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return "duration"
        waits = [next_status - now] if on_status is not None else []
        if deadline is not None:
            waits.append(deadline - now)
        # The main thread sleeps on the event: a signal handler or the end watcher wakes it.
        if stop.wait(max(0.0, min(waits)) if waits else None):
            return "ended" if watcher.ended else "stopped"
        if on_status is not None and time.monotonic() >= next_status:
            next_status += status_every_s
            on_status(collector.stats())


class _EndWatcher(DataCollectionListener):
    """Wakes the run when the last context has stopped, noting why each one did."""

    def __init__(self, wake: threading.Event, keep_running: bool = False) -> None:
        self._wake = wake
        self._keep_running = keep_running  # a service: contexts come and go, the run stays
        self._armed = False
        self.ended = False
        self._by_duration: list[int] = []
        self._stopped: list[int] = []

    def arm(self, collector: DataCollector) -> None:
        self._armed = True
        if not collector.is_running():
            self._ended()

    def after_stop(self, collector: DataCollector, context: DataCollectionContext) -> None:
        if not collector.closed:
            (self._by_duration if _reached_duration(context) else self._stopped).append(context.id)
        # Called under the collector's lock: contexts() reflects this stop already.
        if self._armed and not collector.closed and not collector.contexts():
            self._ended()

    def why(self) -> str:
        parts = []
        if self._by_duration:
            ids = ", ".join(map(str, self._by_duration))
            one = len(self._by_duration) == 1
            parts.append(f"context{'' if one else 's'} {ids} reached {'its' if one else 'their'} duration_s")
        if self._stopped:
            ids = ", ".join(map(str, self._stopped))
            parts.append(f"context{'' if len(self._stopped) == 1 else 's'} {ids} stopped by a listener")
        return "; ".join(parts)

    def _ended(self) -> None:
        if self._keep_running:
            return
        self.ended = True
        self._wake.set()


def _reached_duration(context: DataCollectionContext) -> bool:
    duration = context.duration_s
    if duration is None or context.start_date is None or context.end_date is None:
        return False
    # The collector ends a context at the millisecond its duration ends; a stop before that
    # came from someone else (a listener, a stop() call).
    return (context.end_date - context.start_date).total_seconds() >= duration - 0.002
