"""The pause schedule: a context collected ``active_s``, paused ``paused_s``, over and over."""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from typing import Any

from reactivex import abc

from flowcollect.collector import DataCollector
from flowcollect.errors import CollectorClosedError, UnknownContextError
from flowcollect.listeners import DataCollectionListener
from flowcollect.models import DataCollectionContext

__all__ = ["PauseSchedule", "collector_scheduler"]

_log = logging.getLogger("flowcollect.pipeline")


def collector_scheduler(collector: DataCollector) -> abc.SchedulerBase:
    """The collector's own Rx scheduler: its clock (real or virtual) and its timer thread."""
    return collector.scheduler


class PauseSchedule(DataCollectionListener):
    """Pauses a context for ``paused_s`` after every ``active_s`` of collecting, over and over.

    For contexts that matter only part of the time (a batch phase, a shift); while paused, the
    context's variables are not read unless another running context wants them. The switching
    runs on the collector's scheduler (its timer thread, or the virtual clock of a test), from
    the context's start until it stops or the collector closes.
    """

    def __init__(self, context_id: int, active_s: float, paused_s: float) -> None:
        if not (active_s > 0 and paused_s > 0):
            raise ValueError(f"active_s and paused_s must be positive, got {active_s} and {paused_s}")
        self.context_id = context_id
        self.active_s = active_s
        self.paused_s = paused_s
        self.pauses = 0
        self.resumes = 0
        self._lock = threading.Lock()
        self._pending: abc.DisposableBase | None = None
        self._generation = 0

    def after_start(self, collector: DataCollector, context: DataCollectionContext) -> None:
        if context.id != self.context_id:
            return
        with self._lock:
            self._generation += 1
            generation = self._generation
        self._next(collector, generation, collector_scheduler(collector).now, pausing=True)

    def after_stop(self, collector: DataCollector, context: DataCollectionContext) -> None:
        if context.id == self.context_id:
            self._end()

    def before_close(self, collector: DataCollector) -> None:
        self._end()

    def _end(self) -> None:
        with self._lock:
            self._generation += 1  # an action already running sees it and schedules nothing more
            pending, self._pending = self._pending, None
        if pending is not None:
            pending.dispose()

    def _next(self, collector: DataCollector, generation: int, since: datetime, pausing: bool) -> None:
        # Absolute instants from the start: a late switch does not push the later ones back.
        due = since + timedelta(seconds=self.active_s if pausing else self.paused_s)

        def switch(_scheduler: abc.SchedulerBase, _state: Any) -> None:
            self._switch(collector, generation, due, pausing)

        with self._lock:
            if generation != self._generation:
                return
            self._pending = collector_scheduler(collector).schedule_absolute(due, switch)

    def _switch(self, collector: DataCollector, generation: int, due: datetime, pausing: bool) -> None:
        with self._lock:
            if generation != self._generation:
                return
        try:
            if pausing:
                collector.pause(self.context_id)
            else:
                collector.resume(self.context_id)
        except (UnknownContextError, CollectorClosedError):
            return  # stopped or closed meanwhile: nothing left to switch
        if pausing:
            self.pauses += 1
            _log.info("context %s paused for %s s", self.context_id, self.paused_s)
        else:
            self.resumes += 1
            _log.info("context %s resumed for %s s", self.context_id, self.active_s)
        self._next(collector, generation, due, not pausing)
