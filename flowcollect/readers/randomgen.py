"""A reader that makes up values: for demos, load tests and the seed's scenario."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from itertools import repeat

from flowcollect.models import Variable
from flowcollect.readers.base import DataReader
from flowcollect.values import CollectedVariable, ValueBatch, VariableSpec

__all__ = ["RandomDataReader"]


class RandomDataReader(DataReader):
    """Gives each variable a uniform random value in ``[min_value, max_value]``.

    ``int`` variables get whole numbers in that range, ``bool`` a coin toss, ``str`` the
    float's text. ``seed`` makes runs repeatable.
    """

    def __init__(
        self,
        type: str = "random",  # noqa: A002 - the contract's name for a reader's type
        min_value: float = 15.0,
        max_value: float = 18.0,
        min_interval_ms: int = 1,
        seed: int | None = None,
    ) -> None:
        if min_value > max_value:
            raise ValueError(f"min_value ({min_value}) must not exceed max_value ({max_value})")
        if min_interval_ms <= 0:
            raise ValueError(f"min_interval_ms must be positive, got {min_interval_ms}")
        if not type:
            raise ValueError("type must not be empty")
        self._type = type
        self.min_value = min_value
        self.max_value = max_value
        self._min_interval_ms = min_interval_ms
        self._random = random.Random(seed)
        # The positions of each value type per variables tuple (the engine's, shared from tick
        # to tick), so a tick is one comprehension per type, not a branch per value.
        self._groups: dict[int, tuple[Sequence[VariableSpec], dict[str, list[int]]]] = {}

    @property
    def type(self) -> str:
        return self._type

    @property
    def min_interval_ms(self) -> int:
        return self._min_interval_ms

    def validate(self, variable: Variable) -> None:
        if variable.value_type == "int" and math.ceil(self.min_value) > math.floor(self.max_value):
            raise ValueError(f"no whole number lies in [{self.min_value}, {self.max_value}]")

    def read(self, variables: Sequence[CollectedVariable]) -> None:
        uniform = self._random.uniform
        lo, hi = self.min_value, self.max_value
        for v in variables:
            x = uniform(lo, hi)
            vt = v.value_type
            if vt == "float":
                v.value = x
            elif vt == "int":
                v.value = self._random.randint(math.ceil(lo), math.floor(hi))
            elif vt == "bool":
                v.value = x >= (lo + hi) / 2
            else:
                v.value = repr(x)

    def _positions(self, variables: Sequence[VariableSpec]) -> dict[str, list[int]]:
        cached = self._groups.get(id(variables))
        if cached is not None and cached[0] is variables:
            return cached[1]
        groups: dict[str, list[int]] = {}
        for i, spec in enumerate(variables):
            groups.setdefault(spec.value_type, []).append(i)
        if len(self._groups) > 1024:  # schedules come and go: never grow without bound
            self._groups.clear()
        self._groups[id(variables)] = (variables, groups)
        return groups

    def plan_changed(self, variables: Sequence[VariableSpec]) -> None:
        # Usually the very tuple of the ticks that read everything: group it now, not at a tick.
        self._groups.clear()
        self._positions(variables)

    def read_batch(self, batch: ValueBatch) -> None:
        n = len(batch)
        rnd = self._random.random
        lo, hi = self.min_value, self.max_value
        span = hi - lo
        groups = self._positions(batch.variables)
        if len(groups) == 1 and "float" in groups:
            batch.values = [lo + span * rnd() for _ in repeat(None, n)]
            return
        values = batch.values
        for vt, positions in groups.items():
            if vt == "float":
                for i in positions:
                    values[i] = lo + span * rnd()
            elif vt == "int":
                first, last = math.ceil(lo), math.floor(hi)
                width = last - first + 1
                for i in positions:
                    values[i] = first + min(int(rnd() * width), width - 1)
            elif vt == "bool":
                for i in positions:
                    values[i] = rnd() >= 0.5
            else:
                for i in positions:
                    values[i] = repr(lo + span * rnd())
