"""How a command that cannot do its work ends: one ``error:`` line per problem, exit status 1."""

from __future__ import annotations

import sys
from typing import NoReturn

import typer

from flowcollect.errors import ConfigError

__all__ = ["exit_with"]


def exit_with(error: BaseException | str) -> NoReturn:
    """Say what is wrong on stderr (every problem of a ``ConfigError``) and exit with 1."""
    problems = error.problems if isinstance(error, ConfigError) else [str(error)]
    for problem in problems:
        sys.stderr.write(f"error: {problem}\n")
    raise typer.Exit(1)
