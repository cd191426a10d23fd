"""``{member}`` in a writer's file paths: one pipeline file for every member of a group.

Members of a group run the same pipeline file, often on one host or a shared folder: two
members writing one CSV file, or opening one spool folder (its lock refuses the second), cannot
work. A CSV path or a spool folder may name ``{member}``; the group run puts the member's id
there before anything opens (``for_member``), and a run outside a group refuses such a
path (``unresolved_member_paths``) rather than write a file called ``{member}.csv``.

Done here, where the pipeline's writers are built and run, not inside the writers: a CSV
writer's path is changed before it opens (the template remembered, so a second run starts from
it again), and a spool from the pipeline's ``spools`` option is built again for the member's
folder.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowcollect.errors import ConfigError
from flowcollect.writers.base import DataWriter
from flowcollect.writers.csvfile import CsvFileDataWriter
from flowcollect.writers.spool import SpooledWriter

if TYPE_CHECKING:
    from flowcollect.pipeline._model import Pipeline

__all__ = ["MEMBER", "for_member", "unresolved_member_paths"]

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


def _check(member_id: str) -> None:
    if member_id in (".", "..") or "/" in member_id or not member_id.strip():
        raise ConfigError(
            f"member id {member_id!r} cannot name a file: {MEMBER} in a path needs a plain name"
        )


def _csv_paths(writer: DataWriter, member_id: str) -> list[tuple[str, str]]:
    """The CSV writers' paths (in place: a CSV writer reads its path when it opens)."""
    changed = []
    for holder in _holders([writer]):
        if not isinstance(holder, CsvFileDataWriter):
            continue
        template = _template(holder)
        if MEMBER not in template:
            continue
        setattr(holder, _TEMPLATE, template)
        holder.path = Path(template.replace(MEMBER, member_id))
        changed.append((template, str(holder.path)))
    return changed


def for_member(pipeline: Pipeline, member_id: str) -> tuple[Pipeline, list[tuple[str, str]]]:
    """A copy of ``pipeline`` whose writers' ``{member}`` paths name ``member_id``, and the
    ``(template, path)`` changes. Call before the writers open.

    A CSV writer's path is set in place (it is read when the file opens). A spool folder from
    the pipeline's ``spools`` option is built again for the member's folder (a spool takes its
    folder when it is built): ``spools`` keeps the template, so a later run starts from it."""
    _check(member_id)
    changed: list[tuple[str, str]] = []
    writers: list[DataWriter] = []
    for writer in pipeline.writers:
        options = pipeline.spools.get(writer.name) if isinstance(writer, SpooledWriter) else None
        if isinstance(writer, SpooledWriter) and options is not None and MEMBER in str(options.path):
            inner = writer.writer
            changed += _csv_paths(inner, member_id)
            folder = Path(str(options.path).replace(MEMBER, member_id))
            changed.append((str(options.path), str(folder)))
            writers.append(SpooledWriter.from_options(inner, options.model_copy(update={"path": folder})))
        else:
            changed += _csv_paths(writer, member_id)
            writers.append(writer)
    return pipeline.model_copy(update={"writers": writers}), changed
