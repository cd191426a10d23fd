"""``flowcollect scan``: the Modbus scan on the command line."""

from __future__ import annotations

import sys
from enum import StrEnum
from typing import Annotated

import typer

from flowcollect._exit import exit_with
from flowcollect.errors import ConfigError
from flowcollect.scan._client import parse_target, pymodbus_probe
from flowcollect.scan._modbus import Table, scan_units
from flowcollect.scan._report import report_csv, report_text

__all__ = ["parse_numbers", "parse_span", "scan_command"]


class TableName(StrEnum):
    holding = "holding"
    input = "input"
    coils = "coils"
    discrete = "discrete"


class Format(StrEnum):
    table = "table"
    csv = "csv"


def parse_numbers(text: str, low: int, high: int, what: str) -> list[int]:
    """``"1-247"``, ``"1,3,10-12"`` -> the numbers, each within ``low..high``."""
    out: list[int] = []
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        try:
            a, b = int(first), int(last or first)
        except ValueError:
            raise ConfigError(f"{what} {text!r}: expected numbers and ranges such as 1-10,12") from None
        if not low <= a <= b <= high:
            raise ConfigError(f"{what} {text!r}: {part.strip()!r} must be a range within {low}..{high}")
        out += range(a, b + 1)
    return sorted(set(out))


_TABLES: dict[TableName, Table] = {
    TableName.holding: "holding",
    TableName.input: "input",
    TableName.coils: "coil",
    TableName.discrete: "discrete",
}


def parse_span(text: str) -> tuple[int, int]:
    """``"0-9999"`` -> (0, 9999): one inclusive range of addresses."""
    first, _, last = text.strip().partition("-")
    try:
        a, b = int(first), int(last or first)
    except ValueError:
        raise ConfigError(f"--range {text!r}: expected FIRST-LAST, such as 0-9999") from None
    if not 0 <= a <= b <= 65535:
        raise ConfigError(f"--range {text!r}: must be within 0..65535, first <= last")
    return a, b


def scan_command(
    url: Annotated[
        str,
        typer.Argument(
            help="modbus://HOST:PORT, modbus+rtu-tcp://HOST:PORT or modbus+rtu:///dev/ttyUSB0?baudrate=19200"
        ),
    ],
    units: Annotated[str, typer.Option("--units", help="Unit ids to try: 1-247, 1,2,5-8.")] = "1-247",
    table: Annotated[
        list[TableName] | None, typer.Option("--table", help="Table(s) to scan (repeat).")
    ] = None,
    span: Annotated[str, typer.Option("--range", help="Addresses to scan, inclusive: 0-9999.")] = "0-9999",
    rate: Annotated[float, typer.Option("--rate", min=0.1, help="Requests per second at most.")] = 50.0,
    timeout: Annotated[
        float, typer.Option("--timeout", min=0.01, help="Seconds to wait for each answer.")
    ] = 0.5,
    max_time: Annotated[
        float, typer.Option("--max-time", min=1, help="Seconds the whole scan may take.")
    ] = 300.0,
    resolution: Annotated[
        int, typer.Option("--resolution", min=1, help="Split refused blocks down to N addresses (1: exact).")
    ] = 1,
    output: Annotated[
        Format, typer.Option("--format", help="table: for reading; csv: a tag list.")
    ] = Format.table,
) -> None:
    """Find which units answer, which addresses read and which answer with an exception, and the
    largest request each unit accepts. Reads only (never writes), one request at a time."""
    try:
        target = parse_target(url)
        unit_ids = parse_numbers(units, 0, 247, "--units")
        first, last = parse_span(span)
        tables = [_TABLES[t] for t in table or [TableName.holding]]
        with pymodbus_probe(target, timeout) as probe:
            report = scan_units(
                probe,
                unit_ids,
                tables,
                first,
                last,
                pause_s=1.0 / rate,
                max_time_s=max_time,
                resolution=resolution,
            )
    except (ConfigError, OSError) as exc:
        exit_with(exc)
    if output is Format.csv:
        sys.stdout.write(report_csv(report))
        sys.stderr.write(report_text(str(target), report).splitlines()[-1] + "\n")
    else:
        sys.stdout.write(report_text(str(target), report))
    if not report.complete:
        raise typer.Exit(2)
