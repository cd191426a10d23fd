"""What a pipeline compiles to, without touching a device: lanes, schedules, reads, requests, graph.

The plan is the engine's own: ``flowcollect.compile.compile_plan`` (pure, the same step
``DataCollector.start`` runs) turns the contexts into lanes and schedules, and this module
describes those objects. Each reader's ``describe_requests(variables)`` says what one tick costs
at its source (Modbus requests, OPC UA calls), and its ``estimate_tick`` how long a lane's tick
takes there (a Modbus line from its baud rate). The graph drawn is the one that runs, with the
runtime's own step names (``flowcollect.runtime.STEPS``). Rendered as text, mermaid or graphviz
dot.

Below the pipeline: ``Pipeline.plan()`` calls ``describe``; this module imports no pipeline code
(only its type, for ``build_plan``'s signature).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flowcollect.compile import CompiledContext, CompiledPlan, LaneSchedule, distinct_reads
from flowcollect.readers.base import DataReader, TickEstimate
from flowcollect.values import VariableSpec

if TYPE_CHECKING:
    from flowcollect.pipeline import Pipeline

__all__ = [
    "ContextPlan",
    "PhasePlan",
    "PipelinePlan",
    "ReaderPlan",
    "build_plan",
    "describe",
    "lane_estimates",
    "render_dot",
    "render_mermaid",
    "render_text",
]

# Due instants walked per reader (or lane) to group them by due pattern; co-prime intervals (999
# and 1000 ms) have a hyperperiod of ~1,000 s but only ~2,000 due instants, so this rarely binds.
MAX_INSTANTS = 100_000
# What a text listing shows before it says "and N more".
SHOW_OFFSETS = 8
SHOW_READS = 12
SHOW_REQUESTS = 8
SHOW_PHASES = 16
SHOW_DEVICES = 8


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
    lane: str
    """The lane the reader runs on (its thread and clock, shared with the lane's other readers)."""
    period_ms: int
    """The GCD of the lane's intervals: the lane's tick grid."""
    hyperperiod_ms: int
    """The LCM of the lane's intervals: the due pattern repeats after it."""
    intervals: tuple[int, ...]
    """This reader's own intervals."""
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
    profile: str | None = None
    """The device profile every variable of this reader was instantiated from (its ``profile``
    tag, see ``flowcollect.tags.DeviceProfile``), when they all share one."""
    device: str | None = None
    """Likewise the device (the ``device`` tag)."""


@dataclass(frozen=True, slots=True)
class ContextPlan:
    id: int
    interval_ms: int
    duration_s: float | None
    """None: runs until stopped."""
    variables: int
    """Variables in the context."""
    collected: dict[str, int] = field(default_factory=dict)
    """Variables collected per reader type."""
    intervals: tuple[int, ...] = ()
    shared: int = 0
    """Of its variables, those another context also reads (read once for both)."""
    changes: int = 0
    """Of its variables, those delivered only when they change (``report="change"``)."""
    scaled: int = 0
    """Of its variables, those with a scale or offset."""

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
    warnings: tuple[str, ...] = ()
    """Variables the interval-limit policy left out, once each (``check`` reports them)."""
    lines: tuple[str, ...] = ()
    """Each lane's busiest tick where its readers can tell its time (``lane_estimates``): a
    Modbus line's, from its baud rate."""
    line_warnings: tuple[str, ...] = ()
    """Lines that cannot serve their due requests within the tick (``check`` warns)."""


def build_plan(pipeline: Pipeline, context_ids: Iterable[int] | None = None) -> PipelinePlan:
    """Compile the pipeline's contexts (all for None) and describe the result.

    Raises ``ConfigError`` as ``start`` would (unknown context id, invalid variables). The same
    as ``pipeline.plan(context_ids)``, which builds it.
    """
    return pipeline.plan(context_ids)


def describe(
    compiled: CompiledPlan,
    readers: Iterable[DataReader],
    name: str = "collector",
    writers: Sequence[str] = (),
    devices: Sequence[str] = (),
) -> PipelinePlan:
    """Describe a compiled plan: per reader its lane's schedule and phases, per context what it
    collects; asks each reader's ``describe_requests`` what a tick costs (no I/O)."""
    readers = list(readers)
    by_type = {r.type: r for r in readers}
    reader_plans: list[ReaderPlan] = []
    for key in sorted(compiled.lanes):
        schedule = compiled.lanes[key].schedule
        if schedule is None:
            continue
        for rtype in sorted(schedule.reader_order):
            reader_plans.append(_reader_plan(schedule, rtype, by_type[rtype]))
    return PipelinePlan(
        pipeline=name,
        readers=tuple(reader_plans),
        contexts=tuple(_context_plan(c, compiled) for c in compiled.contexts),
        writers=tuple(writers),
        devices=tuple(devices),
        policy=str(compiled.policy),
        warnings=compiled.warnings,
        **_lines(compiled, readers),
    )


def _lines(compiled: CompiledPlan, readers: list[DataReader]) -> dict[str, tuple[str, ...]]:
    # Listed: the lanes whose time is known (a Modbus TCP line has an estimate, but no time).
    estimates = [e for e in lane_estimates(compiled, readers) if e.load is not None]
    return {
        "lines": tuple(str(e) for e in estimates),
        "line_warnings": tuple(e.warning for e in estimates if e.warning),
    }


def lane_estimates(compiled: CompiledPlan, readers: Iterable[DataReader]) -> list[TickEstimate]:
    """The busiest tick of every lane of a compiled plan whose readers estimate their ticks
    (``DataReader.estimate_tick``), by lane key.

    Each due pattern of a lane's hyperperiod is estimated against the time until the lane's next
    due instant after it; the one with the highest load is kept (the first, when no load is
    known). No I/O.
    """
    by_type = {r.type: r for r in readers}
    result: list[TickEstimate] = []
    for key in sorted(compiled.lanes):
        schedule = compiled.lanes[key].schedule
        if schedule is None:
            continue
        worst: TickEstimate | None = None
        for pattern in schedule.due_patterns(MAX_INSTANTS).patterns:
            phase = schedule.phase_at(pattern.first_ms)
            if phase is None:  # cannot happen for a due instant
                continue
            due = [(by_type[rp.reader], rp.reads) for rp in phase.readers]
            estimate = due[0][0].estimate_tick(due, pattern.gap_ms)
            if estimate is None:
                if worst is None:
                    break  # asked first with every reader of the lane (all are due at 0): none
                continue
            if worst is None or (estimate.load or 0.0) > (worst.load or 0.0):
                worst = estimate
        if worst is not None:
            result.append(worst)
    return result


def _requests(reader: DataReader, reads: Sequence[VariableSpec]) -> tuple[str, ...] | None:
    return tuple(str(r) for r in reader.describe_requests(reads)) or None


def _reader_plan(schedule: LaneSchedule, rtype: str, reader: DataReader) -> ReaderPlan:
    hyper = schedule.hyperperiod_ms
    specs = [s for s in schedule.specs if s.reader == rtype]
    intervals = tuple(sorted({s.interval_ms for s in specs}))
    walk = schedule.due_patterns(MAX_INSTANTS, rtype, offsets=SHOW_OFFSETS)
    phases = []
    for pattern in walk.patterns:
        phase = schedule.phase_at(pattern.first_ms)
        rp = next((p for p in phase.readers if p.reader == rtype), None) if phase else None
        if rp is None:  # cannot happen for a due instant; a plan never invents reads
            continue
        requests: tuple[str, ...] | None = None
        problem = None
        try:
            requests = _requests(reader, rp.reads)
        except ValueError as exc:
            problem = str(exc)
        deliveries = []
        for d in rp.deliveries:
            shared = (
                0
                if d.index is None
                else sum(rp.reads[n] is not v for n, v in zip(d.index, d.variables, strict=True))
            )
            deliveries.append((d.context_id, len(d.variables), shared))
        phases.append(
            PhasePlan(
                intervals=pattern.intervals,
                offsets_ms=pattern.offsets_ms,
                instants=pattern.instants,
                reads=tuple((s.id, s.context_id, s.address, s.value_type, s.interval_ms) for s in rp.reads),
                deliveries=tuple(deliveries),
                requests=requests,
                requests_error=problem,
            )
        )
    return ReaderPlan(
        reader=rtype,
        kind=type(reader).__name__,
        lane=schedule.key,
        period_ms=schedule.period_ms,
        hyperperiod_ms=hyper,
        intervals=intervals,
        grid_ticks=hyper // schedule.period_ms,
        due_instants=walk.instants,
        walked_all=walk.complete,
        wanted=len(specs),
        distinct=len(distinct_reads(specs)),
        phases=tuple(phases),
        contexts=tuple(dict.fromkeys(s.context_id for s in specs)),
        profile=_shared_tag(specs, "profile"),
        device=_shared_tag(specs, "device"),
    )


def _shared_tag(specs: Sequence[VariableSpec], key: str) -> str | None:
    """The value of tag ``key`` when every spec has the same one, else None."""
    values = {dict(s.tags).get(key) for s in specs}
    if len(values) != 1:
        return None
    [value] = values
    return value


def _context_plan(compiled: CompiledContext, plan: CompiledPlan) -> ContextPlan:
    context = compiled.context
    collected: dict[str, int] = {}
    intervals: set[int] = set()
    shared = 0
    mine = [s for specs in compiled.specs.values() for s in specs]
    others = {
        (s.reader, s.address, s.value_type)
        for c in plan.contexts
        if c.context.id != context.id
        for specs in c.specs.values()
        for s in specs
    }
    for s in mine:
        collected[s.reader] = collected.get(s.reader, 0) + 1
        intervals.add(s.interval_ms)
        shared += (s.reader, s.address, s.value_type) in others
    return ContextPlan(
        id=context.id,
        interval_ms=context.interval_ms,
        duration_s=context.duration_s,
        variables=len(context.variables),
        collected=collected,
        intervals=tuple(sorted(intervals)),
        shared=shared,
        changes=sum(s.report == "change" for s in mine),
        scaled=sum(s.scale is not None or s.offset is not None for s in mine),
    )


# -- text ----------------------------------------------------------------------------------------


def _ms(value: int) -> str:
    if value >= 1000 and value % 1000 == 0:
        return f"{value // 1000} s"
    return f"{value} ms"


def _ends(seconds: float | None) -> str:
    return "runs until stopped" if seconds is None else f"ends after {_duration(seconds)}"


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


def _more(shown: int, total: int) -> str:
    return f", ... ({total - shown:,} more)" if total > shown else ""


def _n(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def render_text(plan: PipelinePlan, *, full: bool = False) -> str:
    """The plan for a person. Readers instantiated from one device profile are summarised: the
    first device's reader in full, the others named (``full``: every reader in full)."""
    out = [
        f"pipeline {plan.pipeline}: {_n(len(plan.contexts), 'context')}, "
        f"{_n(len(plan.readers), 'reader')} in use, {_n(len(plan.writers), 'writer')}; "
        f"interval_limit_policy={plan.policy}"
    ]
    if plan.devices:
        out.append(f"devices started first: {', '.join(plan.devices)}")
    alike = _alike(plan.readers) if not full else {}
    for r in plan.readers:
        if r.reader in alike and not alike[r.reader]:
            continue  # summarised under its profile's first device
        out.extend(_reader_text(r, alike.get(r.reader) or ()))
    out.extend(_profiles_text(plan))
    out.extend(_lines_text(plan))
    out.append("")
    out.append("contexts")
    for c in plan.contexts:
        collected = list(c.collected.items())
        readers = ", ".join(f"{n} from {rtype}" for rtype, n in collected[:SHOW_DEVICES]) or "nothing"
        readers += _more(min(len(collected), SHOW_DEVICES), len(collected))
        line = (
            f"  context {c.id}: {_n(c.variables, 'variable')}, interval {_ms(c.interval_ms)}, "
            f"{_ends(c.duration_s)}; collects {readers}"
        )
        if c.intervals:
            line += f" at {', '.join(_ms(i) for i in c.intervals)}"
        out.append(line)
        if c.shared:
            out.append(f"    {c.shared} of them shared with another context (read once)")
        if c.changes:
            out.append(f"    {c.changes} of them reported on change only")
        if c.scaled:
            out.append(f"    {c.scaled} of them scaled (raw x scale + offset)")
        if c.left_out:
            out.append(f"    {c.left_out} not collected: below the interval limit (policy {plan.policy})")
    if plan.warnings or plan.line_warnings:
        out.append("")
        out.append("warnings")
        out.extend(f"  {w}" for w in (*plan.warnings, *plan.line_warnings))
    out.append("")
    out.append(f"writers (every context's values go to each): {', '.join(plan.writers)}")
    return "\n".join(out) + "\n"


def _reader_text(r: ReaderPlan, others: Sequence[ReaderPlan]) -> list[str]:
    """One reader's section; ``others``: the devices of its profile summarised under it."""
    out = [""]
    device = f", device {r.device} of profile {r.profile}" if r.profile and r.device else ""
    out.append(f"reader {r.reader} ({r.kind}) on lane {r.lane}{device}")
    ticks = _n(r.grid_ticks, "tick")
    out.append(
        f"  GCD tick {_ms(r.period_ms)}, hyperperiod {_ms(r.hyperperiod_ms)}: {ticks}, "
        f"{r.due_instants:,}{'' if r.walked_all else '+'} of them with reads"
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
    if others:
        named = ", ".join(f"{o.device} ({o.reader})" for o in others[:SHOW_DEVICES])
        out.append(
            f"  ... and {_n(len(others), 'more device')} of profile {r.profile}: {named}"
            f"{_more(min(len(others), SHOW_DEVICES), len(others))} (plan --full shows each)"
        )
    return out


def _alike(readers: Sequence[ReaderPlan]) -> dict[str, tuple[ReaderPlan, ...]]:
    """Reader -> the later readers of its profile (first of a profile) or () (summarised)."""
    by_profile: dict[str, list[ReaderPlan]] = {}
    for r in readers:
        if r.profile is not None and r.device is not None:
            by_profile.setdefault(r.profile, []).append(r)
    out: dict[str, tuple[ReaderPlan, ...]] = {}
    for group in by_profile.values():
        if len(group) > 1:
            out[group[0].reader] = tuple(group[1:])
            out.update((r.reader, ()) for r in group[1:])
    return out


def _profiles_text(plan: PipelinePlan) -> list[str]:
    by_profile: dict[str, list[ReaderPlan]] = {}
    for r in plan.readers:
        if r.profile is not None and r.device is not None:
            by_profile.setdefault(r.profile, []).append(r)
    if not by_profile:
        return []
    out = ["", "device profiles"]
    for profile, group in by_profile.items():
        wanted = sum(r.wanted for r in group)
        sizes = sorted({r.wanted for r in group})
        each = (
            f"{_n(sizes[0], 'variable')} each"
            if len(sizes) == 1
            else f"{sizes[0]:,} to {sizes[-1]:,} variables"
        )
        out.append(f"  profile {profile}: {_n(len(group), 'device')}, {each}, {wanted:,} wanted in all")
    return out


def _lines_text(plan: PipelinePlan) -> list[str]:
    if not plan.lines:
        return []
    return ["", "lines (estimated from the baud rate, busiest tick)", *(f"  {line}" for line in plan.lines)]


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
    """The graph that runs (``flowcollect.runtime``): per lane a tick source and ``read_due``
    of its readers; per context ``for_context`` on each lane it uses, its ``gate`` and
    ``report_changes``; one sink per writer. Lanes hand over to contexts directly: no merge."""
    nodes: list[_Node] = []
    edges: list[tuple[str, str, str]] = []
    lanes: dict[str, list[ReaderPlan]] = {}
    for r in plan.readers:
        lanes.setdefault(r.lane, []).append(r)
    feeds: dict[int, list[tuple[str, str]]] = {}
    for n, (lane, readers) in enumerate(lanes.items()):
        first = readers[0]
        nodes.append(
            _Node(
                f"ticks{n}",
                (
                    f"ticks: {lane}",
                    f"every {_ms(first.period_ms)}",
                    f"hyperperiod {_ms(first.hyperperiod_ms)}",
                ),
                "source",
            )
        )
        label = [f"read_due: {', '.join(r.reader for r in readers)}"]
        for r in readers:
            most = max((len(p.reads) for p in r.phases), default=0)
            requests = [len(p.requests) for p in r.phases if p.requests is not None]
            cost = f"up to {most} reads/tick" + (f", {max(requests)} requests" if requests else "")
            label.append(f"{r.kind}: {cost}")
        nodes.append(_Node(f"read{n}", tuple(label), "operator"))
        edges.append((f"ticks{n}", f"read{n}", ""))
        for r in readers:
            for cid in r.contexts:
                feeds.setdefault(cid, []).append((f"read{n}", r.reader))
    for c in plan.contexts:
        nodes.append(
            _Node(
                f"ctx{c.id}",
                (
                    f"for_context {c.id}",
                    f"{sum(c.collected.values())} variables" + (f", {c.scaled} scaled" if c.scaled else ""),
                    _ends(c.duration_s),
                ),
                "filter",
            )
        )
        nodes.append(_Node(f"gate{c.id}", (f"gate {c.id}", "open while running"), "gate"))
        nodes.append(
            _Node(
                f"changes{c.id}",
                (f"report_changes {c.id}", f"{c.changes} on change" if c.changes else "every value passes"),
                "operator",
            )
        )
        sources: dict[str, list[str]] = {}
        for node, reader in feeds.get(c.id, []):
            sources.setdefault(node, []).append(reader)
        for node, types in sources.items():
            edges.append((node, f"ctx{c.id}", ", ".join(types)))
        edges.append((f"ctx{c.id}", f"gate{c.id}", ""))
        edges.append((f"gate{c.id}", f"changes{c.id}", ""))
    for n, name in enumerate(plan.writers):
        nodes.append(_Node(f"sink{n}", ("sink: WriterSink", name, "queue + thread"), "sink"))
        for c in plan.contexts:
            edges.append((f"changes{c.id}", f"sink{n}", ""))
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
