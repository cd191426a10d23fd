"""Contexts + readers + the interval-limit policy -> a compiled plan. Pure: no threads, no I/O.

``DataCollector.start`` and ``check``, ``Pipeline.check`` and ``flowcollect plan`` all go
through here, so what is checked and drawn is what runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from flowcollect.compile._schedule import LaneSchedule, distinct_reads
from flowcollect.errors import ConfigError
from flowcollect.models import DataCollectionContext, IntervalLimitPolicy, Variable
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


def _validated_type(variable: Variable, reader: DataReader) -> str:
    """The variable's value type (its own, else the reader's natural type for the address, else
    float), once the reader's ``validate`` accepted the variable with it; ``ValueError`` if not."""
    value_type = variable.value_type
    if value_type is None:
        value_type = reader.natural_value_type(variable.address) or "float"
        variable = variable.model_copy(update={"value_type": value_type})
    reader.validate(variable)
    return value_type


def compile_context(
    context: DataCollectionContext,
    readers: Mapping[str, DataReader],
    policy: IntervalLimitPolicy = IntervalLimitPolicy.IGNORE,
) -> CompiledContext:
    """Validate every variable against its reader and the interval limits; build its spec.

    Raises ``ConfigError`` listing every problem, each naming the context, the variable and the
    reader. Calls only the readers' pure methods (``validate``, ``natural_value_type``,
    ``lane``, ``min_interval_ms``).
    """
    policy = IntervalLimitPolicy(policy)
    problems: list[str] = []
    warnings: list[str] = []
    dropped: list[int] = []
    # Why each left-out variable was left out: interval, limit, where the limit comes from.
    below: list[str] = []
    specs: dict[str, list[VariableSpec]] = {}
    for variable in context.variables:
        where = _where(context, variable)
        reader = readers.get(variable.reader)
        if reader is None:
            known = ", ".join(sorted(readers)) or "none"
            problems.append(f"{where}: no reader of type {variable.reader!r} (readers: {known})")
            continue
        try:
            value_type = _validated_type(variable, reader)
        except ValueError as exc:
            problems.append(f"{where}, reader {reader.type!r}: {exc}")
            continue
        numeric = value_type in ("int", "float")
        for name in ("scale", "offset", "deadband"):
            if getattr(variable, name) is not None and not numeric:
                problems.append(f"{where}: {name} applies to numbers; value_type is {value_type!r}")
        interval = context.interval_of(variable)
        limit = max(context.min_interval_ms, reader.min_interval_ms)
        if interval < limit:
            why = (
                f"{where}: interval_ms {interval} is below the limit of {limit} ms (the larger of "
                f"the context's min_interval_ms ({context.min_interval_ms}) and the "
                f"min_interval_ms of reader {reader.type!r} ({reader.min_interval_ms}))"
            )
            if policy is IntervalLimitPolicy.ERROR:
                problems.append(why)
                continue
            if policy is IntervalLimitPolicy.IGNORE:
                warnings.append(f"{why}; not collected (interval_limit_policy=ignore)")
                dropped.append(variable.id)
                below.append(
                    f"variable {variable.id}: interval_ms {interval} < {limit} ms "
                    f"({_limit_origin(context, reader)})"
                )
                continue
            interval = limit
        spec = VariableSpec(
            id=variable.id,
            context_id=context.id,
            address=variable.address,
            value_type=value_type,
            reader=reader.type,
            interval_ms=interval,
            name=variable.name,
            tags=tuple(sorted(variable.tags.items())),
            scale=variable.scale,
            offset=variable.offset,
            report=variable.report,
            deadband=variable.deadband,
            heartbeat_ms=variable.heartbeat_ms,
        )
        specs.setdefault(lane_key(reader), []).append(spec)
    if not specs and below and not problems:
        # Every variable left out: the context would run and collect nothing while its start,
        # `check` and the run's verdict said OK. That is a mistake in the pipeline, not a state.
        problems.append(
            f"context {context.id} would collect nothing: every variable is below its interval limit "
            f"({'; '.join(below)}); raise interval_ms, lower min_interval_ms, or use "
            "interval_limit_policy=use_limit"
        )
    if problems:
        raise ConfigError(problems)
    if not specs:
        warnings.append(f"context {context.id} has no variable left to collect")
    return CompiledContext(context, {k: tuple(v) for k, v in specs.items()}, tuple(warnings), tuple(dropped))


def lane_schedule(
    key: str, contexts: Iterable[CompiledContext], reader_order: Sequence[str] = ()
) -> LaneSchedule | None:
    """The schedule of lane ``key`` over the given (running) contexts; None when nothing is due."""
    specs = [s for c in contexts for s in c.specs.get(key, ())]
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
