"""What a run did, in figures that agree everywhere (summary, ``--json``, metrics, status)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from flowcollect.stats import CollectorStats, WriterStats

__all__ = [
    "EXIT_ALL_ERRORS",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_STORED",
    "EXIT_OK",
    "RunSummary",
    "StopReason",
    "WriterFigures",
    "writer_figures",
]

StopReason = Literal["duration", "ended", "stopped"]

# The exit codes of ``flowcollect run`` (docs/cli.md lists them); 2 is the option parser's.
EXIT_OK = 0
"""Ran and stopped cleanly: its duration, every context ended, or SIGTERM."""
EXIT_ERROR = 1
"""Nothing started: a bad pipeline file, an invalid context, an output that cannot work, a busy
port, nothing left to collect."""
EXIT_NOT_STORED = 3
"""The run ended, but a writer stored none of the values it was given."""
EXIT_ALL_ERRORS = 4
"""The run ended, but every value it read was an error (nothing real was collected)."""
EXIT_INTERRUPTED = 130
"""Stopped cleanly by SIGINT (Ctrl-C), as shells expect: 128 + 2."""


def _values(count: int) -> str:
    return f"{count:,} value" + ("" if count == 1 else "s")


@dataclass(frozen=True, slots=True)
class WriterFigures:
    """One writer's values by fate: each value it was given is in exactly one of these."""

    written: int
    """Stored, as the writer says (the server acknowledged them, the file took them)."""
    failed: int
    """Refused or failed (a write that raised, a server that said no)."""
    dropped: int
    """Given up: the engine's full queue, or the writer's own buffer limit or close."""
    pending: int
    """Still queued in the engine or buffered in the writer (at the end of a run: not stored)."""
    replayed: int = 0
    """Values of an earlier run its spool sent again in this one (stored, failed or dropped by
    the writer): not among the values it was given, so in none of the four figures above."""

    @property
    def given(self) -> int:
        return self.written + self.failed + self.dropped + self.pending


def writer_figures(stats: WriterStats) -> WriterFigures:
    """A writer's honest figures from its stats: the sink's acknowledged, disjoint counts."""
    return WriterFigures(
        written=stats.written,
        failed=stats.failed,
        dropped=stats.dropped,
        pending=stats.queued + stats.in_flight,
        replayed=int(stats.extra.get("spool_replayed_values", 0)),
    )


@dataclass(frozen=True, slots=True)
class RunSummary:
    """What a run did: why it ended, how long it took, and the final counters."""

    pipeline: str
    reason: StopReason
    """``duration`` (the run's duration passed), ``ended`` (every context ended by itself) or
    ``stopped`` (the stop event was set: a signal, another thread)."""
    elapsed_s: float
    contexts: tuple[int, ...]
    stats: CollectorStats
    why: str = ""
    """In words, what ended the run (``contexts 1, 2 reached their duration_s``)."""
    files: Mapping[str, str] = field(default_factory=dict)
    """Writer name -> the file it writes, as the user finds it from where the run was started
    (``pipelines/out/demo.csv``, where the writer's own path is ``out/demo.csv``)."""

    def _where(self, name: str) -> str:
        return self.files.get(name, name)

    @property
    def values_read(self) -> int:
        """Distinct values read (a value shared by several contexts counts once)."""
        return sum(r.values for r in self.stats.readers.values())

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.stats.readers.values())

    @property
    def delivered(self) -> int:
        """Values handed to the writers, over every context."""
        return sum(c.delivered for c in self.stats.contexts.values())

    @property
    def writers(self) -> dict[str, WriterFigures]:
        return {name: writer_figures(w) for name, w in self.stats.writers.items()}

    def _sum(self, field: str) -> int:
        return sum(getattr(f, field) for f in self.writers.values())

    @property
    def written(self) -> int:
        """Values stored, summed over writers (as each writer says)."""
        return self._sum("written")

    @property
    def failed(self) -> int:
        return self._sum("failed")

    @property
    def dropped(self) -> int:
        """Values given up: the engine's full queues plus the writers' own drops."""
        return self._sum("dropped")

    @property
    def pending(self) -> int:
        """Values still queued or buffered when the run ended: not stored."""
        return self._sum("pending")

    @property
    def replayed(self) -> int:
        """Values of earlier runs the writers' spools sent again in this one."""
        return self._sum("replayed")

    @property
    def missed(self) -> int:
        """Due instants the contexts' readers could not serve (skipped under load, counted)."""
        return sum(c.missed_instants for c in self.stats.contexts.values())

    @property
    def lateness_ms_p99(self) -> float | None:
        """The worst reader's p99 lateness of its reads behind their instants."""
        values = [r.lateness_ms_p99 for r in self.stats.readers.values() if r.lateness_ms_p99 is not None]
        return max(values, default=None)

    def problems(self) -> list[tuple[int, str]]:
        """What went wrong, with the exit code each earns (worst first); empty for a good run."""
        out: list[tuple[int, str]] = []
        if self.values_read and self.errors == self.values_read:
            out.append(
                (EXIT_ALL_ERRORS, f"every value read was an error ({self.errors:,} of {self.values_read:,})")
            )
        for name, f in self.writers.items():
            storable = f.given
            if storable > 0 and f.written == 0:
                fates = ", ".join(
                    f"{n:,} {label}"
                    for n, label in (
                        (f.failed, "failed"),
                        (f.dropped, "dropped"),
                        (f.pending, "left queued"),
                    )
                    if n
                )
                out.append(
                    (
                        EXIT_NOT_STORED,
                        f"writer {name} stored none of the {storable:,} values it was given ({fates})",
                    )
                )
        return out

    def exit_code(self, signal_name: str | None = None) -> int:
        """The code ``flowcollect run`` exits with: a problem's, else 130 for SIGINT, else 0."""
        problems = self.problems()
        if problems:
            return max(code for code, _ in problems)
        return EXIT_INTERRUPTED if signal_name == "SIGINT" else EXIT_OK

    def headline(self) -> str:
        why = {
            "duration": "ran for its duration",
            "ended": "every context ended",
            "stopped": "stopped on request",
        }[self.reason]
        if self.why:
            why += f" ({self.why})"
        return f"{why} after {self.elapsed_s:.1f} s"

    def verdict(self) -> str:
        """The last line: OK and where the values are, or what went wrong.

        Values, not writes: with two writers each storing 406 values, ``406 values stored in
        each of 2 writers``, never ``812 values stored``."""
        problems = self.problems()
        if problems:
            return "result: FAILED: " + "; ".join(text for _, text in problems)
        writers = self.writers
        if not writers:
            return "result: OK, no writer"
        if len(writers) == 1:
            ((name, figures),) = writers.items()
            return f"result: OK, {_values(figures.written)} stored in {self._where(name)}"
        stored = {f.written for f in writers.values()}
        if len(stored) == 1:
            return (
                f"result: OK, {_values(stored.pop())} stored in each of {len(writers)} writers "
                f"({', '.join(self._where(name) for name in writers)})"
            )
        each = ", ".join(f"{_values(f.written)} in {self._where(name)}" for name, f in writers.items())
        return f"result: OK, stored: {each}"

    def _writes(self) -> str:
        """How the top-level figures add up when there are several writers: writes, not values."""
        writers = self.writers
        if len(writers) < 2:
            return ""
        stored = {f.written for f in writers.values()}
        if len(stored) == 1:
            return f" (writes: {len(writers)} writers, {_values(stored.pop())} each)"
        return f" (writes, summed over {len(writers)} writers)"

    def lines(self) -> list[str]:
        """The summary as text, one fact per line; the last one is the verdict."""
        p99 = self.lateness_ms_p99
        ids = ", ".join(str(c) for c in self.contexts)
        several = len(self.writers) > 1
        out = [
            f"pipeline {self.pipeline}: {self.headline()} (contexts {ids})",
            f"  values read:   {self.values_read:,} ({self.errors:,} with errors; a variable that "
            "several contexts share is read once)",
            f"  delivered:     {self.delivered:,} (to the contexts: a shared variable counts in each)",
            f"  written:       {self.written:,}{self._writes()}",
            f"  failed:        {self.failed:,}{' (writes)' if several else ''}",
            f"  dropped:       {self.dropped:,}{' (writes)' if several else ''}",
        ]
        if self.pending:
            out.append(f"  not stored:    {self.pending:,} (still queued or buffered at the end)")
        if self.replayed:
            out.append(
                f"  replayed:      {self.replayed:,} (values of an earlier run, sent again from a spool)"
            )
        out.append(f"  lateness p99:  {'-' if p99 is None else f'{p99:.1f} ms'}")
        for name, r in self.stats.readers.items():
            late = "-" if r.lateness_ms_p99 is None else f"{r.lateness_ms_p99:.1f} ms"
            deliv = "-" if r.delivery_ms_p99 is None else f"{r.delivery_ms_p99:.1f} ms"
            out.append(
                f"  reader {name}: {r.values:,} values in {r.ticks:,} ticks, {r.errors:,} errors, "
                f"{r.overruns:,} overruns, lateness p99 {late}, delivery p99 {deliv}"
            )
        for cid, c in self.stats.contexts.items():
            missed = f"{c.missed_instants:,} instants missed"
            out.append(f"  context {cid}: {c.delivered:,} delivered, {c.state}, {missed}")
        for name, f in self.writers.items():
            line = f"  writer {name}: {f.written:,} written, {f.failed:,} failed, {f.dropped:,} dropped"
            if f.pending:
                line += f", {f.pending:,} not stored (left queued)"
            if f.replayed:
                line += f"; {f.replayed:,} of an earlier run replayed from its spool"
            if name in self.files:
                line += f" (file {self.files[name]})"
            out.append(line)
        out.append(self.verdict())
        return out

    def as_dict(self) -> dict[str, Any]:
        """The summary as plain data (for ``--json``); the top-level figures are the writers' sums."""
        writers = self.writers
        return {
            "pipeline": self.pipeline,
            "reason": self.reason,
            "why": self.why,
            "elapsed_s": round(self.elapsed_s, 3),
            "contexts": list(self.contexts),
            "values_read": self.values_read,
            "errors": self.errors,
            "delivered": self.delivered,
            "written": self.written,
            "failed": self.failed,
            "dropped": self.dropped,
            "pending": self.pending,
            "replayed": self.replayed,
            "missed": self.missed,
            "lateness_ms_p99": self.lateness_ms_p99,
            "readers": {
                name: {
                    "values": r.values,
                    "ticks": r.ticks,
                    "errors": r.errors,
                    "overruns": r.overruns,
                    "lateness_ms_p99": r.lateness_ms_p99,
                    "delivery_ms_p99": r.delivery_ms_p99,
                    "extra": dict(r.extra),
                }
                for name, r in self.stats.readers.items()
            },
            "writers": {
                name: {
                    "written": writers[name].written,
                    "failed": writers[name].failed,
                    "dropped": writers[name].dropped,
                    "pending": writers[name].pending,
                    "replayed": writers[name].replayed,
                    "queued": w.queued,
                    "extra": dict(w.extra),
                }
                for name, w in self.stats.writers.items()
            },
            "context_states": {
                str(cid): {"state": c.state, "delivered": c.delivered, "missed": c.missed_instants}
                for cid, c in self.stats.contexts.items()
            },
            "files": dict(self.files),
            "problems": [text for _, text in self.problems()],
        }
