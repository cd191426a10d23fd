"""What a pipeline compiles to, without touching a device: schedules, reads, requests, graph.

The plan is the engine's own: the pipeline's contexts are started in a collector on a virtual
clock that is never advanced (so nothing is ever read), and each reader's ``ReaderSchedule`` is
read back. Readers are wrapped so that the planning collector can only ``validate`` variables
through them; their ``plan_requests(addresses)`` method, when they have one (the Modbus reader),
is asked what one tick costs in requests. Rendered as text, mermaid or graphviz dot.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from reactivex.testing import TestScheduler

from flowcollect._schedule import ReaderSchedule
from flowcollect.collector import DataCollector
from flowcollect.models import Variable
from flowcollect.readers.base import DataReader
from flowcollect.values import CollectedVariable

if TYPE_CHECKING:
    from flowcollect.pipeline import Pipeline

__all__ = [
    "ContextPlan",
    "PhasePlan",
    "PipelinePlan",
    "ReaderPlan",
    "build_plan",
    "render_dot",
    "render_mermaid",
    "render_text",
]

# Due instants walked per reader to group them by phase; co-prime intervals (999 and 1000 ms)
# have a hyperperiod of ~1,000 s but only ~2,000 due instants, so this rarely binds.
MAX_INSTANTS = 100_000
# What a text listing shows before it says "and N more".
SHOW_OFFSETS = 8
SHOW_READS = 12
SHOW_REQUESTS = 8
SHOW_PHASES = 16


@dataclass(frozen=True, slots=True)
class PhasePlan:
    """The reads due at a set of instants that share one due pattern within the hyperperiod."""

    intervals: tuple[int, ...]
    """The intervals due at these instants."""
    offsets_ms: tuple[int, ...]
    """The first few instants, in ms from the start of the hyperperiod (at most ``SHOW_OFFSETS``)."""
    instants: int
    """How many instants of the hyperperiod have this pattern (of those walked)."""
    reads: tuple[tuple[int, int, str, str, int], ...]
    """The distinct reads: ``(variable id, context id, address, value type, interval)``."""
    deliveries: tuple[tuple[int, int, int], ...]
    """Per receiving context: ``(context id, values, values shared with an earlier context)``."""
    requests: tuple[str, ...] | None
    """The reader's requests for one such tick (None: the reader does not plan requests)."""
    requests_error: str | None = None


@dataclass(frozen=True, slots=True)
class ReaderPlan:
    reader: str
    kind: str
    period_ms: int
    """The GCD of the intervals: the reader's tick grid."""
    hyperperiod_ms: int
    """The LCM of the intervals: the due pattern repeats after it."""
    intervals: tuple[int, ...]
    grid_ticks: int
    """GCD ticks in one hyperperiod."""
    due_instants: int
    """Instants of the hyperperiod at which something is due (of those walked)."""
    walked_all: bool
    """False when the hyperperiod has more due instants than were walked (``MAX_INSTANTS``)."""
    wanted: int
    """Variables wanted over all contexts (a variable shared by two contexts counts twice)."""
    distinct: int
    """Distinct (address, value type) pairs: what is actually read."""
    phases: tuple[PhasePlan, ...]
    contexts: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ContextPlan:
    id: int
    interval_ms: int
    duration_s: float
    variables: int
    """Variables in the context."""
    collected: dict[str, int] = field(default_factory=dict)
    """Variables collected per reader type."""
    intervals: tuple[int, ...] = ()
    shared: int = 0
    """Of its variables, those another context also reads (read once for both)."""

    @property
    def left_out(self) -> int:
        """Variables not collected: below the interval limit with ``interval_limit_policy=ignore``."""
        return self.variables - sum(self.collected.values())


@dataclass(frozen=True, slots=True)
class PipelinePlan:
    pipeline: str
    readers: tuple[ReaderPlan, ...]
    contexts: tuple[ContextPlan, ...]
    writers: tuple[str, ...]
    devices: tuple[str, ...]
    policy: str


class _PlanningReader(DataReader):
    """Lends a reader's type, limit and validation to the planning collector, and nothing else:
    closing that collector must not close the pipeline's reader, and it never reads."""

    def __init__(self, reader: DataReader) -> None:
        self._reader = reader

    @property
    def type(self) -> str:
        return self._reader.type

    @property
    def min_interval_ms(self) -> int:
        return self._reader.min_interval_ms

    def validate(self, variable: Variable) -> None:
        self._reader.validate(variable)

    def read(self, variables: Sequence[CollectedVariable]) -> None:
        raise RuntimeError("a planning reader never reads")  # the virtual clock never advances


def build_plan(pipeline: Pipeline, context_ids: Iterable[int] | None = None) -> PipelinePlan:
    """Compile the pipeline's contexts (all for None) and describe the result.

    Raises ``ConfigError`` as ``start`` would (unknown context id, invalid variables).
    """
    contexts = pipeline.select(context_ids)
    log = logging.getLogger("flowcollect.plan")
    collector = DataCollector(
        [_PlanningReader(r) for r in pipeline.readers],
        [],
        (),
        pipeline.interval_limit_policy,
        log,
        scheduler=TestScheduler(),
    )
    try:
        for context in contexts:
            collector.start(context.model_copy(deep=True))
        schedules = collector.schedules()
    finally:
        collector.close()
    originals = {r.type: r for r in pipeline.readers}
    readers = tuple(_reader_plan(schedule, originals[rtype]) for rtype, schedule in sorted(schedules.items()))
    return PipelinePlan(
        pipeline=pipeline.name,
        readers=readers,
        contexts=tuple(_context_plan(c, schedules) for c in contexts),
        writers=tuple(w.name for w in pipeline.writers),
        devices=tuple(_device_name(d) for d in pipeline.devices),
        policy=str(pipeline.interval_limit_policy),
    )


def _device_name(device: object) -> str:
    from flowcollect.pipeline import device_name

    return device_name(device)


def _reader_plan(schedule: ReaderSchedule, reader: DataReader) -> ReaderPlan:
    hyper = schedule.hyperperiod_ms
    # Walk only the due instants (next_due), never the empty GCD ticks between them.
    groups: dict[int, list[int]] = {}
    counts: dict[int, int] = {}
    first: dict[int, int] = {}
    walked = 0
    t = schedule.next_due(-1)  # 0: the start of a hyperperiod, where every interval is due
    while t < hyper and walked < MAX_INSTANTS:
        mask = schedule.mask_at(t)
        counts[mask] = counts.get(mask, 0) + 1
        offsets = groups.setdefault(mask, [])
        first.setdefault(mask, t)
        if len(offsets) < SHOW_OFFSETS:
            offsets.append(t)
        walked += 1
        t = schedule.next_due(t)
    plan_requests = getattr(reader, "plan_requests", None)
    phases = []
    for mask in sorted(groups, key=lambda m: first[m]):
        phase = schedule.phase_at(first[mask])
        if phase is None:  # cannot happen for a due instant; a plan never invents reads
            continue
        requests: tuple[str, ...] | None = None
        problem = None
        if callable(plan_requests):
            try:
                requests = tuple(str(r) for r in plan_requests([read[2] for read in phase.reads]))
            except ValueError as exc:
                problem = str(exc)
        deliveries = []
        for d in phase.deliveries:
            if d.whole:
                deliveries.append((d.context_id, phase.size, 0))
            else:
                deliveries.append((d.context_id, len(d.items), sum(not own for *_, own in d.items)))
        phases.append(
            PhasePlan(
                intervals=tuple(i for n, i in enumerate(schedule.intervals) if mask >> n & 1),
                offsets_ms=tuple(groups[mask]),
                instants=counts[mask],
                reads=phase.reads,
                deliveries=tuple(deliveries),
                requests=requests,
                requests_error=problem,
            )
        )
    return ReaderPlan(
        reader=schedule.reader,
        kind=type(reader).__name__,
        period_ms=schedule.period_ms,
        hyperperiod_ms=hyper,
        intervals=schedule.intervals,
        grid_ticks=hyper // schedule.period_ms,
        due_instants=walked,
        walked_all=t >= hyper,
        wanted=len(schedule.wanted),
        distinct=len({(w.address, w.value_type) for w in schedule.wanted}),
        phases=tuple(phases),
        contexts=tuple(dict.fromkeys(w.context_id for w in schedule.wanted)),
    )


def _context_plan(context: Any, schedules: dict[str, ReaderSchedule]) -> ContextPlan:
    collected: dict[str, int] = {}
    intervals: set[int] = set()
    shared = 0
    for rtype, schedule in schedules.items():
        others = {(w.address, w.value_type) for w in schedule.wanted if w.context_id != context.id}
        for w in schedule.wanted:
            if w.context_id == context.id:
                collected[rtype] = collected.get(rtype, 0) + 1
                intervals.add(w.interval_ms)
                shared += (w.address, w.value_type) in others
    return ContextPlan(
        id=context.id,
        interval_ms=context.interval_ms,
        duration_s=context.duration_s,
        variables=len(context.variables),
        collected=collected,
        intervals=tuple(sorted(intervals)),
        shared=shared,
    )


# -- text ----------------------------------------------------------------------------------------


def _ms(value: int) -> str:
    if value >= 1000 and value % 1000 == 0:
        return f"{value // 1000} s"
    return f"{value} ms"


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


def _more(shown: int, total: int) -> str:
    return f", ... ({total - shown:,} more)" if total > shown else ""


def _n(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def render_text(plan: PipelinePlan) -> str:
    out = [
        f"pipeline {plan.pipeline}: {_n(len(plan.contexts), 'context')}, "
        f"{_n(len(plan.readers), 'reader')} in use, {_n(len(plan.writers), 'writer')}; "
        f"interval_limit_policy={plan.policy}"
    ]
    if plan.devices:
        out.append(f"devices started first: {', '.join(plan.devices)}")
    for r in plan.readers:
        out.append("")
        out.append(f"reader {r.reader} ({r.kind})")
        out.append(
            f"  GCD tick {_ms(r.period_ms)}, hyperperiod {_ms(r.hyperperiod_ms)}: "
            f"{_n(r.grid_ticks, 'tick')}, {r.due_instants:,}{'' if r.walked_all else '+'} of them with reads"
        )
        contexts = ", ".join(map(str, r.contexts))
        intervals = ", ".join(_ms(i) for i in r.intervals)
        out.append(
            f"  {_n(r.distinct, 'distinct read')} for {_n(r.wanted, 'wanted variable')} "
            f"(contexts {contexts}); intervals {intervals}"
        )
        if not r.walked_all:
            out.append(f"  (the hyperperiod has more due instants than the {MAX_INSTANTS:,} listed below)")
        for phase in r.phases[:SHOW_PHASES]:
            out.extend(_phase_text(phase))
        if len(r.phases) > SHOW_PHASES:
            out.append(f"  ... {len(r.phases) - SHOW_PHASES} more due patterns")
    out.append("")
    out.append("contexts")
    for c in plan.contexts:
        readers = ", ".join(f"{n} from {rtype}" for rtype, n in c.collected.items()) or "nothing"
        line = (
            f"  context {c.id}: {_n(c.variables, 'variable')}, interval {_ms(c.interval_ms)}, "
            f"ends after {_duration(c.duration_s)}; collects {readers}"
        )
        if c.intervals:
            line += f" at {', '.join(_ms(i) for i in c.intervals)}"
        out.append(line)
        if c.shared:
            out.append(f"    {c.shared} of them shared with another context (read once)")
        if c.left_out:
            out.append(f"    {c.left_out} not collected: below the interval limit (policy {plan.policy})")
    out.append("")
    out.append(f"writers (every context's values go to each): {', '.join(plan.writers)}")
    return "\n".join(out) + "\n"


def _phase_text(phase: PhasePlan) -> list[str]:
    offsets = ", ".join(f"+{_ms(t)}" for t in phase.offsets_ms) + _more(len(phase.offsets_ms), phase.instants)
    due = ", ".join(_ms(i) for i in phase.intervals)
    size = len(phase.reads)
    lines = [f"  at {offsets} [{_n(phase.instants, 'instant')}]: intervals {due} due -> {_n(size, 'read')}"]
    shown = phase.reads[:SHOW_READS]
    reads = ", ".join(f"{address} (v{vid})" for vid, _cid, address, _vt, _i in shown)
    lines.append(f"      reads: {reads}{_more(len(shown), size)}")
    if phase.requests is not None:
        listed = "; ".join(phase.requests[:SHOW_REQUESTS]) + _more(
            min(len(phase.requests), SHOW_REQUESTS), len(phase.requests)
        )
        lines.append(f"      requests: {len(phase.requests)} for {_n(size, 'variable')}: {listed}")
    elif phase.requests_error is not None:
        lines.append(f"      requests: cannot plan: {phase.requests_error}")
    gets = ", ".join(
        f"context {cid} gets {n}" + (f" ({shared} shared)" if shared else "")
        for cid, n, shared in phase.deliveries
    )
    lines.append(f"      {gets}")
    return lines


# -- graphs --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Node:
    id: str
    label: tuple[str, ...]
    shape: str  # "source", "operator", "merge", "filter", "gate", "sink"


def _graph(plan: PipelinePlan) -> tuple[list[_Node], list[tuple[str, str, str]]]:
    """The observable graph: the same shape ``flowcollect._graph`` builds at start."""
    nodes: list[_Node] = []
    edges: list[tuple[str, str, str]] = []
    nodes.append(_Node("merge", ("merge",), "merge"))
    feeds: dict[int, list[str]] = {}
    for n, r in enumerate(plan.readers):
        most = max((len(p.reads) for p in r.phases), default=0)
        requests = [len(p.requests) for p in r.phases if p.requests is not None]
        cost = f"up to {most} reads/tick" + (f", {max(requests)} requests" if requests else "")
        nodes.append(
            _Node(
                f"ticks{n}",
                (f"ticks: {r.reader}", f"every {_ms(r.period_ms)}", f"hyperperiod {_ms(r.hyperperiod_ms)}"),
                "source",
            )
        )
        nodes.append(_Node(f"read{n}", (f"read_due: {r.reader}", r.kind, cost), "operator"))
        edges.append((f"ticks{n}", f"read{n}", ""))
        edges.append((f"read{n}", "merge", ""))
        for cid in r.contexts:
            feeds.setdefault(cid, []).append(r.reader)
    for c in plan.contexts:
        nodes.append(
            _Node(
                f"ctx{c.id}",
                (
                    f"for_context {c.id}",
                    f"{sum(c.collected.values())} variables",
                    f"ends after {_duration(c.duration_s)}",
                ),
                "filter",
            )
        )
        nodes.append(_Node(f"gate{c.id}", (f"gate {c.id}", "open while running"), "gate"))
        edges.append(("merge", f"ctx{c.id}", ", ".join(feeds.get(c.id, [])) or "nothing"))
        edges.append((f"ctx{c.id}", f"gate{c.id}", ""))
    for n, name in enumerate(plan.writers):
        nodes.append(_Node(f"sink{n}", ("WriterSink", name, "queue + thread"), "sink"))
        for c in plan.contexts:
            edges.append((f"gate{c.id}", f"sink{n}", ""))
    return nodes, edges


def _mermaid_text(text: str) -> str:
    return text.replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")


def render_mermaid(plan: PipelinePlan) -> str:
    shapes = {
        "source": ('(["', '"])'),
        "operator": ('["', '"]'),
        "merge": ('(("', '"))'),
        "filter": ('[/"', '"/]'),
        "gate": ('{"', '"}'),
        "sink": ('[("', '")]'),
    }
    nodes, edges = _graph(plan)
    out = ["flowchart LR", f"  %% pipeline {_mermaid_text(plan.pipeline)}: the compiled observable graph"]
    for node in nodes:
        left, right = shapes[node.shape]
        out.append(f"  {node.id}{left}{'<br/>'.join(_mermaid_text(line) for line in node.label)}{right}")
    for a, b, label in edges:
        out.append(f'  {a} -->|"{_mermaid_text(label)}"| {b}' if label else f"  {a} --> {b}")
    return "\n".join(out) + "\n"


def _dot_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def render_dot(plan: PipelinePlan) -> str:
    shapes = {
        "source": 'shape=box, style="rounded,filled", fillcolor="#dbeafe"',
        "operator": 'shape=box, style=filled, fillcolor="#e0e7ff"',
        "merge": 'shape=circle, style=filled, fillcolor="#fef3c7"',
        "filter": 'shape=parallelogram, style=filled, fillcolor="#dcfce7"',
        "gate": 'shape=diamond, style=filled, fillcolor="#fee2e2"',
        "sink": 'shape=cylinder, style=filled, fillcolor="#f3e8ff"',
    }
    nodes, edges = _graph(plan)
    out = [
        f'digraph "{_dot_text(plan.pipeline)}" {{',
        "  rankdir=LR;",
        f'  label="pipeline {_dot_text(plan.pipeline)}: the compiled observable graph";',
        '  labelloc=t; fontname="Helvetica";',
        '  node [fontname="Helvetica", fontsize=10];',
        '  edge [fontname="Helvetica", fontsize=9];',
    ]
    for node in nodes:
        label = "\\n".join(_dot_text(line) for line in node.label)
        out.append(f'  {node.id} [label="{label}", {shapes[node.shape]}];')
    for a, b, label in edges:
        out.append(f'  {a} -> {b} [label="{_dot_text(label)}"];' if label else f"  {a} -> {b};")
    out.append("}")
    return "\n".join(out) + "\n"
