"""The tag list's fast path against its slow path: the same verdicts, the same variables.

``read_csv`` makes a row the columns' checks vouch for as a copy of a validated template, and
validates every other row with ``Variable`` itself. Each case here goes through both: once as it
is, once with no row vouched for (every row through ``Variable(**fields)``, the path of before).
Both must refuse exactly the same rows with exactly the same messages, and accept the same rows
as equal variables (same values of the same types, same fields set).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowcollect import ConfigError, Variable
from flowcollect.readers import RandomDataReader
from flowcollect.tags import _csv, stable_id

HEADER = "id,name,address,value_type,interval_ms,scale,offset,report,deadband,heartbeat_ms,tag:line"

# (cells in the header's order, whether the columns' checks vouch for every value: the fast path
# makes the row when they do and Variable's rule across fields holds for it over the defaults)
ROWS: list[tuple[str, bool]] = [
    ("1,a,holding:0,float,1000,0.5,-5,change,0.5,10000,A", True),
    (",,holding:0,,,,,,,,", True),  # only an address: a derived id, every default
    ("1e3,a,holding:0,,,,,,,,", True),  # a whole number written as a float
    ("10.0,a,holding:0,,,,,,,,", True),
    ("+5,a,holding:0,,,,,,,,", True),
    ("9007199254740993,a,holding:0,,,,,,,,", True),  # above 2**53: exact
    ("1, padded name ,  holding:0  ,int,  250 ,,,,,,", True),
    ("1,a,holding:0,,,-0.0,1e-300,,,,", True),
    ("1,a,holding:0,,,,,change,0,,", True),
    ("1,a,holding:0,,,,,change,-0.0,,", True),
    ("1,a,holding:0,,,,,change,,1,", True),
    ("1,a,holding:0,bool,,,,,,,Ünïcode", True),
    ("1,a,holding:0,str,,,,,,,", True),
    ("1,a,holding:0,,,,,change,inf,,", False),  # Variable accepts it; the columns leave it to it
    # Refused: every constraint of Variable, and every parser's
    ("0,a,holding:0,,,,,,,,", False),
    ("-1,a,holding:0,,,,,,,,", False),
    ("1.5,a,holding:0,,,,,,,,", False),
    ("x,a,holding:0,,,,,,,,", False),
    ("nan,a,holding:0,,,,,,,,", False),
    ("inf,a,holding:0,,,,,,,,", False),
    ("1,a,holding:0,,0,,,,,,", False),
    ("1,a,holding:0,,-5,,,,,,", False),
    ("1,a,holding:0,,1e400,,,,,,", False),
    ("1,a,holding:0,,,inf,,,,,", False),
    ("1,a,holding:0,,,nan,,,,,", False),
    ("1,a,holding:0,,,,-inf,,,,", False),
    ("1,a,holding:0,,,,nan,,,,", False),
    ("1,a,holding:0,,,,,change,-1,,", False),
    ("1,a,holding:0,,,,,change,nan,,", False),
    ("1,a,holding:0,,,,,change,,0,", False),
    ("1,a,holding:0,,,,,change,,-3,", False),
    # Deadband and heartbeat without report=change: refused unless the defaults say change
    ("1,a,holding:0,,,,,every,0.5,,", True),
    ("1,a,holding:0,,,,,,0.5,,", True),
    ("1,a,holding:0,,,,,,,100,", True),
    ("1,a,holding:0,flaot,,,,,,,", False),
    ("1,a,holding:0,Float,,,,,,,", False),
    ("1,a,holding:0,,,,,Change,,,", False),
    ("1,a,,,,,,,,,", False),  # no address
    ("1,a,   ,,,,,,,,", False),  # a blank one
    ("1,a,holding:0,,,,,,,,A,extra", False),  # more cells than the header
    ("1,a,holding:0", True),  # a short row: the rest empty
]

DEFAULTS: list[dict[str, Any]] = [
    {},
    {"interval_ms": 1000.0, "scale": 2, "value_type": "int"},  # coerced by Variable: 1000, 2.0
    {"report": "change", "deadband": 0.5},
    {"report": "change", "heartbeat_ms": 60_000},
    {"tags": {"site": "north", "line": "default"}},
]


def _vouched_for_none(*_args: object) -> bool:
    return False


@pytest.fixture
def copies(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts the rows the fast path made."""
    made: list[int] = []
    copied = _csv._copied

    def counting(template: Variable, row: dict[str, Any], reader_type: str) -> Variable:
        made.append(1)
        return copied(template, row, reader_type)

    monkeypatch.setattr(_csv, "_copied", counting)
    yield made


def outcome(path: Path, defaults: dict[str, Any], reader: object = "plc") -> object:
    """What read_csv gives, in a form that compares everything a variable holds."""
    try:
        variables = _csv.read_csv(path, reader=reader, **defaults)  # type: ignore[arg-type]
    except ConfigError as exc:
        return ("refused", exc.problems)
    return [(v, v.model_dump(), {k: type(x) for k, x in v}, sorted(v.model_fields_set)) for v in variables]


def both(
    monkeypatch: pytest.MonkeyPatch, path: Path, defaults: dict[str, Any], reader: object = "plc"
) -> object:
    fast = outcome(path, defaults, reader)
    with monkeypatch.context() as m:
        m.setattr(_csv, "_vouched_for", _vouched_for_none)
        slow = outcome(path, defaults, reader)
    assert fast == slow
    return fast


@pytest.mark.parametrize("defaults", DEFAULTS, ids=lambda d: ",".join(d) or "none")
@pytest.mark.parametrize(("cells", "vouched"), ROWS, ids=[cells for cells, _ in ROWS])
def test_a_row_gets_the_same_verdict_and_variable_either_way(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    copies: list[int],
    cells: str,
    vouched: bool,
    defaults: dict[str, Any],
) -> None:
    path = tmp_path / "tags.csv"
    path.write_text(f"{HEADER}\n{cells}\n", encoding="utf-8")
    copies.clear()
    result = both(monkeypatch, path, defaults)
    if isinstance(result, list):
        # Accepted: made by the fast path exactly when the columns vouched for it (and the
        # defaults keep the rule across fields); the slow run above made it with Variable.
        rule_holds = _csv._reports_right(
            Variable(id=1, address="-", reader="-", **defaults), result[0][0].model_dump()
        )
        assert len(copies) == (1 if vouched and rule_holds else 0)
    else:
        assert copies == []  # a refused row never comes from the fast path


def test_a_fast_variable_owns_its_tags(tmp_path: Path) -> None:
    path = tmp_path / "tags.csv"
    path.write_text("address\nholding:0\nholding:1\n", encoding="utf-8")
    first, second = _csv.read_csv(path, reader="plc")
    assert first.tags == second.tags == {}
    # Each its own dict, or the one empty dict that refuses to be changed: never a shared one
    # that changes.
    with contextlib.suppress(TypeError):
        first.tags["line"] = "3"
    assert second.tags == {}
    assert "tags" not in first.model_fields_set


def test_repeated_ids_and_names_are_named_by_both_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "tags.csv"
    path.write_text(
        "id,name,address\n1,a,holding:0\n1,b,holding:1\n2,a,holding:2\n,c,holding:3\n,c,holding:4\n",
        encoding="utf-8",
    )
    assert both(monkeypatch, path, {}) == (
        "refused",
        [
            "tags.csv row 3, column id: id 1 is already used by row 2",
            "tags.csv row 4, column name: name 'a' is already used by row 2",
            f"tags.csv row 6, column id: id {stable_id('plc', 'c')} is already used by row 5 "
            "(derived from the name or address: give the rows ids)",
        ],
    )


def test_the_reader_validates_every_row_of_both_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No whole number lies in [0.2, 0.8]: the reader refuses int variables, whichever path made them.
    reader = RandomDataReader(min_value=0.2, max_value=0.8)
    path = tmp_path / "tags.csv"
    path.write_text("id,address,value_type\n1,a,float\n2,b,int\n3,c,\n", encoding="utf-8")
    assert both(monkeypatch, path, {}, reader) == (
        "refused",
        ["tags.csv row 3, column address: no whole number lies in [0.2, 0.8]"],
    )
    assert both(monkeypatch, path, {"value_type": "int"}, reader) == (
        "refused",
        [
            "tags.csv row 3, column address: no whole number lies in [0.2, 0.8]",
            "tags.csv row 4, column address: no whole number lies in [0.2, 0.8]",
        ],
    )


RULE_ONLY = {"1,a,holding:0,,,,,every,0.5,,", "1,a,holding:0,,,,,,0.5,,", "1,a,holding:0,,,,,,,100,"}


def numbered(rows: list[str]) -> list[str]:
    """The rows with ids 1.. and distinct names, so that they do not repeat each other."""
    out = []
    for i, cells in enumerate(rows, 1):
        rest = cells.split(",")[1:]
        if rest and rest[0] == "a":
            rest[0] = f"n{i}"
        out.append(",".join([str(i), *rest]))
    return out


def test_many_rows_give_the_same_list_either_way(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = [cells for cells, vouched in ROWS if vouched and cells not in RULE_ONLY]
    path = tmp_path / "good.csv"
    path.write_text(HEADER + "\n" + "\n".join(numbered(good)) + "\n", encoding="utf-8")
    result = both(monkeypatch, path, {"tags": {"site": "north"}})
    assert isinstance(result, list) and len(result) == len(good)
    # Every row at once, good and bad (ids renumbered): the same problems, in the same order.
    path = tmp_path / "all.csv"
    path.write_text(HEADER + "\n" + "\n".join(numbered([c for c, _ in ROWS])) + "\n", encoding="utf-8")
    refused = both(monkeypatch, path, {})
    assert isinstance(refused, tuple)
    assert len(refused[1]) >= 15
