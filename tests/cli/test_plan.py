"""`flowcollect plan` and ``Pipeline.plan``: the engine's own schedule, no device touched."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from flowcollect import DataCollectionContext, Pipeline, Variable
from flowcollect.plan import render_dot, render_mermaid, render_text
from flowcollect.testing import MemoryDataWriter, StaticDataReader
from tests.cli.conftest import PIPELINES, flowcollect


class Device:
    def __init__(self) -> None:
        self.started = 0

    def start(self) -> None:
        self.started += 1

    def stop(self) -> None:
        pass


def pipeline(*contexts: DataCollectionContext, reader: StaticDataReader | None = None) -> Pipeline:
    return Pipeline(
        name="plan",
        readers=[reader or StaticDataReader({})],
        writers=[MemoryDataWriter()],
        contexts=list(contexts),
        devices=[Device()],
    )


def ctx(cid: int, interval_ms: int, *addresses: str, **fields: object) -> DataCollectionContext:
    variables = [Variable(id=n, address=a, reader="static") for n, a in enumerate(addresses, 1)]
    return DataCollectionContext(
        id=cid, interval_ms=interval_ms, min_interval_ms=1, variables=variables, **fields
    )  # type: ignore[arg-type]


def test_the_plan_is_the_engines_schedule_and_touches_nothing() -> None:
    reader = StaticDataReader({})
    p = pipeline(ctx(1, 200, "a", "b"), ctx(2, 300, "a", "c"), reader=reader)
    plan = p.plan()
    (r,) = plan.readers
    assert (r.period_ms, r.hyperperiod_ms, r.grid_ticks) == (100, 600, 6)
    assert r.due_instants == 4  # 0, 200, 300, 400; never 100 or 500
    assert (r.wanted, r.distinct) == (4, 3)
    by_offsets = {p.offsets_ms: p for p in r.phases}
    assert set(by_offsets) == {(0,), (200, 400), (300,)}
    assert [read[2] for read in by_offsets[(0,)].reads] == ["a", "b", "c"]
    assert by_offsets[(0,)].deliveries == ((1, 2, 0), (2, 2, 1))  # "a" read once, shared
    assert by_offsets[(300,)].deliveries == ((2, 2, 0),)
    assert by_offsets[(0,)].requests is None  # the static reader plans no requests
    assert [c.shared for c in plan.contexts] == [1, 1]
    # Nothing was opened, read, closed or started; the pipeline's models were not touched.
    assert (reader.opened, reader.closed, reader.reads) == (0, 0, [])
    assert isinstance(p.devices[0], Device)
    assert p.devices[0].started == 0
    assert p.contexts[0].start_date is None


def test_left_out_variables_are_reported() -> None:
    context = DataCollectionContext(
        id=1,
        interval_ms=1000,
        min_interval_ms=500,
        variables=[
            Variable(id=1, address="a", reader="static"),
            Variable(id=2, address="b", reader="static", interval_ms=10),
        ],
    )
    text = render_text(pipeline(context).plan())
    assert "1 not collected: below the interval limit (policy ignore)" in text


def test_a_huge_hyperperiod_is_listed_briefly_and_fast() -> None:
    # Co-prime intervals: a hyperperiod of 999 s on a 1 ms grid, but only 1,998 due instants.
    p = pipeline(ctx(1, 999, "a"), ctx(2, 1000, "b"))
    began = time.monotonic()
    plan = p.plan()
    text = render_text(plan)
    assert time.monotonic() - began < 5
    (r,) = plan.readers
    assert (r.period_ms, r.hyperperiod_ms, r.grid_ticks, r.due_instants) == (1, 999_000, 999_000, 1998)
    assert r.walked_all
    assert len(text.splitlines()) < 40
    assert "(990 more)" in text


def test_modbus_requests_per_tick_come_from_the_reader() -> None:
    text = flowcollect("plan", str(PIPELINES / "demo.py"), cwd=PIPELINES).stdout
    assert "GCD tick 250 ms, hyperperiod 1 s" in text
    assert "requests: 3 for 8 variables" in text
    assert "requests: 2 for 5 variables" in text


def test_graphs_show_the_running_steps_lane_by_lane() -> None:
    plan = pipeline(ctx(1, 200, "a"), ctx(2, 300, "c")).plan()
    mermaid = render_mermaid(plan)
    for node in ("ticks0", "read0", "ctx1", "gate1", "changes1", "ctx2", "gate2", "changes2", "sink0"):
        assert f"  {node}" in mermaid
    # A lane hands over to its contexts directly (no merge shared by every lane).
    assert "merge" not in mermaid
    assert "changes1 --> sink0" in mermaid and "changes2 --> sink0" in mermaid
    dot = render_dot(plan)
    assert dot.startswith('digraph "plan" {') and dot.rstrip().endswith("}")
    assert "ticks0 -> read0;" in dot and 'read0 -> ctx1 [label="static"];' in dot
    if shutil.which("dot"):  # graphviz, when installed, must accept it
        subprocess.run(["dot", "-Tsvg"], input=dot, text=True, capture_output=True, check=True)


def test_plan_of_one_context(tmp_path: Path) -> None:
    result = flowcollect("plan", str(PIPELINES / "demo.py"), "--context", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "GCD tick 1 s, hyperperiod 1 s" in result.stdout
    assert "context 1" not in result.stdout


class _Estimate:
    def __init__(self, load: float | None, text: str) -> None:
        self.load = load
        self.text = text

    @property
    def warning(self) -> str | None:
        return f"{self.text}: too slow" if self.load is not None and self.load > 1.0 else None

    def __str__(self) -> str:
        return self.text


class EstimatingReader(StaticDataReader):
    """A reader with its own estimate hook: the plan asks every reader, not only Modbus ones."""

    def __init__(self) -> None:
        super().__init__({})
        self.asked: list[tuple[tuple[str, ...], float]] = []

    def estimate_tick(self, due, tick_ms):  # type: ignore[no-untyped-def]
        addresses = tuple(s.address for _, reads in due for s in reads)
        self.asked.append((addresses, tick_ms))
        # 30 ms per read against the tick: 3 reads in a 100 ms tick is 90%, 4 is 120%.
        return _Estimate(30 * len(addresses) / tick_ms, f"{len(addresses)} reads in {tick_ms:g} ms")


def test_a_readers_estimate_hook_gives_the_lanes_busiest_tick_and_its_warning() -> None:
    reader = EstimatingReader()
    plan = pipeline(ctx(1, 100, "a", "b", "c"), ctx(2, 200, "d"), reader=reader).plan()
    # One call per due pattern, at its first instant, with the time to the lane's next instant.
    assert sorted(reader.asked) == [(("a", "b", "c"), 100), (("a", "b", "c", "d"), 100)]
    assert plan.lines == ("4 reads in 100 ms",)
    assert plan.line_warnings == ("4 reads in 100 ms: too slow",)
    assert "4 reads in 100 ms" in render_text(plan)
    # The default hook: no estimate, no lines.
    assert pipeline(ctx(1, 100, "a")).plan().lines == ()
