"""Reload: a changed pipeline file applied as a difference of contexts, without a gap.

The file is loaded and checked completely first (a broken file changes nothing and says why, by
field); then only the pipeline's contexts that differ are touched: added ones started, removed
ones stopped, changed ones restarted. A context that did not change is not touched at all, so it
misses no instant and gets no duplicate. Readers, writers and devices are kept as they run
(a running ``DataCollector``'s are fixed): a reader type or writer name added or removed is
refused as needing a restart, and option changes of the kept ones are not applied (said in the
summary).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowcollect.collector import DataCollector
from flowcollect.errors import ConfigError
from flowcollect.models import DataCollectionContext
from flowcollect.pipeline import Pipeline, load_pipeline

__all__ = ["ReloadResult", "plan_reload"]

_log = logging.getLogger("flowcollect.service")


@dataclass(frozen=True, slots=True)
class ReloadResult:
    added: list[int] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    changed: list[int] = field(default_factory=list)
    unchanged: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "removed": self.removed,
            "changed": self.changed,
            "unchanged": self.unchanged,
            "notes": self.notes,
        }

    def line(self) -> str:
        parts = [f"{name} {ids}" for name, ids in self.as_dict().items() if ids and name != "notes"]
        return "reload: " + ("; ".join(parts) if parts else "nothing changed")


def _definition(context: DataCollectionContext) -> dict[str, Any]:
    return context.model_dump(mode="json", exclude={"start_date", "end_date"})


def load_checked(path: Path, collector: DataCollector, running: Pipeline) -> Pipeline:
    """The new pipeline, loaded and checked against the running collector; ``ConfigError``
    listing every problem (nothing changed)."""
    try:
        new = load_pipeline(path)
    except Exception as exc:  # PipelineLoadError, pydantic's ValidationError: said as they are
        raise ConfigError(f"{path}: {exc}") from None
    problems = []
    readers = {r.type for r in running.readers}
    new_readers = {r.type for r in new.readers}
    if readers != new_readers:
        problems.append(
            f"readers: the reader types changed ({sorted(readers)} -> {sorted(new_readers)}); "
            "readers are kept as they run: restart to change them"
        )
    writers = {w.name for w in collector.writers}
    new_writers = {w.name for w in new.writers}
    if not new_writers <= writers:
        problems.append(
            f"writers: new writers {sorted(new_writers - writers)}; writers are kept as they run: "
            "restart to change them"
        )
    for context in new.contexts:
        try:
            collector.check(context)
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        raise ConfigError(problems)
    return new


def plan_reload(
    old: list[DataCollectionContext], new: list[DataCollectionContext], running: set[int]
) -> ReloadResult:
    """Which of the pipeline's contexts to start, stop and restart (pure)."""
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
