"""The collector's counters in Prometheus format.

Nothing is counted for Prometheus: at each scrape, ``StatsCollector`` takes one
``DataCollector.stats()`` snapshot (the counters the engine keeps anyway) and turns it into
metric families. A scrape costs one snapshot; collecting costs nothing more with metrics on.

Names are prefixed ``flowcollect_``; times are in seconds, as Prometheus prefers. Labels:
``reader`` (reader type), ``writer`` (writer name), ``context`` (context id). See
``docs/metrics.md`` for the list.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeAlias

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from flowcollect.collector import DataCollector
from flowcollect.stats import CollectorStats

__all__ = ["MetricsServer", "StatsCollector", "StatsSource", "registry_for", "serve_metrics"]

_log = logging.getLogger("flowcollect.metrics")

StatsSource: TypeAlias = DataCollector | Callable[[], CollectorStats | None]
"""A collector, or a function giving a snapshot (None: nothing to report yet)."""

STATES = ("running", "paused", "stopped")
_NAME = re.compile(r"[^a-zA-Z0-9_]")


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000.0


class StatsCollector:
    """A prometheus-client custom collector over a stats source, read at scrape time."""

    def __init__(self, source: StatsSource) -> None:
        self._source = source

    def snapshot(self) -> CollectorStats | None:
        source = self._source
        if isinstance(source, DataCollector):
            return source.stats()
        return source()

    def describe(self) -> list[Metric]:
        # Registration would otherwise call collect() to learn the names; the families vary
        # with the collector's readers, so there is nothing fixed to declare.
        return []

    def collect(self) -> Iterator[Metric]:
        stats = self.snapshot()
        if stats is None:
            return
        yield from _reader_metrics(stats)
        yield from _writer_metrics(stats)
        yield from _context_metrics(stats)


def _reader_metrics(stats: CollectorStats) -> Iterator[Metric]:
    label = ["reader"]
    ticks = CounterMetricFamily(
        "flowcollect_reader_ticks", "Ticks at which the reader read something", labels=label
    )
    values = CounterMetricFamily(
        "flowcollect_reader_values",
        "Distinct values read (a value shared by contexts counts once)",
        labels=label,
    )
    errors = CounterMetricFamily("flowcollect_reader_errors", "Values read with an error", labels=label)
    overruns = CounterMetricFamily(
        "flowcollect_reader_overruns",
        "Due ticks skipped because the previous read was still running",
        labels=label,
    )
    requests = CounterMetricFamily(
        "flowcollect_reader_requests", "Requests sent to the device (readers that count them)", labels=label
    )
    period = GaugeMetricFamily(
        "flowcollect_reader_period_seconds", "The reader's tick: the GCD of its intervals", labels=label
    )
    lateness = GaugeMetricFamily(
        "flowcollect_reader_lateness_seconds",
        "How late reads start after their instant, over recent ticks",
        labels=["reader", "quantile"],
    )
    delivery = GaugeMetricFamily(
        "flowcollect_reader_delivery_seconds",
        "From the instant to its values handed to the writers (lateness + read + hand-over), recent ticks",
        labels=["reader", "quantile"],
    )
    read_time = GaugeMetricFamily(
        "flowcollect_reader_read_duration_seconds",
        "How long one tick's read takes, over recent ticks",
        labels=["reader", "quantile"],
    )
    tick_time = GaugeMetricFamily(
        "flowcollect_reader_tick_duration_seconds",
        "The lane's whole time on a tick (read, split, hand-over), over recent ticks",
        labels=["reader", "quantile"],
    )
    extra = GaugeMetricFamily(
        "flowcollect_reader_stat", "The reader's own counters, by name", labels=["reader", "stat"]
    )
    for name, r in stats.readers.items():
        ticks.add_metric([name], r.ticks)
        values.add_metric([name], r.values)
        errors.add_metric([name], r.errors)
        overruns.add_metric([name], r.overruns)
        if "requests" in r.extra:
            requests.add_metric([name], r.extra["requests"])
        if r.period_ms is not None:
            period.add_metric([name], r.period_ms / 1000.0)
        for quantile, ms in (
            ("0.5", r.lateness_ms_p50),
            ("0.99", r.lateness_ms_p99),
            ("1", r.lateness_ms_max),
        ):
            seconds = _seconds(ms)
            if seconds is not None:
                lateness.add_metric([name, quantile], seconds)
        for family, p50, p99 in (
            (read_time, r.read_ms_p50, r.read_ms_p99),
            (tick_time, r.tick_ms_p50, r.tick_ms_p99),
            (delivery, r.delivery_ms_p50, r.delivery_ms_p99),
        ):
            for quantile, ms in (("0.5", p50), ("0.99", p99)):
                seconds = _seconds(ms)
                if seconds is not None:
                    family.add_metric([name, quantile], seconds)
        for key, value in r.extra.items():
            extra.add_metric([name, _NAME.sub("_", key)], float(value))
    yield from (
        ticks,
        values,
        errors,
        overruns,
        requests,
        period,
        lateness,
        delivery,
        read_time,
        tick_time,
        extra,
    )


def _writer_metrics(stats: CollectorStats) -> Iterator[Metric]:
    label = ["writer"]
    written = CounterMetricFamily(
        "flowcollect_writer_written", "Values the writer said are stored (acknowledged)", labels=label
    )
    failed = CounterMetricFamily(
        "flowcollect_writer_failed",
        "Values refused: in write calls that raised, or reported failed",
        labels=label,
    )
    dropped = CounterMetricFamily(
        "flowcollect_writer_dropped",
        "Values dropped: stage=queue by the engine's full queue, stage=writer by the writer itself, "
        "stage=close not stored by the close deadline",
        labels=["writer", "stage"],
    )
    queued = GaugeMetricFamily(
        "flowcollect_writer_queued_values",
        "Values waiting in the engine's queue for the writer",
        labels=label,
    )
    oldest = GaugeMetricFamily(
        "flowcollect_writer_oldest_queued_seconds", "Age of the oldest value in that queue", labels=label
    )
    buffered = GaugeMetricFamily(
        "flowcollect_writer_buffered_values",
        "Values the writer holds, not yet at the destination (writers that buffer)",
        labels=label,
    )
    oldest_buffered = GaugeMetricFamily(
        "flowcollect_writer_oldest_buffered_seconds",
        "Age of the oldest value the writer holds (writers that buffer)",
        labels=label,
    )
    extra = GaugeMetricFamily(
        "flowcollect_writer_stat", "The writer's own counters, by name", labels=["writer", "stat"]
    )
    for name, w in stats.writers.items():
        written.add_metric([name], w.written)
        failed.add_metric([name], w.failed)
        # The sink's figures by stage: the very numbers of the summary (writers report their own
        # drops in receipts).
        dropped.add_metric([name, "queue"], w.dropped_queue)
        dropped.add_metric([name, "writer"], w.dropped_writer)
        dropped.add_metric([name, "close"], w.dropped_close)
        queued.add_metric([name], w.queued)
        oldest.add_metric([name], w.oldest_queued_s)
        if "buffered" in w.extra:
            buffered.add_metric([name], w.extra["buffered"])
        if "oldest_buffered_age_s" in w.extra:
            oldest_buffered.add_metric([name], w.extra["oldest_buffered_age_s"])
        for key, value in w.extra.items():
            extra.add_metric([name, _NAME.sub("_", key)], float(value))
    yield from (written, failed, dropped, queued, oldest, buffered, oldest_buffered, extra)


def _context_metrics(stats: CollectorStats) -> Iterator[Metric]:
    delivered = CounterMetricFamily(
        "flowcollect_context_delivered", "Values handed to the writers for the context", labels=["context"]
    )
    state = GaugeMetricFamily(
        "flowcollect_context_state", "1 for the context's current state", labels=["context", "state"]
    )
    missed = CounterMetricFamily(
        "flowcollect_context_missed_instants",
        "Due instants of the context its readers could not serve (a read still running)",
        labels=["context"],
    )
    step_errors = CounterMetricFamily(
        "flowcollect_context_step_errors",
        "Batches of the context lost to an exception inside a step of its branch (logged)",
        labels=["context"],
    )
    for cid, c in stats.contexts.items():
        delivered.add_metric([str(cid)], c.delivered)
        missed.add_metric([str(cid)], c.missed_instants)
        step_errors.add_metric([str(cid)], c.step_errors)
        for name in STATES:
            state.add_metric([str(cid), name], 1.0 if c.state == name else 0.0)
    yield from (delivered, state, missed, step_errors)


def registry_for(source: StatsSource, process: bool = True) -> CollectorRegistry:
    """A registry of its own (not prometheus-client's global one) with the collector's metrics,
    and with ``process`` the usual process, Python and GC metrics (memory, CPU, collections)."""
    registry = CollectorRegistry()
    registry.register(StatsCollector(source))
    if process:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    return registry


class MetricsServer:
    """An HTTP endpoint serving ``/metrics`` on its own thread; ``close()`` ends it."""

    def __init__(self, source: StatsSource, port: int, host: str = "127.0.0.1") -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"metrics port must be 0..65535, got {port}")
        self.registry = registry_for(source)
        server: Any
        thread: threading.Thread
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        self._thread = thread
        self.host = host
        self.port: int = server.server_port
        """The bound port (the one chosen by the system when 0 was asked)."""
        self._closed = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def serve_metrics(source: StatsSource, port: int, host: str = "127.0.0.1") -> MetricsServer:
    """Serve the source's stats at ``http://host:port/metrics`` (port 0: a free one)."""
    server = MetricsServer(source, port, host)
    _log.info("metrics at %s", server.url)
    return server
