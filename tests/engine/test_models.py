from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from flowcollect import DataCollectionContext, Variable


def var(**fields: object) -> Variable:
    base: dict[str, object] = {"id": 1, "address": "a", "reader": "random"}
    base.update(fields)
    return Variable(**base)  # type: ignore[arg-type]


def test_variable_defaults() -> None:
    v = var()
    # value_type None: the reader's natural type for the address, else float (at compile time).
    assert (v.value_type, v.interval_ms, v.report, v.scale, v.tags) == (None, None, "every", None, {})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", 0),
        ("id", -3),
        ("address", ""),
        ("address", "   "),
        ("reader", ""),
        ("value_type", "complex"),
        ("value_type", "__import__('os')"),
        ("interval_ms", 0),
        ("interval_ms", -100),
        ("report", "sometimes"),
        ("deadband", -1),
        ("heartbeat_ms", 0),
        ("scale", float("nan")),
        ("offset", float("inf")),
        ("tags", {"": "x"}),
        ("tags", {"line": 3}),
        ("name", ""),
    ],
)
def test_variable_rejects_bad_field_and_names_it(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as info:
        var(**{field: value})
    assert info.value.errors()[0]["loc"][0] == field


def test_variable_forbids_unknown_fields_and_is_frozen() -> None:
    with pytest.raises(ValidationError, match="unit"):
        var(unit="degC")
    v = var()
    with pytest.raises(ValidationError):
        v.address = "b"  # type: ignore[misc]


def test_context_defaults() -> None:
    c = DataCollectionContext(id=1, variables=[var()])
    assert (c.interval_ms, c.min_interval_ms, c.duration_s) == (1000, 100, 86400.0)
    assert c.start_date is None and c.end_date is None
    assert c.interval_of(c.variables[0]) == 1000
    assert c.interval_of(var(interval_ms=250)) == 250


@pytest.mark.parametrize(
    ("fields", "loc"),
    [
        ({"id": 0}, ("id",)),
        ({"variables": []}, ("variables",)),
        ({"interval_ms": 0}, ("interval_ms",)),
        ({"min_interval_ms": -1}, ("min_interval_ms",)),
        ({"duration_s": 0}, ("duration_s",)),
        ({"duration_s": float("inf")}, ("duration_s",)),
        ({"duration_s": float("nan")}, ("duration_s",)),
        ({"duration_s": 1e13}, ("duration_s",)),
        (
            {"variables": [{"id": 1, "address": "a", "reader": "r", "interval_ms": 0}]},
            ("variables", 0, "interval_ms"),
        ),
    ],
)
def test_context_rejects_bad_field_and_names_it(fields: dict[str, object], loc: tuple[object, ...]) -> None:
    base: dict[str, object] = {"id": 1, "variables": [var()]}
    base.update(fields)
    with pytest.raises(ValidationError) as info:
        DataCollectionContext(**base)  # type: ignore[arg-type]
    assert info.value.errors()[0]["loc"] == loc


def test_context_rejects_duplicate_variable_ids_naming_them() -> None:
    with pytest.raises(ValidationError, match=r"repeated: \[2\]"):
        DataCollectionContext(id=1, variables=[var(id=1), var(id=2), var(id=2, address="b")])


def test_context_dates_must_be_aware_and_become_utc() -> None:
    c = DataCollectionContext(id=1, variables=[var()])
    with pytest.raises(ValidationError, match="timezone-aware"):
        c.start_date = datetime(2026, 1, 1)
    c.start_date = datetime(2026, 1, 1, 2, tzinfo=timezone(timedelta(hours=2)))
    assert c.start_date == datetime(2026, 1, 1, tzinfo=UTC)
    assert c.start_date.utcoffset() == timedelta(0)
