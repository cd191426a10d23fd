"""``{member}`` in a writer's file paths: one pipeline file for every member of a group.

Members of a group run the same pipeline file, often on one host or a shared folder: two
members writing one CSV file, or opening one spool folder (its lock refuses the second), cannot
work. A CSV path or a spool folder may name ``{member}``; the group run puts the member's id
there before anything opens (``substitute_member``), and a run outside a group refuses such a
path (``unresolved_member_paths``) rather than write a file called ``{member}.csv``.

Done here, where the pipeline's writers are built and run, not inside the writers: a writer
keeps one path; this module changes it before the writer opens, and remembers the template so
a second run (another member id) starts from it again.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from flowcollect.errors import ConfigError
from flowcollect.writers.base import DataWriter
from flowcollect.writers.csvfile import CsvFileDataWriter
from flowcollect.writers.spool import SpooledWriter

__all__ = ["MEMBER", "substitute_member", "unresolved_member_paths"]

MEMBER = "{member}"
_TEMPLATE = "_flowcollect_path_template"


def _holders(writers: Iterable[DataWriter]) -> Iterator[Any]:
    """Every object with a file ``path`` the member's id may go into: CSV writers and spools
    (a spool's folder, then the writer behind it)."""
    for writer in writers:
        inner: Any = writer
        while True:
            if isinstance(inner, CsvFileDataWriter | SpooledWriter):
                yield inner
            if not isinstance(inner, SpooledWriter):
                break
            inner = inner.writer


def _template(holder: Any) -> str:
    template = getattr(holder, _TEMPLATE, None)
    return str(holder.path) if template is None else str(template)


def unresolved_member_paths(writers: Iterable[DataWriter]) -> list[str]:
    """One line per path that still names ``{member}`` (a run outside a group cannot fill it)."""
    return [
        f"writer {holder.name}: path {holder.path} names {MEMBER}, a group member's id: run it with "
        f"--group (run_in_group), or give the path without {MEMBER}"
        for holder in _holders(writers)
        if MEMBER in str(holder.path)
    ]


def substitute_member(writers: Iterable[DataWriter], member_id: str) -> list[tuple[str, str]]:
    """Put ``member_id`` where a writer's path names ``{member}``; ``(template, path)`` per change.

    Call before the writers open (their paths are read when they open)."""
    if member_id in (".", "..") or "/" in member_id or not member_id.strip():
        raise ConfigError(
            f"member id {member_id!r} cannot name a file: {MEMBER} in a path needs a plain name"
        )
    changed = []
    for holder in _holders(writers):
        template = _template(holder)
        if MEMBER not in template:
            continue
        setattr(holder, _TEMPLATE, template)
        holder.path = Path(template.replace(MEMBER, member_id))
        changed.append((template, str(holder.path)))
    return changed
