"""The examples in docs/ run, and the pages show them as they are in docs/examples/."""

from __future__ import annotations

import importlib.util
import os
import re
import runpy
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from flowcollect import DataCollectionContext, Variable
from flowcollect.testing import MemoryDataWriter, StaticDataReader, collect, virtual_collector

DOCS = Path(__file__).resolve().parents[2] / "docs"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"docs_example_{name}", DOCS / "examples" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["file_reader", "jsonl_writer"])
def test_the_plugins_page_shows_the_example_files_verbatim(name: str) -> None:
    page = (DOCS / "plugins.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.DOTALL)
    source = (DOCS / "examples" / f"{name}.py").read_text(encoding="utf-8")
    assert source in blocks


def test_key_value_file_reader(tmp_path: Path) -> None:
    reader_module = load("file_reader")
    path = tmp_path / "plc.txt"
    path.write_text("temp=21.5\nrun=on\ncount=x\n", encoding="utf-8")
    reader = reader_module.KeyValueFileReader(path)
    variables = [
        Variable(id=1, address="temp", reader="kvfile"),
        Variable(id=2, address="run", reader="kvfile", value_type="bool"),
        Variable(id=3, address="count", reader="kvfile", value_type="int"),
        Variable(id=4, address="missing", reader="kvfile"),
    ]
    values = collect(
        [DataCollectionContext(id=1, variables=variables)], [reader], duration_ms=1000, start_ms=0
    )
    assert [(v.value, v.error) for v in values] == [
        (21.5, None),
        (True, None),
        (None, "not a int: 'x'"),
        (None, "no such key"),
    ]
    path.unlink()
    values = collect(
        [DataCollectionContext(id=1, variables=variables[:1])], [reader], duration_ms=1000, start_ms=0
    )
    assert values[0].error is not None and "cannot read plc.txt" in values[0].error


def test_jsonl_writer(tmp_path: Path) -> None:
    writer_module = load("jsonl_writer")
    writer = writer_module.JsonLinesWriter(tmp_path)
    memory = MemoryDataWriter()
    collector, clock = virtual_collector(
        [StaticDataReader({"a": 1.5})], [writer, memory], start_ms=86_400_000 - 1500
    )
    with collector:
        collector.start(DataCollectionContext(id=1, variables=[Variable(id=1, address="a", reader="static")]))
        clock.advance_ms(2000)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["1970-01-01.jsonl", "1970-01-02.jsonl"]
    lines = (tmp_path / "1970-01-02.jsonl").read_text(encoding="utf-8").splitlines()
    assert lines == [
        '{"time": "1970-01-02T00:00:00+00:00", "context": 1, "variable": 1, "value": 1.5, "error": null}'
    ]
    assert len(memory.values) == 2


def test_the_testing_page_example_runs(tmp_path: Path) -> None:
    page = (DOCS / "testing.md").read_text(encoding="utf-8")
    (block,) = re.findall(r"```python\n(.*?)```", page, flags=re.DOTALL)
    script = tmp_path / "example.py"
    script.write_text(block, encoding="utf-8")
    runpy.run_path(str(script))  # its own asserts are the test


# -- every example in README.md and docs/ runs as printed ---------------------------------------

REPO = DOCS.parent
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", flags=re.DOTALL | re.MULTILINE)


def python_blocks() -> list[tuple[str, str]]:
    """(``page:line``, code) of every ```python block of README.md and docs/*.md."""
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            if match.group(1) == "python":
                line = text.count("\n", 0, match.start()) + 1
                found.append((f"{page.relative_to(REPO)}:{line}", match.group(2)))
    return found


def first_line(code: str) -> str:
    return code.strip().splitlines()[0]


def key(where: str, code: str) -> tuple[str, str]:
    """A block's name in FRAGMENTS and CHECKS: its page and first line, with `` #2``, `` #3``...
    for a later block of the page that starts with the same line."""
    page = where.rsplit(":", 1)[0]
    line = int(where.rsplit(":", 1)[1])
    same = [
        w for w, c in python_blocks() if w.rsplit(":", 1)[0] == page and first_line(c) == first_line(code)
    ]
    n = [int(w.rsplit(":", 1)[1]) for w in same].index(line) + 1
    return page, first_line(code) + ("" if n == 1 else f" #{n}")


# Blocks that are not programs: a piece of a larger one (names defined elsewhere, ``...``), or
# an example file shown verbatim and run by its own test above. Keyed by page and first line,
# so a new block on any page is run unless it is added here with its reason.
FRAGMENTS = {
    ("docs/opcua.md", "from flowcollect.readers.opcua import discover"): (
        "needs an OPC UA server at the address shown (tests/readers/opcua/test_browse.py runs discover)"
    ),
    ("docs/tags.md", "from flowcollect.tags import DeviceProfile, read_csv"): (
        "reads the tag lists the page describes (tests/tags/ reads such files)"
    ),
    ("docs/tags.md", "from flowcollect import DataCollectionContext, Pipeline"): (
        "reads pump.csv and needs the eight pumps at the addresses shown (tests/tags/test_profiles.py)"
    ),
    ("docs/metrics.md", "stats = collector.stats()"): "uses a collector built elsewhere",
    ("docs/metrics.md", "from flowcollect.metrics import serve_metrics, registry_for"): (
        "`readers`, `writers` and `...` stand for the reader's own"
    ),
    ("docs/modbus.md", "from flowcollect.simulator import Simulator"): (
        "`ModbusDataReader` is imported in the block above, and `...` stands for the reader's code"
    ),
    ("docs/modbus.md", "plc = ModbusDataReader("): (
        "the certificate files are the plant's own (a missing one is a ConfigError); "
        "tests/readers/modbus/test_modbus_tls.py reads with these settings from a TLS simulator"
    ),
    ("docs/scaling.md", "from flowcollect.group import GroupOptions, run_in_group"): (
        "`pipeline` is one loaded elsewhere, and it needs an etcd cluster at the address shown"
    ),
    ("docs/influxdb.md", "from flowcollect.writers.sender import BufferedSender, Outcome, Status"): (
        "`...` stands for a transport's own code"
    ),
    ("docs/influxdb.md", "from flowcollect import secret_from_env"): (
        "needs certificate files at the paths shown (tests/writers/test_influx_tls.py does it)"
    ),
    ("docs/scaling.md", "from flowcollect import secret_from_env"): (
        "`lanes` and `on_assignment` are the caller's, and it needs certificates and an etcd"
    ),
    (
        "docs/plugins.md",
        '"""A reader of `name=value` lines from a text file another program keeps up to date."""',
    ): ("docs/examples/file_reader.py, run by test_key_value_file_reader"),
    ("docs/plugins.md", '"""A writer of JSON lines: one object per value, one file per day."""'): (
        "docs/examples/jsonl_writer.py, run by test_jsonl_writer"
    ),
    (
        "docs/plugins.md",
        '"""An asynchronous reader of a (hypothetical) line protocol over TCP: ``GET <address>``."""',
    ): ("run against a TCP server by tests/engine/test_event_loop.py::test_the_async_reader_example_reads"),
    ("docs/plugins.md", "from flowcollect import DataCollectionContext, DataCollector, Variable"): (
        "uses the two example classes defined in the blocks above"
    ),
    ("docs/testing.md", "from flowcollect import DataCollectionContext, Variable"): (
        "run by test_the_testing_page_example_runs"
    ),
}


def fragment(where: str, code: str) -> str | None:
    return FRAGMENTS.get(key(where, code))


def run_python(
    code: str, cwd: Path, extra_env: dict[str, str] | None = None, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    script = cwd / "example.py"
    script.write_text(code, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFLUX_")} | (extra_env or {})
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def workspace(tmp_path: Path) -> Path:
    """A folder like a fresh clone's: the shipped pipelines, and ``.venv/bin`` where it is."""
    shutil.copytree(REPO / "pipelines", tmp_path / "pipelines", ignore=shutil.ignore_patterns("out"))
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "bin").symlink_to(Path(sys.executable).parent)
    return tmp_path


def check_readme(where: str, code: str, cwd: Path, result: subprocess.CompletedProcess[str]) -> None:
    # The verdict the page's comment promises, as printed.
    promised = re.search(r"^print\(summary\.verdict\(\)\)  # (.+)$", code, flags=re.MULTILINE)
    assert promised is not None, code
    assert result.stdout == promised.group(1) + "\n", result.stderr
    rows = (cwd / "out" / "values.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 1 + 10  # the header, then every value stored


def check_library(where: str, code: str, cwd: Path, result: subprocess.CompletedProcess[str]) -> None:
    # "~15 values": 2 s at 100 ms, less the 0.5 s paused (the switches fall between instants).
    count = int(result.stdout.split()[-1])
    assert 13 <= count <= 17, result.stdout


def check_from_python(where: str, code: str, cwd: Path, result: subprocess.CompletedProcess[str]) -> None:
    lines = result.stdout.splitlines()
    assert lines[0].startswith("pipeline demo: ran for its duration after "), result.stdout
    assert lines[-1].startswith("result: OK, "), result.stdout
    assert (cwd / "out" / "demo.csv").exists()


def check_pipeline_file(where: str, code: str, cwd: Path, result: subprocess.CompletedProcess[str]) -> None:
    """A pipeline file: it imports with no output, and `flowcollect check` passes it."""
    assert result.stdout == "", result.stdout
    name = re.search(r"^# (pipelines/\w+\.py)$", code, flags=re.MULTILINE)
    path = cwd / (name.group(1) if name else "pipeline.py")
    path.parent.mkdir(exist_ok=True)
    path.write_text(code, encoding="utf-8")
    checked = subprocess.run(
        [sys.executable, "-m", "flowcollect", "check", str(path.relative_to(cwd))],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    assert re.fullmatch(r"pipeline \w+: OK \(.*\)\n", checked.stdout), checked.stdout


def check_first_pipeline(where: str, code: str, cwd: Path, result: subprocess.CompletedProcess[str]) -> None:
    """The guide's first pipeline: saved where it says, every command of the block after it runs
    as printed, against the simulator the file starts (it once pointed at 192.0.2.10)."""
    check_pipeline_file(where, code, cwd, result)
    page = (REPO / where.rsplit(":", 1)[0]).read_text(encoding="utf-8")
    after = page[page.index(code) + len(code) :].split("```\n", 1)[1]  # past the block's fence
    shell = next(body for lang, body in FENCE.findall(after) if lang == "sh")
    outputs = []
    for line in shell.splitlines():
        command = line.split("#", 1)[0].split()
        assert command[0] == ".venv/bin/flowcollect", line
        argv = [str(cwd / command[0]), *command[1:]]
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=90, check=False)
        assert done.returncode == 0, f"{line}\n{done.stdout}\n{done.stderr}"
        outputs.append(done.stdout)
    once, run = outputs[-2], outputs[-1]
    assert once.splitlines()[-1] == "pipeline boiler: read once: 2 values, 0 errors; nothing written", once
    rows = (cwd / "pipelines" / "out" / "boiler.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) > 1 + 5  # the header, then a few seconds of values
    assert all(row.split(",")[5] == "" for row in rows[1:]), rows  # no value is an error
    # The page says where the file is, and so does the summary.
    assert "`pipelines/out/boiler.csv`" in page
    assert run.splitlines()[-1] == f"result: OK, {len(rows) - 1} values stored in pipelines/out/boiler.csv"


def check_runs(where: str, code: str, cwd: Path, result: subprocess.CompletedProcess[str]) -> None:
    """Builds what it shows (a reader, a writer) with nothing to print."""
    assert result.stdout == ""


def check_listeners(where: str, code: str, cwd: Path, result: subprocess.CompletedProcess[str]) -> None:
    """Prints what the page says it prints (the ```text block after it)."""
    page = (DOCS / "listeners.md").read_text(encoding="utf-8")
    printed = re.search(r"It prints.*?\n```text\n(.*?)```", page, flags=re.DOTALL)
    assert printed is not None
    assert result.stdout == printed.group(1), result.stdout


CHECKS: dict[tuple[str, str], Callable[[str, str, Path, subprocess.CompletedProcess[str]], None]] = {
    ("README.md", "from flowcollect import DataCollectionContext, Pipeline, Variable"): check_readme,
    ("docs/getting-started.md", "# pipelines/boiler.py"): check_first_pipeline,
    ("docs/getting-started.md", "# pipelines/boiler.py, for the real PLC"): check_pipeline_file,
    ("docs/getting-started.md", "import time"): check_library,
    (
        "docs/cli.md",
        "from flowcollect import DataCollectionContext, IntervalLimitPolicy, Pipeline, Variable",
    ): (check_pipeline_file),
    ("docs/cli.md", "from flowcollect.pipeline import load_pipeline"): check_from_python,
    ("docs/influxdb.md", "from flowcollect.writers import InfluxDBDataWriter"): check_runs,
    ("docs/modbus.md", "from flowcollect.readers import ModbusDataReader"): check_runs,
    ("docs/modbus.md", "from flowcollect.readers import ModbusDataReader #2"): check_runs,
    ("docs/spool.md", "from flowcollect.writers import InfluxDBDataWriter, SpooledWriter"): check_runs,
    ("docs/opcua.md", "from flowcollect.readers import OpcUaDataReader"): check_runs,
    ("docs/csv.md", "from flowcollect.writers import CsvFileDataWriter"): check_runs,
    ("docs/mqtt.md", "from flowcollect.writers import MqttDataWriter"): check_runs,
    ("docs/mqtt.md", "from flowcollect import DataCollectionContext, Variable"): check_runs,
    ("docs/sparkplug.md", "from flowcollect import secret_from_env"): check_runs,
    ("docs/sparkplug.md", "from flowcollect import DataCollectionContext, Variable"): check_runs,
    ("docs/listeners.md", "from collections.abc import Sequence"): check_listeners,
    (
        "docs/spool.md",
        "from flowcollect.writers import CsvFileDataWriter, InfluxDBDataWriter, SpooledWriter, SpoolOptions",
    ): check_runs,
}


# What an example says it reads from the environment (``token=None  # None: read $INFLUX_TOKEN``).
ENVIRONMENTS = {
    ("docs/sparkplug.md", "from flowcollect import secret_from_env"): {"MQTT_PASSWORD": "a-password"},
    ("docs/influxdb.md", "from flowcollect.writers import InfluxDBDataWriter"): {
        "INFLUX_TOKEN": "a-token",
        "INFLUX_PASSWORD": "a-password",
    },
    ("docs/spool.md", "from flowcollect.writers import InfluxDBDataWriter, SpooledWriter"): {
        "INFLUX_TOKEN": "a-token"
    },
}


@pytest.mark.realtime
@pytest.mark.parametrize(("where", "code"), python_blocks(), ids=[w for w, _ in python_blocks()])
def test_every_python_example_in_the_docs_runs_as_printed(where: str, code: str, tmp_path: Path) -> None:
    if fragment(where, code) is not None:
        return  # listed with its reason in FRAGMENTS; test_fragments_are_still_there keeps the list true
    check = CHECKS.get(key(where, code))
    assert check is not None, (
        f"{where}: a new example; give it a check in CHECKS (what it should produce), or list it in "
        "FRAGMENTS with the reason it cannot run as printed"
    )
    cwd = workspace(tmp_path)
    result = run_python(code, cwd, ENVIRONMENTS.get(key(where, code)))
    assert result.returncode == 0, f"{where}:\n{result.stderr}"
    check(where, code, cwd, result)


def test_fragments_and_checks_name_blocks_that_exist() -> None:
    present = {key(where, code) for where, code in python_blocks()}
    assert set(FRAGMENTS) <= present, set(FRAGMENTS) - present
    assert set(CHECKS) <= present, set(CHECKS) - present
    assert set(ENVIRONMENTS) <= set(CHECKS)


@pytest.mark.slow
def test_make_run_names_the_file_where_it_is(tmp_path: Path) -> None:
    # The Makefile's own command, from a fresh clone's folder: the summary once said out/demo.csv
    # while the file was pipelines/out/demo.csv.
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    recipe = re.search(r"^run: .*\n\t\$\(BIN\)/(flowcollect .*)$", makefile, flags=re.MULTILINE)
    assert recipe is not None
    cwd = workspace(tmp_path)
    command = recipe.group(1).split()
    done = subprocess.run(
        [str(cwd / ".venv" / "bin" / command[0]), *command[1:]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rows = len((cwd / "pipelines" / "out" / "demo.csv").read_text(encoding="utf-8").splitlines()) - 1
    lines = done.stdout.splitlines()
    assert lines[-1] == f"result: OK, {rows:,} values stored in pipelines/out/demo.csv", done.stdout
    assert "  writer csv:out/demo.csv: " in done.stdout and "(file pipelines/out/demo.csv)" in done.stdout


def test_the_check_transcript_in_the_cli_page_is_what_check_prints(tmp_path: Path) -> None:
    page = (DOCS / "cli.md").read_text(encoding="utf-8")
    transcript = re.search(r"^\$ (flowcollect check pipelines/demo\.py)\n(.*)$", page, flags=re.MULTILINE)
    assert transcript is not None
    cwd = workspace(tmp_path)
    result = subprocess.run(
        [str(cwd / ".venv" / "bin" / "flowcollect"), *transcript.group(1).split()[1:]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.stdout == transcript.group(2) + "\n", result.stderr
