"""flowcollect.testing: what users test their own pipelines with."""

from __future__ import annotations

from flowcollect import DataCollectionContext, Variable
from flowcollect.readers import RandomDataReader
from flowcollect.testing import StaticDataReader, collect


def test_collect_runs_contexts_in_virtual_time() -> None:
    reader = StaticDataReader(lambda address, t: f"{address}@{t.second}")
    context = DataCollectionContext(
        id=1, interval_ms=1000, variables=[Variable(id=1, address="a", reader="static", value_type="str")]
    )
    values = collect([context], [reader], duration_ms=3000, start_ms=1_700_000_000_000)
    assert [v.value for v in values] == ["a@21", "a@22", "a@23"]


def test_static_reader_marks_unknown_addresses_as_errors() -> None:
    context = DataCollectionContext(
        id=1, interval_ms=100, variables=[Variable(id=1, address="zz", reader="static")]
    )
    values = collect([context], [StaticDataReader({})], duration_ms=100)
    assert [(v.value, v.error) for v in values] == [(None, "no value for address 'zz'")]


def test_random_reader_honours_value_types_and_range() -> None:
    variables = [
        Variable(id=1, address="f", reader="random", value_type="float"),
        Variable(id=2, address="i", reader="random", value_type="int"),
        Variable(id=3, address="b", reader="random", value_type="bool"),
        Variable(id=4, address="s", reader="random", value_type="str"),
    ]
    context = DataCollectionContext(id=1, interval_ms=100, variables=variables)
    values = collect([context], [RandomDataReader(min_value=1.0, max_value=3.0, seed=4)], duration_ms=2000)
    by = {vt: [v.value for v in values if v.value_type == vt] for vt in ("float", "int", "bool", "str")}
    assert all(isinstance(x, float) and 1.0 <= x <= 3.0 for x in by["float"])
    assert set(by["int"]) <= {1, 2, 3} and all(type(x) is int for x in by["int"])
    assert set(by["bool"]) == {True, False}
    assert all(1.0 <= float(x) <= 3.0 for x in by["str"])
