"""Bad pipeline files: `check` and `run` exit 1 with one line naming the problem, start nothing.

Every pipeline here has a device that leaves a file when started and a CSV writer in the same
folder, so "nothing started or written" is checked on disk after each command.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.conftest import flowcollect, write_pipeline

HEAD = """\
from pathlib import Path

from flowcollect import DataCollectionContext, IntervalLimitPolicy, Pipeline, Variable
from flowcollect.readers import ModbusDataReader, RandomDataReader
from flowcollect.writers import CsvFileDataWriter

HERE = Path(__file__).parent


class Marker:
    name = "marker"

    def start(self) -> None:
        (HERE / "started.txt").write_text("started")

    def stop(self) -> None:
        (HERE / "stopped.txt").write_text("stopped")


def ctx(cid=1, address="a", reader="random", **fields):
    return DataCollectionContext(
        id=cid, interval_ms=100, variables=[Variable(id=1, address=address, reader=reader)], **fields
    )


def build(**overrides):
    fields = dict(
        name="bad",
        devices=[Marker()],
        readers=[RandomDataReader()],
        writers=[CsvFileDataWriter(HERE / "out.csv")],
        contexts=[ctx()],
    )
    fields.update(overrides)
    return Pipeline(**fields)
"""

CASES = {
    # name: (body after HEAD, what stderr must say)
    "syntax error": ("pipeline = build(\n", ["SyntaxError", "line"]),
    "missing import": (
        "import flowcollect_no_such_module\npipeline = build()\n",
        ["ModuleNotFoundError", "line {body}"],
    ),
    "raises while building": (
        "pipeline = build(readers=[RandomDataReader(min_value=5, max_value=1)])\n",
        ["ValueError", "line {body}", "min_value"],
    ),
    "no pipeline": ("pipe = build()\n", ["defines no module-level `pipeline`"]),
    "not a Pipeline": ("pipeline = {'name': 'bad'}\n", ["is a dict, not a flowcollect.Pipeline"]),
    "unknown field": ("pipeline = build(colour='red')\n", ["colour", "Extra inputs are not permitted"]),
    "not a reader": ("pipeline = build(readers=[object()])\n", ["readers.0", "DataReader"]),
    "not a writer": ("pipeline = build(writers=['out.csv'])\n", ["writers.0", "DataWriter"]),
    "no context": ("pipeline = build(contexts=[])\n", ["contexts", "at least 1"]),
    "two readers of one type": (
        "pipeline = build(readers=[RandomDataReader(), RandomDataReader()])\n",
        ["reader types must be unique", "'random'"],
    ),
    "two contexts with one id": (
        "pipeline = build(contexts=[ctx(1), ctx(1)])\n",
        ["context ids must be unique"],
    ),
    "invalid variable": (
        "pipeline = build(contexts=[DataCollectionContext(id=1, variables=[Variable(id=0, address='a', "
        "reader='random')])])\n",
        ["invalid Variable", "id", "greater than 0"],
    ),
    "context given as a bad dict": (
        "pipeline = build(contexts=[{'id': 1, 'variables': [], 'interval_ms': -5}])\n",
        ["contexts.0.variables", "contexts.0.interval_ms"],
    ),
    "variable of a missing reader": (
        "pipeline = build(contexts=[ctx(reader='plc')])\n",
        ["context 1, variable 1", "no reader of type 'plc'"],
    ),
    "interval below the limit": (
        "pipeline = build(interval_limit_policy=IntervalLimitPolicy.ERROR, "
        "contexts=[ctx(min_interval_ms=500)])\n",
        ["context 1, variable 1", "below the limit of 500 ms"],
    ),
    "bad modbus address": (
        "pipeline = build(readers=[ModbusDataReader('plc', '127.0.0.1')], "
        "contexts=[ctx(address='holding:70000', reader='plc')])\n",
        ["context 1, variable 1", "holding:70000"],
    ),
}


BODY_LINE = HEAD.count("\n") + 1


def assert_nothing_happened(folder: Path) -> None:
    assert not (folder / "started.txt").exists(), "a device was started"
    assert not (folder / "out.csv").exists(), "the writer wrote"


@pytest.mark.parametrize("case", list(CASES))
def test_bad_pipeline_fails_check_and_run_with_a_clear_line(case: str, tmp_path: Path) -> None:
    body, expected = CASES[case]
    path = write_pipeline(tmp_path, HEAD + body)
    for args in (["check", str(path)], ["run", str(path), "--duration", "1"]):
        result = flowcollect(*args, cwd=tmp_path)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        lines = result.stderr.splitlines()
        assert lines, "no error line"
        assert all(line.startswith("error: ") for line in lines), result.stderr
        for text in expected:
            assert text.replace("{body}", str(BODY_LINE)) in result.stderr, (args, result.stderr)
        assert_nothing_happened(tmp_path)


def test_missing_file(tmp_path: Path) -> None:
    for args in (["check", "nowhere.py"], ["run", "nowhere.py"], ["plan", "nowhere.py"]):
        result = flowcollect(*args, cwd=tmp_path)
        assert result.returncode == 1
        assert result.stderr == "error: pipeline file nowhere.py does not exist\n"


def test_unknown_context_id_is_refused_before_anything_starts(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, HEAD + "pipeline = build()\n")
    for args in (["check", str(path), "--context", "9"], ["run", str(path), "--context", "9", "-d", "1"]):
        result = flowcollect(*args, cwd=tmp_path)
        assert result.returncode == 1
        assert "error: pipeline 'bad' has no context with id 9 (its contexts: 1)" in result.stderr
        assert_nothing_happened(tmp_path)


def test_every_problem_on_its_own_line(tmp_path: Path) -> None:
    body = (
        "pipeline = build(contexts=[ctx(1, reader='plc'), ctx(2, reader='plc'), ctx(3)], "
        "interval_limit_policy=IntervalLimitPolicy.ERROR)\n"
    )
    result = flowcollect("check", str(write_pipeline(tmp_path, HEAD + body)), cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("error: context 1, variable 1")
    assert lines[1].startswith("error: context 2, variable 1")


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    path = write_pipeline(tmp_path, HEAD + "import flowcollect_no_such_module\n")
    result = flowcollect("check", str(path), "--log-level", "debug", cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert "error: pipeline file" in result.stderr
