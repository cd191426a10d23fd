"""What ``flowcollect run`` says and exits with when the outputs or the inputs fail.

Real processes against real failures: a server that refuses every request (401), a port where
nothing listens, a reader whose every value is an error, a writer whose destination cannot work.
The figures must be what the writers stored, the same in the text summary and ``--json``, and
the exit code and the last line must say what went wrong.
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import Running, flowcollect, write_pipeline
from tests.support.victoria import Factory, free_port, victoria_factory

__all__ = ["victoria_factory"]

pytestmark = pytest.mark.realtime

INFLUX = """\
from flowcollect import DataCollectionContext, Pipeline, Variable
from flowcollect.readers import RandomDataReader
from flowcollect.writers import CsvFileDataWriter, InfluxDBDataWriter

pipeline = Pipeline(
    name="outcomes",
    readers=[RandomDataReader()],
    writers=[
        CsvFileDataWriter("out.csv"),
        InfluxDBDataWriter("{url}", token="wrong", org="o", bucket="b", timeout_s=1.0),
    ],
    contexts=[
        DataCollectionContext(
            id=1,
            interval_ms=100,
            variables=[Variable(id=n, address=f"a{{n}}", reader="random") for n in range(1, 4)],
        )
    ],
)
"""


def check_figures(summary: dict[str, Any], text: str) -> None:
    """The top-level figures are the writers' sums, every value a writer was given is in exactly
    one of its figures, and the text summary (another run of the same pipeline) follows the
    same rules: its ``written`` is the sum of its writers' lines."""
    writers = summary["writers"]
    for figure in ("written", "failed", "dropped", "pending"):
        assert summary[figure] == sum(w[figure] for w in writers.values()), figure
    for w in writers.values():
        assert w["written"] + w["failed"] + w["dropped"] + w["pending"] == summary["delivered"]
    lines = dict(
        re.findall(r"^  writer (\S+): ([\d,]+) written, [\d,]+ failed, [\d,]+ dropped", text, re.MULTILINE)
    )
    assert set(lines) == set(writers)
    total = re.search(r"^  written: +([\d,]+)(?: \(writes[^)]*\))?$", text, re.MULTILINE)
    assert total is not None
    assert int(total.group(1).replace(",", "")) == sum(int(n.replace(",", "")) for n in lines.values())


def run_twice(path: Path, cwd: Path) -> tuple[dict[str, Any], str, int]:
    """The same pipeline run once with ``--json``, once as text: (summary, text, exit code).

    First without ``--no-preflight``: the writer's preflight finds the destination unusable and
    nothing starts. Then past the preflight (the server fails after a good start, say), to see
    what the run itself reports."""
    refused = flowcollect("run", str(path), "--duration", "1.5", cwd=cwd)
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: writer influxdb:b: "), refused.stderr
    assert refused.stdout == ""
    assert not (cwd / "out.csv").exists(), "collection started"
    options = ("--duration", "1.5", "--no-preflight")
    as_json = flowcollect("run", str(path), *options, "--json", cwd=cwd)
    as_text = flowcollect("run", str(path), *options, cwd=cwd)
    assert as_json.returncode == as_text.returncode
    assert "Traceback" not in as_json.stderr + as_text.stderr
    summary = json.loads(as_json.stdout)
    assert summary["exit_code"] == as_json.returncode
    return summary, as_text.stdout, as_text.returncode


@pytest.mark.slow
@pytest.mark.server
def test_a_server_refusing_every_request_is_not_called_written(
    tmp_path: Path, victoria_factory: Factory
) -> None:
    server = victoria_factory(args=["-httpAuth.username=u", "-httpAuth.password=p"], auth=("u", "p"))
    path = write_pipeline(tmp_path, INFLUX.format(url=server.url))
    summary, text, code = run_twice(path, tmp_path)
    influx = summary["writers"]["influxdb:b"]
    assert influx["written"] == 0, influx
    # Refused (or, by a sender that keeps what a 401 refused, given up at close): never written.
    assert influx["failed"] + influx["dropped"] + influx["pending"] == summary["delivered"] > 0, influx
    csv = summary["writers"]["csv:out.csv"]
    assert csv["written"] == summary["delivered"]
    # The CSV file took every value; the top-level figure is that, not twice it.
    assert summary["written"] == summary["delivered"]
    check_figures(summary, text)
    assert code == 3
    last = text.rstrip("\n").splitlines()[-1]
    assert last.startswith("result: FAILED: writer influxdb:b stored none of the"), last


@pytest.mark.slow
def test_a_refused_port_is_not_written_and_dropped_at_once(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, INFLUX.format(url=f"http://127.0.0.1:{free_port()}"))
    summary, text, code = run_twice(path, tmp_path)
    influx = summary["writers"]["influxdb:b"]
    # Nothing reached a server: none of it may be called written (the first design said both).
    assert influx["written"] == 0
    assert influx["dropped"] + influx["pending"] == summary["delivered"] > 0
    check_figures(summary, text)
    assert code == 3
    assert text.rstrip("\n").splitlines()[-1].startswith("result: FAILED: writer influxdb:b stored none")


STATIC = """\
from flowcollect import DataCollectionContext, Pipeline, Variable
from flowcollect.testing import StaticDataReader
from flowcollect.writers import CsvFileDataWriter

pipeline = Pipeline(
    name="errors",
    readers=[StaticDataReader({values})],  # a missing address reads as an error
    writers=[CsvFileDataWriter("{csv}")],
    contexts=[
        DataCollectionContext(
            id=1,
            interval_ms=100,
            duration_s={duration},
            variables=[Variable(id=1, address="x", reader="static")],
        )
    ],
)
"""


def test_a_run_whose_every_value_is_an_error_exits_4(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, STATIC.format(values="{}", csv="out.csv", duration=0.5))
    result = flowcollect("run", str(path), cwd=tmp_path)
    assert result.returncode == 4, result.stderr
    lines = result.stdout.rstrip("\n").splitlines()
    assert lines[0].startswith("pipeline errors: every context ended (context 1 reached its duration_s)")
    assert lines[-1].startswith("result: FAILED: every value read was an error"), lines[-1]
    assert result.stderr.rstrip("\n").splitlines()[-1].startswith("error: every value read was an error")


def test_a_good_run_whose_contexts_ended_exits_0_and_says_why(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, STATIC.format(values="{'x': 1.5}", csv="out.csv", duration=0.5))
    result = flowcollect("run", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.rstrip("\n").splitlines()
    assert lines[0].startswith("pipeline errors: every context ended (context 1 reached its duration_s)")
    assert lines[-1].startswith("result: OK, "), lines[-1]
    assert re.search(r"^  context 1: \d+ delivered, stopped, \d+ instants missed$", result.stdout, re.M)
    # Values expected (0.5 s at 100 ms: 5 instants of 1 variable) = delivered + missed.
    summary = json.loads(flowcollect("run", str(path), "--json", cwd=tmp_path).stdout)
    context = summary["context_states"]["1"]
    assert context["delivered"] + context["missed"] == 5, context
    assert summary["missed"] == context["missed"]


PREFLIGHT = """\
from pathlib import Path

from flowcollect import DataCollectionContext, Pipeline, PreflightError, Variable
from flowcollect.readers import RandomDataReader
from flowcollect.writers import CsvFileDataWriter, LogDataWriter


class Unusable(LogDataWriter):
    @property
    def name(self) -> str:
        return "unusable"

    def preflight(self) -> None:
        Path("preflight-called").touch()
        raise PreflightError("the destination is read-only")


pipeline = Pipeline(
    name="preflight",
    readers=[RandomDataReader()],
    writers=[CsvFileDataWriter("out.csv"), Unusable()],
    contexts=[
        DataCollectionContext(
            id=1, interval_ms=100, duration_s=0.5, variables=[Variable(id=1, address="x", reader="random")]
        )
    ],
)
"""


def test_a_writer_that_cannot_work_stops_run_and_check_before_anything_starts(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, PREFLIGHT)
    expected = "error: writer unusable: the destination is read-only"
    result = flowcollect("run", str(path), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [expected]
    assert (tmp_path / "preflight-called").exists()
    assert not (tmp_path / "out.csv").exists(), "collection started"
    checked = flowcollect("check", str(path), cwd=tmp_path)
    assert checked.returncode == 1
    assert checked.stderr.splitlines() == [expected]
    # --no-preflight: the run goes ahead (the writer's own failures are then its figures).
    (tmp_path / "preflight-called").unlink()
    result = flowcollect("run", str(path), "--no-preflight", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "preflight-called").exists()
    assert (tmp_path / "out.csv").exists()


def test_csv_to_a_full_disk_is_not_written(tmp_path: Path) -> None:
    path = write_pipeline(
        tmp_path,
        STATIC.format(values="{'x': 1.5}", csv="/dev/full", duration=0.5),
    )
    result = flowcollect("run", str(path), "--json", cwd=tmp_path)
    summary = json.loads(result.stdout)
    assert summary["written"] == 0, summary
    assert result.returncode == 3


LEFT_OUT = """\
from flowcollect import DataCollectionContext, Pipeline, Variable
from flowcollect.readers import RandomDataReader
from flowcollect.writers import CsvFileDataWriter

FAST = Variable(id=1, address="fast", reader="random", interval_ms=50)  # below the 100 ms limit
OK = Variable(id=2, address="ok", reader="random")

pipeline = Pipeline(
    name="limits",
    readers=[RandomDataReader()],
    writers=[CsvFileDataWriter("out.csv")],
    contexts=[
        DataCollectionContext(id=1, interval_ms=100, duration_s=0.5, variables={first}),
        DataCollectionContext(id=2, interval_ms=200, duration_s=0.5, variables={second}),
    ],
)
"""

LEFT_OUT_LINE = (
    "context 1, variable 1 (address 'fast'): not collected: interval_ms 50 is below the limit of 100 ms "
    "(interval_limit_policy=ignore)"
)


def test_a_variable_left_out_by_the_interval_limit_is_reported_once(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, LEFT_OUT.format(first="[FAST, OK]", second="[OK]"))
    checked = flowcollect("check", str(path), cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert checked.stderr.splitlines() == [f"warning: {LEFT_OUT_LINE}"]
    # Not "OK", and the variable shared by both contexts ("ok") counts once.
    assert checked.stdout == (
        "pipeline limits: 1 variable not collected, see the warnings "
        "(2 contexts, 2 variables, 1 reader, 1 writer)\n"
    )
    result = flowcollect("run", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("not collected") == 1, result.stderr


def test_a_run_that_would_collect_nothing_because_of_the_limit_does_not_start(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, LEFT_OUT.format(first="[FAST]", second="[FAST]"))
    for command in ("check", "run"):
        result = flowcollect(command, str(path), cwd=tmp_path)
        assert result.returncode == 1, result.stderr
        for context in (1, 2):
            line = f"error: context {context} would collect nothing: every variable is below its"
            assert line in result.stderr
        assert not (tmp_path / "out.csv").exists()


def test_one_context_below_its_limit_is_an_error_naming_it_the_interval_and_the_limit(tmp_path: Path) -> None:
    # Context 2 collects; context 1 would collect nothing at all: that used to be a warning, and
    # `run` ended "result: OK" while context 1 stored nothing.
    path = write_pipeline(tmp_path, LEFT_OUT.format(first="[FAST]", second="[OK]"))
    expected = (
        "error: context 1 would collect nothing: every variable is below its interval limit "
        "(variable 1: interval_ms 50 < 100 ms (context 1's min_interval_ms (not set: the default))); "
        "raise interval_ms, lower min_interval_ms, or use interval_limit_policy=use_limit"
    )
    for command in ("check", "run"):
        result = flowcollect(command, str(path), cwd=tmp_path)
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        assert expected in result.stderr.splitlines(), result.stderr
        assert "OK" not in result.stdout
    assert not (tmp_path / "out.csv").exists()
    # The reader's own limit is named when it is the larger one.
    slow = (
        LEFT_OUT.format(first="[FAST]", second="[OK]")
        .replace("RandomDataReader()", "RandomDataReader(min_interval_ms=200)")
        .replace("interval_ms=100, duration_s", "interval_ms=300, min_interval_ms=10, duration_s")
    )
    path = write_pipeline(tmp_path, slow)
    result = flowcollect("check", str(path), cwd=tmp_path)
    assert result.returncode == 1
    assert "(variable 1: interval_ms 50 < 200 ms (the min_interval_ms of reader 'random'))" in result.stderr
    assert not (tmp_path / "out.csv").exists()


def test_sigterm_exits_0_and_sigint_130_after_a_clean_stop(tmp_path: Path, running: list[Running]) -> None:
    path = write_pipeline(tmp_path, STATIC.format(values="{'x': 1.5}", csv="out.csv", duration=3600))
    for signum, expected in ((signal.SIGTERM, 0), (signal.SIGINT, 130)):
        proc = Running("run", str(path), cwd=tmp_path)
        running.append(proc)
        proc.wait_for(lambda err: "context 1 started" in err)
        proc.proc.send_signal(signum)
        code, out, err = proc.finish(timeout_s=10)
        assert code == expected, err
        assert out.rstrip("\n").splitlines()[-1].startswith("result: OK"), out


def test_the_summary_the_status_line_and_the_metrics_say_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prometheus_client.exposition import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from flowcollect.cli import _Status
    from flowcollect.metrics import registry_for
    from flowcollect.pipeline import load_pipeline

    path = write_pipeline(tmp_path, INFLUX.format(url=f"http://127.0.0.1:{free_port()}"))
    monkeypatch.chdir(tmp_path)  # the CSV file's relative path
    pipeline = load_pipeline(path)
    summary = pipeline.run(1.0, preflight=False)  # past the preflight, which refuses the port
    stats = summary.stats
    scraped: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(
        generate_latest(registry_for(lambda: stats, process=False)).decode()
    ):
        for sample in family.samples:
            if sample.name in ("flowcollect_writer_written_total", "flowcollect_writer_failed_total"):
                scraped[(sample.name, sample.labels["writer"])] = sample.value
            if sample.name == "flowcollect_writer_dropped_total":
                key = ("dropped", sample.labels["writer"])
                scraped[key] = scraped.get(key, 0.0) + sample.value
    status = _Status("outcomes").measure(stats)
    as_dict = summary.as_dict()
    for name, figures in summary.writers.items():
        assert scraped[("flowcollect_writer_written_total", name)] == figures.written
        assert scraped[("flowcollect_writer_failed_total", name)] == figures.failed
        assert scraped[("dropped", name)] == figures.dropped
        assert as_dict["writers"][name]["written"] == figures.written
    assert status["written"] == summary.written == as_dict["written"] == summary.delivered
    assert status["failed"] == summary.failed == as_dict["failed"]
    assert status["dropped"] == summary.dropped == as_dict["dropped"]
    assert summary.writers["influxdb:b"].written == 0


UNUSABLE = """\
from flowcollect import DataCollectionContext, Pipeline, Variable
from flowcollect.readers import RandomDataReader
from flowcollect.writers import {writer_class}

pipeline = Pipeline(
    name="unusable",
    readers=[RandomDataReader()],
    writers=[{writer}],
    contexts=[DataCollectionContext(id=1, variables=[Variable(id=1, address="x", reader="random")])],
)
"""


@pytest.mark.parametrize(
    ("writer_class", "writer"),
    [
        ("CsvFileDataWriter", 'CsvFileDataWriter("/proc/flowcollect/out.csv")'),
        ("CsvFileDataWriter", 'CsvFileDataWriter(".")'),
        (
            "InfluxDBDataWriter",
            'InfluxDBDataWriter("http://127.0.0.1:99999", token="t", org="o", bucket="b")',
        ),
        (
            "InfluxDBDataWriter",
            'InfluxDBDataWriter("http://127.0.0.1:{port}", token="t", org="o", bucket="b")',
        ),
    ],
    ids=["csv-under-proc", "csv-a-directory", "influx-port-99999", "influx-nothing-listens"],
)
def test_the_shipped_writers_refuse_a_destination_that_cannot_work(
    writer_class: str, writer: str, tmp_path: Path
) -> None:
    writer = writer.replace("{port}", str(free_port()))
    path = write_pipeline(tmp_path, UNUSABLE.format(writer_class=writer_class, writer=writer))
    for command in ("check", "run"):
        result = flowcollect(command, str(path), cwd=tmp_path)
        assert result.returncode == 1, (command, result.stderr)
        # Named by the writer's preflight, or earlier still by its own validation (a URL).
        first = result.stderr.splitlines()[0]
        assert first.startswith("error: writer ") or "InfluxDBDataWriter url:" in first, first
        assert "Traceback" not in result.stderr


def test_a_problem_outranks_the_signal_in_the_exit_code() -> None:
    from flowcollect import CollectorStats, ContextStats, ReaderStats, WriterStats
    from flowcollect.pipeline import RunSummary

    reader = ReaderStats("random", 10, 10, 0, 0, None, None, None, None, None, None, None, 100)
    good = WriterStats("csv", written=10, failed=0, queued=0, dropped=0, oldest_queued_s=0.0)
    refused = WriterStats("influx", written=0, failed=10, queued=0, dropped=0, oldest_queued_s=0.0)
    contexts = {1: ContextStats(1, "stopped", 10)}

    def summary(*writers: WriterStats) -> RunSummary:
        stats = CollectorStats({"random": reader}, {w.writer: w for w in writers}, contexts)
        return RunSummary("p", "stopped", 1.0, (1,), stats)

    assert summary(good).exit_code("SIGINT") == 130
    assert summary(good).exit_code("SIGTERM") == summary(good).exit_code(None) == 0
    assert summary(good, refused).exit_code("SIGINT") == 3
    assert summary(good, refused).written == 10
