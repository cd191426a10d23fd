"""The pipeline model: readers, writers, listeners, contexts and devices, validated when built."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from flowcollect.collector import DataCollector
from flowcollect.compile import CompiledContext, compile_context, compile_plan
from flowcollect.errors import ConfigError
from flowcollect.listeners import DataCollectionListener
from flowcollect.models import DataCollectionContext, IntervalLimitPolicy, Variable
from flowcollect.pipeline._devices import Device, device_name
from flowcollect.plan import PipelinePlan, describe
from flowcollect.readers.base import DataReader
from flowcollect.runtime import DEFAULT_WORKERS
from flowcollect.stats import CollectorStats
from flowcollect.writers.base import DataWriter, preflight_problems, writer_problems
from flowcollect.writers.spool import SpoolOptions

if TYPE_CHECKING:
    from flowcollect.pipeline._once import OnceResult
    from flowcollect.pipeline._summary import RunSummary

__all__ = ["Pipeline"]


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

    # Where load_pipeline found the file: its folder as the caller named it, and resolved. A run
    # summary names a file writer's file as the user finds it from where they started (the CLI
    # works in the file's folder): ``pipelines/out/demo.csv``, not ``out/demo.csv``.
    _folder_given: Path | None = PrivateAttr(default=None)
    _folder_resolved: Path | None = PrivateAttr(default=None)

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
    reader_workers: int = Field(default=DEFAULT_WORKERS, gt=0)
    """Worker threads for synchronous readers' calls (see ``DataCollector``)."""
    gc_tuning: bool = True
    """Larger young generations for the garbage collector while collecting (see
    ``DataCollector``); ``False`` keeps the interpreter's own settings."""
    spools: dict[str, SpoolOptions] = Field(default_factory=dict)
    """Writers to put behind a durable spool, by writer name (``{"influxdb:plant":
    SpoolOptions(path="spool/influx", max_bytes=2**30)}``): see docs/spool.md."""

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
        if self.spools:
            from flowcollect.writers.spool import spool_writers

            # Set past validate_assignment: the writers were validated above, and this runs again
            # for every assignment (spool_writers leaves a spooled writer as it is).
            object.__setattr__(self, "writers", spool_writers(self.writers, self.spools))
        return self

    # -- building ----------------------------------------------------------------------------

    def collector(self, *, scheduler: Any = None, logger: logging.Logger | None = None) -> DataCollector:
        """A ready ``DataCollector`` over this pipeline's parts; no context started, no device."""
        return self._collector((), scheduler=scheduler, logger=logger)

    def _collector(
        self,
        extra_listeners: Iterable[DataCollectionListener],
        *,
        writers: Iterable[DataWriter] | None = None,
        own_listeners: bool = True,
        scheduler: Any = None,
        logger: logging.Logger | None = None,
    ) -> DataCollector:
        return DataCollector(
            self.readers,
            self.writers if writers is None else writers,
            [*(self.listeners if own_listeners else ()), *extra_listeners],
            self.interval_limit_policy,
            logger,
            scheduler=scheduler,
            queue_limit=self.queue_limit,
            close_timeout_s=self.close_timeout_s,
            reader_workers=self.reader_workers,
            gc_tuning=self.gc_tuning,
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

    @staticmethod
    def distinct_variables(contexts: Iterable[DataCollectionContext]) -> int:
        """Variables counted once each, however many contexts want them (what is read)."""
        return len({_key(v) for context in contexts for v in context.variables})

    # -- checking and planning ---------------------------------------------------------------

    def check(
        self, context_ids: Iterable[int] | None = None, *, logger: logging.Logger | None = None
    ) -> list[str]:
        """Every problem starting these contexts would find (all contexts for None), one line
        each naming the context and variable; empty when they would start. Pure: the engine's
        compiler (``flowcollect.compile``) with the readers' ``validate``; no device, writer or
        thread is touched. Variables left out by the interval-limit policy are not problems:
        ``left_out`` lists them (``logger``, when given, also hears the compiler's warnings)."""
        try:
            compiled, problems = self._compile(context_ids)
        except ConfigError as exc:
            return list(exc.problems)
        if logger is not None:
            for context in compiled:
                for warning in context.warnings:
                    logger.warning("%s", warning)
        return problems

    def _compile(self, context_ids: Iterable[int] | None) -> tuple[list[CompiledContext], list[str]]:
        readers = {reader.type: reader for reader in self.readers}
        compiled: list[CompiledContext] = []
        problems: list[str] = []
        for context in self.select(context_ids):
            try:
                one = compile_context(context, readers, self.interval_limit_policy)
                compiled.append(one)
                problems.extend(
                    writer_problems(self.writers, [s for specs in one.specs.values() for s in specs])
                )
            except ConfigError as exc:
                problems.extend(exc.problems)
            except Exception as exc:  # a reader's validate() with a bug: still one clear line
                problems.append(f"context {context.id}: checking failed: {type(exc).__name__}: {exc}")
        return compiled, problems

    def left_out(self, context_ids: Iterable[int] | None = None) -> list[str]:
        """The variables the interval-limit policy ``ignore`` leaves out, one line each (naming
        the context, the variable and the limit); empty under ``use_limit`` and ``error``."""
        readers = {reader.type: reader for reader in self.readers}
        lines = []
        for compiled in self._compile(context_ids)[0]:
            context = compiled.context
            for variable in context.variables:
                if variable.id not in compiled.dropped:
                    continue
                limit = max(context.min_interval_ms, readers[variable.reader].min_interval_ms)
                lines.append(
                    f"context {context.id}, variable {variable.id} (address {variable.address!r}): "
                    f"not collected: interval_ms {context.interval_of(variable)} is below the limit "
                    f"of {limit} ms (interval_limit_policy=ignore)"
                )
        return lines

    def preflight(self) -> list[str]:
        """Ask each writer whether its destination can work (``DataWriter.preflight``); one line
        per writer that cannot, naming it. Done before collecting, so a run that could store
        nothing never starts."""
        return preflight_problems(self.writers)

    def plan(self, context_ids: Iterable[int] | None = None) -> PipelinePlan:
        """The compiled schedule of these contexts (see ``flowcollect.plan``); touches no device.

        Raises ``ConfigError`` as ``start`` would (unknown context id, invalid variables).
        """
        compiled = compile_plan(self.select(context_ids), self.readers, self.interval_limit_policy)
        return describe(
            compiled,
            self.readers,
            self.name,
            [w.name for w in self.writers],
            [device_name(d) for d in self.devices],
        )

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
        preflight: bool = True,
        keep_running: bool = False,
    ) -> RunSummary:
        """Start the devices, then the contexts; collect until ``duration_s`` has passed, every
        context has ended, or ``stop`` is set (from a signal handler or another thread; the run
        sets it too when every context has ended); then close the collector (writers flushed)
        and stop the devices. Returns the summary.

        Nothing starts unless ``check`` finds no problem (``ConfigError`` lists them), something
        is left to collect (``ConfigError``), and, with ``preflight``, every writer's destination
        can work (``PreflightError``). ``on_started(collector)`` runs once every context has
        started; ``on_status(stats)`` every ``status_every_s`` on the calling thread.
        ``keep_running``: the run does not end when every context has ended (a service whose
        contexts are started from outside, ``flowcollect run --http``).
        """
        from flowcollect.pipeline._run import run_pipeline

        return run_pipeline(
            self,
            duration_s,
            context_ids=context_ids,
            stop=stop,
            on_started=on_started,
            on_status=on_status,
            status_every_s=status_every_s,
            logger=logger,
            preflight=preflight,
            keep_running=keep_running,
        )

    def read_once(self, context_ids: Iterable[int] | None = None, *, timeout_s: float = 10.0) -> OnceResult:
        """Read every variable of these contexts once and return the values; write nothing.

        Starts the devices, reads each variable at the next instant of a one-off schedule (the
        context's interval limit), and stops; the writers are neither opened nor written, and
        the listeners not called.
        A variable that gives no value within ``timeout_s`` is listed as such.
        """
        from flowcollect.pipeline._once import read_once

        return read_once(self, context_ids, timeout_s=timeout_s)


def _key(variable: Variable) -> tuple[str, str, str | None]:
    return (variable.reader, variable.address, variable.value_type)


def _ids(contexts: Iterable[DataCollectionContext]) -> str:
    ids = [str(c.id) for c in contexts]
    return ("context " if len(ids) == 1 else "contexts ") + ", ".join(ids)
