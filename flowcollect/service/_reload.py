"""Reload: a changed pipeline file applied as a difference, without a gap.

The file is loaded and checked completely first (a broken file changes nothing and says why, by
field). Then only what differs is touched:

- readers: compared lane by lane, by their options (``flowcollect._options``: the class and the
  arguments the file built them with). A lane whose readers all have the same options keeps its
  running readers (connections, schedule, thread); any other lane (a reader's options changed,
  a type added to it or gone) is replaced whole by the file's new readers, handing over between
  two instants (``DataCollector.replace_readers``).
- writers: by name, then options. Same options: the running writer stays (queue, spool,
  connection); otherwise the file's new one takes over from the next batch, and the old one
  writes what it has queued, flushes and closes, its figures kept under its name
  (``DataCollector.replace_writers``). A spooled writer replaced on its own spool folder (its
  inner writer's options changed) opens the folder once the old one has closed, and sends
  what it left there (``SpooledWriter.take_over``).
- the pipeline's contexts: added ones started, removed ones stopped, changed ones restarted (a
  running context the new readers would collect otherwise, too). A context that did not change
  is not touched, so it misses no instant and gets no duplicate.

Devices, listeners and the collector's own settings (interval-limit policy, queue limit, close
timeout) are kept as they run; a change to them is named in the summary's notes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowcollect._options import options_key
from flowcollect.collector import DataCollector
from flowcollect.compile import compile_context, lane_keys
from flowcollect.errors import ConfigError, PreflightError
from flowcollect.models import DataCollectionContext
from flowcollect.pipeline import Pipeline, load_pipeline
from flowcollect.readers.base import DataReader
from flowcollect.writers.base import DataWriter, preflight_problems, writer_problems
from flowcollect.writers.spool import SpooledWriter

__all__ = ["ReloadPlan", "ReloadResult", "plan_reload", "prepare_reload"]

_log = logging.getLogger("flowcollect.service")


@dataclass(frozen=True, slots=True)
class Parts:
    """What happens to one kind of part (readers by type, writers by name)."""

    replaced: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[str]]:
        return {"replaced": self.replaced, "added": self.added, "removed": self.removed}

    def any(self) -> bool:
        return bool(self.replaced or self.added or self.removed)


@dataclass(frozen=True, slots=True)
class ReloadResult:
    added: list[int] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    changed: list[int] = field(default_factory=list)
    unchanged: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    readers: Parts = field(default_factory=Parts)
    writers: Parts = field(default_factory=Parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "removed": self.removed,
            "changed": self.changed,
            "unchanged": self.unchanged,
            "readers": self.readers.as_dict(),
            "writers": self.writers.as_dict(),
            "notes": self.notes,
        }

    def line(self) -> str:
        parts = [
            f"{name} {ids}"
            for name, ids in (
                ("added", self.added),
                ("removed", self.removed),
                ("changed", self.changed),
                ("unchanged", self.unchanged),
            )
            if ids
        ]
        for kind, what in (("readers", self.readers), ("writers", self.writers)):
            parts += [f"{kind} {how} {names}" for how, names in what.as_dict().items() if names]
        return "reload: " + ("; ".join(parts) if parts else "nothing changed")


def _definition(context: DataCollectionContext) -> dict[str, Any]:
    return context.model_dump(mode="json", exclude={"start_date", "end_date"})


def plan_reload(
    old: list[DataCollectionContext], new: list[DataCollectionContext], running: set[int]
) -> ReloadResult:
    """Which of the pipeline's contexts to start, stop and restart, by their definitions (pure)."""
    before = {c.id: _definition(c) for c in old}
    after = {c.id: _definition(c) for c in new}
    result = ReloadResult()
    for cid, definition in after.items():
        if cid not in before:
            result.added.append(cid)
        elif before[cid] != definition:
            result.changed.append(cid)
        else:
            result.unchanged.append(cid)
    result.removed.extend(cid for cid in before if cid not in after and cid in running)
    return result


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """Everything a reload will do, decided and checked before anything changes."""

    pipeline: Pipeline
    readers: list[DataReader]
    """The collector's readers after the reload: the running objects of the lanes kept, the
    file's new ones for the lanes replaced or added."""
    writers: list[DataWriter]
    """The same for writers (without the service's own latest-values writer)."""
    result: ReloadResult


def _load(path: Path) -> Pipeline:
    try:
        return load_pipeline(path)
    except Exception as exc:  # PipelineLoadError, pydantic's ValidationError: said as they are
        raise ConfigError(f"{path}: {exc}") from None


def _readers(running: dict[str, DataReader], new: Pipeline) -> tuple[list[DataReader], Parts]:
    """Lane by lane: the running readers where the lane has the same reader types and each of
    them the same options, the file's new ones elsewhere. Lanes are matched by their types, not
    their keys: a key may hold what a device set on its reader (an embedded simulator's port)."""
    lane_of = {t: types for types in lane_keys(running.values()).values() for t in types}
    fresh = {r.type: r for r in new.readers}
    parts = Parts()
    kept: set[str] = set()
    for types in lane_keys(new.readers).values():
        same = all(
            lane_of.get(t) == types and options_key(running[t]) == options_key(fresh[t]) for t in types
        )
        for t in types:
            if same:
                kept.add(t)
            else:
                (parts.replaced if t in running else parts.added).append(t)
    # In the file's order: a lane's readers are in the order they were given.
    out = [running[r.type] if r.type in kept else r for r in new.readers]
    parts.removed.extend(sorted(t for t in running if t not in fresh))
    parts.replaced.sort()
    parts.added.sort()
    return out, parts


def _writers(running: list[DataWriter], new: Pipeline) -> tuple[list[DataWriter], Parts]:
    by_name = {w.name: w for w in running}
    out: list[DataWriter] = []
    parts = Parts()
    for writer in new.writers:
        now = by_name.get(writer.name)
        if now is not None and options_key(now) == options_key(writer):
            out.append(now)
            continue
        (parts.replaced if now is not None else parts.added).append(writer.name)
        out.append(writer)
    names = {w.name for w in new.writers}
    parts.removed.extend(sorted(n for n in by_name if n not in names))
    return out, parts


def prepare_reload(
    path: Path,
    collector: DataCollector,
    definitions: list[DataCollectionContext],
    own_writers: list[DataWriter],
    previous: Pipeline | None = None,
) -> ReloadPlan:
    """Load the file, decide what to keep and replace, and check it all: ``ConfigError`` listing
    every problem (nothing changed). ``definitions``: the pipeline's contexts as last loaded;
    ``own_writers``: the service's writers (kept as they are, never the file's); ``previous``:
    the pipeline the collector was built from (its settings, which a reload does not change)."""
    new = _load(path)
    own = {id(w) for w in own_writers}
    readers, reader_parts = _readers(dict(collector.readers), new)
    writers, writer_parts = _writers([w for w in collector.writers if id(w) not in own], new)
    by_type = {r.type: r for r in readers}
    problems: list[str] = []
    running = collector.contexts()
    result = plan_reload(definitions, new.contexts, set(running))
    result = ReloadResult(
        result.added, result.removed, result.changed, result.unchanged, [], reader_parts, writer_parts
    )
    all_writers = [*writers, *own_writers]
    # The pipeline's contexts, as they will be started (added, changed) or go on (unchanged).
    for context in new.contexts:
        try:
            compiled = compile_context(context, by_type, collector.policy)
        except ConfigError as exc:
            problems += exc.problems
            continue
        problems += writer_problems(all_writers, [s for ss in compiled.specs.values() for s in ss])
    # Running contexts that go on: the new readers must collect them as now, or they restart
    # (the pipeline's) or the reload is refused (those started through the API).
    stopping = set(result.removed) | set(result.changed)
    restarted: list[str] = []
    # Lanes compared by their reader types: a lane whose key changes (a Modbus port) moves its
    # contexts along (DataCollector.replace_readers).
    types_before, types_after = collector.lanes(), lane_keys(readers)
    for cid, context in sorted(running.items()):
        if cid in stopping:
            continue
        try:
            now = compile_context(context, dict(collector.readers), collector.policy)
            again = compile_context(context, by_type, collector.policy)
            same = {types_after[k]: v for k, v in again.specs.items()} == {
                types_before[k]: v for k, v in now.specs.items()
            } and again.dropped == now.dropped
        except ConfigError as exc:
            same, why = False, "; ".join(exc.problems)
        else:
            why = "the new readers would collect it otherwise"
        if same:
            continue
        if cid in result.unchanged:
            result.unchanged.remove(cid)
            result.changed.append(cid)
            result.changed.sort()
            restarted.append(f"context {cid} is restarted: {why}")
        else:
            problems.append(
                f"context {cid} (started through the API) cannot go on with the new readers: {why}; "
                "stop it first"
            )
    problems += _shared_spools(collector.writers, writers, writer_parts)
    if not problems:  # a spool folder another running writer holds would only say "in use"
        problems += _preflight(collector.writers, writers, writer_parts)
    if problems:
        raise ConfigError(problems)
    result.notes.extend(restarted + _not_reloaded(collector, new, previous))
    return ReloadPlan(new, readers, writers, result)


def _shared_spools(running: Sequence[DataWriter], writers: list[DataWriter], parts: Parts) -> list[str]:
    """Spool folders a new writer cannot have: one held by a running writer of another name (a
    spooled writer takes over only from the writer of its name, ``SpooledWriter.take_over``;
    another would find the folder in use until that one closes), or one that two of the file's
    writers share."""
    folders = {_spool(w): w.name for w in running if _spool(w) is not None}
    problems = []
    owners: dict[Path, str] = {}
    for w in writers:
        folder = _spool(w)
        if folder is None:
            continue
        if folder in owners:
            problems.append(f"writer {w.name}: its spool folder {folder} is also writer {owners[folder]}'s")
        owners[folder] = w.name
        holder = folders.get(folder)
        if w.name in parts.replaced + parts.added and holder is not None and holder != w.name:
            problems.append(
                f"writer {w.name}: its spool folder {folder} is the running writer {holder}'s; only a "
                f"writer named {holder} takes it over in a reload (or remove {holder} in one reload "
                "and add this one in the next)"
            )
    return problems


def _preflight(running: Sequence[DataWriter], writers: list[DataWriter], parts: Parts) -> list[str]:
    """The new writers' preflight; a spooled writer taking over the folder of the running writer
    of its name does not find it free (it is that writer's until it closes): that is not asked."""
    by_name = {w.name: w for w in running}
    fresh = [w for w in writers if w.name in parts.replaced + parts.added]
    problems = preflight_problems(
        w for w in fresh if not (isinstance(w, SpooledWriter) and w.name in by_name)
    )
    for w in fresh:
        if isinstance(w, SpooledWriter) and w.name in by_name:
            try:
                w.preflight_taking_over(by_name[w.name])
            except PreflightError as exc:
                problems.append(f"writer {w.name}: {exc}")
            except Exception as exc:  # as preflight_problems: one clear line naming the writer
                problems.append(f"writer {w.name}: preflight failed: {type(exc).__name__}: {exc}")
    return problems


def _spool(writer: DataWriter) -> Path | None:
    return writer.path.resolve() if isinstance(writer, SpooledWriter) else None


def _not_reloaded(collector: DataCollector, new: Pipeline, previous: Pipeline | None) -> list[str]:
    notes = ["devices and listeners are kept as they run (restart to change them)"]
    if new.interval_limit_policy != collector.policy:
        notes.append(
            f"interval_limit_policy stays {collector.policy.value} until a restart "
            f"(the file says {new.interval_limit_policy.value})"
        )
    if previous is not None:
        for name in ("queue_limit", "close_timeout_s"):
            before, after = getattr(previous, name), getattr(new, name)
            if before != after:
                notes.append(f"{name} stays {before} until a restart (the file says {after})")
    return notes
