"""The observable graph: reader operators, per-context filters, gates and writer sinks.

The way of one value::

    ticks(reader schedule)            one source per reader, absolute deadlines, own thread
      -> read_due(reader)             read each due (address, type) once; fan out per context
      -> merge of all readers         (the collector's hub)
      -> for_context(id, since, until) this context's values at this instant, if it is due
      -> gate(is_open)                closed while the context is paused
      -> WriterSink.put (``_sink``)  one bounded queue and thread per writer

The objects that flow between readers and sinks are batches: one ``TickBatch`` per reader
tick, one list of ``CollectedVariable`` per context per tick.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from reactivex import Observable, abc
from reactivex import operators as ops

from flowcollect._clock import ScheduleRef, instant, now_ms
from flowcollect._logs import RateLimitedLog
from flowcollect._schedule import Phase
from flowcollect.readers.base import DataReader
from flowcollect.stats import ReaderCounters
from flowcollect.values import CollectedVariable

__all__ = ["TickBatch", "for_context", "gate", "read_due"]

Operator = Callable[[Observable[Any]], Observable[Any]]


@dataclass(frozen=True, slots=True)
class TickBatch:
    """What one reader read at one instant, already split per receiving context."""

    reader: str
    t_ms: int
    by_context: dict[int, list[CollectedVariable]]


def _build_reads(phase: Phase, reader: str, t_ms: int) -> list[CollectedVariable]:
    when = instant(t_ms)
    cv = CollectedVariable
    return [
        cv(vid, cid, address, vt, reader, ims, None, when, None) for vid, cid, address, vt, ims in phase.reads
    ]


def _deliver(phase: Phase, reads: list[CollectedVariable]) -> dict[int, list[CollectedVariable]]:
    # Built after the read, not before: the read starts right at the tick.
    out: dict[int, list[CollectedVariable]] = {}
    cv = CollectedVariable
    for d in phase.deliveries:
        if d.whole:
            out[d.context_id] = reads
            continue
        values = []
        cid = d.context_id
        for n, vid, ims, own in d.items:
            src = reads[n]
            if own:
                values.append(src)
            else:
                values.append(
                    cv(vid, cid, src.address, src.value_type, src.reader, ims, src.value, src.time, src.error)
                )
        out[cid] = values
    return out


def read_due(
    reader: DataReader,
    ref: ScheduleRef,
    scheduler: abc.SchedulerBase,
    counters: ReaderCounters,
    errors: RateLimitedLog,
) -> Operator:
    """Turn ticks into ``TickBatch``es: read what ``ref``'s schedule has due, once per (address, type).

    A reader exception marks every value of the tick with its text and is logged at most once a
    minute per distinct text; it never ends the stream.
    """
    rtype = reader.type
    opened = False

    def read_tick(t_ms: int) -> TickBatch | None:
        nonlocal opened
        schedule = ref.current
        phase = schedule.phase_at(t_ms) if schedule is not None else None
        if phase is None:
            return None
        started = now_ms(scheduler)
        counters.lateness.append(started - t_ms)
        if not opened:
            opened = True
            try:
                reader.open()
            except Exception as exc:  # the reader retries in read(); say why once
                errors.error((rtype, "open", str(exc)), "reader %r failed to open: %s", rtype, exc)
        reads = _build_reads(phase, rtype, t_ms)
        try:
            reader.read(reads)
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}"
            for v in reads:
                v.value, v.error = None, text
            errors.error((rtype, text), "reader %r failed at %s: %s", rtype, instant(t_ms).isoformat(), text)
        counters.read_ms.append(now_ms(scheduler) - started)
        counters.ticks += 1
        counters.values += len(reads)
        counters.errors += sum(v.error is not None for v in reads)
        return TickBatch(rtype, t_ms, _deliver(phase, reads))

    def guarded(t_ms: int) -> TickBatch | None:
        # An error escaping here would end the merged stream for every reader: log it instead.
        try:
            return read_tick(t_ms)
        except Exception as exc:
            errors.error((rtype, "internal", str(exc)), "reader %r: tick %s failed: %r", rtype, t_ms, exc)
            return None

    def _read_due(source: Observable[int]) -> Observable[TickBatch]:
        batches: Observable[TickBatch | None] = source.pipe(ops.map(guarded))
        return batches.pipe(ops.filter(lambda batch: batch is not None))  # type: ignore[arg-type]

    return _read_due


def for_context(
    context_id: int, readers: frozenset[str], since_ms: Callable[[], int], until_ms: Callable[[], int]
) -> Operator:
    """This context's values from each tick of its ``readers`` that has some, strictly after
    ``since_ms()`` (its start, then its last resume) and before ``until_ms()`` (its end; a stop
    brings it forward).

    The bounds matter when a tick is late: a tick due at or before the start (or resume) that
    fires after the context's plan was applied would otherwise carry its variables; and a
    stopped run's branch, kept for its reads in flight, must not take a new run's instants.
    """

    def due(batch: TickBatch) -> bool:
        return (
            since_ms() < batch.t_ms < until_ms()
            and context_id in batch.by_context
            and batch.reader in readers
        )

    def values(batch: TickBatch) -> list[CollectedVariable]:
        return batch.by_context[context_id]

    def _for_context(source: Observable[TickBatch]) -> Observable[list[CollectedVariable]]:
        return source.pipe(ops.filter(due), ops.map(values))

    return _for_context


def gate(is_open: Callable[[], bool]) -> Operator:
    """Let values through only while ``is_open()``: the pause switch of a context."""
    return ops.filter(lambda _values: is_open())
