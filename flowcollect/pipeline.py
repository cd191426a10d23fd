"""Pipelines: what to collect, from where, to where, declared in one object a file can hold.

A pipeline file is a Python module that builds a ``Pipeline`` at import and binds it to the
module-level name ``pipeline``; importing it must do no I/O (readers connect and writers open
their files when collection starts, not when they are built)::

    from flowcollect import DataCollectionContext, Pipeline, Variable
    from flowcollect.readers import RandomDataReader
    from flowcollect.writers import CsvFileDataWriter

    pipeline = Pipeline(
        name="random",
        readers=[RandomDataReader()],
        writers=[CsvFileDataWriter("out/random.csv")],
        contexts=[DataCollectionContext(id=1, interval_ms=500, variables=[...])],
    )

``flowcollect run pipelines/random.py`` loads it with ``load_pipeline`` and calls ``run``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import math
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from reactivex.testing import TestScheduler

from flowcollect.collector import DataCollector
from flowcollect.errors import CollectorClosedError, ConfigError, UnknownContextError
from flowcollect.listeners import DataCollectionListener
from flowcollect.models import DataCollectionContext, IntervalLimitPolicy
from flowcollect.readers.base import DataReader
from flowcollect.stats import CollectorStats
from flowcollect.writers.base import DataWriter

if TYPE_CHECKING:
    from flowcollect.plan import PipelinePlan

__all__ = [
    "Device",
    "EmbeddedModbusSimulator",
    "PauseSchedule",
    "Pipeline",
    "PipelineLoadError",
    "RunSummary",
    "load_pipeline",
    "validation_problems",
]

_log = logging.getLogger("flowcollect.pipeline")

StopReason = Literal["duration", "ended", "stopped"]

# For checks whose warnings are logged again a moment later, by the start they precede.
_QUIET = logging.Logger("flowcollect.quiet", logging.CRITICAL + 1)
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


@runtime_checkable
class Device(Protocol):
    """Something a pipeline starts before collecting and stops after: e.g. an embedded simulator.

    ``start()`` returns once the device serves (a reader may connect right after); ``stop()``
    releases it and must be safe to call after a failed or partial ``start()``. A ``name``
    attribute, when present, labels it in logs and plans.
    """

    def start(self) -> object: ...

    def stop(self) -> object: ...


def device_name(device: object) -> str:
    name = getattr(device, "name", None)
    return name if isinstance(name, str) and name else type(device).__name__


class _HostPort(Protocol):
    host: str
    port: int


class EmbeddedModbusSimulator:
    """The Modbus simulator (``flowcollect.simulator``) as a pipeline device.

    Listens on ``host`` at ``port`` (0: a free port, chosen when it starts) and, once it
    listens, points each of ``readers`` (Modbus readers: anything with ``host`` and ``port``)
    at itself; so a pipeline file names no port and two runs never collide. pymodbus's server
    is imported only when it starts.
    """

    def __init__(
        self, readers: Sequence[_HostPort] = (), host: str = "127.0.0.1", port: int = 0, name: str = ""
    ) -> None:
        self.readers = list(readers)
        self.host = host
        self.port = port
        self.name = name or "modbus simulator"
        self.simulator: Any = None
        """The running ``flowcollect.simulator.Simulator``, between start and stop."""

    def start(self) -> None:
        from flowcollect.simulator import Simulator

        # A new server each time: a stopped one keeps the port it had, which may be gone.
        self.simulator = Simulator(self.host, self.port).start()
        for reader in self.readers:
            reader.host, reader.port = self.simulator.host, self.simulator.port

    def stop(self) -> None:
        simulator, self.simulator = self.simulator, None
        if simulator is not None:
            simulator.stop()

    def __repr__(self) -> str:
        return f"EmbeddedModbusSimulator(name={self.name!r}, host={self.host!r}, port={self.port})"


class PipelineLoadError(ConfigError):
    """A pipeline file is missing, does not import, or holds no valid ``pipeline``.

    ``problems`` has one line per problem, each naming the file (and the line or field).
    """


def validation_problems(exc: ValidationError, prefix: str = "") -> list[str]:
    """One line per pydantic error, naming the field path (``contexts.0.variables.2.address``)."""
    lines = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        where = ".".join(str(part) for part in error["loc"])
        lines.append(f"{prefix}{where}: {message}" if where else f"{prefix}{message}")
    return lines


class Pipeline(BaseModel):
    """Readers, writers, listeners, contexts and embedded devices: everything one run needs.

    Validated when built: unknown fields, objects that are not readers/writers/listeners,
    two readers of one type and two contexts with one id are refused with the field named.
    Whether each variable can be read (its reader exists, its address parses, its interval
    respects the limits) is checked by ``check()`` and again when a context starts.

    The readers and writers are instances, shared by every collector built from the pipeline:
    a collector closes them when it closes, so build one collector at a time.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, validate_assignment=True)

    name: str = Field(min_length=1)
    description: str = ""
    readers: list[DataReader] = Field(min_length=1)
    writers: list[DataWriter] = Field(min_length=1)
    listeners: list[DataCollectionListener] = Field(default_factory=list)
    contexts: list[DataCollectionContext] = Field(min_length=1)
    interval_limit_policy: IntervalLimitPolicy = IntervalLimitPolicy.IGNORE
    devices: list[Device] = Field(default_factory=list)
    """Started in order before any context, stopped in reverse order after the collector closed."""
    queue_limit: int = Field(default=1_000_000, gt=0)
    """Values each writer's queue holds before the oldest are dropped (see ``DataCollector``)."""
    close_timeout_s: float = Field(default=30.0, gt=0)
    """How long closing waits for readers and writers to finish."""

    @field_validator("name")
    @classmethod
    def _name_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @model_validator(mode="after")
    def _unique(self) -> Pipeline:
        problems = []
        types = [reader.type for reader in self.readers]
        repeated_types = sorted({t for t in types if types.count(t) > 1})
        if repeated_types:
            problems.append(
                "readers: reader types must be unique (Variable.reader picks one); "
                f"repeated: {repeated_types}"
            )
        ids = [context.id for context in self.contexts]
        repeated_ids = sorted({i for i in ids if ids.count(i) > 1})
        if repeated_ids:
            problems.append(f"contexts: context ids must be unique; repeated: {repeated_ids}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # -- building ----------------------------------------------------------------------------

    def collector(self, *, scheduler: Any = None, logger: logging.Logger | None = None) -> DataCollector:
        """A ready ``DataCollector`` over this pipeline's parts; no context started, no device."""
        return self._collector((), scheduler=scheduler, logger=logger)

    def _collector(
        self,
        extra_listeners: Iterable[DataCollectionListener],
        *,
        scheduler: Any = None,
        logger: logging.Logger | None = None,
    ) -> DataCollector:
        return DataCollector(
            self.readers,
            self.writers,
            [*self.listeners, *extra_listeners],
            self.interval_limit_policy,
            logger,
            scheduler=scheduler,
            queue_limit=self.queue_limit,
            close_timeout_s=self.close_timeout_s,
        )

    def select(self, context_ids: Iterable[int] | None = None) -> list[DataCollectionContext]:
        """The contexts with these ids (all of them for None), in pipeline order.

        Raises ``ConfigError`` naming every unknown id.
        """
        if context_ids is None:
            return list(self.contexts)
        wanted = list(dict.fromkeys(context_ids))
        known = {context.id: context for context in self.contexts}
        unknown = [cid for cid in wanted if cid not in known]
        if unknown:
            ids = ", ".join(str(cid) for cid in known)
            raise ConfigError(
                [
                    f"pipeline {self.name!r} has no context with id {cid} (its contexts: {ids})"
                    for cid in unknown
                ]
            )
        return [known[cid] for cid in wanted]

    # -- checking and planning ---------------------------------------------------------------

    def check(
        self, context_ids: Iterable[int] | None = None, *, logger: logging.Logger | None = None
    ) -> list[str]:
        """Every problem starting these contexts would find (all contexts for None), one line
        each naming the context and variable; empty when they would start. Touches no device:
        readers only ``validate`` variables, writers and devices are left alone."""
        try:
            contexts = self.select(context_ids)
        except ConfigError as exc:
            return list(exc.problems)
        # A virtual clock: the collector then runs no thread, and writers are not even wrapped
        # in queues; nothing is started, so closing it closes nothing of the pipeline's.
        collector = DataCollector(
            self.readers, [], (), self.interval_limit_policy, logger, scheduler=TestScheduler()
        )
        problems: list[str] = []
        try:
            for context in contexts:
                try:
                    collector.check(context)
                except ConfigError as exc:
                    problems.extend(exc.problems)
                except Exception as exc:  # a reader's validate() with a bug: still one clear line
                    problems.append(f"context {context.id}: checking failed: {type(exc).__name__}: {exc}")
        finally:
            collector.close()
        return problems

    def plan(self, context_ids: Iterable[int] | None = None) -> PipelinePlan:
        """The compiled schedule of these contexts (see ``flowcollect.plan``); touches no device."""
        from flowcollect.plan import build_plan

        return build_plan(self, context_ids)

    # -- running -----------------------------------------------------------------------------

    def run(
        self,
        duration_s: float | None = None,
        *,
        context_ids: Iterable[int] | None = None,
        stop: threading.Event | None = None,
        on_started: Callable[[DataCollector], None] | None = None,
        on_status: Callable[[CollectorStats], None] | None = None,
        status_every_s: float = 1.0,
        logger: logging.Logger | None = None,
    ) -> RunSummary:
        """Start the devices, then the contexts; collect until ``duration_s`` has passed, every
        context has ended, or ``stop`` is set (from a signal handler or another thread; the run
        sets it too when every context has ended); then close the collector (writers flushed)
        and stop the devices. Returns the summary.

        Nothing starts unless ``check`` finds no problem (``ConfigError`` lists them).
        ``on_started(collector)`` runs once every context has started; ``on_status(stats)``
        every ``status_every_s`` on the calling thread while collecting.
        """
        if duration_s is not None and not (duration_s > 0 and math.isfinite(duration_s)):
            raise ConfigError(f"duration_s must be a positive number of seconds, got {duration_s}")
        if status_every_s <= 0:
            raise ConfigError(f"status_every_s must be positive, got {status_every_s}")
        contexts = self.select(context_ids)
        # Quietly: start repeats the check and logs its warnings (variables left out) once.
        problems = self.check([c.id for c in contexts], logger=_QUIET)
        if problems:
            raise ConfigError(problems)
        stop = stop if stop is not None else threading.Event()
        log = logger or _log
        watcher = _EndWatcher(stop)
        began = time.monotonic()
        devices = self._start_devices(log)
        try:
            collector = self._collector([watcher], logger=logger)
        except BaseException:
            self._stop_devices(devices, log)
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
            reason = self._wait(collector, watcher, stop, duration_s, on_status, status_every_s)
        finally:
            try:
                collector.close()
            finally:
                # Even when closing was cut short (a second Ctrl-C): no device left serving.
                self._stop_devices(devices, log)
        elapsed = time.monotonic() - began
        summary = RunSummary(self.name, reason, elapsed, tuple(c.id for c in contexts), collector.stats())
        log.info("pipeline %s: %s", self.name, summary.headline())
        return summary

    @staticmethod
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

    def _start_devices(self, log: logging.Logger) -> list[Device]:
        started: list[Device] = []
        for device in self.devices:
            name = device_name(device)
            try:
                device.start()
            except Exception as exc:
                # Stop this one too: start may have got half way (a bound socket, a thread).
                self._stop_devices([*started, device], log)
                raise ConfigError(f"device {name} failed to start: {type(exc).__name__}: {exc}") from exc
            started.append(device)
            log.info("device %s started", name)
        return started

    @staticmethod
    def _stop_devices(devices: Sequence[Device], log: logging.Logger) -> None:
        for device in reversed(devices):
            try:
                device.stop()
            except Exception as exc:  # one device's failure must not leave the others running
                log.error("device %s failed to stop: %s: %s", device_name(device), type(exc).__name__, exc)


class _EndWatcher(DataCollectionListener):
    """Wakes the run when the last context has stopped (by its duration or a listener)."""

    def __init__(self, wake: threading.Event) -> None:
        self._wake = wake
        self._armed = False
        self.ended = False

    def arm(self, collector: DataCollector) -> None:
        self._armed = True
        if not collector.is_running():
            self._ended()

    def after_stop(self, collector: DataCollector, context: DataCollectionContext) -> None:
        # Called under the collector's lock: contexts() reflects this stop already.
        if self._armed and not collector.closed and not collector.contexts():
            self._ended()

    def _ended(self) -> None:
        self.ended = True
        self._wake.set()


@dataclass(frozen=True, slots=True)
class RunSummary:
    """What a run did: why it ended, how long it took, and the final counters."""

    pipeline: str
    reason: StopReason
    """``duration`` (the run's duration passed), ``ended`` (every context ended by itself) or
    ``stopped`` (the stop event was set: a signal, another thread)."""
    elapsed_s: float
    contexts: tuple[int, ...]
    stats: CollectorStats

    @property
    def values_read(self) -> int:
        """Distinct values read (a value shared by several contexts counts once)."""
        return sum(r.values for r in self.stats.readers.values())

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.stats.readers.values())

    @property
    def delivered(self) -> int:
        """Values handed to the writers, over every context."""
        return sum(c.delivered for c in self.stats.contexts.values())

    @property
    def written(self) -> int:
        """Values taken by the writers, summed over writers."""
        return sum(w.written for w in self.stats.writers.values())

    @property
    def failed(self) -> int:
        return sum(w.failed for w in self.stats.writers.values())

    @property
    def dropped(self) -> int:
        """Values dropped by the engine's queues plus those the writers report dropping."""
        return sum(w.dropped + int(w.extra.get("dropped", 0)) for w in self.stats.writers.values())

    @property
    def lateness_ms_p99(self) -> float | None:
        """The worst reader's p99 lateness of its reads behind their instants."""
        values = [r.lateness_ms_p99 for r in self.stats.readers.values() if r.lateness_ms_p99 is not None]
        return max(values, default=None)

    def headline(self) -> str:
        why = {
            "duration": "ran for its duration",
            "ended": "every context ended",
            "stopped": "stopped on request",
        }[self.reason]
        return f"{why} after {self.elapsed_s:.1f} s"

    def lines(self) -> list[str]:
        """The summary as text, one fact per line."""
        p99 = self.lateness_ms_p99
        ids = ", ".join(str(c) for c in self.contexts)
        out = [
            f"pipeline {self.pipeline}: {self.headline()} (contexts {ids})",
            f"  values read:   {self.values_read:,} ({self.errors:,} with errors)",
            f"  delivered:     {self.delivered:,} (to each writer)",
            f"  written:       {self.written:,}",
            f"  failed:        {self.failed:,}",
            f"  dropped:       {self.dropped:,}",
            f"  lateness p99:  {'-' if p99 is None else f'{p99:.1f} ms'}",
        ]
        for name, r in self.stats.readers.items():
            late = "-" if r.lateness_ms_p99 is None else f"{r.lateness_ms_p99:.1f} ms"
            out.append(
                f"  reader {name}: {r.values:,} values in {r.ticks:,} ticks, {r.errors:,} errors, "
                f"{r.overruns:,} overruns, lateness p99 {late}"
            )
        for name, w in self.stats.writers.items():
            extra_dropped = int(w.extra.get("dropped", 0))
            out.append(
                f"  writer {name}: {w.written:,} written, {w.failed:,} failed, "
                f"{w.dropped + extra_dropped:,} dropped"
            )
        return out

    def as_dict(self) -> dict[str, Any]:
        """The summary as plain data (for ``--json``)."""
        return {
            "pipeline": self.pipeline,
            "reason": self.reason,
            "elapsed_s": round(self.elapsed_s, 3),
            "contexts": list(self.contexts),
            "values_read": self.values_read,
            "errors": self.errors,
            "delivered": self.delivered,
            "written": self.written,
            "failed": self.failed,
            "dropped": self.dropped,
            "lateness_ms_p99": self.lateness_ms_p99,
            "readers": {
                name: {
                    "values": r.values,
                    "ticks": r.ticks,
                    "errors": r.errors,
                    "overruns": r.overruns,
                    "lateness_ms_p99": r.lateness_ms_p99,
                    "extra": dict(r.extra),
                }
                for name, r in self.stats.readers.items()
            },
            "writers": {
                name: {
                    "written": w.written,
                    "failed": w.failed,
                    "dropped": w.dropped,
                    "queued": w.queued,
                    "extra": dict(w.extra),
                }
                for name, w in self.stats.writers.items()
            },
            "context_states": {
                str(cid): {"state": c.state, "delivered": c.delivered}
                for cid, c in self.stats.contexts.items()
            },
        }


class PauseSchedule(DataCollectionListener):
    """Pauses a context for ``paused_s`` after every ``active_s`` of collecting, over and over.

    For contexts that matter only part of the time (a batch phase, a shift); while paused, the
    context's variables are not read unless another running context wants them. The switching
    runs on a thread of its own, from the context's start until it stops or the collector closes.
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
        self._done: threading.Event | None = None
        self._thread: threading.Thread | None = None

    def after_start(self, collector: DataCollector, context: DataCollectionContext) -> None:
        if context.id != self.context_id:
            return
        self._end()
        done = threading.Event()
        thread = threading.Thread(
            target=self._switch,
            args=(collector, done),
            name=f"flowcollect-pause-schedule-{self.context_id}",
            daemon=True,
        )
        with self._lock:
            self._done, self._thread = done, thread
        thread.start()

    def after_stop(self, collector: DataCollector, context: DataCollectionContext) -> None:
        if context.id == self.context_id:
            # Not joined here: this runs under the collector's lock, which the thread may be
            # waiting for in pause(); it sees the event and ends by itself.
            self._end()

    def before_close(self, collector: DataCollector) -> None:
        self._end()

    def after_close(self, collector: DataCollector) -> None:
        with self._lock:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(5.0)

    def _end(self) -> None:
        with self._lock:
            if self._done is not None:
                self._done.set()

    def _switch(self, collector: DataCollector, done: threading.Event) -> None:
        while True:
            for pausing in (True, False):
                if done.wait(self.active_s if pausing else self.paused_s):
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


# -- loading pipeline files ----------------------------------------------------------------------


def load_pipeline(path: str | Path) -> Pipeline:
    """Import a pipeline file and return its module-level ``pipeline``.

    The file is imported as a module (never evaluated as an expression). Raises
    ``PipelineLoadError`` naming the file and the problem: missing file, an exception while
    importing (with its type and the file's line), no ``pipeline``, or not a ``Pipeline``.
    """
    file = Path(path)
    if not file.exists():
        raise PipelineLoadError(f"pipeline file {file} does not exist")
    if not file.is_file():
        raise PipelineLoadError(f"pipeline file {file} is not a file")
    module = _import(file)
    if not hasattr(module, "pipeline"):
        raise PipelineLoadError(
            f"pipeline file {file} defines no module-level `pipeline` (it must bind a flowcollect.Pipeline "
            "to that name)"
        )
    pipeline = module.pipeline
    if not isinstance(pipeline, Pipeline):
        raise PipelineLoadError(
            f"`pipeline` in {file} is a {type(pipeline).__name__}, not a flowcollect.Pipeline"
        )
    return pipeline


def _import(file: Path) -> ModuleType:
    resolved = file.resolve()
    # One module name per file, so two pipelines with the same file name do not replace each
    # other in sys.modules; the module stays registered, as classes defined in it need that.
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    name = f"flowcollect_pipeline_{_identifier(file.stem)}_{digest}"
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise PipelineLoadError(f"pipeline file {file} cannot be imported as Python (use a .py file)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        sys.modules.pop(name, None)
        raise PipelineLoadError(_import_problems(file, resolved, exc)) from exc
    return module


def _identifier(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text)


def _import_problems(file: Path, resolved: Path, exc: BaseException) -> list[str]:
    if isinstance(exc, SyntaxError):
        return [f"pipeline file {file} does not import: line {exc.lineno}: SyntaxError: {exc.msg}"]
    line = _last_line_in(resolved, exc)
    where = f"pipeline file {file}" + (f", line {line}" if line is not None else "")
    if isinstance(exc, ValidationError):
        # A model built at import (the Pipeline, a context, a variable) refused a field.
        return [f"{where}: invalid {exc.title}: {p}" for p in validation_problems(exc)]
    if isinstance(exc, ConfigError):
        return [f"{where}: {p}" for p in exc.problems]
    return [f"{where} does not import: {type(exc).__name__}: {exc}"]


def _last_line_in(resolved: Path, exc: BaseException) -> int | None:
    """The line of the pipeline file that led to the exception (the deepest frame in it)."""
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename and Path(frame.filename) == resolved:
            line = frame.lineno
    return line
