"""The examples in docs/ run, and the pages show them as they are in docs/examples/."""

from __future__ import annotations

import importlib.util
import re
import runpy
import sys
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
