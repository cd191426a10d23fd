"""Prometheus metrics: the exposition of a stats snapshot, and a real scrape of `run --metrics-port`."""

from __future__ import annotations

import re
import signal
import socket
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from flowcollect import DataCollectionContext, Variable
from flowcollect.metrics import registry_for, serve_metrics
from flowcollect.testing import MemoryDataWriter, StaticDataReader, virtual_collector
from tests.cli.conftest import Running, flowcollect, write_pipeline

T0 = 1_699_999_200_000


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_the_snapshot_is_exposed_with_labels_and_seconds() -> None:
    reader = StaticDataReader({"a": 1.0, "b": 2.0})
    writer = MemoryDataWriter()
    collector, clock = virtual_collector([reader], [writer], start_ms=T0)
    variables = [Variable(id=1, address="a", reader="static"), Variable(id=2, address="b", reader="static")]
    collector.start(DataCollectionContext(id=1, interval_ms=100, min_interval_ms=10, variables=variables))
    collector.start(DataCollectionContext(id=2, interval_ms=200, min_interval_ms=10, variables=variables[:1]))
    clock.advance_ms(1000)
    collector.pause(2)
    got = samples(generate_latest(registry_for(collector, process=False)).decode())
    collector.close()

    assert got[("flowcollect_reader_ticks_total", (("reader", "static"),))] == 10
    assert got[("flowcollect_reader_values_total", (("reader", "static"),))] == 20
    assert got[("flowcollect_reader_errors_total", (("reader", "static"),))] == 0
    assert got[("flowcollect_reader_overruns_total", (("reader", "static"),))] == 0
    assert got[("flowcollect_reader_period_seconds", (("reader", "static"),))] == 0.1
    assert ("flowcollect_reader_lateness_seconds", (("quantile", "0.99"), ("reader", "static"))) in got
    assert ("flowcollect_reader_tick_duration_seconds", (("quantile", "0.5"), ("reader", "static"))) in got
    assert ("flowcollect_reader_delivery_seconds", (("quantile", "0.99"), ("reader", "static"))) in got
    assert got[("flowcollect_writer_written_total", (("writer", "MemoryDataWriter"),))] == 25
    assert (
        got[("flowcollect_writer_dropped_total", (("stage", "queue"), ("writer", "MemoryDataWriter")))] == 0
    )
    assert got[("flowcollect_writer_queued_values", (("writer", "MemoryDataWriter"),))] == 0
    assert got[("flowcollect_writer_stat", (("stat", "stored"), ("writer", "MemoryDataWriter")))] == 25
    assert got[("flowcollect_context_delivered_total", (("context", "1"),))] == 20
    assert got[("flowcollect_context_delivered_total", (("context", "2"),))] == 5
    assert got[("flowcollect_context_step_errors_total", (("context", "2"),))] == 0
    assert got[("flowcollect_context_state", (("context", "2"), ("state", "paused")))] == 1
    assert got[("flowcollect_context_state", (("context", "2"), ("state", "running")))] == 0


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - a loopback http URL
        assert response.status == 200
        return str(response.read().decode())


def test_a_server_serves_nothing_until_there_is_a_collector() -> None:
    with serve_metrics(lambda: None, 0) as server:
        text = scrape(server.url)
    assert "flowcollect_" not in text
    assert "process_cpu_seconds_total" in text or "python_info" in text


PIPELINE = """\
from flowcollect import DataCollectionContext, Pipeline, Variable
from flowcollect.readers import RandomDataReader
from flowcollect.writers import MemoryDataWriter

pipeline = Pipeline(
    name="metrics",
    readers=[RandomDataReader()],
    writers=[MemoryDataWriter()],
    contexts=[
        DataCollectionContext(
            id=7, interval_ms=100, variables=[Variable(id=1, address="x", reader="random")]
        )
    ],
)
"""


@pytest.mark.realtime
def test_run_serves_metrics_over_http(tmp_path: Path, running: list[Running]) -> None:
    path = write_pipeline(tmp_path, PIPELINE)
    proc = Running("run", str(path), "--metrics-port", "0", "--status-every", "0", cwd=tmp_path)
    running.append(proc)
    found = proc.wait_for(lambda err: re.search(r"metrics at (http://127\.0\.0\.1:\d+/metrics)", err))
    assert isinstance(found, re.Match)
    url = found.group(1)
    deadline = time.monotonic() + 10
    values = 0.0
    while time.monotonic() < deadline:
        got = samples(scrape(url))
        values = got.get(("flowcollect_reader_values_total", (("reader", "random"),)), 0.0)
        if values >= 3:
            break
        time.sleep(0.1)
    assert values >= 3
    assert got[("flowcollect_context_state", (("context", "7"), ("state", "running")))] == 1
    assert ("flowcollect_writer_written_total", (("writer", "MemoryDataWriter"),)) in got
    assert any(name == "process_resident_memory_bytes" for name, _ in got)
    proc.proc.send_signal(signal.SIGINT)
    code, _, err = proc.finish(timeout_s=5)
    assert code == 130, err  # 128 + SIGINT, as shells expect after Ctrl-C
    # The endpoint is gone with the run.
    with pytest.raises(OSError):
        scrape(url)


def test_a_metrics_port_in_use_fails_before_anything_starts(tmp_path: Path) -> None:
    path = write_pipeline(
        tmp_path,
        PIPELINE.replace("MemoryDataWriter()", "CsvFileDataWriter('out.csv')").replace(
            "import MemoryDataWriter", "import CsvFileDataWriter"
        ),
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = flowcollect("run", str(path), "--metrics-port", str(port), "-d", "1", cwd=tmp_path)
    assert result.returncode == 1
    # The line names the option at fault, in words, and nothing else is printed.
    assert result.stderr.splitlines() == [
        f"error: --metrics-port {port}: 127.0.0.1:{port} is already in use "
        "(another flowcollect? pick another port, or 0 for any free one)"
    ]
    assert not (tmp_path / "out.csv").exists()
