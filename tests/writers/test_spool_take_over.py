"""A spooled writer replaced on its own spool folder while a context runs (what a reload does
when the InfluxDB writer behind a spool gets another URL or batch size): the new one opens the
folder once the old one has closed, sends what the old one left there, and every value is
counted once. Against a real VictoriaMetrics process, which keeps every sample it is sent (no
deduplication), so an instant sent twice shows."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import pytest

from flowcollect import DataCollectionContext, DataCollector, Variable
from flowcollect.testing import StaticDataReader
from flowcollect.writers import InfluxDBDataWriter, SpooledWriter
from tests.support.victoria import Factory, sample_count
from tests.support.waiting import wait_until

pytestmark = pytest.mark.realtime

INTERVAL_MS = 20


def spooled(url: str, folder: Path, batch_size: int) -> SpooledWriter:
    inner = InfluxDBDataWriter(
        url,
        token="t",
        org="plant",
        bucket="line1",
        batch_size=batch_size,
        flush_interval_ms=100,
        timeout_s=1,  # its close's flush: within the collector's close deadline, a server down
    )
    # A short close: the old spool gives up draining soon, leaving its backlog to the new one.
    return SpooledWriter(inner, folder, max_bytes=1 << 24, close_timeout_s=0.3)


def test_a_spooled_writer_replaced_on_its_folder_sends_what_the_old_one_left_each_value_counted_once(
    tmp_path: Path, victoria_factory: Factory, no_leftover_threads: None
) -> None:
    down = victoria_factory(start=False)  # the old writer's URL: nothing listens there
    server = victoria_factory()
    folder = tmp_path / "spool"
    old = spooled(down.url, folder, batch_size=5000)
    context = DataCollectionContext(
        id=1,
        interval_ms=INTERVAL_MS,
        min_interval_ms=10,
        duration_s=None,
        variables=[Variable(id=1, address="a", reader="static", name="level")],
    )
    with DataCollector([StaticDataReader({"a": 1.0})], [old], close_timeout_s=10) as collector:
        collector.start(context)
        # The destination is down: the old spool holds a backlog it cannot send.
        wait_until(lambda: old.stats()["spool_values"] >= 15, timeout_s=10)
        new = spooled(server.url, folder, batch_size=50)  # the URL and batch size changed
        assert collector.replace_writers([new]) == [old.name]
        time.sleep(0.5)  # the new one collects on, after the old one's backlog
        collector.stop(1)
        name = new.name
        wait_until(lambda: collector.stats().writers[name].in_flight == 0, timeout_s=15)
        figures = collector.stats().writers[name]
        missed = collector.stats().contexts[1].missed_instants
        delivered = collector.stats().contexts[1].delivered
    assert old.stats()["spool_written"] == 0  # the old one sent nothing: all went through the new

    series = server.wait_for_samples('{__name__="flowcollect_value"}', count=delivered, timeout_s=15)
    times = sorted(t for s in series for t in s.timestamps_ms)
    assert len(times) == len(set(times)), "an instant sent twice"
    assert sample_count(series) == delivered
    # From the first instant to the last, each once (or counted missed on a loaded machine).
    assert all(b - a >= INTERVAL_MS for a, b in itertools.pairwise(times))
    assert (times[-1] - times[0]) // INTERVAL_MS + 1 == len(times) + missed, (len(times), missed)
    # Every value counted once: written, by the old writer's figures or the new one's.
    assert (figures.received, figures.written) == (delivered, delivered), figures
    assert (figures.failed, figures.dropped, figures.queued, figures.in_flight) == (0, 0, 0, 0), figures
