"""The operations behind the HTTP API, over one running ``DataCollector``.

Figures come from one ``DataCollector.stats()`` snapshot per request (the source of the terminal
table, ``--json`` and the metrics); contexts from ``contexts()``; changes go through ``start``,
``pause``, ``resume`` and ``stop``. The service never reaches into the collector's lanes.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from flowcollect.collector import DataCollector
from flowcollect.errors import ConfigError, UnknownContextError
from flowcollect.listeners import DataCollectionListener
from flowcollect.models import DataCollectionContext
from flowcollect.pipeline import Pipeline, writer_figures
from flowcollect.service._latest import LatestValue, LatestValues
from flowcollect.service._reload import ReloadPlan, prepare_reload
from flowcollect.service._state import StateStore
from flowcollect.stats import CollectorStats, ContextStats

__all__ = ["ContextConflictError", "NotReadyError", "Service", "Subscription"]

_log = logging.getLogger("flowcollect.service")

MAX_KNOWN = 10_000
"""Context models kept for ``GET /api/v1/contexts`` (the oldest stopped ones go first)."""
EVENT_QUEUE = 1_000
"""Events a slow events client may be behind before the oldest are dropped (and it is told)."""


class ContextConflictError(ConfigError):
    """The context is in a state that does not allow the operation (409)."""


class NotReadyError(ContextConflictError):
    """The collector has not started yet, or the run is ending (503)."""


def iso(value: datetime | None) -> str | None:
    # Milliseconds always (the engine's resolution), so every date has one width.
    return (
        None
        if value is None
        else value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def _plain(obj: Any) -> dict[str, Any]:
    out = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        out[f.name] = dict(value) if f.name == "extra" else value
    return out


class Subscription:
    """One events client: a bounded queue the collector's threads put into and the client drains."""

    def __init__(self) -> None:
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(EVENT_QUEUE)
        self.lost = 0

    def put(self, event: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.lost += 1  # the client is told in its next "lost" event

    def drain(self) -> list[dict[str, Any]]:
        out = []
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                break
        if self.lost:
            out.append({"event": "lost", "count": self.lost})
            self.lost = 0
        return out


class Service(DataCollectionListener):
    """Listener of the collector (its events, the contexts it starts and stops) and the API's
    operations. ``attach`` once the collector runs; ``restore`` then brings back what the state
    store recorded."""

    def __init__(
        self,
        pipeline_name: str,
        pipeline_contexts: Iterable[DataCollectionContext],
        latest: LatestValues,
        store: StateStore | None = None,
        membership: Callable[[], Any] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.pipeline_name = pipeline_name
        self.latest = latest
        self.store = store
        self._membership = membership
        self._clock = clock
        self._began = time.monotonic()
        self._collector: DataCollector | None = None
        self._lock = threading.Lock()
        """Guards ``_known``, ``_origin``, ``_ended_down``, ``_subscribers`` and ``_closing``.
        Taken by listener calls under the collector's lock, so never held while calling the
        collector."""
        self._known: dict[int, DataCollectionContext] = {c.id: c for c in pipeline_contexts}
        self._pipeline_ids = frozenset(self._known)
        self._origin: dict[int, tuple[str, float | None]] = {}
        """Restored contexts: their original start date and duration (the collector knows them
        as started at the restore, for what was left)."""
        self._ended_down: set[int] = set()
        self._subscribers: list[Subscription] = []
        self._closing = False
        # The pipeline's models themselves, never copies: nobody changes them (a run starts
        # copies), and a copy of a 10,000-variable context is 30,000 more objects for every full
        # garbage collection to walk (measured: the lanes' lateness).
        self._definitions = list(pipeline_contexts)
        """The pipeline's contexts as last loaded (for reload's difference)."""
        self.pipeline: Pipeline | None = None
        self.pipeline_path: Path | None = None
        self._reload_lock = threading.Lock()
        """One reload at a time (the API, SIGHUP and --watch may ask at once)."""
        latest.on_error = self._value_error

    # -- wiring ------------------------------------------------------------------------------

    def attach(self, collector: DataCollector) -> None:
        self._collector = collector

    @property
    def collector(self) -> DataCollector:
        collector = self._collector
        if collector is None:
            raise NotReadyError("the collector is not running yet")
        return collector

    # -- listener (called by the collector, under its lock: record and publish only) ---------

    def after_start(self, collector: DataCollector, context: DataCollectionContext) -> None:
        with self._lock:
            self._remember(context)
        self.publish({"event": "start", "context": context.id, "start_date": iso(context.start_date)})

    def after_stop(self, collector: DataCollector, context: DataCollectionContext) -> None:
        with self._lock:
            self._remember(context)
            closing = self._closing
        if not closing:
            # Ended (its duration, a listener, the API): not restored after a restart.
            if self.store is not None:
                self.store.drop(context.id)
            self.latest.forget_context(context.id)
        self.publish({"event": "stop", "context": context.id, "end_date": iso(context.end_date)})

    def before_close(self, collector: DataCollector) -> None:
        with self._lock:
            self._closing = True
        self.publish({"event": "close"})

    def _remember(self, context: DataCollectionContext) -> None:
        self._known.pop(context.id, None)
        self._known[context.id] = context  # the newest last, so the oldest is dropped first
        while len(self._known) > MAX_KNOWN:
            oldest = next(iter(self._known))
            self._known.pop(oldest)
            self._origin.pop(oldest, None)

    def _value_error(self, value: LatestValue) -> None:
        s = value.spec
        self.publish(
            {
                "event": "error",
                "context": s.context_id,
                "variable": s.id,
                "name": s.name,
                "reader": s.reader,
                "error": value.error,
                "time": iso(value.time),
            }
        )

    # -- events ------------------------------------------------------------------------------

    def subscribe(self) -> Subscription:
        sub = Subscription()
        with self._lock:
            self._subscribers.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subscribers:
                self._subscribers.remove(sub)

    def publish(self, event: dict[str, Any]) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for sub in subscribers:
            sub.put(event)

    # -- reads -------------------------------------------------------------------------------

    def visible(self, stats: CollectorStats) -> CollectorStats:
        """The figures without the latest-values writer: it is the API's memory, not a
        destination, and counted as a writer it would double every total. Its own figures are
        the status's ``values_kept``."""
        name = self.latest.name
        if name not in stats.writers:
            return stats
        writers = {n: w for n, w in stats.writers.items() if n != name}
        return CollectorStats(stats.readers, writers, stats.contexts)

    def snapshot_or_none(self) -> CollectorStats | None:
        return None if self._collector is None else self.snapshot()

    def snapshot(self) -> CollectorStats:
        return self.visible(self.collector.stats())

    def status(self) -> dict[str, Any]:
        collector = self.collector
        full = collector.stats()
        stats = self.visible(full)
        kept = full.writers.get(self.latest.name)
        last_errors = {
            reader: {
                "error": value.error,
                "time": iso(value.time),
                "variable": value.spec.id,
                "context": value.spec.context_id,
            }
            for reader, value in self.latest.last_errors().items()
        }
        lanes = collector.lanes()
        membership = self._membership() if self._membership is not None else None
        owned = None if self._membership is None else set(membership.owned if membership else ())
        return {
            "pipeline": self.pipeline_name,
            "uptime_s": round(time.monotonic() - self._began, 3),
            "lanes": {
                key: {"readers": list(types)} | ({} if owned is None else {"owned": key in owned})
                for key, types in lanes.items()
            },
            "readers": {
                rtype: _plain(r) | {"last_error": last_errors.get(rtype)}
                for rtype, r in stats.readers.items()
            },
            "writers": {
                name: _plain(w) | {"figures": _plain(writer_figures(w))} for name, w in stats.writers.items()
            },
            "contexts": {str(cid): _plain(c) for cid, c in stats.contexts.items()},
            "group": None if membership is None else membership.as_dict(),
            "values_kept": dict(self.latest.stats()) | ({} if kept is None else {"written": kept.written}),
        }

    def figures(self) -> dict[str, Any]:
        """The once-a-second event: the status's counters, without the last errors."""
        stats = self.snapshot()
        return {
            "event": "figures",
            "readers": {
                t: {
                    "values": r.values,
                    "errors": r.errors,
                    "overruns": r.overruns,
                    "lateness_ms_p99": r.lateness_ms_p99,
                    "delivery_ms_p99": r.delivery_ms_p99,
                }
                for t, r in stats.readers.items()
            },
            "writers": {n: _plain(writer_figures(w)) for n, w in stats.writers.items()},
            "contexts": {
                str(c): {"state": s.state, "delivered": s.delivered, "missed_instants": s.missed_instants}
                for c, s in stats.contexts.items()
            },
        }

    def figures_or_none(self) -> dict[str, Any] | None:
        return None if self._collector is None else self.figures()

    def contexts(self) -> list[dict[str, Any]]:
        collector = self.collector
        stats = collector.stats()
        running = collector.contexts()
        with self._lock:
            ids = sorted(set(self._known) | set(running))
        return [self._view(cid, stats, running) for cid in ids]

    def context(self, context_id: int) -> dict[str, Any]:
        collector = self.collector
        stats = collector.stats()
        running = collector.contexts()
        with self._lock:
            known = context_id in self._known
        if not known and context_id not in running:
            raise UnknownContextError(context_id)
        return self._view(context_id, stats, running)

    def _view(
        self, cid: int, stats: CollectorStats, running: dict[int, DataCollectionContext]
    ) -> dict[str, Any]:
        with self._lock:
            model = running.get(cid) or self._known[cid]
            origin = self._origin.get(cid)
            ended_down = cid in self._ended_down
        figures = stats.contexts.get(cid) or ContextStats(cid, "stopped", 0)
        out = model.model_dump(mode="json")
        state = figures.state if cid in running else "stopped"
        if origin is not None and not ended_down:
            out["start_date"], out["duration_s"] = origin
        out["start_date"] = iso(model.start_date) if origin is None else out["start_date"]
        out["end_date"] = iso(model.end_date) if cid not in running else None
        out.update(
            state=state,
            delivered=figures.delivered,
            missed_instants=figures.missed_instants,
            source="pipeline" if cid in self._pipeline_ids else "api",
        )
        return out

    def values(
        self,
        context: int | None = None,
        reader: str | None = None,
        name: str | None = None,
        offset: int = 0,
        limit: int = 1000,
    ) -> dict[str, Any]:
        page: dict[str, Any] = json.loads(self.values_json(context, reader, name, offset, limit))
        return page

    def values_json(
        self,
        context: int | None = None,
        reader: str | None = None,
        name: str | None = None,
        offset: int = 0,
        limit: int = 1000,
    ) -> bytes:
        """``values`` as the API sends it: JSON text made row by row (``LatestValues.page_json``)."""
        return self.latest.page_json(context, reader, name, offset, limit)[1]

    # -- changes -----------------------------------------------------------------------------

    def create(self, context: DataCollectionContext) -> dict[str, Any]:
        """POST /api/v1/contexts: start this context (its id must not be running)."""
        started = self.collector.start(context)  # the caller's own model (a request's, a copy)
        with self._lock:
            self._origin.pop(started.id, None)
            self._ended_down.discard(started.id)
        self._record(started, paused=False)
        return self.context(started.id)

    def start(self, context_id: int) -> dict[str, Any]:
        """Start a known context (the pipeline's, or one started and stopped before) by id."""
        with self._lock:
            model = self._known.get(context_id)
        if model is None:
            raise UnknownContextError(context_id)
        fresh = model.model_copy(deep=True, update={"start_date": None, "end_date": None})
        with self._lock:
            origin = self._origin.get(context_id)
        if origin is not None:
            fresh.duration_s = origin[1]  # the context as defined, not what was left of it
        return self.create(fresh)

    def pause(self, context_id: int) -> dict[str, Any]:
        context = self.collector.pause(context_id)
        self._record(context, paused=True)
        self.publish({"event": "pause", "context": context_id})
        return self.context(context_id)

    def resume(self, context_id: int) -> dict[str, Any]:
        context = self.collector.resume(context_id)
        self._record(context, paused=False)
        self.publish({"event": "resume", "context": context_id})
        return self.context(context_id)

    def stop(self, context_id: int) -> dict[str, Any]:
        self.collector.stop(context_id)  # the listener drops its record
        return self.context(context_id)

    def _record(self, context: DataCollectionContext, *, paused: bool) -> None:
        if self.store is None:
            return
        with self._lock:
            origin = self._origin.get(context.id)
        start, duration = origin if origin is not None else (iso(context.start_date), context.duration_s)
        body = context.model_dump(mode="json", exclude={"start_date", "end_date"})
        body["duration_s"] = duration
        self.store.put(
            context.id, {"context": body, "start_date": start, "duration_s": duration, "paused": paused}
        )

    # -- reload ------------------------------------------------------------------------------

    def reload(self) -> dict[str, Any]:
        """Load the pipeline file again and apply the difference (``_reload``): readers and
        writers whose options changed replaced, the pipeline's contexts added, removed or changed
        started, stopped or restarted; ``ConfigError`` listing every problem, with nothing
        changed, for a broken file."""
        if self.pipeline is None or self.pipeline_path is None:
            raise ContextConflictError("reload needs the pipeline file (flowcollect run --http)")
        if self._membership is not None:
            # Every member runs the same file and shares its lanes out by it: one member
            # reloading alone would collect something else than the others.
            raise ContextConflictError(
                "a group member does not reload: change the file and restart the members one by one"
            )
        with self._reload_lock:
            collector = self.collector
            plan = prepare_reload(
                self.pipeline_path, collector, self._definitions, [self.latest], self.pipeline
            )
            result = plan.result
            new = plan.pipeline
            try:
                self._apply(collector, plan)
            except Exception as exc:
                # Checked before anything changed, so only a race (a context started through
                # the API meanwhile) or a plugin's bug gets here: part of it is applied. Not
                # a ConfigError, so nobody is told that nothing changed.
                _log.error("reload failed half way (%s); reload again, or restart", exc)
                raise RuntimeError(f"reload failed half way: {exc}") from exc
            self._definitions = list(new.contexts)
        _log.info("%s", result.line())
        for note in result.notes:
            _log.info("reload: %s", note)
        self.publish({"event": "reload"} | result.as_dict())
        return result.as_dict()

    def _apply(self, collector: DataCollector, plan: ReloadPlan) -> None:
        result, fresh = plan.result, {c.id: c for c in plan.pipeline.contexts}
        for cid in result.removed + result.changed:
            if cid in collector.contexts():
                collector.stop(cid)
        # Readers first (the lanes' hand-over), then writers: a context started below delivers
        # to the new writers from its first instant.
        if result.readers.any():
            collector.replace_readers(plan.readers)
        if result.writers.any():
            collector.replace_writers([*plan.writers, self.latest])
        with self._lock:
            self._pipeline_ids = frozenset(fresh)
            for cid in result.added + result.changed:
                self._known[cid] = fresh[cid]
        for cid in result.added + result.changed:
            collector.start(fresh[cid].model_copy(deep=True))

    # -- restart -----------------------------------------------------------------------------

    def restore(self) -> list[str]:
        """Bring back the contexts the state store recorded; returns one log line per context."""
        if self.store is None:
            return []
        collector = self.collector
        lines = []
        for cid, record in sorted(self.store.records().items()):
            try:
                lines.append(self._restore_one(collector, cid, record))
            except Exception as exc:  # one bad record must not keep the others down
                lines.append(f"context {cid}: not restored: {exc} (its record stays in {self.store.path})")
        for line in lines:
            _log.info("%s", line)
        return lines

    def _restore_one(self, collector: DataCollector, cid: int, record: dict[str, Any]) -> str:
        store = self.store
        if store is None:
            raise ContextConflictError("no --state-dir")
        start = datetime.fromisoformat(str(record["start_date"]).replace("Z", "+00:00"))
        duration = record.get("duration_s")
        paused = bool(record.get("paused"))
        now = self._clock()
        model = DataCollectionContext.model_validate(record["context"])
        if duration is not None:
            end = start + timedelta(seconds=float(duration))
            if end <= now:
                model.start_date, model.end_date = start, end
                with self._lock:
                    self._remember(model)
                    self._ended_down.add(cid)
                store.drop(cid)
                return f"context {cid}: ended at {iso(end)} while the collector was down; not restarted"
        running = collector.contexts()
        if cid in running:
            # The pipeline started it already at this start: only the pause state comes back.
            if paused:
                collector.pause(cid)
            self._record(running[cid], paused=paused)
            return f"context {cid}: started by the pipeline; {'paused again' if paused else 'running'}"
        if duration is not None:
            left = (start + timedelta(seconds=float(duration)) - now).total_seconds()
            model.duration_s = max(0.001, math.floor(left * 1000) / 1000)
        collector.start(model)
        with self._lock:
            self._origin[cid] = (iso(start) or "", duration)
        if paused:
            collector.pause(cid)
        return f"context {cid}: restored (started {iso(start)}, {'paused' if paused else 'running'})"
