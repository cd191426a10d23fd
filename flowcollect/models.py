"""The declarative models: what to collect, from which reader, how often."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["DataCollectionContext", "IntervalLimitPolicy", "Report", "ValueType", "Variable"]

ValueType = Literal["float", "int", "bool", "str"]
"""The Python type a variable's values are delivered as. A closed set: never evaluated."""

Report = Literal["every", "change"]
"""``every``: a value at every due instant; ``change``: only when it changed (see ``Variable``)."""

PositiveMs = Annotated[int, Field(gt=0)]

MAX_DURATION_S = 100 * 365 * 86400
"""Longer would not fit a datetime for every start date; nobody needs a longer run."""


class Variable(BaseModel):
    """One thing to collect: a reader type, an address in that reader's grammar, a value type.

    ``value_type`` None (the default): the reader's natural type for the address (a coil is a
    bool, an int16 an int), else ``float``. ``scale`` and ``offset`` turn a number into
    engineering units (raw x scale + offset, applied by the engine; a float when either is).
    ``report="change"`` delivers a value only when it moved by more than ``deadband`` (numbers;
    any change for bool and str) since the last one delivered to the context, and at least every
    ``heartbeat_ms`` when that is set.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)

    id: int = Field(gt=0)
    address: str = Field(min_length=1)
    value_type: ValueType | None = None
    reader: str = Field(min_length=1)
    interval_ms: PositiveMs | None = None
    """None: the context's ``interval_ms``."""
    name: str | None = Field(default=None, min_length=1)
    """A label for writers and plans (the InfluxDB and CSV writers write it)."""
    tags: dict[str, str] = Field(default_factory=dict)
    """Labels written with every value (InfluxDB tags, CSV columns)."""
    scale: float | None = None
    offset: float | None = None
    report: Report = "every"
    deadband: float | None = Field(default=None, ge=0)
    heartbeat_ms: PositiveMs | None = None

    @field_validator("address", "reader")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("scale", "offset")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("tags")
    @classmethod
    def _tag_names(cls, tags: dict[str, str]) -> dict[str, str]:
        blank = [k for k in tags if not k.strip()]
        if blank:
            raise ValueError("tag names must not be blank")
        return tags

    @model_validator(mode="after")
    def _report_fields(self) -> Variable:
        if self.report != "change":
            given = [f for f in ("deadband", "heartbeat_ms") if getattr(self, f) is not None]
            if given:
                verb = "applies" if len(given) == 1 else "apply"
                raise ValueError(f"{' and '.join(given)} {verb} only with report='change'")
        return self


class DataCollectionContext(BaseModel):
    """A plan of variables collected together, started, paused, resumed and stopped by ``id``.

    ``start_date`` and ``end_date`` are set by the collector (timezone-aware UTC).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    id: int = Field(gt=0)
    variables: list[Variable] = Field(min_length=1)
    interval_ms: PositiveMs = 1000
    """The interval of variables that do not give their own."""
    min_interval_ms: PositiveMs = 100
    """No variable of this context is collected faster (see ``IntervalLimitPolicy``)."""
    duration_s: float | None = Field(default=86400.0, gt=0, le=MAX_DURATION_S)
    """The context stops by itself this long after it started (24 h by default, 100 years at
    most); ``None``: it runs until stopped."""
    start_date: datetime | None = None
    end_date: datetime | None = None

    @field_validator("variables")
    @classmethod
    def _unique_ids(cls, variables: list[Variable]) -> list[Variable]:
        seen: set[int] = set()
        repeated: set[int] = set()
        for variable in variables:
            (repeated if variable.id in seen else seen).add(variable.id)
        if repeated:
            raise ValueError(f"variable ids must be unique in a context; repeated: {sorted(repeated)}")
        return variables

    @field_validator("start_date", "end_date")
    @classmethod
    def _aware_utc(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("must be timezone-aware")
        return value.astimezone(UTC)

    def interval_of(self, variable: Variable) -> int:
        """The interval a variable asks for in this context (its own, else the context's)."""
        return variable.interval_ms if variable.interval_ms is not None else self.interval_ms


class IntervalLimitPolicy(StrEnum):
    """What start does with a variable whose interval is below the limit.

    The limit is the larger of the context's ``min_interval_ms`` and the reader's.
    """

    IGNORE = "ignore"
    """The variable is not collected; a warning names it."""
    USE_LIMIT = "use_limit"
    """The variable is collected at the limit instead."""
    ERROR = "error"
    """Start raises ``ConfigError`` naming the variable and the limit."""
