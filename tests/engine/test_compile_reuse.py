"""``compile_context`` reuses the last compilation of an unchanged context (``check`` then
``start``), and only then: every variable still goes through its reader's ``validate``, and any
change to what the specs depend on compiles again."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from dataclasses import FrozenInstanceError, fields, replace

import pytest

from flowcollect import (
    ConfigError,
    DataCollectionContext,
    DataCollector,
    IntervalLimitPolicy,
    Pipeline,
    Variable,
)
from flowcollect.compile import CompiledContext, compile_context
from flowcollect.models import ValueType
from flowcollect.readers import RandomDataReader
from flowcollect.testing import MemoryDataWriter
from flowcollect.values import VariableSpec
from tests.conftest import set_gc


class CountingReader(RandomDataReader):
    """Counts its validate calls; may refuse every variable, or change its natural type."""

    def __init__(self, type: str = "random", min_interval_ms: int = 1) -> None:  # noqa: A002
        super().__init__(type, min_interval_ms=min_interval_ms, seed=1)
        self.validated = 0
        self.refuse = False
        self.natural: ValueType | None = None
        self.lane_text: str | None = None

    def validate(self, variable: Variable) -> None:
        self.validated += 1
        if self.refuse:
            raise ValueError("this reader refuses it now")

    def natural_value_type(self, address: str) -> ValueType | None:
        return self.natural

    @property
    def lane(self) -> str | None:
        return self.lane_text

    @property
    def min_interval_ms(self) -> int:
        return self._min_interval_ms


def context(n: int = 20) -> DataCollectionContext:
    """Odd variables: no value type (the reader's natural one), every 10 s; even ones: int, at
    the context's interval."""
    return DataCollectionContext(
        id=1,
        variables=[
            Variable(
                id=i,
                address=f"a{i}",
                reader="random",
                value_type=None if i % 2 else "int",
                interval_ms=10_000 if i % 2 else None,
                tags={"k": "v"},
            )
            for i in range(1, n + 1)
        ],
        duration_s=60,
    )


def same_specs(a: CompiledContext, b: CompiledContext) -> bool:
    """The very same spec objects (reused), not merely equal ones."""
    return a.specs.keys() == b.specs.keys() and all(
        len(a.specs[k]) == len(b.specs[k])
        and all(x is y for x, y in zip(a.specs[k], b.specs[k], strict=True))
        for k in a.specs
    )


def test_an_unchanged_context_is_compiled_once_and_validated_every_time() -> None:
    reader = CountingReader()
    ctx = context()
    first = compile_context(ctx, {"random": reader})
    assert reader.validated == 20
    again = compile_context(ctx, {"random": reader})
    assert same_specs(first, again) and again.context is ctx
    assert reader.validated == 40  # every variable through validate again


def test_a_reader_refusing_now_is_heard_on_reuse() -> None:
    reader = CountingReader()
    ctx = context(2)
    compile_context(ctx, {"random": reader})
    reader.refuse = True
    with pytest.raises(ConfigError) as caught:
        compile_context(ctx, {"random": reader})
    assert caught.value.problems == [
        "context 1, variable 1 (address 'a1'), reader 'random': this reader refuses it now",
        "context 1, variable 2 (address 'a2'), reader 'random': this reader refuses it now",
    ]


def _more_variables(
    ctx: DataCollectionContext, reader: CountingReader, _r: dict[str, CountingReader]
) -> None:
    ctx.variables.append(Variable(id=99, address="z", reader="random"))


def _fewer_variables(
    ctx: DataCollectionContext, reader: CountingReader, _r: dict[str, CountingReader]
) -> None:
    ctx.variables.pop()


def _replaced_variable(
    ctx: DataCollectionContext, reader: CountingReader, _r: dict[str, CountingReader]
) -> None:
    ctx.variables[3] = ctx.variables[3].model_copy(update={"interval_ms": 250})


def _interval(ctx: DataCollectionContext, reader: CountingReader, _r: dict[str, CountingReader]) -> None:
    ctx.interval_ms = 500


def _min_interval(ctx: DataCollectionContext, reader: CountingReader, _r: dict[str, CountingReader]) -> None:
    ctx.min_interval_ms = 2000  # the even variables below it: left out, with warnings


def _natural_type(ctx: DataCollectionContext, reader: CountingReader, _r: dict[str, CountingReader]) -> None:
    reader.natural = "bool"


def _reader_limit(ctx: DataCollectionContext, reader: CountingReader, _r: dict[str, CountingReader]) -> None:
    reader._min_interval_ms = 5000


def _reader_lane(ctx: DataCollectionContext, reader: CountingReader, _r: dict[str, CountingReader]) -> None:
    reader.lane_text = "tcp://plc:502"


def _another_reader(
    ctx: DataCollectionContext, reader: CountingReader, readers: dict[str, CountingReader]
) -> None:
    readers["random"] = CountingReader()


CHANGES: list[Callable[[DataCollectionContext, CountingReader, dict[str, CountingReader]], None]] = [
    _more_variables,
    _fewer_variables,
    _replaced_variable,
    _interval,
    _min_interval,
    _natural_type,
    _reader_limit,
    _reader_lane,
    _another_reader,
]


@pytest.mark.parametrize("change", CHANGES, ids=lambda c: c.__name__.strip("_"))
def test_any_change_compiles_again_as_a_fresh_context_would(
    change: Callable[[DataCollectionContext, CountingReader, dict[str, CountingReader]], None],
) -> None:
    reader = CountingReader()
    readers = {"random": reader}
    ctx = context()
    first = compile_context(ctx, readers)
    change(ctx, reader, readers)
    again = compile_context(ctx, readers)
    # A fresh context of the same fields (another object: nothing to reuse) is the reference.
    fresh = compile_context(DataCollectionContext.model_validate(ctx.model_dump()), readers)
    assert not same_specs(first, again)
    assert (dict(again.specs), again.warnings, again.dropped) == (
        dict(fresh.specs),
        fresh.warnings,
        fresh.dropped,
    )


def test_another_policy_compiles_again() -> None:
    reader = CountingReader(min_interval_ms=2000)
    ctx = context(3)
    ignored = compile_context(ctx, {"random": reader}, IntervalLimitPolicy.IGNORE)
    limited = compile_context(ctx, {"random": reader}, IntervalLimitPolicy.USE_LIMIT)
    assert ignored.dropped == (2,) and limited.dropped == ()
    with pytest.raises(ConfigError):
        compile_context(ctx, {"random": reader}, IntervalLimitPolicy.ERROR)


def test_a_dropped_context_is_not_kept_alive() -> None:
    reader = CountingReader()
    ctx = context()
    compile_context(ctx, {"random": reader})
    gone = weakref.ref(ctx)
    variable = weakref.ref(ctx.variables[0])
    del ctx
    gc.collect()
    assert gone() is None
    compile_context(context(), {"random": reader})  # the next compilation forgets the dead one
    gc.collect()
    assert variable() is None


def test_pipeline_check_then_collector_start_validate_each_variable_twice() -> None:
    reader = CountingReader()
    ctx = context()
    pipeline = Pipeline(name="p", readers=[reader], writers=[MemoryDataWriter()], contexts=[ctx])
    assert pipeline.check() == []
    collector = DataCollector([reader], [MemoryDataWriter()])
    try:
        collector.start(ctx)
        assert reader.validated == 40
        assert collector.check(ctx).specs == compile_context(context(), {"random": reader}).specs
    finally:
        collector.close()


def test_a_compiled_spec_is_the_dataclass_one_field_by_field() -> None:
    variables = [
        Variable(id=1, address="a", reader="random", value_type="float", name="n", tags={"b": "2", "a": "1"},
                 scale=2.0, offset=-1.0, report="change", deadband=0.5, heartbeat_ms=5000, interval_ms=250),
        Variable(id=2, address="b", reader="random"),
    ]  # fmt: skip
    ctx = DataCollectionContext(id=7, variables=variables)
    compiled = compile_context(ctx, {"random": CountingReader()})
    made = compiled.specs["reader:random"]
    built = (
        VariableSpec(
            1, 7, "a", "float", "random", 250, "n", (("a", "1"), ("b", "2")), 2.0, -1.0, "change", 0.5, 5000
        ),
        VariableSpec(2, 7, "b", "float", "random", 1000),
    )
    assert made == built
    assert [hash(s) for s in made] == [hash(s) for s in built]
    assert [repr(s) for s in made] == [repr(s) for s in built]
    assert all(
        getattr(m, f.name) == getattr(b, f.name)
        for m, b in zip(made, built, strict=True)
        for f in fields(VariableSpec)
    )
    assert replace(made[0], interval_ms=1) == replace(built[0], interval_ms=1)
    with pytest.raises(FrozenInstanceError):
        made[0].id = 3  # type: ignore[misc]


@pytest.mark.usefixtures("gc_as_found")
@pytest.mark.parametrize("enabled", [True, False])
@pytest.mark.parametrize("refused", [False, True])
def test_compiling_holds_off_the_garbage_collector_and_restores_it(enabled: bool, refused: bool) -> None:
    """A context's specs form no cycles: the collections their allocations would set off walk
    everything built so far and free nothing (0.4 of 0.7 s for 100,000 variables), so the
    compilation runs with the cyclic collector paused, and leaves it as it found it."""
    seen: list[bool] = []

    class Watching(RandomDataReader):
        def validate(self, variable: Variable) -> None:
            seen.append(gc.isenabled())
            if refused and variable.id == 2:
                raise ValueError("refused")
            super().validate(variable)

    context = DataCollectionContext(
        id=1, variables=[Variable(id=i, address=f"a{i}", reader="random") for i in (1, 2)]
    )
    set_gc(enabled)
    if refused:
        with pytest.raises(ConfigError, match="refused"):
            compile_context(context, {"random": Watching()})
    else:
        compile_context(context, {"random": Watching()})
    assert seen == [False, False]
    assert gc.isenabled() is enabled
