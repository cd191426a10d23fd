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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, get_args

from pydantic import ValidationError

from flowcollect._bulk import paused_gc
from flowcollect._ids import stable_id
from flowcollect.errors import ConfigError
from flowcollect.models import Report, ValueType, Variable, share_fields_set
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


class _Empty:
    """An empty cell: the field takes its default."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<empty>"


_EMPTY: Final = _Empty()


@dataclass(slots=True)
class _Table:
    """A tag list's rows, parsed: per row its number, its fields and its problems.

    Built a column at a time (a parser over a whole column is a comprehension, not a call per
    cell), with no object per row but the fields dict the ``Variable`` is made from.
    """

    numbers: list[int]
    """The rows' numbers as a spreadsheet shows them (the header is row 1)."""
    fields: Iterator[dict[str, Any]]
    """Per row, its fields; made as they are taken (one row's dict alive at a time)."""
    columns: Mapping[str, str]
    """Field -> the column it came from, for messages (the same for every row of a format)."""
    problems: dict[int, list[tuple[str | None, str]]] = field(default_factory=dict)
    """Row position -> (column, message) of each cell that could not be parsed, in column order."""
    suspect: set[int] | None = None
    """Positions of the rows whose values the columns' checks could not vouch for (``_TRUSTED``);
    None: no row vouched for. Those rows are validated by ``Variable`` itself, the others are made
    from a validated template (see ``_build``)."""


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
    # The records, cells and variables form no reference cycles: a collection during the build
    # would walk them all and free nothing (flowcollect/_bulk.py).
    with paused_gc():
        return _parse(label, text, reader, reader_type, kepware_word_order, defaults)


def _parse(
    label: str,
    text: str,
    reader: str | DataReader,
    reader_type: str,
    kepware_word_order: str,
    defaults: Mapping[str, Any],
) -> list[Variable]:
    records = list(csv.reader(io.StringIO(text), _dialect(text)))
    header_at = next((i for i, record in enumerate(records) if _filled(record)), None)
    if header_at is None:
        raise ConfigError(f"{label}: has no header row (expected columns such as id, name, address)")
    header = records[header_at]
    numbers = [i + 1 for i in range(header_at + 1, len(records)) if _filled(records[i])]
    body = [records[number - 1] for number in numbers]
    del records  # the body's records are consumed (and freed) by the table
    if _kepware.is_kepware(header):
        table, header_problems = _kepware_rows(label, header, numbers, body, kepware_word_order)
    else:
        table, header_problems = _own_rows(header, numbers, body)
    if header_problems:
        raise ConfigError([f"{label} row {header_at + 1}: {p}" for p in header_problems])
    return _build(label, table, reader, reader_type, defaults)


def _filled(record: list[str]) -> bool:
    """Whether a record has a cell that is not blank (one C-level join, not a call per cell)."""
    return bool("".join(record).strip())


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


def _own_rows(header: list[str], numbers: list[int], records: list[list[str]]) -> tuple[_Table, list[str]]:
    """The rows of our own format; ``records`` (the body's, one per number) is consumed."""
    known, problems = _own_header(header)
    if problems:
        return _Table(numbers, iter(()), {}), problems
    width = len(header)
    cell_problems: dict[int, list[tuple[str | None, str]]] = {}
    suspect: set[int] = set()
    longer: list[tuple[int, int]] = []
    for position, record in enumerate(records):
        if len(record) < width:  # a short row's missing cells are empty
            records[position] = record + [""] * (width - len(record))
        elif len(record) > width and _filled(record[width:]):
            longer.append((position, len(record)))
    # A column at a time: its cells stripped, then parsed in one pass.
    names: list[str] = []
    columns: list[list[Any]] = []
    tag_keys: list[str] = []
    tag_cells: list[list[str]] = []
    for index, column in known.items():
        cells = [record[index].strip() for record in records]
        if column.startswith(TAG_PREFIX):
            tag_keys.append(column[len(TAG_PREFIX) :])
            tag_cells.append(cells)
        else:
            names.append(column)
            columns.append(_parse_column(column, cells, cell_problems))
            check = _TRUSTED.get(column)
            if check is not None:
                suspect.update(
                    p for p, value in enumerate(columns[-1]) if value is not _EMPTY and not check(value)
                )
    for position, cells_given in longer:
        cell_problems.setdefault(position, []).append(
            (None, f"has {cells_given} cells, more than the header's {width}")
        )
    # The records are in the columns now: free them before any Variable is made (alive, they
    # would be walked by every collection of the garbage collector while the variables are built).
    count = len(records)
    records.clear()
    rows = zip(*columns, strict=True) if columns else iter([()] * count)
    tags = zip(*tag_cells, strict=True) if tag_cells else iter([()] * count)
    full = not any(_EMPTY in column for column in columns) and not any("" in cells for cells in tag_cells)
    fields = (_full_fields if full else _own_fields)(names, rows, tag_keys, tags)
    if "address" in names:  # a row without one: Variable says it is required
        addresses = columns[names.index("address")]
        suspect.update(p for p, value in enumerate(addresses) if value is _EMPTY)
    return _Table(numbers, fields, {c: c for c in known.values()}, cell_problems, suspect), problems


def _own_fields(
    names: list[str], rows: Iterator[tuple[Any, ...]], tag_keys: list[str], tags: Iterator[tuple[str, ...]]
) -> Iterator[dict[str, Any]]:
    """Each row's fields: its non-empty cells, and its tags."""
    for values, row_tags in zip(rows, tags, strict=True):
        fields = {name: value for name, value in zip(names, values, strict=True) if value is not _EMPTY}
        given = {key: cell for key, cell in zip(tag_keys, row_tags, strict=True) if cell}
        if given:
            fields["tags"] = given
        yield fields


def _full_fields(
    names: list[str], rows: Iterator[tuple[Any, ...]], tag_keys: list[str], tags: Iterator[tuple[str, ...]]
) -> Iterator[dict[str, Any]]:
    """``_own_fields`` of a table without an empty cell (the usual export): no cell to leave out."""
    for values, row_tags in zip(rows, tags, strict=True):
        fields = dict(zip(names, values, strict=True))
        if tag_keys:
            fields["tags"] = dict(zip(tag_keys, row_tags, strict=True))
        yield fields


def _parse_column(
    column: str, cells: list[str], problems: dict[int, list[tuple[str | None, str]]]
) -> list[Any]:
    """The column's values (``_EMPTY`` for an empty cell); a cell that does not parse is noted in
    ``problems`` under its row's position, and is ``_EMPTY`` here."""
    parse = _PARSERS.get(column)
    if parse is None:  # text: the cell itself
        return [cell or _EMPTY for cell in cells]
    # The common case first, all at once: every cell parses with the builtin that the column's
    # own parser tries first (so a value is the same either way); else cell by cell, for messages.
    quick = _QUICK.get(column)
    if quick is not None:
        try:
            return [quick(cell) if cell else _EMPTY for cell in cells]
        except ValueError:
            pass
    values: list[Any] = []
    for position, cell in enumerate(cells):
        if not cell:
            values.append(_EMPTY)
            continue
        try:
            values.append(parse(cell))
        except ValueError as exc:
            values.append(_EMPTY)
            problems.setdefault(position, []).append((column, str(exc)))
    return values


def _whole(cell: str) -> int:
    try:
        return int(cell)  # exact, however large (a float would round above 2**53)
    except ValueError:
        pass
    try:
        number = float(cell)  # '1e3', '10.0'
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


def _member_of(choices: tuple[str, ...]) -> Callable[[str], str]:
    """``_one_of`` without its message: the quick pass (a ValueError sends the column to it)."""
    allowed = frozenset(choices)

    def parse(cell: str) -> str:
        if cell not in allowed:
            raise ValueError(cell)
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

_TRUSTED: Final[dict[str, Callable[[Any], bool]]] = {
    "id": lambda v: v > 0,
    "interval_ms": lambda v: v > 0,
    "heartbeat_ms": lambda v: v > 0,
    "scale": math.isfinite,
    "offset": math.isfinite,
    "deadband": lambda v: math.isfinite(v) and v >= 0,
}
"""Per parsed column whose values ``Variable`` constrains further, the values it accepts as they
are (its ``gt=0``, ``ge=0`` and finite checks; an infinite deadband, which it accepts, is left to
it). The parsers make the rest of a row's values what ``Variable`` accepts: whole numbers, numbers,
one of the literals, texts stripped and not empty, tag names from the header (never blank). A row
with a value outside these is validated by ``Variable`` itself, for its message.
tests/tags/test_fast_rows.py holds the two paths to the same verdicts and the same variables."""

_QUICK: Final[dict[str, Callable[[str], object]]] = {
    "id": int,
    "interval_ms": int,
    "heartbeat_ms": int,
    "scale": float,
    "offset": float,
    "deadband": float,
    "value_type": _member_of(get_args(ValueType)),
    "report": _member_of(get_args(Report)),
}
"""Per parsed column, what its parser tries first: where it accepts a cell, the parser gives the
same value (``_whole`` tries ``int`` first; ``_number`` is ``float``), so a column that parses
this way whole needs no call per cell to the parser."""


def _kepware_rows(
    label: str, header: list[str], numbers: list[int], body: list[list[str]], word_order: str
) -> tuple[_Table, list[str]]:
    columns = [_kepware.canonical_column(h) for h in header]
    ignored = sorted({c for c in columns if c and c not in _kepware.KEPWARE_COLUMNS})
    if ignored:
        logger.warning("%s: Kepware columns not carried over: %s", label, ", ".join(ignored))
    if word_order not in ("ABCD", "CDAB", "BADC", "DCBA"):
        return _Table(numbers, iter(()), {}), [
            f"kepware_word_order {word_order!r} is not one of ABCD, CDAB, BADC, DCBA"
        ]
    rows: list[dict[str, Any]] = []
    cell_problems: dict[int, list[tuple[str | None, str]]] = {}
    for position, record in enumerate(body):
        cells = {column: record[i] if i < len(record) else "" for i, column in enumerate(columns)}
        fields, problems = _kepware.translate_row(cells, word_order)
        rows.append(fields)
        if problems:
            cell_problems[position] = [(column, message) for column, message in problems]
    return _Table(numbers, iter(rows), _KEPWARE_FIELD_COLUMNS, cell_problems), []


def _build(
    label: str, table: _Table, reader: str | DataReader, reader_type: str, defaults: Mapping[str, Any]
) -> list[Variable]:
    problems: list[str] = []
    variables: list[Variable] = []
    # The first row of each id and name, for the message naming a repeated one.
    id_rows: dict[int, int] = {}
    name_rows: dict[str, int] = {}
    default_tags = dict(defaults.get("tags") or {})
    plain_defaults = {k: v for k, v in defaults.items() if k != "tags"}
    columns = table.columns
    checked = reader if isinstance(reader, DataReader) else None
    # The defaults, validated once (read_csv checked them): a row the table vouches for is this
    # template's copy with the row's values (``model_copy``: pydantic's documented way to make
    # a model from values already validated), a third of the cost of validating it again.
    given: dict[str, Any] = {**plain_defaults, **({"tags": default_tags} if default_tags else {})}
    template = Variable(id=1, address="-", reader=reader_type, **given)

    def where(number: int, column: str | None) -> str:
        return f"{label} row {number}" + (f", column {columns.get(column, column)}: " if column else ": ")

    def say(number: int, column: str | None, message: str) -> None:
        problems.append(where(number, column) + message)

    # The per-row calls of the fast path are written out here: 100,000 rows pass through.
    suspect = table.suspect
    problem_rows = table.problems
    # Variable's rule across fields can fail only with a deadband or a heartbeat somewhere.
    free = (
        template.deadband is None
        and template.heartbeat_ms is None
        and not ({"deadband", "heartbeat_ms"} & columns.keys())
    )
    validate = checked.validate if checked is not None else None
    for position, (number, row) in enumerate(zip(table.numbers, table.fields, strict=True)):
        if position in problem_rows:
            problems.extend(where(number, column) + message for column, message in problem_rows[position])
            continue
        derived = "id" not in row
        try:
            if _vouched_for(suspect, position, None if free else template, row):
                variable = _copied(template, row, reader_type)
            else:
                variable = _validated(row, plain_defaults, default_tags, reader_type)
            if validate is not None:
                if variable.value_type is None:
                    validate_for_reader(variable, checked)  # type: ignore[arg-type]
                else:
                    validate(variable)
        except ValidationError as exc:
            for error in exc.errors():
                column = str(error["loc"][0]) if error["loc"] else _across(row)
                say(number, column, _message(error))
            continue
        except ValueError as exc:  # the reader's own check of the address
            say(number, "address", str(exc))
            continue
        # Repeated ids and names (see _repeated, which words the message).
        if id_rows.setdefault(variable.id, number) != number or (
            variable.name is not None and name_rows.setdefault(variable.name, number) != number
        ):
            say(number, *_repeated(id_rows, name_rows, number, variable, derived=derived))
            continue
        variables.append(variable)
    if problems:
        raise ConfigError(problems)
    return variables


def _validated(
    row: dict[str, Any], defaults: Mapping[str, Any], default_tags: Mapping[str, str], reader_type: str
) -> Variable:
    """A row's variable, validated by ``Variable`` (``ValidationError`` naming each bad field)."""
    fields = {**defaults, **row, "reader": reader_type}
    tags = {**default_tags, **row["tags"]} if "tags" in row else default_tags
    if tags:
        fields["tags"] = tags
    if "id" not in fields and "address" in fields:
        fields["id"] = _derived_id(reader_type, fields)
    return Variable(**fields)


def _copied(template: Variable, row: dict[str, Any], reader_type: str) -> Variable:
    """A row the table vouches for: the template's copy with its values. The same variable as
    ``_validated`` makes (fields, tags and the fields set), without validating it twice."""
    if "tags" not in row:
        tags = template.tags
        if tags:
            tags = row["tags"] = {**tags}  # a dict of its own, never the template's
        # (none: the template's, the one read-only empty dict of every variable without tags)
    elif template.tags:
        tags = row["tags"] = {**template.tags, **row["tags"]}
    else:
        tags = row["tags"]  # the row's own dict (made for it by the table)
    if "id" not in row:
        row["id"] = _derived_id(reader_type, row)
    variable = template.model_copy(update=row)
    if not tags:  # as Variable(...) given no tags: the default, not a field set
        variable.model_fields_set.discard("tags")
    share_fields_set(variable)  # as Variable(...) does (its dict is the template's kind already)
    return variable


def _vouched_for(
    suspect: set[int] | None, position: int, template: Variable | None, row: Mapping[str, Any]
) -> bool:
    """Whether the row at ``position`` may be made without validating it again: its columns'
    checks vouched for each value (it is not ``suspect``), and ``Variable``'s rule across
    fields holds over the ``template``'s defaults (None: no default and no column can break it)."""
    return (
        suspect is not None
        and position not in suspect
        and (template is None or _reports_right(template, row))
    )


def _reports_right(template: Variable, row: Mapping[str, Any]) -> bool:
    """Whether ``Variable``'s one rule across fields holds for the row over the defaults:
    ``deadband`` and ``heartbeat_ms`` only with ``report="change"``."""
    if row.get("report", template.report) == "change":
        return True
    return (
        row.get("deadband", template.deadband) is None
        and row.get("heartbeat_ms", template.heartbeat_ms) is None
    )


def _derived_id(reader_type: str, fields: Mapping[str, Any]) -> int:
    return stable_id(reader_type, str(fields.get("name") or fields["address"]))


def _repeated(
    id_rows: dict[int, int], name_rows: dict[str, int], number: int, variable: Variable, *, derived: bool
) -> tuple[str, str]:
    """(column, message) for a row whose id or name an earlier row used (noted in the dicts)."""
    earlier = id_rows[variable.id]
    if earlier != number:
        why = " (derived from the name or address: give the rows ids)" if derived else ""
        return "id", f"id {variable.id} is already used by row {earlier}{why}"
    return "name", f"name {variable.name!r} is already used by row {name_rows[variable.name or '']}"


def _across(row: Mapping[str, Any]) -> str | None:
    """The column to name for ``Variable``'s rule across fields (a deadband or heartbeat only
    with ``report="change"``): the row's cell that set one, else its report cell, else none (the
    defaults broke it)."""
    for column in ("deadband", "heartbeat_ms", "report"):
        if column in row:
            return column
    return None


def _message(error: Mapping[str, Any]) -> str:
    text = str(error["msg"])
    return text.removeprefix("Value error, ")
