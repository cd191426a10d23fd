"""The API's latest-values store: pages as JSON text built row by row from an index kept per set
of batch shapes; the newest value wins across shapes; what JSON cannot carry is null."""

from __future__ import annotations

import json
import math

from flowcollect.service import LatestValues
from flowcollect.values import ValueBatch, VariableSpec

T = 1_700_000_000_000


def specs(context: int, ids: range, reader: str = "r") -> tuple[VariableSpec, ...]:
    return tuple(VariableSpec(i, context, f"a{i}", "float", reader, 100, f"v{i}") for i in ids)


def batch(variables: tuple[VariableSpec, ...], t: int, values: list[object], **kw: object) -> ValueBatch:
    errors: list[str | None] = [None] * len(values)
    context = variables[0].context_id
    return ValueBatch(t, variables, values, errors, context_id=context, reader="r", **kw)  # type: ignore[arg-type]


def page(store: LatestValues, **kw: object) -> dict[str, object]:
    total, body = store.page_json(**kw)  # type: ignore[arg-type]
    out: dict[str, object] = json.loads(body)
    assert out["total"] == total
    return out


def test_a_page_is_json_by_context_then_variable_with_only_its_rows() -> None:
    store = LatestValues()
    two, one = specs(2, range(1, 4)), specs(1, range(1, 3))
    store.write_batch(batch(two, T, [1.5, 2, 'quote"d']))
    store.write_batch(batch(one, T + 100, [math.nan, True]))
    got = page(store)
    rows = got["values"]
    assert isinstance(rows, list)
    assert [(r["context"], r["variable"]) for r in rows] == [(1, 1), (1, 2), (2, 1), (2, 2), (2, 3)]
    assert rows[0]["value"] is None  # NaN: JSON has no such number
    assert rows[1]["value"] is True and rows[3]["value"] == 2 and rows[4]["value"] == 'quote"d'
    assert rows[0]["time"] == "2023-11-14T22:13:20.100Z" and rows[2]["time"] == "2023-11-14T22:13:20.000Z"
    assert rows[2] == {
        "context": 2,
        "variable": 1,
        "name": "v1",
        "reader": "r",
        "address": "a1",
        "value": 1.5,
        "time": "2023-11-14T22:13:20.000Z",
        "quality": None,
        "error": None,
    }
    assert page(store, offset=1, limit=2)["values"] == rows[1:3]
    assert page(store, context=2, name="v[12]")["total"] == 2
    assert page(store, reader="other")["total"] == 0
    # The dict form is the same rows.
    assert store.page(offset=0, limit=10) == (5, rows)


def test_the_index_follows_the_shapes_and_the_newest_value_wins() -> None:
    store = LatestValues()
    every, some = specs(1, range(1, 4)), specs(1, range(2, 3))  # variable 2 in both shapes
    store.write_batch(batch(every, T, [1.0, 2.0, 3.0]))
    first = store._index
    assert page(store)["total"] == 3 and store._index is not first
    index = store._index
    store.write_batch(batch(every, T + 100, [1.1, 2.1, 3.1]))  # the same shape: no new index
    assert [r["value"] for r in page(store)["values"]] == [1.1, 2.1, 3.1]  # type: ignore[union-attr]
    assert store._index is index
    store.write_batch(batch(some, T + 150, [9.0]))
    assert [r["value"] for r in page(store)["values"]] == [1.1, 9.0, 3.1]  # type: ignore[union-attr]
    store.write_batch(batch(every, T + 200, [1.2, 2.2, 3.2]))
    assert [r["value"] for r in page(store)["values"]] == [1.2, 2.2, 3.2]  # type: ignore[union-attr]
    store.forget_context(1)
    assert page(store)["total"] == 0


def test_values_beyond_the_kept_shapes_are_still_served() -> None:
    store = LatestValues()
    shapes = 300  # more than the 256 kept by reference: the oldest are kept one value at a time
    for n in range(shapes):
        store.write_batch(batch(specs(1, range(n + 1, n + 2)), T + n, [float(n)]))
    got = page(store, limit=10_000)
    assert got["total"] == shapes
    values = [r["value"] for r in got["values"]]  # type: ignore[union-attr]
    assert values == [float(n) for n in range(shapes)]
    assert [v.value for v in store.select(name="v1")] == [0.0]
