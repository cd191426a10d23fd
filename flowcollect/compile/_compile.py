"""Contexts + readers + the interval-limit policy -> a compiled plan. Pure: no threads, no I/O.

``DataCollector.start`` and ``check``, ``Pipeline.check`` and ``flowcollect plan`` all go
through here, so what is checked and drawn is what runs.
"""

from __future__ import annotations

import dataclasses
import operator
import threading
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from flowcollect._bulk import paused_gc
from flowcollect.compile._schedule import LaneSchedule, distinct_reads
from flowcollect.errors import ConfigError
from flowcollect.models import DataCollectionContext, IntervalLimitPolicy, ValueType, Variable
from flowcollect.readers.base import DataReader
from flowcollect.values import VariableSpec

__all__ = [
    "CompiledContext",
    "CompiledLane",
    "CompiledPlan",
    "ReaderSchedule",
    "compile_context",
    "compile_plan",
    "lane_key",
    "lane_keys",
    "lane_problems",
]


def lane_key(reader: DataReader) -> str:
    """The lane a reader runs on: its ``lane`` text, or ``reader:<type>`` for a lane of its own."""
    lane = reader.lane
    return lane if lane else f"reader:{reader.type}"


def lane_problems(readers: Iterable[DataReader]) -> list[str]:
    """What is wrong with the readers' ``lane`` keys (each must be None or a non-blank text)."""
    problems = []
    for reader in readers:
        try:
            lane = reader.lane
        except Exception as exc:
            problems.append(f"reader {reader.type!r}: its lane cannot be read: {type(exc).__name__}: {exc}")
            continue
        if lane is not None and (not isinstance(lane, str) or not lane.strip()):
            problems.append(f"reader {reader.type!r}: lane must be None or a non-blank text, got {lane!r}")
    return problems


def lane_keys(readers: Iterable[DataReader]) -> dict[str, tuple[str, ...]]:
    """Lane key -> the reader types on it, in the order the readers were given."""
    out: dict[str, list[str]] = {}
    for reader in readers:
        out.setdefault(lane_key(reader), []).append(reader.type)
    return {key: tuple(types) for key, types in out.items()}


@dataclass(frozen=True, slots=True)
class CompiledContext:
    """One context, compiled: its variables as ``VariableSpec``s per lane, and what was left out.

    ``warnings`` name each variable the interval-limit policy dropped (``ignore``), once, and a
    context left with nothing to collect; ``check`` reports them instead of OK.
    """

    context: DataCollectionContext
    specs: Mapping[str, tuple[VariableSpec, ...]]
    """Lane key -> the context's variables on that lane, in the context's order."""
    warnings: tuple[str, ...]
    dropped: tuple[int, ...]
    """Ids of the variables not collected (``interval_limit_policy=ignore``)."""

    @property
    def collected(self) -> int:
        return sum(len(s) for s in self.specs.values())


@dataclass(frozen=True, slots=True)
class ReaderSchedule:
    """One reader's current due plan, as ``DataCollector.schedules()`` reports it."""

    reader: str
    lane: str
    period_ms: int
    """The lane's GCD tick (shared by the readers of a lane)."""
    hyperperiod_ms: int
    """The LCM of the lane's intervals: the due pattern repeats after it."""
    intervals: tuple[int, ...]
    """This reader's own intervals."""
    variables: int
    """Variables wanted over the contexts (a variable of two contexts counts twice)."""
    distinct: int
    """Distinct (address, value type) pairs: what is actually read at most per tick."""


@dataclass(frozen=True, slots=True)
class CompiledLane:
    key: str
    readers: tuple[str, ...]
    """The reader types on this lane (all of them, used or not)."""
    schedule: LaneSchedule | None
    """None: no variable of the compiled contexts is on this lane."""

    def reader_schedules(self) -> dict[str, ReaderSchedule]:
        return reader_schedules(self.schedule)


def reader_schedules(schedule: LaneSchedule | None) -> dict[str, ReaderSchedule]:
    if schedule is None:
        return {}
    out = {}
    for rtype in schedule.reader_order:
        specs = [s for s in schedule.specs if s.reader == rtype]
        out[rtype] = ReaderSchedule(
            reader=rtype,
            lane=schedule.key,
            period_ms=schedule.period_ms,
            hyperperiod_ms=schedule.hyperperiod_ms,
            intervals=tuple(sorted({s.interval_ms for s in specs})),
            variables=len(specs),
            distinct=len(distinct_reads(specs)),
        )
    return out


@dataclass(frozen=True, slots=True)
class CompiledPlan:
    """Everything the runtime needs, computed once: lanes with their schedules, contexts with
    their variables, and the warnings (errors raise ``ConfigError`` instead)."""

    lanes: Mapping[str, CompiledLane]
    contexts: tuple[CompiledContext, ...]
    policy: IntervalLimitPolicy

    @property
    def warnings(self) -> tuple[str, ...]:
        return tuple(w for c in self.contexts for w in c.warnings)

    def schedules(self) -> dict[str, ReaderSchedule]:
        """Reader type -> its schedule, for the readers with something to read."""
        out: dict[str, ReaderSchedule] = {}
        for lane in self.lanes.values():
            out.update(lane.reader_schedules())
        return out


def _where(context: DataCollectionContext, variable: Variable) -> str:
    return f"context {context.id}, variable {variable.id} (address {variable.address!r})"


def _limit_origin(context: DataCollectionContext, reader: DataReader) -> str:
    """Where a variable's interval limit comes from, in words a user can act on."""
    if reader.min_interval_ms > context.min_interval_ms:
        return f"the min_interval_ms of reader {reader.type!r}"
    if "min_interval_ms" in context.model_fields_set:
        return f"context {context.id}'s min_interval_ms"
    return f"context {context.id}'s min_interval_ms (not set: the default)"


def _validated_type(variable: Variable, reader: DataReader) -> ValueType:
    """The variable's value type (its own, else the reader's natural type for the address, else
    float), once the reader's ``validate`` accepted the variable with it; ``ValueError`` if not."""
    value_type = variable.value_type
    if value_type is None:
        value_type = reader.natural_value_type(variable.address) or "float"
        reader.validate_as(variable, value_type)
    else:
        reader.validate(variable)
    return value_type


@dataclass(frozen=True, slots=True)
class _Compiled:
    """A context's last compilation and what it was compiled from: what ``compile_context`` may
    reuse. It holds the context only weakly (``context``), so a context dropped by its user is
    not kept alive by this; its variables and specs go at the next compilation (``_keep``).

    ``variables`` is the context's list as it was (the very objects: a ``Variable`` is frozen);
    ``value_types`` the resolved type of each; ``readers`` each reader type used, with the reader
    and what of it the specs depend on (its lane and interval limit).
    """

    context: weakref.ref[DataCollectionContext]
    basis: tuple[object, ...]
    variables: tuple[Variable, ...]
    value_types: tuple[ValueType, ...]
    readers: tuple[tuple[str, DataReader, str, int], ...]
    specs: Mapping[str, tuple[VariableSpec, ...]]
    warnings: tuple[str, ...]
    dropped: tuple[int, ...]


REUSE_KEPT = 8
"""How many compilations are kept for reuse (those of the most recently compiled live contexts)."""

# Context id() -> its last compilation. ``check`` then ``start`` of the same unchanged context
# compile once: the second call finds the first's specs here, and only runs every reader's
# ``validate`` again. Entries of contexts gone, and the oldest beyond REUSE_KEPT, are dropped at
# each compilation (no weak-reference callback: one would run inside a garbage collection, on
# any thread, possibly while this very lock is held). Guarded by _reuse_lock: compiling runs on
# any thread (a pipeline's check, a collector's start, a service request); it is held only for
# these dict operations.
_reuse: dict[int, _Compiled] = {}
_reuse_lock = threading.Lock()


def _basis(context: DataCollectionContext, policy: IntervalLimitPolicy) -> tuple[object, ...]:
    """What of a context (beyond its variables) and the policy a compilation depends on."""
    return (
        context.id,
        context.interval_ms,
        context.min_interval_ms,
        "min_interval_ms" in context.model_fields_set,  # said in warnings (_limit_origin)
        policy,
    )


def _reused(
    context: DataCollectionContext, readers: Mapping[str, DataReader], policy: IntervalLimitPolicy
) -> CompiledContext | None:
    """The context's last compilation when nothing it depends on changed and every variable still
    passes its reader's ``validate`` (a reader's checks may depend on its settings); else None."""
    with _reuse_lock:
        kept = _reuse.get(id(context))
    if kept is None or kept.context() is not context:
        return None
    variables = context.variables
    if (
        kept.basis != _basis(context, policy)
        or len(variables) != len(kept.variables)
        or not all(map(operator.is_, variables, kept.variables))
    ):
        return None
    for rtype, reader, lane, limit in kept.readers:
        if (
            readers.get(rtype) is not reader
            or lane_key(reader) != lane
            or max(context.min_interval_ms, reader.min_interval_ms) != limit
        ):
            return None
    for variable, value_type in zip(variables, kept.value_types, strict=True):
        reader = readers[variable.reader]
        try:
            if variable.value_type is None:
                if (reader.natural_value_type(variable.address) or "float") != value_type:
                    return None
                reader.validate_as(variable, value_type)
            else:
                reader.validate(variable)
        except ValueError:
            return None  # compiled again, for the message
    return CompiledContext(context, kept.specs, kept.warnings, kept.dropped)


def _keep(
    context: DataCollectionContext,
    policy: IntervalLimitPolicy,
    value_types: list[ValueType],
    used: Mapping[str, tuple[DataReader, str, int]],
    compiled: CompiledContext,
) -> None:
    entry = _Compiled(
        weakref.ref(context),
        _basis(context, policy),
        tuple(context.variables),
        tuple(value_types),
        tuple((rtype, reader, lane, limit) for rtype, (reader, lane, limit) in used.items()),
        compiled.specs,
        compiled.warnings,
        compiled.dropped,
    )
    with _reuse_lock:
        for key in [key for key, kept in _reuse.items() if kept.context() is None]:
            del _reuse[key]
        _reuse.pop(id(context), None)  # inserted again last: the most recent
        _reuse[id(context)] = entry
        while len(_reuse) > REUSE_KEPT:
            del _reuse[next(iter(_reuse))]


# A VariableSpec made without its dataclass __init__, which sets each of its 13 fields with
# object.__setattr__ (it is frozen): 100,000 specs per 100,000-variable context, about half the
# cost of compiling one. Each slot is set through its own descriptor instead, as __init__ would
# set it; tests/engine/test_compile_reuse.py holds the two equal, field by field.
_SPEC_FIELDS = (
    "id",
    "context_id",
    "address",
    "value_type",
    "reader",
    "interval_ms",
    "name",
    "tags",
    "scale",
    "offset",
    "report",
    "deadband",
    "heartbeat_ms",
)
if tuple(f.name for f in dataclasses.fields(VariableSpec)) != _SPEC_FIELDS:  # pragma: no cover
    raise RuntimeError("VariableSpec's fields changed: change _SPEC_FIELDS and _new_spec with them")
(
    _set_id,
    _set_context_id,
    _set_address,
    _set_value_type,
    _set_reader,
    _set_interval_ms,
    _set_name,
    _set_tags,
    _set_scale,
    _set_offset,
    _set_report,
    _set_deadband,
    _set_heartbeat_ms,
) = (getattr(VariableSpec, name).__set__ for name in _SPEC_FIELDS)


def _new_spec(
    variable: Variable,
    context_id: int,
    value_type: str,
    reader: str,
    interval_ms: int,
    tags: tuple[tuple[str, str], ...],
) -> VariableSpec:
    """``VariableSpec(variable.id, context_id, variable.address, value_type, reader, interval_ms,
    variable.name, tags, variable.scale, ...)``, made twice as fast."""
    spec: VariableSpec = object.__new__(VariableSpec)
    _set_id(spec, variable.id)
    _set_context_id(spec, context_id)
    _set_address(spec, variable.address)
    _set_value_type(spec, value_type)
    _set_reader(spec, reader)
    _set_interval_ms(spec, interval_ms)
    _set_name(spec, variable.name)
    _set_tags(spec, tags)
    _set_scale(spec, variable.scale)
    _set_offset(spec, variable.offset)
    _set_report(spec, variable.report)
    _set_deadband(spec, variable.deadband)
    _set_heartbeat_ms(spec, variable.heartbeat_ms)
    return spec


def _reader_entry(
    context: DataCollectionContext, variable: Variable, readers: Mapping[str, DataReader], problems: list[str]
) -> tuple[DataReader, str, int] | None:
    """A variable's reader, its lane key and its interval limit in this context (None, and a
    problem, when there is no reader of its type)."""
    reader = readers.get(variable.reader)
    if reader is None:
        known = ", ".join(sorted(readers)) or "none"
        problems.append(
            f"{_where(context, variable)}: no reader of type {variable.reader!r} (readers: {known})"
        )
        return None
    return reader, lane_key(reader), max(context.min_interval_ms, reader.min_interval_ms)


def _tags(
    tags: Mapping[str, str], shared: dict[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]
) -> tuple[tuple[str, str], ...]:
    """A spec's tags, sorted; equal tags share one tuple (fewer objects kept per variable)."""
    given = tuple(tags.items())
    found = shared.get(given)
    if found is None:
        found = shared[given] = tuple(sorted(given))
    return found


@dataclass(frozen=True, slots=True)
class _Outcome:
    problems: list[str]
    warnings: list[str]
    dropped: list[int]
    """Ids of the variables left out."""
    below: list[str]
    """Why each left-out variable was left out: interval, limit, where the limit comes from."""


def _below_limit(
    context: DataCollectionContext,
    variable: Variable,
    reader: DataReader,
    interval: int,
    limit: int,
    policy: IntervalLimitPolicy,
    out: _Outcome,
) -> int | None:
    """A variable's interval below its limit, by the policy: the interval to collect it at, or
    None when it is not collected (a problem under ``error``, a warning under ``ignore``)."""
    why = (
        f"{_where(context, variable)}: interval_ms {interval} is below the limit of {limit} ms (the "
        f"larger of the context's min_interval_ms ({context.min_interval_ms}) and the "
        f"min_interval_ms of reader {reader.type!r} ({reader.min_interval_ms}))"
    )
    if policy is IntervalLimitPolicy.ERROR:
        out.problems.append(why)
        return None
    if policy is IntervalLimitPolicy.IGNORE:
        out.warnings.append(f"{why}; not collected (interval_limit_policy=ignore)")
        out.dropped.append(variable.id)
        out.below.append(
            f"variable {variable.id}: interval_ms {interval} < {limit} ms ({_limit_origin(context, reader)})"
        )
        return None
    return limit


def _conclude(context: DataCollectionContext, collects: bool, out: _Outcome) -> None:
    """Raise ``ConfigError`` with the problems; a context left with nothing to collect is one
    when its variables were all below their limits, else a warning."""
    problems, warnings, below = out.problems, out.warnings, out.below
    if not collects and below and not problems:
        # Every variable left out: the context would run and collect nothing while its start,
        # `check` and the run's verdict said OK. That is a mistake in the pipeline, not a state.
        problems.append(
            f"context {context.id} would collect nothing: every variable is below its interval limit "
            f"({'; '.join(below)}); raise interval_ms, lower min_interval_ms, or use "
            "interval_limit_policy=use_limit"
        )
    if problems:
        raise ConfigError(problems)
    if not collects:
        warnings.append(f"context {context.id} has no variable left to collect")


def compile_context(
    context: DataCollectionContext,
    readers: Mapping[str, DataReader],
    policy: IntervalLimitPolicy = IntervalLimitPolicy.IGNORE,
) -> CompiledContext:
    """Validate every variable against its reader and the interval limits; build its spec.

    Raises ``ConfigError`` listing every problem, each naming the context, the variable and the
    reader. Calls only the readers' pure methods (``validate``, ``natural_value_type``,
    ``lane``, ``min_interval_ms``).

    The same context compiled again, unchanged (its variables, interval fields, readers and the
    policy), is not compiled twice: every variable still goes through its reader's ``validate``,
    and the specs of the last compilation are returned (``check`` then ``start``).
    """
    policy = IntervalLimitPolicy(policy)
    reused = _reused(context, readers, policy)
    if reused is not None:
        return reused
    out = _Outcome([], [], [], [])
    problems = out.problems
    specs: dict[str, list[VariableSpec]] = {}
    # Per reader type, looked up once: the reader, its lane key and its interval limit.
    used: dict[str, tuple[DataReader, str, int]] = {}
    lanes: dict[str, list[VariableSpec]] = {}  # reader type -> its lane's specs
    value_types: list[ValueType] = []
    # Equal tags make one tuple, shared by their specs (fewer objects for the collector to keep).
    tag_tuples: dict[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]] = {}
    cid = context.id
    context_interval = context.interval_ms
    # A spec per variable, none in a cycle: the collections these allocations would set off
    # walk every spec and variable so far and free nothing (flowcollect/_bulk.py).
    with paused_gc():
        for variable in context.variables:
            rtype = variable.reader
            found = used.get(rtype)
            if found is None:
                found = _reader_entry(context, variable, readers, problems)
                if found is None:
                    continue
                used[rtype] = found
            reader, key, limit = found
            try:
                value_type: ValueType
                if variable.value_type is None:
                    value_type = _validated_type(variable, reader)
                else:
                    value_type = variable.value_type
                    reader.validate(variable)
            except ValueError as exc:
                problems.append(f"{_where(context, variable)}, reader {reader.type!r}: {exc}")
                continue
            value_types.append(value_type)
            if value_type not in ("int", "float"):
                problems.extend(
                    f"{_where(context, variable)}: {name} applies to numbers; value_type is {value_type!r}"
                    for name in ("scale", "offset", "deadband")
                    if getattr(variable, name) is not None
                )
            interval = variable.interval_ms
            if interval is None:
                interval = context_interval
            if interval < limit:
                interval = _below_limit(context, variable, reader, interval, limit, policy, out)
                if interval is None:
                    continue
            lane = lanes.get(rtype)
            if lane is None:  # the lanes in the order of their first spec
                lane = lanes[rtype] = specs.setdefault(key, [])
            lane.append(
                _new_spec(
                    variable,
                    cid,
                    value_type,
                    reader.type,
                    interval,
                    _tags(variable.tags, tag_tuples) if variable.tags else (),
                )
            )
    _conclude(context, bool(specs), out)
    compiled = CompiledContext(
        context, {k: tuple(v) for k, v in specs.items()}, tuple(out.warnings), tuple(out.dropped)
    )
    _keep(context, policy, value_types, used, compiled)
    return compiled


def lane_schedule(
    key: str, contexts: Iterable[CompiledContext], reader_order: Sequence[str] = ()
) -> LaneSchedule | None:
    """The schedule of lane ``key`` over the given (running) contexts; None when nothing is due."""
    parts = [part for c in contexts if (part := c.specs.get(key))]
    if len(parts) == 1:  # one context on the lane: its very tuple (LaneSchedule keeps a tuple)
        return LaneSchedule(key, parts[0], reader_order)
    specs = [s for part in parts for s in part]
    return LaneSchedule(key, specs, reader_order) if specs else None


def compile_plan(
    contexts: Iterable[DataCollectionContext],
    readers: Iterable[DataReader],
    policy: IntervalLimitPolicy = IntervalLimitPolicy.IGNORE,
) -> CompiledPlan:
    """Compile contexts over readers into lanes and schedules, as if all were running.

    Raises ``ConfigError`` with every problem of every context (duplicate reader types, context
    ids, unknown readers, invalid variables, intervals below the limit with ``error``).
    """
    readers = list(readers)
    problems: list[str] = lane_problems(readers)
    by_type: dict[str, DataReader] = {}
    for reader in readers:
        if reader.type in by_type:
            problems.append(f"two readers have the type {reader.type!r}; each needs its own")
        by_type[reader.type] = reader
    compiled: list[CompiledContext] = []
    seen: set[int] = set()
    for context in contexts:
        if context.id in seen:
            problems.append(f"context {context.id}: two contexts have this id")
            continue
        seen.add(context.id)
        try:
            compiled.append(compile_context(context, by_type, policy))
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    lanes = {
        key: CompiledLane(key, types, lane_schedule(key, compiled, types))
        for key, types in lane_keys(readers).items()
    }
    return CompiledPlan(lanes, tuple(compiled), IntervalLimitPolicy(policy))
