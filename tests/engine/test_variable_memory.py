"""A ``Variable`` is small (40,000 of them for 2,000 devices) and says and does what it did."""

from __future__ import annotations

import copy
import pickle
import sys
import tracemalloc
from pathlib import Path

import pytest

from flowcollect import Variable
from flowcollect.tags import DeviceProfile, read_csv


def devices(n: int, registers: int = 20) -> list[Variable]:
    """As bench/scale.py builds them: every text made anew for each variable."""
    return [
        Variable(id=i * registers + r + 1, address=f"holding:{r}", reader=f"d{i}", interval_ms=1000)
        for i in range(n)
        for r in range(registers)
    ]


def test_a_variable_costs_about_half_what_pydantic_gives_it() -> None:
    devices(1)  # any first-use allocations outside the measure
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        variables = devices(100)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # The list's 8 bytes a variable included. Pydantic alone: ~970 bytes (its own dict of 12
    # keys, a set of the fields given, the texts each variable was given); now ~450.
    assert held / len(variables) < 540, held / len(variables)


def test_variables_share_their_texts_and_fields_set_but_nothing_that_differs() -> None:
    a, b = Variable(id=1, address="holding:1", reader="d7"), Variable(id=2, address="holding:1", reader="d7")
    assert a.address is b.address and a.reader is b.reader
    assert a.model_fields_set is b.model_fields_set == {"id", "address", "reader"}
    c = Variable(id=3, address="holding:1", reader="d7", name="c")
    assert c.model_fields_set == {"id", "address", "reader", "name"}
    # A copy changes its own set, never the shared one.
    d = a.model_copy(update={"name": "d"})
    assert d.model_fields_set == {"id", "address", "reader", "name"}
    assert a.model_fields_set == b.model_fields_set == {"id", "address", "reader"}
    assert d.model_fields_set is not a.model_fields_set


def test_a_compact_variable_says_and_does_what_pydantic_made() -> None:
    given = {"id": 4, "address": "holding:3", "reader": "d1", "tags": {"site": "x"}, "scale": 0.5}
    v = Variable(**given)  # type: ignore[arg-type]
    assert list(v.__dict__) == list(Variable.model_fields)  # the fields, in their order
    assert dict(v) == v.model_dump() == {**Variable.model_construct(**given).model_dump(), **given}
    assert v.model_dump_json() == Variable.model_validate_json(v.model_dump_json()).model_dump_json()
    again = pickle.loads(pickle.dumps(v))  # noqa: S301 (our own bytes)
    assert v == Variable(**given) == copy.deepcopy(v) == again  # type: ignore[arg-type]
    assert v != Variable(**{**given, "id": 5})  # type: ignore[arg-type]
    assert v.model_copy(update={"scale": 2.0}).scale == 2.0 and v.scale == 0.5
    assert v.tags == {"site": "x"} and v.tags is not Variable(**given).tags  # type: ignore[arg-type]
    assert sys.getsizeof(v.__dict__) < sys.getsizeof(dict(v.__dict__))  # the key-sharing dict


def test_a_subclass_keeps_what_pydantic_gives_it() -> None:
    class Labelled(Variable):
        unit: str = ""

    v = Labelled(id=1, address="holding:1", reader="d1", unit="degC")
    assert v.unit == "degC" and v.model_fields_set == {"id", "address", "reader", "unit"}
    assert Labelled(id=2, address="holding:1", reader="d1").model_fields_set is not v.model_fields_set


def test_tag_lists_and_profiles_share_the_fields_set(tmp_path: Path) -> None:
    path = tmp_path / "tags.csv"
    path.write_text("name,address\n" + "".join(f"t{n},holding:{n}\n" for n in range(50)))
    listed = read_csv(path, reader="d1")
    assert len({id(v.model_fields_set) for v in listed}) == 1
    assert listed[0].model_fields_set == Variable(**listed[0].model_dump(exclude_unset=True)).model_fields_set
    profile = DeviceProfile(name="p", variables=listed)
    made = profile.instantiate("dev", "d2")
    assert len({id(v.model_fields_set) for v in made}) == 1
    assert "tags" in made[0].model_fields_set


def test_variables_without_tags_share_one_empty_dict_that_refuses_changes() -> None:
    a, b = Variable(id=1, address="holding:1", reader="d7"), Variable(id=2, address="x", reader="r", tags={})
    assert a.tags is b.tags and a.tags == {} and isinstance(a.tags, dict)
    with pytest.raises(TypeError, match="cannot be changed"):
        a.tags["line"] = "3"
    with pytest.raises(TypeError, match="cannot be changed"):
        a.tags.update(line="3")
    assert a.tags == b.tags == {} and a.model_dump()["tags"] == {}
    tagged = a.model_copy(update={"tags": {"line": "3"}})
    assert tagged.tags == {"line": "3"} and a.tags == {}
    given = Variable(id=3, address="x", reader="r", tags={"line": "3"})
    again = Variable(id=4, address="x", reader="r", tags={"line": "3"})
    assert given.tags == again.tags == {"line": "3"} and given.tags is not again.tags
