"""What a reload decides to keep and replace, before anything changes (in process, no server):
readers and writers compared by how the file built them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from flowcollect import ConfigError, DataCollector
from flowcollect.pipeline import load_pipeline
from flowcollect.service._reload import prepare_reload

FILE = """\
from flowcollect import DataCollectionContext, Pipeline, Variable
from flowcollect.readers import ModbusDataReader, RandomDataReader
from flowcollect.writers import CsvFileDataWriter, SpoolOptions

pipeline = Pipeline(
    name="plan",
    readers=[RandomDataReader(seed={seed}), ModbusDataReader("plc", host="127.0.0.1", port={port})],
    writers=[
        CsvFileDataWriter("out/a.csv", flush_interval_s={flush}){receive},
        CsvFileDataWriter("out/b.csv", flush_interval_s={flush_b}),
    ],
    spools={{"csv:out/b.csv": SpoolOptions(path="spool/b", max_bytes=10_000_000)}},
    contexts=[
        DataCollectionContext(
            id=1,
            interval_ms=100,
            variables=[
                Variable(id=1, address="x", reader="random"),
                Variable(id=2, address="y", reader="random", interval_ms=300),
            ],
        ),
    ],
)
"""


def write(
    path: Path,
    *,
    seed: str = "1",
    port: int = 5020,
    flush: float = 1.0,
    flush_b: float = 1.0,
    receive: str = "",
) -> None:
    path.write_text(FILE.format(seed=seed, port=port, flush=flush, flush_b=flush_b, receive=receive))


@pytest.fixture
def running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, DataCollector]]:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "pipe.py"
    write(path)
    collector = load_pipeline(path).collector()
    yield path, collector
    collector.close()


def test_the_same_file_keeps_every_running_reader_and_writer(running: tuple[Path, DataCollector]) -> None:
    path, collector = running
    plan = prepare_reload(path, collector, [], [])
    assert not plan.result.readers.any() and not plan.result.writers.any()
    assert [id(r) for r in plan.readers] == [id(r) for r in collector.readers.values()]
    assert [id(w) for w in plan.writers] == [id(w) for w in collector.writers]


def test_an_option_changed_replaces_that_part_only(running: tuple[Path, DataCollector]) -> None:
    path, collector = running
    write(path, port=5021, flush=2.0)
    plan = prepare_reload(path, collector, [], [])
    assert plan.result.readers.as_dict() == {"replaced": ["plc"], "added": [], "removed": []}
    assert plan.result.writers.as_dict() == {"replaced": ["csv:out/a.csv"], "added": [], "removed": []}
    assert plan.readers[0] is collector.readers["random"] and plan.readers[1] is not collector.readers["plc"]
    assert plan.writers[1] is collector.writers[1]
    # What a writer was given after it was built counts too.
    write(path, receive=".receive(contexts=[1])")
    assert prepare_reload(path, collector, [], []).result.writers.replaced == ["csv:out/a.csv"]


def test_a_spooled_writer_replaced_on_its_own_folder_takes_it_over_another_name_is_refused(
    running: tuple[Path, DataCollector],
) -> None:
    path, collector = running
    # The writer behind the spool changed: replaced on its folder (SpooledWriter.take_over).
    write(path, flush_b=5.0)
    plan = prepare_reload(path, collector, [], [])
    assert plan.result.writers.as_dict() == {"replaced": ["csv:out/b.csv"], "added": [], "removed": []}
    assert plan.writers[1] is not collector.writers[1] and plan.writers[1].name == "csv:out/b.csv"
    # Another writer on the running one's folder would find it in use: refused, by name.
    path.write_text(
        FILE.format(seed="1", port=5020, flush=1.0, flush_b=1.0, receive="").replace(
            '{"csv:out/b.csv": SpoolOptions(', '{"csv:out/a.csv": SpoolOptions('
        )
    )
    with pytest.raises(ConfigError) as refused:
        prepare_reload(path, collector, [], [])
    assert "writer csv:out/a.csv: its spool folder" in str(refused.value)
    assert "running writer csv:out/b.csv's" in str(refused.value)


def test_a_running_context_the_new_readers_collect_otherwise_is_restarted(
    running: tuple[Path, DataCollector],
) -> None:
    path, collector = running
    definitions = load_pipeline(path).contexts
    collector.start(definitions[0].model_copy(deep=True))
    # A reader's interval limit of 200 ms leaves variable 1 (100 ms) out: context 1 changes.
    write(path, seed="1, min_interval_ms=200")
    plan = prepare_reload(path, collector, definitions, [])
    assert (plan.result.changed, plan.result.unchanged) == ([1], [])
    assert plan.result.readers.replaced == ["random"]
    assert any(note.startswith("context 1 is restarted: ") for note in plan.result.notes), plan.result.notes
