"""``flowcollect import ...``: the importers on the command line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from flowcollect._exit import exit_with
from flowcollect.errors import ConfigError
from flowcollect.importers._telegraf import import_telegraf

__all__ = ["import_app"]

import_app = typer.Typer(
    help="Bring another collector's configuration over as a pipeline file.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@import_app.command("telegraf")
def telegraf(
    config: Annotated[Path, typer.Argument(help="The Telegraf configuration (telegraf.conf).")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the pipeline here instead of stdout.")
    ] = None,
) -> None:
    """Translate Telegraf's modbus, opcua and opcua_listener inputs and its influxdb and
    influxdb_v2 outputs into a pipeline file that keeps Telegraf's measurement, field and tag
    names; every option not carried over is named on stderr."""
    try:
        result = import_telegraf(config)
    except ConfigError as exc:
        exit_with(exc)
    if output is None:
        sys.stdout.write(result.source)
    else:
        output.write_text(result.source, encoding="utf-8")
    for note in result.notes:
        sys.stderr.write(f"not carried over: {note}\n")
    target = "stdout" if output is None else str(output)
    sys.stderr.write(
        f"imported {config.name} to {target}: {result.source.count('    Variable(')} variables, "
        f"{len(result.notes)} option(s) not carried over; check it with `flowcollect check`\n"
    )
