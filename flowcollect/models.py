"""The declarative models: what to collect, from which reader, how often."""

from __future__ import annotations

import math
import sys
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, NoReturn

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

    A variable is frozen; one given no ``tags`` holds the one empty dict shared by all such
    variables, which refuses changes too (``model_copy(update={"tags": ...})`` gives it some).
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
        # One object per distinct text: a reader's 20 variables name it 20 times, and identical
        # devices repeat each other's addresses (an interned text is freed with its last user).
        return sys.intern(value) if type(value) is str else value

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
        compact(self)
        return self


class _NoTags(dict[str, str]):
    """The tags of every variable without any: one empty dict for all of them (a dict of its
    own each was 64 bytes a variable, 1.3 KB a device of 20), so it refuses to be changed, as
    the frozen ``Variable`` holding it does (``model_copy(update={"tags": ...})`` gives one)."""

    __slots__ = ()

    def _refuse(self, *_args: object, **_kwargs: object) -> NoReturn:
        raise TypeError(
            "a Variable's tags cannot be changed (model_copy(update={'tags': ...}) makes a copy with others)"
        )

    __setitem__ = __delitem__ = __ior__ = _refuse
    update = setdefault = pop = popitem = clear = _refuse

    def __copy__(self) -> _NoTags:
        return self

    def __deepcopy__(self, _memo: object) -> _NoTags:
        return self

    def __reduce__(self) -> tuple[type[dict[str, str]], tuple[()]]:
        return dict, ()  # unpickled as a plain empty dict


_NO_TAGS = _NoTags()


_FIELDS_SETS: dict[frozenset[str], set[str]] = {}
"""The fields set of each combination of given fields, shared by the variables given them (at
most 2**12 of them; in practice a handful)."""
_last_fields_set: list[set[str]] = [set()]
"""The last of them shared, first looked at (any thread may replace it: a race only shares less)."""


class _Shape:
    """A plain object with ``Variable``'s fields as attributes, in their order: its ``__dict__``
    shares its keys with every dict of this class (PEP 412), and so do copies of it."""


def _shape() -> dict[str, Any]:
    shape = _Shape()
    for name in Variable.model_fields:
        setattr(shape, name, None)
    return shape.__dict__


_SHAPE = _shape()
_SHAPE_SIZE = len(_SHAPE)
# BaseModel's slots, set through their descriptors (Variable is frozen: its __setattr__ refuses).
_set_dict = BaseModel.__dict__["__dict__"].__set__
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__


def compact(variable: Variable) -> None:
    """Make a ``Variable`` smaller, changing nothing it says or does (``Variable(...)`` calls it).

    Two thousand devices of 20 variables are 40,000 of them, most of a collector's memory, and
    pydantic gives each a ``__dict__`` of its own (12 keys, ~470 bytes) and a set of the fields
    given (``model_fields_set``, ~220 bytes). The set becomes one shared (``share_fields_set``),
    and the dict a key-sharing one (PEP 412: ~340 bytes, only its values its own) with the same
    items in the same order. A ``model_copy`` of a variable copies its dict as it is (a
    key-sharing dict stays one) and makes its own set (to share it: ``share_fields_set``).
    About 1 us a variable.
    """
    if type(variable) is not Variable:
        return  # a subclass may have fields of its own, or not be frozen
    share_fields_set(variable)
    values = variable.__dict__
    if len(values) == _SHAPE_SIZE:
        fitted = _SHAPE.copy()
        fitted.update(values)
        tags = fitted["tags"]
        if not tags and type(tags) is dict:
            fitted["tags"] = _NO_TAGS
        if len(fitted) == _SHAPE_SIZE:  # the same keys (a key of its own would make it larger)
            _set_dict(variable, fitted)


def share_fields_set(variable: Variable) -> None:
    """Give a variable the set of given fields shared by every variable given the same ones. A
    frozen model's set is never changed in place (``model_copy`` makes a new one for the copy,
    and changes that), so sharing it changes nothing but the memory."""
    if type(variable) is not Variable:
        return
    fields_set = variable.__pydantic_fields_set__
    shared = _last_fields_set[0]
    if fields_set != shared:
        shared = _last_fields_set[0] = _FIELDS_SETS.setdefault(frozenset(fields_set), fields_set)
    if shared is not fields_set:
        _set_fields_set(variable, shared)


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
