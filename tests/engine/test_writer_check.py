"""DataWriter.check_variables: a writer refuses variables before anything starts."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from flowcollect import DataCollectionContext, DataCollector, Variable
from flowcollect.errors import ConfigError
from flowcollect.pipeline import Pipeline
from flowcollect.testing import StaticDataReader
from flowcollect.values import VariableSpec
from flowcollect.writers import MemoryDataWriter, SpooledWriter


class Picky(MemoryDataWriter):
    """Refuses variables without a name; sees each context's compiled variables."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, ...]] = []

    def check_variables(self, variables: Sequence[VariableSpec]) -> list[str]:
        self.seen.append(tuple(v.id for v in variables))
        return [f"writer {self.name}: variable {v.id} has no name" for v in variables if v.name is None]


class Broken(MemoryDataWriter):
    @property
    def name(self) -> str:
        return "broken"

    def check_variables(self, variables: Sequence[VariableSpec]) -> list[str]:
        raise RuntimeError("a bug")


CONTEXT = DataCollectionContext(
    id=1,
    interval_ms=100,
    variables=[
        Variable(id=1, address="a", name="a", reader="static"),
        Variable(id=2, address="b", reader="static"),
    ],
)


def test_check_and_start_refuse_what_a_writer_cannot_take_and_running_work_goes_on() -> None:
    picky = Picky()
    with DataCollector([StaticDataReader({"a": 1.0, "b": 2.0})], [picky]) as collector:
        ok = DataCollectionContext(
            id=2, interval_ms=100, variables=[Variable(id=1, address="a", name="a", reader="static")]
        )
        collector.start(ok)
        with pytest.raises(ConfigError, match="variable 2 has no name"):
            collector.check(CONTEXT)
        with pytest.raises(ConfigError, match="variable 2 has no name"):
            collector.start(CONTEXT)
        assert collector.is_context_running(2) and 1 not in collector.contexts()
    assert (1, 2) in picky.seen


def test_pipelines_spools_and_buggy_checks_each_give_one_line(tmp_path: object) -> None:
    from pathlib import Path

    spooled = SpooledWriter(Picky(), Path(str(tmp_path)) / "spool", max_bytes=1 << 20)
    pipeline = Pipeline(
        name="p", readers=[StaticDataReader({"a": 1.0})], writers=[spooled, Broken()], contexts=[CONTEXT]
    )
    problems = pipeline.check()
    assert problems == [
        "writer Picky: variable 2 has no name",
        "writer broken: checking the variables failed: RuntimeError: a bug",
    ]
