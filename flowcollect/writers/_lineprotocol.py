"""InfluxDB line protocol for collected values, byte for byte what influxdb-client's ``Point`` writes.

Building a ``Point`` and calling ``to_line_protocol()`` costs several microseconds a value; the
writer needs well under one. This module writes the same text directly. The escaping tables and
the float, bool, int and string formats copy influxdb-client's rules, and
``tests/properties/test_lineprotocol.py`` checks the two agree on arbitrary input.

A value goes in only when it can be written as its ``value_type`` (see :func:`field_text`);
anything else is refused with a reason, so one bad value never makes the server refuse a batch.

The schema (see docs/influxdb.md): with ``schema="typed"`` (the default) the field key carries
the value type (``value`` for float, ``value_int``, ``value_bool``, ``value_str``), so variables of
different types never give one field two types and InfluxDB never refuses a point for it;
``schema="single"`` writes every type to ``value`` (the first design's points);
``schema="fields"`` writes the points a Telegraf input writes (one field per variable, named by
it; the measurement and tags the variable's own), so dashboards built on them keep working. A point's
identity (measurement, tags from the variable, the exact grid or source time) is deterministic,
so a batch sent twice overwrites itself instead of adding points.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Literal

from pydantic_core import to_json

from flowcollect.values import CollectedVariable, ValueBatch, VariableSpec

__all__ = [
    "FIELD_KEY",
    "TAG_KEYS",
    "TYPED_FIELD_KEYS",
    "Schema",
    "BatchProblem",
    "LineSerializer",
    "Unwritable",
    "escape_measurement",
    "escape_tag_value",
    "field_text",
    "float_texts",
    "timestamp_ns",
]

FIELD_KEY = "value"
# The tags in the order the line protocol carries them: sorted by key, as Point sorts them.
TAG_KEYS = ("address", "context", "reader", "variable")
# With schema="typed", the field key of each value type: one type per key, whatever is mixed.
TYPED_FIELD_KEYS = {"float": "value", "int": "value_int", "bool": "value_bool", "str": "value_str"}
QUALITY_FIELD = "quality"
# The source's own time of a value, when its reader carries it beside the value (OPC UA's
# default): an integer field of epoch nanoseconds, so a query can compare it with the point's time.
SOURCE_TIME_FIELD = "source_time"
# Tags the writer sets itself; a variable's own tag of one of these names is left out.
RESERVED_TAGS = frozenset(("address", "context", "name", "reader", "variable"))
# Batches of one context and phase share their variables list: a few thousand lists is a big
# collector. Batches replayed from a spool each bring their own list and specs, equal to the
# first ones: those are found by value (``_MAX_SPECS`` bounds that cache).
_MAX_LAYOUT_VARIABLES = 2_000_000
_MAX_SPECS = 1_000_000

Schema = Literal["typed", "single", "fields"]
MEASUREMENT_TAG = "measurement"
"""With ``schema="fields"``, the variable tag that names its point's measurement (not a tag)."""
BatchProblem = tuple[int, str, str]
"""``(index in the batch, "error" or "unwritable", text)`` for a value that makes no point."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
# InfluxDB refuses the whole request when one string field exceeds 64 KiB.
_MAX_STRING_BYTES = 65535
_MAX_PREFIXES = 1_000_000

_ESCAPE_MEASUREMENT = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n", "\t": r"\t", "\r": r"\r"})
_ESCAPE_TAG = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n", "\t": r"\t", "\r": r"\r"})
_ESCAPE_STRING = str.maketrans({'"': r"\"", "\\": r"\\"})


class Unwritable(ValueError):  # noqa: N818 - a reason, raised and caught inside this package
    """A value that cannot be written as its ``value_type``; the text says why."""


def escape_measurement(name: str) -> str:
    return name.translate(_ESCAPE_MEASUREMENT)


def escape_tag_value(value: object) -> str:
    text = str(value)
    if text.isalnum():
        # Nothing to escape (most tags): translate() with this table costs ~0.4 us even then.
        return text
    escaped = text.translate(_ESCAPE_TAG)
    # A trailing backslash would escape the separator that follows it.
    if escaped.endswith("\\"):
        escaped += " "
    return escaped


def _float_text(x: float) -> str:
    text = repr(x)
    return text[:-2] if text.endswith(".0") else text


def float_texts(values: list[float], suffix: str = "") -> list[str]:
    """``_float_text(x) + suffix`` for every value of a list of finite floats, in a few C calls.

    ``repr()`` costs ~0.45 us a random double (the shortest round-trip digits, found by big-number
    arithmetic); pydantic-core's JSON encoder finds the same digits with Ryu in ~0.05 us and
    writes them in ``repr``'s notation, except below 1e-4, where it writes ``0.00001`` or
    ``1e-6`` for ``repr``'s ``1e-05`` and ``1e-06``: those few texts are made again with ``repr``.
    ``tests/properties/test_lineprotocol.py`` checks the result against ``repr`` and ``Point``.
    """
    if not _JSON_FLOATS_ARE_REPRS:
        return [_float_text(x) + suffix for x in values]
    return _json_float_texts(values, suffix)


def _json_float_texts(values: list[float], suffix: str) -> list[str]:
    if not values:
        return []
    joined = to_json(values).decode("ascii")
    body = (joined[1:-1] + ",").replace(".0,", ",")
    if suffix:
        body = body.replace(",", suffix + ",")
    texts = body.split(",")
    texts.pop()
    if "e-" in joined or "0.0000" in joined:
        # Rare in measurements; "0.0000" also finds harmless texts such as "10.00001".
        return [
            _float_text(x) + suffix if "e-" in text or "0.0000" in text else text
            for x, text in zip(values, texts, strict=True)
        ]
    return texts


def _json_floats_are_reprs() -> bool:
    """Whether the JSON way gives ``repr``'s texts with the pydantic-core installed: checked once,
    so a release that changes its notation costs speed, never a changed text."""
    samples = [0.1, 5893.0, -0.0, 1e16, 1.5e300, 1e22, 9007199254740993.0, 0.0001, 1e-05, 2.5e-300]
    try:
        return _json_float_texts(samples, " 1") == [_float_text(x) + " 1" for x in samples]
    except Exception:  # whatever goes wrong, repr() is the way
        return False


_JSON_FLOATS_ARE_REPRS = _json_floats_are_reprs()


def _string_text(text: str) -> str:
    if len(text) > _MAX_STRING_BYTES // 4 and len(text.encode("utf-8", "surrogatepass")) > _MAX_STRING_BYTES:
        raise Unwritable(f"a str value longer than {_MAX_STRING_BYTES} bytes")
    if '"' in text or "\\" in text:
        text = text.translate(_ESCAPE_STRING)
    return f'"{text}"'


def _as_float(value: object) -> str:
    if isinstance(value, numbers.Real):
        x = float(value)
        if not math.isfinite(x):
            # Point drops non-finite fields, and with its only field the whole point.
            raise Unwritable(f"a non-finite float ({x})")
        return _float_text(x)
    raise _wrong_type(value, "float")


def _as_int(value: object) -> str:
    if isinstance(value, numbers.Integral) or (isinstance(value, float) and value.is_integer()):
        n = int(value)
    else:
        raise _wrong_type(value, "int")
    if not _INT64_MIN <= n <= _INT64_MAX:
        raise Unwritable(f"an int outside 64 bits ({n})")
    return f"{n}i"


def _as_bool(value: object) -> str:
    if isinstance(value, bool) or (isinstance(value, numbers.Real) and value in (0, 1)):
        return "true" if value else "false"
    raise _wrong_type(value, "bool")


def _as_str(value: object) -> str:
    if isinstance(value, str):
        return _string_text(value)
    if isinstance(value, numbers.Real):
        return _string_text(str(value))
    raise _wrong_type(value, "str")


def _wrong_type(value: object, value_type: str) -> Unwritable:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return Unwritable(f"{type(value).__name__} value {text} for a variable of value_type {value_type}")


_FIELD_FORMATS: dict[str, Callable[[object], str]] = {
    "float": _as_float,
    "int": _as_int,
    "bool": _as_bool,
    "str": _as_str,
}


def field_text(value: object, value_type: str) -> str:
    """The field value as line protocol, converted to ``value_type``; ``Unwritable`` if it cannot be.

    Conversions never parse text: a ``float`` variable takes any real number, an ``int`` one an
    integral number (or a float with no fraction) within 64 bits, a ``bool`` one a bool or 0/1,
    a ``str`` one text or a number (as its ``str()``).
    """
    if value is None:
        raise Unwritable("no value")
    format_ = _FIELD_FORMATS.get(value_type)
    if format_ is None:
        raise Unwritable(f"an unknown value_type {value_type!r}")
    return format_(value)


def _unknown_type(value: object) -> str:
    raise Unwritable("an unknown value_type")


def _format(fmt: Callable[[object], str], value: object) -> str:
    if value is None:
        raise Unwritable("no value")
    return fmt(value)


def timestamp_ns(time: datetime) -> int:
    """Nanoseconds since the epoch; a naive ``time`` is taken as UTC (as influxdb-client does)."""
    if time.tzinfo is None:
        time = time.replace(tzinfo=UTC)
    elif time.utcoffset() is None:
        raise Unwritable("a time whose tzinfo gives no UTC offset")
    delta = time - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


class LineSerializer:
    """Turns batches of collected values into lines, one per writable value.

    Keeps the measurement-and-tags prefix of every variable it has seen, so a line costs one
    dictionary look-up and one string join. Safe to call from several threads: the cache only
    ever holds values computed from their key.
    """

    def __init__(self, measurement: str, schema: Schema = "single") -> None:
        self.measurement = measurement
        self.schema = schema
        self._measurement = escape_measurement(measurement)
        self._prefixes: dict[tuple[int, int, str, str, str], str] = {}
        # id(batch.variables) -> (the sequence, its prefixes, its formats): batches of one
        # context and phase share their variables list, so a batch costs one look-up.
        self._layouts: dict[
            int, tuple[Sequence[VariableSpec], list[str], list[Callable[[object], str]], bool]
        ] = {}
        # Prefixes of variables with a name or tags of their own, keyed by the fields a prefix
        # depends on: hashing a whole VariableSpec (a dataclass hash in Python over all its
        # fields) cost more than making the prefix.
        self._spec_prefixes: dict[tuple[object, ...], str] = {}
        self._layout_variables = 0  # variables held by _layouts

    def field_key(self, value_type: str) -> str:
        if self.schema == "typed":
            return TYPED_FIELD_KEYS.get(value_type, FIELD_KEY)
        return FIELD_KEY

    def prefix(self, value: CollectedVariable) -> str:
        """``measurement,address=...,context=...,reader=...,variable=... value=``."""
        if self.schema == "fields":
            # A per-value caller's values carry no name or tags: the address names the field.
            return self.fields_prefix(value.address, ())
        tags = []
        for key, tag in zip(TAG_KEYS, (value.address, value.context_id, value.reader, value.id), strict=True):
            if tag is None:
                continue
            escaped = escape_tag_value(tag)
            if escaped:
                tags.append(f"{key}={escaped}")
        head = f"{self._measurement},{','.join(tags)}" if tags else self._measurement
        return f"{head} {self.field_key(value.value_type)}="

    def fields_prefix(self, field: str, tags: Iterable[tuple[str, str]]) -> str:
        """``schema="fields"``: ``measurement,tags field=`` where the field is the variable's
        name (else address), the measurement its ``measurement`` tag (else the writer's), and the
        tags its own only, sorted: the points a Telegraf input writes, one field per variable."""
        own = dict(tags)
        measurement = own.pop(MEASUREMENT_TAG, None)
        head = escape_measurement(measurement) if measurement else self._measurement
        for key in sorted(own):
            escaped_key, escaped = escape_tag_value(key), escape_tag_value(own[key])
            if escaped_key and escaped:
                head += f",{escaped_key}={escaped}"
        return f"{head} {escape_tag_value(field)}="

    def quality_key(self, field: str) -> str:
        """The quality field beside a value: one per point, else one per variable's field."""
        # Escaped as the value's own field key is (a name with a space or comma must not end it).
        return f"{escape_tag_value(field)}_{QUALITY_FIELD}" if self.schema == "fields" else QUALITY_FIELD

    def source_time_key(self, field: str) -> str:
        """The source time field beside a value: one per point, else one per variable's field."""
        return (
            f"{escape_tag_value(field)}_{SOURCE_TIME_FIELD}" if self.schema == "fields" else SOURCE_TIME_FIELD
        )

    def spec_prefix(self, spec: VariableSpec) -> str:
        """A compiled variable's ``measurement,tags field=``: the built-in tags, ``name`` when
        set, then the variable's own tags (one of a built-in name is left out), sorted by key."""
        if self.schema == "fields":
            return self.fields_prefix(spec.name or spec.address, spec.tags)
        if not spec.name and not spec.tags and type(spec.context_id) is int and type(spec.id) is int:
            # The common variable (built-in tags only, whose keys need no escaping and are in
            # order already; an int's text needs none either): a fifth of the general path's
            # cost, which counts when a context of 200,000 variables starts.
            address, reader = escape_tag_value(spec.address), escape_tag_value(spec.reader)
            if address and reader:
                return (
                    f"{self._measurement},address={address},context={spec.context_id},"
                    f"reader={reader},variable={spec.id} {self.field_key(spec.value_type)}="
                )
        tags = {
            "address": spec.address,
            "context": str(spec.context_id),
            "reader": spec.reader,
            "variable": str(spec.id),
        }
        if spec.name:
            tags["name"] = spec.name
        for key, value in spec.tags:
            if key not in RESERVED_TAGS:
                tags[key] = value
        parts = []
        for key in sorted(tags):
            escaped_key, escaped = escape_tag_value(key), escape_tag_value(tags[key])
            if escaped_key and escaped:
                parts.append(f"{escaped_key}={escaped}")
        head = f"{self._measurement},{','.join(parts)}" if parts else self._measurement
        return f"{head} {self.field_key(spec.value_type)}="

    def _layout(
        self, variables: Sequence[VariableSpec]
    ) -> tuple[list[str], list[Callable[[object], str]], bool]:
        """The variables' prefixes, their formats, and whether every one is a float."""
        entry = self._layouts.get(id(variables))
        if entry is not None and entry[0] is variables:
            return entry[1], entry[2], entry[3]
        if self._layout_variables + len(variables) > _MAX_LAYOUT_VARIABLES:
            # Contexts come and go, replays bring lists of their own: memory must not follow.
            self._layouts.clear()
            self._layout_variables = 0
        if len(self._spec_prefixes) >= _MAX_SPECS:
            self._spec_prefixes.clear()
        prefixes = []
        formats = []
        cache = self._spec_prefixes
        format_of = _FIELD_FORMATS.get
        for spec in variables:
            if spec.name or spec.tags:
                key: tuple[object, ...] = (spec.id, spec.context_id, spec.address, spec.reader)
                key += (spec.value_type, spec.name, spec.tags)
                known = cache.get(key)
                if known is None:
                    known = cache[key] = self.spec_prefix(spec)
            else:
                # Built-in tags only: made (spec_prefix's fast path) quicker than found in a cache
                # whose keys and entries also make the garbage collector work.
                known = self.spec_prefix(spec)
            prefixes.append(known)
            formats.append(format_of(spec.value_type, _unknown_type))
        all_float = all(f is _as_float for f in formats)
        self._layouts[id(variables)] = (variables, prefixes, formats, all_float)
        self._layout_variables += len(variables)
        return prefixes, formats, all_float

    def serialize_batch(self, batch: ValueBatch) -> tuple[list[str], list[BatchProblem]]:
        """One line per writable value of a columnar batch, in order, and what did not make one.

        Straight from the columns: no per-value object. The timestamp is the grid instant in
        nanoseconds, or the value's source time when the batch has one for it; a value's
        ``quality`` (when not None) goes in a ``quality`` string field beside the value, and the
        source time carried beside it (``source_time_ns``) in a ``source_time`` integer field.
        """
        prefixes, formats, all_float = self._layout(batch.variables)
        stamp = f" {batch.t_ms * 1_000_000}"
        lines: list[str] = []
        problems: list[BatchProblem] = []
        append = lines.append
        as_float = _as_float
        values = batch.values
        errors = batch.errors
        simple = (
            batch.source_ns is None
            and batch.quality is None
            and batch.source_time_ns is None
            and errors.count(None) == len(errors)
        )
        if (
            simple
            and all_float
            and values
            and set(map(type, values)) == {float}
            and math.isfinite(sum(values))  # no NaN or infinity (or an overflow: the slow path)
        ):
            # Every value a finite float of a float variable (the bulk of industrial data): the
            # texts made outside the interpreter's loop, a whole float's ".0" cut as
            # influxdb-client cuts it, and each line one concatenation.
            return list(map(operator.add, prefixes, float_texts(values, stamp))), []
        if simple:
            for i, (prefix, fmt, x) in enumerate(zip(prefixes, formats, values, strict=True)):
                # The common case inline: a finite float for a float variable.
                if type(x) is float and fmt is as_float and x - x == 0.0:
                    text = repr(x)
                    if text.endswith(".0"):
                        text = text[:-2]
                else:
                    try:
                        text = _format(fmt, x)
                    except Unwritable as exc:
                        problems.append((i, "unwritable", str(exc)))
                        continue
                append(prefix + text + stamp)
            return lines, problems
        source = batch.source_ns
        quality = batch.quality
        beside = batch.source_time_ns
        variables = batch.variables
        for i, (prefix, fmt, x, error) in enumerate(zip(prefixes, formats, values, errors, strict=True)):
            if error is not None:
                problems.append((i, "error", error))
                continue
            try:
                text = _format(fmt, x)
                ns = source[i] if source is not None else None
                word = quality[i] if quality is not None else None
                if word is not None:
                    spec = variables[i]
                    text += f",{self.quality_key(spec.name or spec.address)}={_string_text(str(word))}"
                at = beside[i] if beside is not None else None
                if at is not None:
                    spec = variables[i]
                    text += f",{self.source_time_key(spec.name or spec.address)}={at}i"
            except Unwritable as exc:
                problems.append((i, "unwritable", str(exc)))
                continue
            append(prefix + text + (stamp if ns is None else f" {ns}"))
        return lines, problems

    def line(self, value: CollectedVariable, default_ns: int) -> str:
        """One value's line; ``default_ns`` stamps a value that has no ``time``."""
        ns = default_ns if value.time is None else timestamp_ns(value.time)
        return f"{self.prefix(value)}{field_text(value.value, value.value_type)} {ns}"

    def serialize(
        self, values: Sequence[CollectedVariable], default_ns: int
    ) -> tuple[list[str], list[CollectedVariable], list[tuple[CollectedVariable, str]]]:
        """``(lines, values with an error, (value, reason) pairs that cannot be written)``.

        The lines keep the order of ``values``.
        """
        lines: list[str] = []
        failed: list[CollectedVariable] = []
        unwritable: list[tuple[CollectedVariable, str]] = []
        prefixes = self._prefixes
        append = lines.append
        last_time: datetime | None = None
        stamp = ""
        for v in values:
            if v.error is not None:
                failed.append(v)
                continue
            key = (v.context_id, v.id, v.address, v.reader, v.value_type)
            prefix = prefixes.get(key)
            try:
                if prefix is None:
                    if len(prefixes) >= _MAX_PREFIXES:
                        # Variables come and go with contexts; memory must not follow them forever.
                        prefixes.clear()
                    prefix = prefixes[key] = self.prefix(v)
                t = v.time
                if t is None:
                    stamp_now = str(default_ns)
                elif t is last_time or t == last_time:
                    stamp_now = stamp
                else:
                    stamp = stamp_now = str(timestamp_ns(t))
                    last_time = t
                x = v.value
                # The common case inline: a finite float for a float variable.
                if type(x) is float and v.value_type == "float" and x - x == 0.0:
                    text = repr(x)
                    if text.endswith(".0"):
                        text = text[:-2]
                else:
                    text = field_text(x, v.value_type)
                if v.source_time is not None:
                    text += f",{self.source_time_key(v.address)}={timestamp_ns(v.source_time)}i"
            except Unwritable as exc:
                unwritable.append((v, str(exc)))
                continue
            append(f"{prefix}{text} {stamp_now}")
        return lines, failed, unwritable
