"""Telegraf's ``[[inputs.modbus]]``, both its ``register`` and ``request`` configuration styles,
as Modbus readers and variables that write the points Telegraf wrote.

What Telegraf writes, and so what the variables reproduce (InfluxDB ``schema="fields"``): the
measurement ``modbus`` (or the field's, the request's, ``name_override``), a field per register
named by the configuration, the tags ``name`` (the device), ``type`` (``holding_register``,
``input_register``, ``coil``, ``discrete_input``) and ``slave_id``, then a request's own tags.
Field types follow Telegraf's rules: coils and discrete inputs are integers 0/1; integer
registers without scale are integers; ``FIXED``/``UFIXED``/``FLOAT*`` and scaled request fields are
floats.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Final
from urllib.parse import urlsplit

from flowcollect.importers._values import Options, duration_ms, slug

__all__ = ["ImportedVariable", "ModbusDevice", "translate_modbus"]

_BITS: Final = {"coil": "coil", "discrete": "discrete_input"}
_REGISTERS: Final = {"holding": "holding_register", "input": "input_register"}
_WIDTH: Final = {
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "float32": 2,
    "int64": 4,
    "uint64": 4,
    "float64": 4,
}
_ORDERS: Final = {
    "AB": "ABCD",
    "ABCD": "ABCD",
    "ABCDEFGH": "ABCD",
    "BA": "DCBA",
    "DCBA": "DCBA",
    "HGFEDCBA": "DCBA",
    "BADC": "BADC",
    "BADCFEHG": "BADC",
    "CDAB": "CDAB",
    "GHEFCDAB": "CDAB",
}
_FIXED: Final = {1: "int16", 2: "int32", 4: "int64"}
_UFIXED: Final = {1: "uint16", 2: "uint32", 4: "uint64"}
_REQUEST_TYPES: Final = {
    "INT16": "int16",
    "UINT16": "uint16",
    "INT32": "int32",
    "UINT32": "uint32",
    "INT64": "int64",
    "UINT64": "uint64",
    "FLOAT32": "float32",
    "FLOAT64": "float64",
}
_IGNORED: Final = {
    "busy_retries": "flowcollect retries a failed read at the next instant; a busy device is not waited for",
    "busy_retries_wait": "see busy_retries",
    "debug_connection": "use flowcollect's own logging (--verbose)",
    "optimization": "flowcollect packs registers into the fewest requests itself (max_gap)",
    "optimization_max_register_fill": "see optimization (ModbusDataReader max_gap)",
}


@dataclass
class ImportedVariable:
    reader: str
    address: str
    name: str
    value_type: str | None
    tags: dict[str, object]
    interval_ms: int
    scale: float | None = None


@dataclass
class ModbusDevice:
    """One unit on one controller: a reader to write into the pipeline."""

    type: str
    endpoint: tuple[str, str | int]
    """("tcp", host:port) or ("serial", path) or ("rtu-tcp", host:port)."""
    unit: int
    timeout_s: float
    line_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModbusImport:
    devices: list[ModbusDevice]
    variables: list[ImportedVariable]


def translate_modbus(
    where: str,
    table: Mapping[str, Any],
    *,
    interval_ms: int,
    base_tags: Mapping[str, object],
    measurement_of: Callable[[str], str],
    unique_type: Callable[[str], str],
    note: Callable[[str, str], None],
) -> ModbusImport | None:
    """One ``[[inputs.modbus]]``; None (with a note saying why) when it cannot be carried over."""
    options = Options(where, table)
    device = str(options.take("name", "modbus"))
    endpoint = _endpoint(options, note)
    timeout_s = duration_ms(options.take("timeout", "1s")) / 1000
    line_options = _line_options(options, endpoint, note)
    style = options.take("configuration_type", "register")
    exclude_type = bool(options.take("exclude_register_type_tag", False))
    plugin_tags = {str(k): str(v) for k, v in (options.take("tags") or {}).items()}
    for key, reason in _IGNORED.items():
        if options.has(key):
            options.take(key)
            note(f"{where} {key}", reason)
    if endpoint is None:
        for key in options.left():
            options.take(key)
        return None
    units: dict[int, str] = {}

    def reader_for(unit: int) -> str:
        if unit not in units:
            units[unit] = unique_type(slug(device))
        return units[unit]

    def tags_for(kind: str, unit: int, extra: Mapping[str, object]) -> dict[str, object]:
        own: dict[str, object] = {"name": device, "slave_id": str(unit)}
        if not exclude_type:
            own["type"] = kind
        return {**base_tags, **own, **extra, **plugin_tags}

    scope = _Scope(interval_ms, reader_for, tags_for, measurement_of, note)
    variables: list[ImportedVariable] = []
    if style == "register":
        unit = int(options.take("slave_id", 0))
        entries = {key: options.take(key) or [] for key in _REGISTER_STYLE}
        variables += _register_style(where, entries, unit, scope)
        for key in ("request", "metric"):
            if options.has(key):
                options.take(key)
                note(f"{where} {key}", "ignored by Telegraf itself with configuration_type = 'register'")
    elif style == "request":
        options.take("slave_id")
        for r, request in enumerate(options.take("request") or []):
            variables += _request(f"{where} request[{r}]", request, scope)
    else:
        note(f"{where} configuration_type", f"{style!r} is not carried over (only 'register' and 'request')")
        for key in options.left():
            options.take(key)
        return None
    for key in options.left():
        note(f"{where} {key}", "not carried over (no flowcollect equivalent)")
    host_port = endpoint
    devices = [
        ModbusDevice(
            type=reader, endpoint=host_port, unit=unit, timeout_s=timeout_s, line_options=line_options
        )
        for unit, reader in units.items()
    ]
    return ModbusImport(devices, variables)


_REGISTER_STYLE: Final = {
    "discrete_inputs": "discrete",
    "coils": "coil",
    "holding_registers": "holding",
    "input_registers": "input",
}


@dataclass(frozen=True)
class _Scope:
    """What every field of one input shares: its interval, its readers, tags and measurement."""

    interval_ms: int
    reader_for: Callable[[int], str]
    tags_for: Callable[[str, int, Mapping[str, object]], dict[str, object]]
    measurement_of: Callable[[str], str]
    note: Callable[[str, str], None]


def _register_style(
    where: str, entries: Mapping[str, list[Mapping[str, Any]]], unit: int, scope: _Scope
) -> list[ImportedVariable]:
    out = []
    for key, table in _REGISTER_STYLE.items():
        for i, entry in enumerate(entries[key]):
            variable = _register_field(f"{where} {key}[{i}]", table, entry, scope.note)
            if variable is None:
                continue
            kind = _BITS.get(table) or _REGISTERS[table]
            variable.reader = scope.reader_for(unit)
            variable.interval_ms = scope.interval_ms
            measurement = scope.measurement_of(str(entry.get("measurement") or "modbus"))
            variable.tags = {**scope.tags_for(kind, unit, {}), "measurement": measurement}
            out.append(variable)
    return out


def _endpoint(options: Options, note: Callable[[str, str], None]) -> tuple[str, str | int] | None:
    controller = str(options.take("controller", "tcp://localhost:502"))
    mode = str(options.take("transmission_mode", "auto")).upper()
    parts = urlsplit(controller)
    if parts.scheme == "file":
        if mode not in ("AUTO", "RTU"):
            note(f"{options.where} transmission_mode", f"{mode} is not supported (only RTU on a serial line)")
            return None
        return ("serial", parts.path)
    if parts.scheme == "tcp" and parts.hostname:
        address = f"{parts.hostname}:{parts.port or 502}"
        if mode in ("AUTO", "TCP"):
            return ("tcp", address)
        if mode == "RTUOVERTCP":
            return ("rtu-tcp", address)
        note(f"{options.where} transmission_mode", f"{mode} is not supported (TCP or RTUoverTCP over tcp://)")
        return None
    note(f"{options.where} controller", f"{controller!r} is not tcp://HOST:PORT or file:///DEVICE")
    return None


def _line_options(
    options: Options, endpoint: tuple[str, str | int] | None, note: Callable[[str, str], None]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    serial = {"baud_rate": "baudrate", "data_bits": "bytesize", "parity": "parity", "stop_bits": "stopbits"}
    for key, ours in serial.items():
        if options.has(key):
            value = options.take(key)
            if endpoint is not None and endpoint[0] != "tcp":
                out[ours] = value
    workarounds = Options(f"{options.where} workarounds", options.take("workarounds") or {})
    pause = workarounds.take("pause_between_requests")
    if pause is not None:
        out["pause_between_requests_ms"] = duration_ms(pause)
    for key in workarounds.left():
        note(f"{workarounds.where} {key}", "not carried over (no flowcollect equivalent)")
    return out


class _LeftOutError(ValueError):
    """A field with no flowcollect equivalent; the text says why."""


def _register_field(
    spot: str, table: str, entry: Mapping[str, Any], note: Callable[[str, str], None]
) -> ImportedVariable | None:
    try:
        return _register_variable(spot, table, entry, note)
    except _LeftOutError as exc:
        note(spot, f"{exc}; left out")
        return None


def _register_variable(
    spot: str, table: str, entry: Mapping[str, Any], note: Callable[[str, str], None]
) -> ImportedVariable:
    name = entry.get("name")
    addresses = [int(a) for a in entry.get("address") or []]
    if not name or not addresses:
        raise _LeftOutError("a field needs a name and an address")
    if any(b - a != 1 for a, b in pairwise(addresses)):
        raise _LeftOutError(f"addresses {addresses} are not consecutive")
    if table in _BITS:
        return ImportedVariable("", f"{table}:{addresses[0]}", str(name), "int", {}, 0)
    data_type = str(entry.get("data_type", "")).upper()
    order = _ORDERS.get(str(entry.get("byte_order", "")).upper())
    scale = float(entry.get("scale", 0.0))
    words = len(addresses)
    if order is None:
        raise _LeftOutError(f"byte_order {entry.get('byte_order')!r} is not one Telegraf knows")
    if scale == 0.0:
        raise _LeftOutError("Telegraf refuses a register without a non-zero scale")
    register, value_type = _register_type(data_type, words)
    if register is None or _WIDTH[register] != words:
        raise _LeftOutError(f"{data_type} does not fit {words} register(s)")
    if value_type == "int" and scale != 1.0:
        value_type = "float"
        note(
            f"{spot} scale",
            f"Telegraf truncates a scaled {data_type} to an integer field; flowcollect writes the exact "
            "float, so the field's type changes (InfluxDB refuses it in a shard that holds integers)",
        )
    _check_wide(register, value_type)
    scaled = None if scale == 1.0 else scale
    return ImportedVariable(
        "", f"{table}:{addresses[0]}:{register}:{order}", str(name), value_type, {}, 0, scaled
    )


def _check_wide(register: str, value_type: str) -> None:
    if register in ("int64", "uint64") and value_type == "float":
        raise _LeftOutError(
            f"a {register} read as a float (scaled) is refused by flowcollect, which keeps 64-bit "
            "integers exact (int or str): collect it unscaled as int and scale downstream"
        )


def _register_type(data_type: str, words: int) -> tuple[str | None, str]:
    """The register type and value type of a register-style ``data_type`` over ``words``."""
    if data_type == "FIXED":
        return _FIXED.get(words), "float"
    if data_type in ("UFIXED", "FLOAT32"):
        return _UFIXED.get(words), "float"
    if data_type in ("FLOAT32-IEEE", "FLOAT64-IEEE"):
        return data_type[:7].lower(), "float"
    if data_type in _REQUEST_TYPES and not data_type.startswith("FLOAT"):
        return _REQUEST_TYPES[data_type], "int"
    raise _LeftOutError(f"data_type {data_type!r} is not carried over")


def _request(where: str, request: Mapping[str, Any], scope: _Scope) -> list[ImportedVariable]:
    note = scope.note
    options = Options(where, request)
    unit = int(options.take("slave_id", 0))
    order = _ORDERS.get(str(options.take("byte_order", "ABCD")).upper())
    table = str(options.take("register", "holding"))
    measurement = str(options.take("measurement") or "modbus")
    extra = {str(k): str(v) for k, v in (options.take("tags") or {}).items()}
    fields = options.take("fields") or []
    for key in ("optimization", "optimization_max_register_fill"):
        if options.has(key):
            options.take(key)
            note(f"{where} {key}", _IGNORED[key])
    for key in options.left():
        note(f"{where} {key}", "not carried over (no flowcollect equivalent)")
    if table not in _BITS and table not in _REGISTERS:
        note(f"{where} register", f"{table!r} is not coil, discrete, holding or input; request left out")
        return []
    if order is None:
        note(f"{where} byte_order", "not one Telegraf knows; request left out")
        return []
    kind = _BITS.get(table) or _REGISTERS[table]
    out: list[ImportedVariable] = []
    for i, entry in enumerate(fields):
        spot = f"{where} fields[{i}]"
        if entry.get("omit"):
            continue
        name, address = entry.get("name"), entry.get("address")
        if not name or address is None:
            note(spot, "a field needs a name and an address; left out")
            continue
        scale = entry.get("scale")
        if table in _BITS:
            text, value_type, factor = f"{table}:{int(address)}", "int", None
        else:
            register = _REQUEST_TYPES.get(str(entry.get("type", "INT16")).upper())
            if register is None:
                note(spot, f"type {entry.get('type')!r} is not carried over; left out")
                continue
            text = f"{table}:{int(address)}:{register}:{order}"
            output = str(entry.get("output", "")).upper()
            value_type = _request_output(spot, register, scale, output, note)
            factor = float(scale) if scale not in (None, 1, 1.0) else None
            try:
                _check_wide(register, value_type)
            except _LeftOutError as exc:
                note(spot, f"{exc}; left out")
                continue
        own_measurement = scope.measurement_of(str(entry.get("measurement") or measurement))
        tags = {**scope.tags_for(kind, unit, extra), "measurement": own_measurement}
        reader = scope.reader_for(unit)
        out.append(ImportedVariable(reader, text, str(name), value_type, tags, scope.interval_ms, factor))
    return out


def _request_output(
    spot: str, register: str, scale: object, output: str, note: Callable[[str, str], None]
) -> str:
    if output in ("INT64", "UINT64"):
        if scale is not None or register.startswith("float"):
            note(
                f"{spot} output",
                "Telegraf truncates the value to an integer; flowcollect writes the exact float",
            )
            return "float"
        return "int"
    if output == "FLOAT64" or scale is not None:
        return "float"
    return "float" if register.startswith("float") else "int"
