"""From an OPC UA DataValue to what a batch carries: value or error, quality, source time.

The mapping of built-in types to value types (``docs/opcua.md`` has it as a table):

- Boolean: ``bool``; SByte, Byte, Int16..Int64, UInt16..UInt64: ``int``; Float, Double: ``float``;
- String, LocalizedText (its text), DateTime (ISO 8601, UTC), Guid, NodeId, QualifiedName
  (their standard text), ByteString (hex), StatusCode (its name), XmlElement: ``str``;
- arrays and structures: ``str`` only (their text), an error for any other value type.

A value is delivered as the variable's ``value_type`` when that keeps it exact: an int or a bool
as float, a bool as int, an integral float as int, 0 or 1 as bool, anything as str. Anything else
is an error on that value (``cannot deliver Double 2.5 as int``), never an exception.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from asyncua import ua as _ua
from asyncua.ua import DataValue, Variant, status_codes

# asyncua re-exports its classes implicitly; used untyped here (see _client.py).
ua: Any = _ua

__all__ = ["Timestamps", "convert_value", "decode", "status_name", "to_epoch_ns"]

Timestamps = Literal["source", "server", "instant"]

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_US: Final = timedelta(microseconds=1)


def to_epoch_ns(when: datetime | None) -> int | None:
    """An OPC UA timestamp as epoch nanoseconds (microsecond precision); None when absent."""
    if when is None:
        return None
    if when.tzinfo is None:
        # asyncua decodes to aware UTC; a naive one from elsewhere is UTC by the protocol.
        when = when.replace(tzinfo=UTC)
    return ((when - _EPOCH) // _US) * 1000


def status_name(code: int) -> str:
    """The name of a status code (``BadNodeIdUnknown``), ignoring its info bits."""
    main = code & 0xFFFF0000
    try:
        name, _doc = status_codes.get_name_and_doc(main)
    except Exception:  # an unknown code: asyncua's table has no entry
        name = ""
    if not name:
        return f"status 0x{code:08X}"
    if name in ("Good", "Uncertain", "Bad") and main not in (0, 0x40000000, 0x80000000):
        # asyncua names a code it does not know by its severity alone: keep the number.
        return f"{name} (0x{code:08X})"
    return name


def _to_text(value: Any) -> str:  # noqa: PLR0911 - one return per type
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, ua.LocalizedText):
        return str(value.Text or "")
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return str(value.astimezone(UTC).isoformat())
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    if isinstance(value, ua.NodeId | ua.QualifiedName):
        return str(value.to_string())
    if isinstance(value, ua.StatusCode):
        return status_name(value.value)
    if isinstance(value, uuid.UUID | int | float):
        return str(value)
    if isinstance(value, list | tuple):
        return json.dumps([_jsonable(item) for item in value])
    return str(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return _to_text(value)


def _describe(variant_type: str, value: Any) -> str:
    text = repr(value) if isinstance(value, int | float | str) else type(value).__name__
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{variant_type} {text}"


def _as_float(value: Any) -> Any:
    if isinstance(value, float):
        return value
    if isinstance(value, int):  # bool is an int
        return float(value)
    raise TypeError


def _as_int(value: Any) -> Any:
    if isinstance(value, int):
        return int(value)  # a bool becomes 0/1
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise TypeError


def _as_bool(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise TypeError


_CONVERTERS: Final[dict[str, Callable[[Any], Any]]] = {
    "float": _as_float,
    "int": _as_int,
    "bool": _as_bool,
    "str": _to_text,
}


def convert_value(variant: Variant | None, value_type: str) -> tuple[Any, str | None]:
    """``(value, None)`` or ``(None, error)``: the variant's value as ``value_type``."""
    if variant is None or variant.Value is None:
        return None, "the server sent no value (Null)"
    value = variant.Value
    kind = variant.VariantType
    if value_type != "str" and (
        isinstance(value, list | tuple) or kind in (ua.VariantType.ExtensionObject, ua.VariantType.Variant)
    ):
        what = "array" if isinstance(value, list | tuple) else "value"
        return None, f"cannot deliver {kind.name} {what} as {value_type}"
    if type(value) is float and value_type == "float":
        return value, None
    try:
        return _CONVERTERS[value_type](value), None
    except (TypeError, ValueError, OverflowError):
        return None, f"cannot deliver {_describe(kind.name, value)} as {value_type}"


def decode(
    data: DataValue | None, value_type: str, timestamps: Timestamps
) -> tuple[Any, str | None, str | None, int | None]:
    """``(value, error, quality, time_ns)`` of one DataValue for a variable of ``value_type``.

    ``time_ns`` is the ``ServerTimestamp`` with ``timestamps="server"``, else the
    ``SourceTimestamp`` (which, with ``"instant"``, travels beside the value: the caller puts it
    in ``source_time_ns``, not in ``source_ns``)."""
    if data is None:
        return None, "the server sent no data value", None, None
    status = data.StatusCode
    code = status.value if status is not None else 0
    when = to_epoch_ns(data.ServerTimestamp if timestamps == "server" else data.SourceTimestamp)
    severity = code & 0xC0000000
    if severity:
        if severity != 0x40000000:
            # Bad (or the reserved severity): no value, ever; the status says why.
            return None, status_name(code), None, when
        value, error = convert_value(data.Value, value_type)
        return value, error, status_name(code) if error is None else None, when
    value, error = convert_value(data.Value, value_type)
    return value, error, None, when
