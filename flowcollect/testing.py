"""Helpers for testing your own pipelines, readers and writers.

Run a collector in virtual time — no threads, no waiting, exact ticks::

    from flowcollect.testing import StaticDataReader, collect
    values = collect([context], [StaticDataReader({"a": 1.5})], duration_ms=1_000)

or drive one yourself with ``virtual_collector`` and ``VirtualClock.advance_ms``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from flowcollect._instants import EPOCH, instant
from flowcollect.collector import DataCollector
from flowcollect.listeners import DataCollectionListener
from flowcollect.models import DataCollectionContext, IntervalLimitPolicy, Variable
from flowcollect.readers.base import DataReader, Emit
from flowcollect.runtime import VirtualScheduler
from flowcollect.values import CollectedVariable, ValueBatch, VariableSpec
from flowcollect.writers.base import DataWriter
from flowcollect.writers.memory import MemoryDataWriter

__all__ = [
    "AsyncDataReader",
    "MemoryDataWriter",
    "PushingDataReader",
    "RecordingListener",
    "StaticDataReader",
    "StuckDataWriter",
    "VirtualClock",
    "VirtualScheduler",
    "collect",
    "virtual_collector",
]

ValueSource = Mapping[str, Any] | Callable[[str, datetime], Any]


class StaticDataReader(DataReader):
    """Serves fixed values per address (or computed by ``values(address, time)``) and records reads.

    ``reads`` holds one ``(time, [addresses])`` entry per ``read`` call, so tests can check what
    was read at which instant. An address missing from a mapping reads as an error.
    """

    def __init__(
        self,
        values: ValueSource,
        type: str = "static",  # noqa: A002 - the contract's name for a reader's type
        min_interval_ms: int = 1,
    ) -> None:
        self._values = values
        self._type = type
        self._min_interval_ms = min_interval_ms
        self._lock = threading.Lock()
        self.reads: list[tuple[datetime | None, list[str]]] = []
        self.opened = 0
        self.closed = 0

    @property
    def type(self) -> str:
        return self._type

    @property
    def min_interval_ms(self) -> int:
        return self._min_interval_ms

    def open(self) -> None:
        self.opened += 1

    def close(self) -> None:
        self.closed += 1

    def read(self, variables: Sequence[CollectedVariable]) -> None:
        with self._lock:
            self.reads.append((variables[0].time if variables else None, [v.address for v in variables]))
        source = self._values
        for v in variables:
            if callable(source):
                v.value = source(v.address, v.time or EPOCH)
            elif v.address in source:
                v.value = source[v.address]
            else:
                v.error = f"no value for address {v.address!r}"


class AsyncDataReader(DataReader):
    """An asynchronous reader (``read_batch_async``, awaited on the engine's loop) of fixed
    values, for tests and benchmarks: each read waits ``delay_s`` on the loop (``asyncio.sleep``;
    0 yields once, as a request's round trip would), then fills the batch. An address missing
    from the mapping reads as an error. ``threads`` records the thread of every call the engine
    makes (``open``, ``plan_changed``, ``read``, ``close``), ``reads`` the instants read."""

    def __init__(
        self,
        values: Mapping[str, Any],
        type: str = "async",  # noqa: A002 - the contract's name for a reader's type
        lane: str | None = None,
        delay_s: float = 0.0,
    ) -> None:
        self._values = values
        self._type = type
        self._lane = lane
        self.delay_s = delay_s
        self.reads: list[int] = []  # appended on the loop thread only
        self.threads: set[str] = set()
        self.opened = 0
        self.closed = 0
        self.aborted = 0

    @property
    def type(self) -> str:
        return self._type

    @property
    def lane(self) -> str | None:
        return self._lane

    def open(self) -> None:
        self.threads.add(threading.current_thread().name)
        self.opened += 1

    def plan_changed(self, variables: Sequence[VariableSpec]) -> None:
        self.threads.add(threading.current_thread().name)

    def close(self) -> None:
        self.threads.add(threading.current_thread().name)
        self.closed += 1

    def abort(self) -> None:
        self.aborted += 1

    async def read_batch_async(self, batch: ValueBatch) -> None:
        self.threads.add(threading.current_thread().name)
        await asyncio.sleep(self.delay_s)
        self.reads.append(batch.t_ms)
        source = self._values
        for i, spec in enumerate(batch.variables):
            if spec.address in source:
                batch.values[i] = source[spec.address]
            else:
                batch.errors[i] = f"no value for address {spec.address!r}"


class PushingDataReader(DataReader):
    """A reader whose source pushes (``pushes`` is True), driven by the test: ``push`` hands over
    new values as a subscription would, ``fail`` reports a lost source, ``keep_alive`` says "still
    here, nothing changed". Values are pushed for the variables the engine last asked for through
    ``plan_changed`` (recorded in ``plans``); an address nobody asked for is ignored, as a real
    subscription would never report it.

    In virtual time, push between ``advance`` calls: the engine samples the latest values at due
    instants (``report="every"``) and delivers changes as they come (``report="change"``).
    """

    def __init__(
        self,
        type: str = "pushing",  # noqa: A002 - the contract's name for a reader's type
        stale_after_ms: int | None = 10_000,
        lane: str | None = None,
    ) -> None:
        self._type = type
        self._stale_after_ms = stale_after_ms
        self._lane = lane
        self._emit: Emit | None = None
        self._lock = threading.Lock()
        self.serving: tuple[VariableSpec, ...] = ()
        self.plans: list[list[str]] = []
        self.opened = 0
        self.closed = 0

    @property
    def type(self) -> str:
        return self._type

    @property
    def pushes(self) -> bool:
        return True

    @property
    def lane(self) -> str | None:
        return self._lane

    @property
    def stale_after_ms(self) -> int | None:
        return self._stale_after_ms

    def open(self) -> None:
        self.opened += 1

    def close(self) -> None:
        self.closed += 1

    def start_pushing(self, emit: Emit) -> None:
        self._emit = emit

    def plan_changed(self, variables: Sequence[VariableSpec]) -> None:
        with self._lock:
            self.serving = tuple(variables)
            self.plans.append([v.address for v in variables])

    def _send(
        self,
        specs: list[VariableSpec],
        values: list[Any],
        errors: list[str | None],
        source_ns: list[int | None] | None,
        quality: list[str | None] | None,
    ) -> None:
        emit = self._emit
        if emit is None:
            raise RuntimeError("the engine has not started this reader pushing yet")
        emit(ValueBatch(0, specs, values, errors, source_ns=source_ns, quality=quality, reader=self._type))

    def push(
        self, values: Mapping[str, Any], source_ms: int | None = None, quality: str | None = None
    ) -> None:
        """Push new values by address, stamped ``source_ms`` (epoch ms) by the source."""
        with self._lock:
            specs = [s for s in self.serving if s.address in values]
        ns = None if source_ms is None else source_ms * 1_000_000
        self._send(
            specs,
            [values[s.address] for s in specs],
            [None] * len(specs),
            [ns] * len(specs),
            None if quality is None else [quality] * len(specs),
        )

    def fail(self, error: str) -> None:
        """The source is lost: every served variable becomes an error until pushed again."""
        with self._lock:
            specs = list(self.serving)
        self._send(specs, [None] * len(specs), [error] * len(specs), None, None)

    def keep_alive(self) -> None:
        """Nothing changed, the source is alive (an empty batch)."""
        self._send([], [], [], None, None)


class StuckDataWriter(DataWriter):
    """A fault-injecting writer: it blocks for ever in ``where`` (``"write"``, ``"flush"`` or
    ``"close"``), as a file on a hung network mount does, until the test sets ``release``;
    ``entered`` is set once it blocks. Elsewhere it behaves as a file: it acknowledges its
    batches when it flushes them. Use it to test that your pipeline's shutdown stays bounded.
    """

    acknowledges = True

    def __init__(self, where: str, name: str = "") -> None:
        if where not in ("write", "flush", "close"):
            raise ValueError(f"where must be 'write', 'flush' or 'close', got {where!r}")
        self.where = where
        self.label = name or f"stuck-in-{where}"
        self.release = threading.Event()
        self.entered = threading.Event()
        self.batches: list[ValueBatch] = []
        self.closed = False

    @property
    def name(self) -> str:
        return self.label

    def _block(self, where: str) -> None:
        if self.where == where:
            self.entered.set()
            self.release.wait()

    def write_batch(self, batch: ValueBatch) -> None:
        self._block("write")
        self.batches.append(batch)

    def flush(self) -> None:
        self._block("flush")
        done, self.batches = self.batches, []
        for batch in done:
            self.acknowledge(batch, len(batch))

    def close(self) -> None:
        self._block("close")
        self.closed = True


class RecordingListener(DataCollectionListener):
    """Records every lifecycle event as ``(event, context id or None)`` in ``events``, and every
    device event as ``(event, reader type)`` in ``devices``."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int | None]] = []
        self.devices: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def _record(self, event: str, context: DataCollectionContext | None = None) -> None:
        with self._lock:
            self.events.append((event, None if context is None else context.id))

    def before_start(self, collector: DataCollector, context: DataCollectionContext) -> None:
        self._record("before_start", context)

    def after_start(self, collector: DataCollector, context: DataCollectionContext) -> None:
        self._record("after_start", context)

    def before_pause(self, collector: DataCollector, context: DataCollectionContext) -> None:
        self._record("before_pause", context)

    def after_pause(self, collector: DataCollector, context: DataCollectionContext) -> None:
        self._record("after_pause", context)

    def before_resume(self, collector: DataCollector, context: DataCollectionContext) -> None:
        self._record("before_resume", context)

    def after_resume(self, collector: DataCollector, context: DataCollectionContext) -> None:
        self._record("after_resume", context)

    def before_stop(self, collector: DataCollector, context: DataCollectionContext) -> None:
        self._record("before_stop", context)

    def after_stop(self, collector: DataCollector, context: DataCollectionContext) -> None:
        self._record("after_stop", context)

    def before_close(self, collector: DataCollector) -> None:
        self._record("before_close")

    def after_close(self, collector: DataCollector) -> None:
        self._record("after_close")

    def device_down(self, collector: DataCollector, reader: str, error: str) -> None:
        with self._lock:
            self.devices.append(("device_down", reader))

    def device_up(self, collector: DataCollector, reader: str) -> None:
        with self._lock:
            self.devices.append(("device_up", reader))


class VirtualClock:
    """A virtual scheduler that speaks epoch milliseconds: the wall clock starts at ``start_ms``,
    nothing happens until you advance it."""

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self.scheduler = VirtualScheduler(instant(start_ms))

    @property
    def now_ms(self) -> int:
        return round((self.scheduler.now - EPOCH).total_seconds() * 1000)

    def advance_to_ms(self, t_ms: int) -> None:
        """Run every tick and timer due up to and including ``t_ms``."""
        self.scheduler.advance_to(instant(t_ms))

    def advance_ms(self, ms: int) -> None:
        self.advance_to_ms(self.now_ms + ms)

    def step_wall_ms(self, delta_ms: int) -> None:
        """Make the wall clock jump by ``delta_ms`` (an NTP step; negative: backwards) while the
        monotonic clock goes on; nothing runs until the next advance."""
        self.scheduler.step_wall_ms(delta_ms)


def virtual_collector(
    readers: Iterable[DataReader],
    writers: Iterable[DataWriter] = (),
    listeners: Iterable[DataCollectionListener] = (),
    interval_limit_policy: IntervalLimitPolicy = IntervalLimitPolicy.IGNORE,
    start_ms: int = 1_700_000_000_000,
) -> tuple[DataCollector, VirtualClock]:
    """A collector on a virtual clock: nothing happens until you advance the clock."""
    clock = VirtualClock(start_ms)
    collector = DataCollector(
        readers, writers, listeners, interval_limit_policy=interval_limit_policy, scheduler=clock.scheduler
    )
    return collector, clock


def collect(
    contexts: Iterable[DataCollectionContext],
    readers: Iterable[DataReader],
    duration_ms: int,
    start_ms: int = 1_700_000_000_000,
) -> list[CollectedVariable]:
    """Start the contexts at ``start_ms`` in virtual time, run ``duration_ms``, return every value."""
    writer = MemoryDataWriter()
    collector, clock = virtual_collector(readers, [writer], start_ms=start_ms)
    with collector:
        for context in contexts:
            collector.start(context)
        clock.advance_ms(duration_ms)
    return writer.values


def variables(addresses: Iterable[str], reader: str = "static", **fields: Any) -> list[Variable]:
    """Variables numbered from 1 for the given addresses (a shortcut for tests)."""
    return [Variable(id=n, address=a, reader=reader, **fields) for n, a in enumerate(addresses, 1)]
