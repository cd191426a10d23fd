"""Tag lists: a CSV file of variables, every problem reported at once with its row and column.

The columns (any order; only ``address`` is required)::

    id, name, address, value_type, interval_ms, scale, offset, report, deadband, heartbeat_ms, tag:KEY...

Rows are numbered as a spreadsheet shows them: the header is row 1. An empty cell takes the
default given to ``read_csv`` (else the ``Variable`` default). A row without an ``id`` gets a
stable one (``stable_id(reader, name or address)``): the same on every run, so renumbering rows
never moves a series. Kepware's CSV tag export is recognised by its header and translated
(``flowcollect.tags._kepware``).
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, get_args

from pydantic import ValidationError

from flowcollect._ids import stable_id
from flowcollect.errors import ConfigError
from flowcollect.models import Report, ValueType, Variable
from flowcollect.readers.base import DataReader
from flowcollect.tags import _kepware

__all__ = ["DEFAULTABLE", "read_csv", "validate_for_reader"]

logger = logging.getLogger("flowcollect.tags")

COLUMNS: Final = (
    "id",
    "name",
    "address",
    "value_type",
    "interval_ms",
    "scale",
    "offset",
    "report",
    "deadband",
    "heartbeat_ms",
)
DEFAULTABLE: Final = frozenset(
    {"value_type", "interval_ms", "scale", "offset", "report", "deadband", "heartbeat_ms", "tags"}
)
"""The ``Variable`` fields ``read_csv`` takes defaults for."""
TAG_PREFIX: Final = "tag:"
_KEPWARE_FIELD_COLUMNS: Final = {
    "name": "Tag Name",
    "address": "Address",
    "interval_ms": "Scan Rate",
    "scale": "Scaling",
    "offset": "Scaling",
    "tags": "Eng Units",
}


@dataclass
class _Row:
    number: int
    fields: dict[str, Any]
    columns: dict[str, str]
    """Field -> the column it came from, for messages."""
    problems: list[tuple[str | None, str]] = field(default_factory=list)


def read_csv(
    path: str | Path, *, reader: str | DataReader, kepware_word_order: str = "CDAB", **defaults: Any
) -> list[Variable]:
    """The variables of a tag list, in row order, for ``reader`` (a reader type, or the reader).

    ``defaults`` fill empty cells (``interval_ms=1000``, ``tags={"site": "north"}``, merged under
    each row's ``tag:`` columns). Given the reader itself, each address is also checked against
    its grammar. Raises ``ConfigError`` listing every problem, each as ``FILE row N, column C: ...``.
    ``kepware_word_order`` applies to Kepware exports only (see ``flowcollect.tags._kepware``).
    """
    source = Path(path)
    label = source.name
    reader_type = reader.type if isinstance(reader, DataReader) else reader
    problems = _check_defaults(defaults)
    if not isinstance(reader_type, str) or not reader_type.strip():
        problems.append(f"read_csv reader: must be a reader type or a DataReader, got {reader!r}")
    if problems:
        raise ConfigError(problems)
    try:
        text = source.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{label}: cannot be read: {exc}") from exc
    records = list(csv.reader(io.StringIO(text), _dialect(text)))
    header_at = next((i for i, record in enumerate(records) if any(c.strip() for c in record)), None)
    if header_at is None:
        raise ConfigError(f"{label}: has no header row (expected columns such as id, name, address)")
    header = records[header_at]
    body = (
        (i + 1, record)
        for i, record in enumerate(records)
        if i > header_at and any(c.strip() for c in record)
    )
    if _kepware.is_kepware(header):
        rows, header_problems = _kepware_rows(label, header, body, kepware_word_order)
    else:
        rows, header_problems = _own_rows(header, body)
    if header_problems:
        raise ConfigError([f"{label} row {header_at + 1}: {p}" for p in header_problems])
    return _build(label, rows, reader, reader_type, defaults)


def validate_for_reader(variable: Variable, reader: DataReader) -> None:
    """``reader.validate`` as the engine calls it: with the value type resolved first."""
    if variable.value_type is None:
        natural = reader.natural_value_type(variable.address) or "float"
        variable = variable.model_copy(update={"value_type": natural})
    reader.validate(variable)


def _dialect(text: str) -> type[csv.Dialect] | csv.Dialect:
    # Spreadsheets in many locales save with ';' (the decimal separator is the comma there).
    first = text.split("\n", 1)[0]
    try:
        return csv.Sniffer().sniff(first, delimiters=",;\t")
    except csv.Error:
        return csv.excel


def _check_defaults(defaults: Mapping[str, Any]) -> list[str]:
    problems = [
        f"read_csv default {key!r}: not a field a tag list fills; use one of {', '.join(sorted(DEFAULTABLE))}"
        for key in defaults
        if key not in DEFAULTABLE
    ]
    if problems:
        return problems
    try:
        Variable(id=1, address="-", reader="-", **defaults)
    except ValidationError as exc:
        for error in exc.errors():
            where = error["loc"][0] if error["loc"] else "defaults"
            problems.append(f"read_csv default {where!r}: {_message(error)}")
    return problems


def _own_header(header: list[str]) -> tuple[dict[int, str], list[str]]:
    """Column index -> field (or ``tag:KEY``), and what is wrong with the header."""
    problems: list[str] = []
    known: dict[int, str] = {}
    for index, raw in enumerate(header):
        name = raw.strip()
        lowered = name.lower()
        if lowered.startswith(TAG_PREFIX):
            key = name[len(TAG_PREFIX) :].strip()
            if key:
                known[index] = TAG_PREFIX + key
            else:
                problems.append(f"column {index + 1}: a tag column needs a name after 'tag:'")
        elif lowered in COLUMNS:
            if lowered in known.values():
                problems.append(f"column {name!r} appears twice")
            known[index] = lowered
        elif name:
            problems.append(f"column {name!r} is not known; the columns are {', '.join(COLUMNS)} and tag:KEY")
    if "address" not in known.values():
        problems.append("no 'address' column")
    return known, problems


def _own_rows(header: list[str], body: Iterable[tuple[int, list[str]]]) -> tuple[list[_Row], list[str]]:
    known, problems = _own_header(header)
    rows: list[_Row] = []
    if problems:
        return rows, problems
    # Per column, decided once: a tag's key, or a field and the parser of its cells.
    tag_columns = [(i, c[len(TAG_PREFIX) :]) for i, c in known.items() if c.startswith(TAG_PREFIX)]
    field_columns = [(i, c, _PARSERS.get(c, str)) for i, c in known.items() if not c.startswith(TAG_PREFIX)]
    width = len(header)
    for number, record in body:
        if len(record) < width:
            record = record + [""] * (width - len(record))  # noqa: PLW2901 - a short row's empty cells
        row = _Row(number, {}, {})
        for index, column, parse in field_columns:
            cell = record[index].strip()
            if cell:
                row.columns[column] = column
                try:
                    row.fields[column] = parse(cell)
                except ValueError as exc:
                    row.problems.append((column, str(exc)))
        tags = {key: cell for index, key in tag_columns if (cell := record[index].strip())}
        if tags:
            row.fields["tags"] = tags
        if len(record) > len(header) and any(c.strip() for c in record[len(header) :]):
            row.problems.append((None, f"has {len(record)} cells, more than the header's {len(header)}"))
        rows.append(row)
    return rows, problems


def _whole(cell: str) -> int:
    try:
        number = float(cell)
    except ValueError:
        number = math.nan
    if not number.is_integer():  # text, NaN, infinite or a fraction
        raise ValueError(f"{cell!r} is not a whole number")
    return int(number)


def _number(cell: str) -> float:
    try:
        return float(cell)
    except ValueError:
        raise ValueError(f"{cell!r} is not a number") from None


def _one_of(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(cell: str) -> str:
        if cell not in choices:
            raise ValueError(f"{cell!r} is not one of {', '.join(choices)}")
        return cell

    return parse


_PARSERS: Final[dict[str, Callable[[str], object]]] = {
    "id": _whole,
    "interval_ms": _whole,
    "heartbeat_ms": _whole,
    "scale": _number,
    "offset": _number,
    "deadband": _number,
    "value_type": _one_of(get_args(ValueType)),
    "report": _one_of(get_args(Report)),
}
"""How a cell becomes a field's value (else it is the text itself); a ValueError says why not."""


def _kepware_rows(
    label: str, header: list[str], body: Iterable[tuple[int, list[str]]], word_order: str
) -> tuple[list[_Row], list[str]]:
    columns = [_kepware.canonical_column(h) for h in header]
    ignored = sorted({c for c in columns if c and c not in _kepware.KEPWARE_COLUMNS})
    if ignored:
        logger.warning("%s: Kepware columns not carried over: %s", label, ", ".join(ignored))
    if word_order not in ("ABCD", "CDAB", "BADC", "DCBA"):
        return [], [f"kepware_word_order {word_order!r} is not one of ABCD, CDAB, BADC, DCBA"]
    rows: list[_Row] = []
    for number, record in body:
        cells = {column: record[i] if i < len(record) else "" for i, column in enumerate(columns)}
        fields, problems = _kepware.translate_row(cells, word_order)
        rows.append(
            _Row(
                number,
                fields,
                dict(_KEPWARE_FIELD_COLUMNS),
                [(column, message) for column, message in problems],
            )
        )
    return rows, []


def _build(
    label: str, rows: list[_Row], reader: str | DataReader, reader_type: str, defaults: Mapping[str, Any]
) -> list[Variable]:
    problems: list[str] = []
    variables: list[Variable] = []
    first_row: dict[tuple[str, object], int] = {}
    default_tags = dict(defaults.get("tags") or {})
    plain_defaults = {k: v for k, v in defaults.items() if k != "tags"}

    def say(row: _Row, column: str | None, message: str) -> None:
        where = f"{label} row {row.number}" + (
            f", column {row.columns.get(column, column)}" if column else ""
        )
        problems.append(f"{where}: {message}")

    for row in rows:
        for column, message in row.problems:
            say(row, column, message)
        if row.problems:
            continue
        fields = {**plain_defaults, **row.fields, "reader": reader_type}
        tags = {**default_tags, **row.fields.get("tags", {})}
        if tags:
            fields["tags"] = tags
        if "id" not in fields and "address" in fields:
            fields["id"] = stable_id(reader_type, str(fields.get("name") or fields["address"]))
        try:
            variable = Variable(**fields)
            if isinstance(reader, DataReader):
                validate_for_reader(variable, reader)
        except ValidationError as exc:
            for error in exc.errors():
                say(row, str(error["loc"][0]) if error["loc"] else None, _message(error))
            continue
        except ValueError as exc:  # the reader's own check of the address
            say(row, "address", str(exc))
            continue
        repeated = _repeated(first_row, row, variable)
        if repeated is not None:
            say(row, *repeated)
            continue
        variables.append(variable)
    if problems:
        raise ConfigError(problems)
    return variables


def _repeated(
    first_row: dict[tuple[str, object], int], row: _Row, variable: Variable
) -> tuple[str, str] | None:
    """(column, message) when the row's id or name was used by an earlier row; notes both."""
    earlier = first_row.setdefault(("id", variable.id), row.number)
    if earlier != row.number:
        derived = "" if "id" in row.fields else " (derived from the name or address: give the rows ids)"
        return "id", f"id {variable.id} is already used by row {earlier}{derived}"
    if variable.name is not None:
        earlier = first_row.setdefault(("name", variable.name), row.number)
        if earlier != row.number:
            return "name", f"name {variable.name!r} is already used by row {earlier}"
    return None


def _message(error: Mapping[str, Any]) -> str:
    text = str(error["msg"])
    return text.removeprefix("Value error, ")
