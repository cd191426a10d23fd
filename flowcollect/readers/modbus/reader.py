"""The Modbus reader: one unit on a line; planned requests, decoding and learned splits."""

from __future__ import annotations

import asyncio
import functools
import os
import threading
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypedDict, TypeVar, cast

from pymodbus.pdu import ExceptionResponse

from flowcollect.compile import DueWalk, due_patterns, next_due
from flowcollect.errors import ConfigError
from flowcollect.models import ValueType, Variable
from flowcollect.readers.base import DataReader
from flowcollect.readers.modbus._connection import (
    CLOSED,
    MAX_RETRY_DELAY_S,
    Answer,
    EarlyLink,
    Failure,
    LineConnection,
    UnitState,
    lines,
    retry_delay,
    short_text,
)
from flowcollect.readers.modbus.address import (
    BIT_TABLES,
    ModbusAddress,
    check_value_type,
    parse_address,
)
from flowcollect.readers.modbus.decoding import Decoder, convert, decoder_for, plain_register
from flowcollect.readers.modbus.estimates import LineEstimate
from flowcollect.readers.modbus.line import ModbusLine, ModbusTls
from flowcollect.readers.modbus.packing import ModbusRequest, Span, pack
from flowcollect.readers.modbus.timing import answer_bytes, request_bytes
from flowcollect.values import CollectedVariable, ValueBatch, VariableSpec

__all__ = ["MAX_RETRY_DELAY_S", "ModbusDataReader", "retry_delay"]

# Exceptions that name the registers asked for: splitting the request can isolate them. Other
# codes (busy, gateway trouble, unsupported function) hit the whole request alike.
_SPLIT_CODES: Final = frozenset({2, 3})
_EXCEPTION_NAMES: Final[dict[int, str]] = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
_FUNCTION_CODES: Final[dict[str, int]] = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
_MAX_PLANS: Final = 256
_parse_shared: Final = functools.lru_cache(maxsize=1 << 16)(parse_address)
"""``parse_address`` once per text for the process: a plant's identical devices have the same
addresses, one reader each (2,000 readers x 20 addresses: 40,000 parses at start, 20 now). A
``ModbusAddress`` is frozen, so every reader may share it; a bad text raises each time."""


def _natural_type(text: str) -> ValueType | None:
    try:
        natural = _parse_shared(text).natural_type  # "bool", "int", "float" or "str"
    except ValueError:
        return None
    return cast("ValueType", natural)


_natural_shared: Final = functools.lru_cache(maxsize=1 << 16)(_natural_type)
"""``natural_value_type`` once per text for the process (a string register is a ``str``)."""


def _check_address(text: str, value_type: ValueType, max_bits: int, max_registers: int) -> None:
    address = _parse_shared(text)
    check_value_type(address, value_type)
    limit = max_bits if address.is_bit else max_registers
    if address.width > limit:
        raise ValueError(
            f"modbus address {text!r} needs {address.width} registers, more than "
            f"this reader's max_registers={limit} per request"
        )


_checked: Final = functools.lru_cache(maxsize=1 << 16)(_check_address)
"""A reader's check of an address and type, once per text, type and request limits for the
process: 2,000 identical devices check the same 20 (``start`` validates every variable). Only
what passed is remembered (a cache keeps no exception): a bad one is checked, and said, each time."""

# Pre-planning walks one hyperperiod of the reader's intervals; past this many due instants the
# rest is planned on first use.
_MAX_PREPLAN_INSTANTS: Final = 512
_NO_INTERVALS: Final[frozenset[int]] = frozenset()
"""A reader not planned yet (``frozenset()`` is a new 216-byte object each time)."""
SKIPPED: Final = "skipped: the line is busy until the next tick"

# Values and errors in columns: what read_batch fills in place, and read copies back.
_Columns = tuple[list[Any], list[str | None]]

# (variable index, the decoder, the address's natural type)
_Slot = tuple[int, Decoder, str]

# A tick's requests, without I/O: (table, start, count) asked, the line's answer sent back.
_Asked = tuple[str, int, int]
_Answer = Answer | Failure
_T = TypeVar("_T")
_Requests = Generator[_Asked, _Answer, None]


class _RequestSettings(TypedDict):
    timeout_s: float
    retries: int
    name: str


def _answer(tick: _Requests, answer: _Answer) -> _Asked | None:
    """Send the line's answer into a tick; its next request, or None when it is done."""
    try:
        return tick.send(answer)
    except StopIteration:
        return None


@dataclass(slots=True)
class _Group:
    span: Span
    slots: list[_Slot]


@dataclass(slots=True)
class _Step:
    """One request of a compiled plan, with where each variable's value sits in its answer."""

    request: ModbusRequest
    groups: list[_Group]
    flat: list[tuple[int, int, Decoder, str]] = field(default_factory=list)
    """(variable index, index in the answer, decoder, natural type): the hot loop's input."""


@dataclass(slots=True)
class _Plan:
    """A tick's requests; never changed once compiled (readers of alike units share one)."""

    steps: list[_Step]
    invalid: list[tuple[int, str]]


class _SharedPlans:
    """Plans of units that taught nothing yet, by due addresses, intervals and request limits:
    the same for every such unit. Bounded; guarded by ``_lock`` (readers plan on any thread)."""

    def __init__(self, limit: int) -> None:
        self._lock = threading.Lock()
        self._plans: dict[tuple[object, ...], _Plan] = {}
        self._limit = limit

    def get(self, key: tuple[object, ...]) -> _Plan | None:
        with self._lock:
            return self._plans.get(key)

    def put(self, key: tuple[object, ...], plan: _Plan) -> None:
        with self._lock:
            if len(self._plans) >= self._limit:
                self._plans.clear()
            self._plans[key] = plan


_shared_plans: Final = _SharedPlans(4 * _MAX_PLANS)

_SHARED_MAX: Final = 65_536
_shared_lock = threading.Lock()
_shared_values: dict[object, object] = {}
"""Immutable columns readers keep (address and type tuples, interval sets), one copy of each
for the process: 2,000 identical devices keep one, not 2,000 (about 1 KB a device). Bounded
(emptied when full: a copy made after that is merely not shared); guarded by ``_shared_lock``."""


def _shared(value: _T) -> _T:
    """The process's one copy of ``value`` (hashable, never changed)."""
    with _shared_lock:
        kept = _shared_values.get(value)
        if kept is None:
            if len(_shared_values) >= _SHARED_MAX:
                _shared_values.clear()
            _shared_values[value] = kept = value
    return cast("_T", kept)


_COUNTER_NAMES: Final = (
    "requests",
    "request_errors",
    "exceptions",
    "timeouts",
    "bad_responses",
    "splits",
    "split_requests",
    "backoff_skips",
    "skipped_requests",
)
"""A reader's request counters, in the order ``stats()`` always gave them."""


class _Counters:
    """A reader's request counters (``stats()``), bumped by whoever drives its reads (one at a
    time: the lane's job, or the caller holding the line's lock). Slotted: nine ints in a dict
    were 272 bytes a reader, here 104."""

    __slots__ = _COUNTER_NAMES

    requests: int
    request_errors: int
    exceptions: int
    timeouts: int
    bad_responses: int
    splits: int
    split_requests: int
    backoff_skips: int
    skipped_requests: int

    def __init__(self) -> None:
        for name in _COUNTER_NAMES:
            setattr(self, name, 0)

    def as_dict(self) -> dict[str, float]:
        """The counters by name, in the order ``stats()`` always gave them."""
        return {name: getattr(self, name) for name in _COUNTER_NAMES}


class ModbusDataReader(DataReader):
    """Reads coils, discrete inputs, input and holding registers of one Modbus unit.

    The unit sits on a line: ``ModbusDataReader("meter", line=rs485, unit=3)``, where ``rs485``
    is a ``ModbusLine`` (a serial port, an RTU-over-TCP gateway or a Modbus TCP address) shared
    by every reader on it. ``ModbusDataReader("plc", host="10.0.0.7", port=502)`` is a Modbus
    TCP line of its own (readers given the same host and port share it too).

    Addresses: ``<table>:<offset>[:<type>[:<order>]]`` (see ``docs/modbus.md``). Each tick's
    variables are read in the fewest requests (``plan_requests``). A unit or line that fails
    yields values with ``error`` set, never an exception; a silent unit is backed off on its
    own, a broken line is reopened by itself (see ``docs/modbus.md``, failure behaviour).
    ``timeout_s`` and ``retries`` (resends of an unanswered request) are this unit's own.
    ``tls=True`` speaks Modbus/TCP Security (port 802 unless given) to a line of its own, with
    ``ca_file``, ``cert_file``, ``key_file``, ``tls_verify`` and ``server_name`` as ``ModbusLine``
    takes them: the device's certificate and name are verified unless ``tls_verify=False``.
    ``clock`` (epoch seconds) is what the reader compares the engine's instants with.
    """

    def __init__(
        self,
        type: str,  # noqa: A002 - the contract's name for a reader's type
        host: str | None = None,
        port: int | None = None,
        unit: int = 1,
        timeout_s: float = 1.0,
        max_gap: int = 10,
        max_registers: int = 125,
        max_bits: int = 2000,
        min_interval_ms: int = 50,
        *,
        line: ModbusLine | None = None,
        retries: int = 0,
        clock: Callable[[], float] = time.time,
        tls: bool = False,
        ca_file: str | os.PathLike[str] | None = None,
        cert_file: str | os.PathLike[str] | None = None,
        key_file: str | os.PathLike[str] | None = None,
        tls_verify: bool = True,
        server_name: str | None = None,
    ) -> None:
        resolved, problems = _resolve_line(
            line,
            host,
            port,
            ModbusTls(_path(ca_file), _path(cert_file), _path(key_file), tls_verify, server_name),
            tls,
        )
        problems += _check_settings(
            type, unit, timeout_s, retries, max_gap, max_registers, max_bits, min_interval_ms
        )
        if resolved is not None and not problems:
            if isinstance(unit, int) and not 0 <= unit <= resolved.max_unit:
                problems.append(
                    f"ModbusDataReader unit: must be an int 0..{resolved.max_unit} on line {resolved.key}, "
                    f"got {unit!r}"
                )
            # Two settings for one port are refused before anything opens.
            conflict = lines.claim(resolved)
            if conflict is not None:
                problems.append(f"ModbusDataReader line: {conflict}")
        if problems or resolved is None:
            raise ConfigError(problems)
        line = resolved
        self._type = type
        self._line = line
        self._own_line = host is not None
        self.unit = unit
        self.timeout_s = float(timeout_s)
        self.retries = retries
        self.max_gap = max_gap
        self.max_registers = max_registers
        self.max_bits = max_bits
        self._min_interval_ms = min_interval_ms
        self._wall = clock
        """Epoch seconds, to compare with the engine's instants (tests inject their own)."""

        self._aborted = False
        """``abort`` was called (from the closing thread): no read may lease the line again."""
        self._connection: LineConnection | None = None
        self._last_connection: LineConnection | None = None
        self._columns_of: (
            tuple[Sequence[VariableSpec], tuple[str, ...], tuple[str, ...], frozenset[int]] | None
        ) = None
        self._next: tuple[Sequence[Any], EarlyLink, ModbusRequest] | None = None
        """What ``send_batch`` may write at the next instant (the variables it is for, the link,
        the request), settled at the end of each read on the loop. The loop thread only."""
        self._intervals: frozenset[int] = _NO_INTERVALS
        self._plans: dict[tuple[str, ...], _Plan] = {}
        self._plans_generation = 0
        self._counters = _Counters()

    # ------------------------------------------------------------------ the line

    @property
    def line(self) -> ModbusLine:
        """The line this unit is on."""
        return self._line

    @property
    def host(self) -> str | None:
        return self._line.host

    @host.setter
    def host(self, value: str) -> None:
        # A pipeline may point a reader at the port an embedded simulator got; the next
        # connection goes there.
        self._repoint(value, self._line.port)

    @property
    def port(self) -> str | int:
        return self._line.port

    @port.setter
    def port(self, value: int) -> None:
        self._repoint(self._line.host, value)

    def _repoint(self, host: str | None, port: str | int) -> None:
        if not self._own_line:
            raise AttributeError(
                f"reader {self._type!r} is on line {self._line.key}: change the line instead"
            )
        self._line = _line_of(host, port, self._line.tls, self._line.tls is not None)

    @property
    def lane(self) -> str:
        """The line's key: every reader on one line shares the engine lane."""
        return self._line.key

    # ------------------------------------------------------------------ DataReader contract

    @property
    def type(self) -> str:
        return self._type

    @property
    def min_interval_ms(self) -> int:
        return self._min_interval_ms

    def natural_value_type(self, address: str) -> ValueType | None:
        """A coil or discrete input is a bool, an integer register type an int, a float32 or
        float64 a float, a string a str. ``None`` for an address that does not parse (``validate``
        says why)."""
        natural: ValueType | None = _natural_shared(address)
        return natural

    def validate(self, variable: Variable) -> None:
        self._check(variable.address, variable.value_type or "float")  # the engine resolves None

    def validate_as(self, variable: Variable, value_type: ValueType) -> None:
        # The check needs only the address and the type: no copy of the variable to carry it,
        # unless a subclass checks more in a validate of its own.
        if type(self).validate is not ModbusDataReader.validate:
            super().validate_as(variable, value_type)
        else:
            self._check(variable.address, value_type)

    def _check(self, text: str, value_type: ValueType) -> None:
        _checked(text, value_type, self.max_bits, self.max_registers)

    def open(self) -> None:
        """Lease the line and connect, so the first tick finds the connection up. On an event
        loop (the engine awaits ``read_batch_async`` there) nothing may block: ``plan_changed``
        starts a connect in a task of its own there, which the first read awaits."""
        self._aborted = False
        connection = self._lease()
        if _on_event_loop():
            return  # plan_changed starts connecting, once there is something to read
        with connection.lock:
            connection.ensure(self.timeout_s, self._type)

    def close(self) -> None:
        connection = self._connection
        self._connection = None
        if connection is not None:
            connection.set_intervals(id(self), None)
            lines.release(connection)

    def abort(self) -> None:
        """From the closing thread, while the lane's may be stuck in a read: leave the line now.

        The last reader of a line to let go closes its connection, shutting the socket down
        under the read (which fails at once); the device sees it closed. Nothing is read or
        reopened afterwards unless ``open`` is called again.
        """
        self._aborted = True
        self.close()

    def stats(self) -> Mapping[str, float]:
        # DataCollector.stats() calls this from its caller's thread while the lane reads: only
        # copy counters and read single references here, never iterate the reader's state.
        result: dict[str, float] = self._counters.as_dict()
        # After close, the line's counters of this reader's time on it still hold.
        connection = self._connection or self._last_connection
        if connection is not None:
            result.update(connection.counters)
            result["connected"] = 1 if connection.connected else 0
            unit = connection.units.get(self.unit)
        else:
            result.update(
                dict.fromkeys(("connect_attempts", "connect_failures", "reconnects", "dead_connections"), 0)
            )
            result["connected"] = 0
            unit = None
        result["plans"] = len(self._plans)
        result["unit_failures"] = unit.failures if unit is not None else 0
        result["learned_bad_registers"] = sum(len(b) for b in list(unit.bad.values())) if unit else 0
        result["learned_alone"] = len(unit.alone) if unit is not None else 0
        return result

    def plan_changed(self, variables: Sequence[VariableSpec]) -> None:
        """Remember the intervals (the line's next due instant) and plan each tick's requests
        now, so the first ticks do no planning."""
        self._intervals = _shared(frozenset(v.interval_ms for v in variables))
        if not variables:
            # Nothing to read here any more (contexts stopped, or the lane went to another
            # collector of a group): let go of the line, so a port is free for its new owner.
            self.close()
            return
        connection = self._connection
        if connection is not None:
            connection.set_intervals(id(self), self._intervals)
        if not self._aborted and self._line.kind != "serial" and _on_event_loop():
            # Called on the engine's loop: connect now, in a task of its own, so the line is up
            # by its first instant (nothing here may wait for it).
            self._lease().connect_soon(self.timeout_s, self._type)
        for due in _due_sets(variables, self._intervals):
            key = _shared(tuple([v.address for v in due]))
            if key and key not in self._plans:
                self._compile(key, due)

    def describe_requests(self, variables: Sequence[VariableSpec]) -> Sequence[str]:
        """One line per request one tick due at ``variables`` costs: ``unit 3: holding 0..9
        (10 registers), 8 + 25 bytes, ~9.1 ms`` (bytes and time on lines with a baud rate)."""
        try:
            requests = self.plan_requests([v.address for v in variables])
        except ValueError as exc:
            return [f"unit {self.unit}: {exc}"]
        lines: list[str] = []
        for request in requests:
            text = f"unit {self.unit}: {request}"
            seconds = self._line.request_time_s(request)
            if seconds is not None:
                text += (
                    f", {request_bytes(request)} + {answer_bytes(request)} bytes, ~{1000 * seconds:.1f} ms"
                )
            lines.append(text)
        return lines

    def estimate_tick(
        self, due: Sequence[tuple[DataReader, Sequence[VariableSpec]]], tick_ms: float
    ) -> LineEstimate | None:
        """The line's time for one tick: the requests of every unit on it due at the instant
        (``estimates.py``); None when a reader of the lane is not a Modbus reader."""
        requests: list[ModbusRequest] = []
        for reader, variables in due:
            if not isinstance(reader, ModbusDataReader):
                return None
            if reader.line.key != self._line.key:
                raise ValueError(f"readers of lines {self._line.key} and {reader.line.key} are not one lane")
            requests.extend(reader.plan_requests([v.address for v in variables]))
        return self._line.estimate(requests, tick_ms)

    def read(self, variables: Sequence[CollectedVariable]) -> None:
        if not variables:
            return
        n = len(variables)
        values: list[Any] = [None] * n
        errors: list[str | None] = [None] * n
        key = tuple([v.address for v in variables])
        when = variables[0].time
        t_ms = round(when.timestamp() * 1000) if when is not None else None
        self._read_columns(
            key,
            variables,
            [v.value_type for v in variables],
            frozenset(v.interval_ms for v in variables),
            t_ms,
            (values, errors),
        )
        for variable, value, error in zip(variables, values, errors, strict=True):
            variable.value = value
            variable.error = error

    def read_batch(self, batch: ValueBatch) -> None:
        self._read_batch(batch)

    def _read_batch(self, batch: ValueBatch) -> None:
        specs = batch.variables
        if not specs:
            return
        key, types, intervals = self._columns(specs)
        self._read_columns(key, specs, types, intervals, batch.t_ms, (batch.values, batch.errors))

    async def read_batch_async(self, batch: ValueBatch) -> None:
        """``read_batch`` awaited on the engine's event loop (see ``docs/modbus.md``, which path
        runs when): Modbus TCP, RTU over TCP and TLS lines over pymodbus's asyncio client, with
        the same plans, per-unit timeouts, retries, back-offs, texts and counters. A serial
        line's reads run on the line's own thread (pyserial only blocks), awaited here.
        """
        specs = batch.variables
        if not specs:
            return
        if self._line.kind == "serial":
            worker = self._lease().worker()
            await asyncio.wrap_future(worker.submit(self._read_batch, batch))
            return
        key, types, intervals = self._columns(specs)
        await self._read_columns_async(key, specs, types, intervals, batch.t_ms, (batch.values, batch.errors))

    def send_batch(self, batch: ValueBatch) -> None:
        """At the instant, on the engine's loop, before any due lane is awaited: write the first
        request of the tick that ``read_batch_async(batch)`` makes next, so that every due device
        of the instant is asked in one pass (``DataReader.send_batch``). What to write was
        settled at the end of the last read (``_next``), while its objects were at hand: only
        for the same variables, over the own Modbus TCP protocol, this unit answering (no
        back-off, no probe) and the line idle. Otherwise nothing: the read asks as usual."""
        planned = self._next
        if planned is None or planned[0] is not batch.variables or self._aborted:
            return
        self._next = None
        link, request = planned[1], planned[2]
        link.send_early(request.table, request.start, request.count, self.unit, self.timeout_s, batch.t_ms)

    def _plan_next(
        self, connection: LineConnection, unit: UnitState, plan: _Plan, specs: Sequence[Any]
    ) -> None:
        """After a read on the loop (which set ``_next`` to None as it began): what ``send_batch``
        may write at the next instant."""
        if unit.failures or not plan.steps:
            return
        link = connection.early_link()
        if link is not None:
            self._next = (specs, link, plan.steps[0].request)

    def _columns(
        self, specs: Sequence[VariableSpec]
    ) -> tuple[tuple[str, ...], tuple[str, ...], frozenset[int]]:
        # The engine hands the same variables object tick after tick: its columns are built once,
        # and shared by every reader with the same ones (a plant of identical devices).
        cached = self._columns_of
        if cached is None or cached[0] is not specs:
            cached = self._columns_of = (
                specs,
                _shared(tuple([v.address for v in specs])),
                _shared(tuple([v.value_type for v in specs])),
                _shared(frozenset(v.interval_ms for v in specs)),
            )
        return cached[1], cached[2], cached[3]

    # ------------------------------------------------------------------ reading

    def _read_columns(
        self,
        key: tuple[str, ...],
        variables: Sequence[VariableSpec | CollectedVariable],
        types: Sequence[str],
        intervals: frozenset[int],
        t_ms: int | None,
        columns: _Columns,
    ) -> None:
        begun = self._begin(key, variables, columns)
        if begun is None:
            return
        connection, unit, plan = begun
        with connection.lock:
            connected = connection.ensure(self.timeout_s, self._type)
            tick = self._tick(connection, unit, plan, columns, types, intervals, t_ms, connected)
            asked = next(tick, None)
            while asked is not None:
                asked = _answer(tick, connection.request(unit, *asked, **self._settings))

    async def _read_columns_async(
        self,
        key: tuple[str, ...],
        variables: Sequence[VariableSpec | CollectedVariable],
        types: Sequence[str],
        intervals: frozenset[int],
        t_ms: int | None,
        columns: _Columns,
    ) -> None:
        """``_read_columns`` on the running event loop: the same tick (``_tick``), awaited."""
        self._next = None
        begun = self._begin(key, variables, columns)
        if begun is None:
            return
        connection, unit, plan = begun
        async with connection.async_lock():
            connection.keep_early(t_ms)
            connected = await connection.ensure_async(self.timeout_s, self._type)
            tick = self._tick(connection, unit, plan, columns, types, intervals, t_ms, connected)
            asked = next(tick, None)
            while asked is not None:
                asked = _answer(tick, await connection.request_async(unit, *asked, **self._settings))
            connection.forget_early()
            if t_ms is not None:
                self._plan_next(connection, unit, plan, variables)

    @property
    def _settings(self) -> _RequestSettings:
        return {"timeout_s": self.timeout_s, "retries": self.retries, "name": self._type}

    def _begin(
        self, key: tuple[str, ...], variables: Sequence[VariableSpec | CollectedVariable], columns: _Columns
    ) -> tuple[LineConnection, UnitState, _Plan] | None:
        """The tick's plan on the line's connection; None when there is nothing to ask (the
        invalid addresses and a closed reader's values already say why)."""
        values, errors = columns
        if self._aborted:
            # The rest of a tick that outlived the close deadline: never reopen the device.
            for index in range(len(key)):
                values[index] = None
                errors[index] = CLOSED
            return None
        connection = self._lease()
        unit = connection.unit(self.unit)
        if unit.generation != self._plans_generation:
            self._plans.clear()
            self._plans_generation = unit.generation
        plan = self._plans.get(key)
        if plan is None:
            plan = self._compile(key, variables)
        for index, text in plan.invalid:
            values[index] = None
            errors[index] = text
        if not plan.steps:
            return None
        return connection, unit, plan

    def _tick(
        self,
        connection: LineConnection,
        unit: UnitState,
        plan: _Plan,
        columns: _Columns,
        types: Sequence[str],
        intervals: frozenset[int],
        t_ms: int | None,
        connected: bool,
    ) -> _Requests:
        """One tick's decisions, without I/O: yields each request as ``(table, start, count)``
        and is sent the line's answer (a ``ModbusPDU`` or a ``Failure``). A thread
        (``_read_columns``) and the event loop (``_read_columns_async``) drive it alike."""
        if not connected:
            for step in plan.steps:
                _fail_groups(columns, step.groups, connection.down_text)
            return
        now = connection.now()
        instant = t_ms if t_ms is not None else int(1000 * now)
        # Nobody on the line answering, one request per instant (to each unit in turn) finds
        # out when the bus is back; otherwise a silent unit waits out its own back-off.
        asked = connection.may_probe(unit, instant) if connection.bus_silent() else not unit.backed_off(now)
        if not asked:
            # A silent unit is asked once per back-off period; meanwhile its values say why.
            self._counters.backoff_skips += 1
            for step in plan.steps:
                _fail_groups(columns, step.groups, unit.last_text)
            return
        next_instant: int | None = None
        if self._line.is_bus and t_ms is not None:
            # The lane's next instant after now: a lane running late skips the instants
            # already past, so the one a request must not run into is the next future one.
            now_ms = max(t_ms, int(1000 * self._wall()))
            next_instant = next_due(now_ms, intervals | connection.line_intervals())
        yield from self._read_steps(connection, unit, columns, types, plan.steps, next_instant)

    def _read_steps(
        self,
        connection: LineConnection,
        unit: UnitState,
        columns: _Columns,
        types: Sequence[str],
        steps: list[_Step],
        next_due: int | None,
    ) -> _Requests:
        stop: Failure | None = None
        for step in steps:
            if stop is not None:
                _fail_groups(columns, step.groups, stop.text)
                continue
            request = step.request
            if next_due is not None and self._would_overrun(connection, unit, request, next_due):
                self._counters.skipped_requests += 1
                _fail_groups(columns, step.groups, SKIPPED)
                continue
            answer = yield from self._request(request.table, request.start, request.count)
            if not isinstance(answer, Failure):
                _deliver(columns, types, step.flat, answer)
            elif answer.fatal or answer.timeout:
                # The line is gone, or this unit is silent: its other requests would only wait.
                _fail_groups(columns, step.groups, answer.text)
                stop = answer
            elif answer.code in _SPLIT_CODES and len(step.groups) > 1:
                stop = yield from self._split(unit, columns, types, step)
            else:
                _fail_groups(columns, step.groups, answer.text)
                if answer.code in _SPLIT_CODES:
                    self._learn_alone(unit, request.table, request.start, request.end)

    def _would_overrun(
        self, connection: LineConnection, unit: UnitState, request: ModbusRequest, next_due: int
    ) -> bool:
        """Would ``request`` still be running at the line's next due instant?

        The unit's own recent answers say how long it takes; until it has answered, the
        line's estimate from the baud rate does.
        """
        expected = unit.answer_s
        if expected is None:
            expected = self._line.request_time_s(request) or 0.0
        expected += connection.pacing_s()
        return 1000 * (self._wall() + expected) > next_due

    def _request(
        self, table: str, start: int, count: int
    ) -> Generator[_Asked, _Answer, Sequence[Any] | Failure]:
        """One request, counted: asked of whoever drives the tick, its answer checked."""
        self._counters.requests += 1
        response = yield (table, start, count)
        if isinstance(response, Failure):
            self._counters.request_errors += 1
            if response.timeout:
                self._counters.timeouts += 1
            elif not response.fatal:
                self._counters.bad_responses += 1
            return response
        return self._check_response(response, table, count)

    def _check_response(self, response: Answer, table: str, count: int) -> Sequence[Any] | Failure:
        if isinstance(response, ExceptionResponse):
            self._counters.request_errors += 1
            self._counters.exceptions += 1
            code = response.exception_code
            name = _EXCEPTION_NAMES.get(code, "unknown exception")
            return Failure(f"modbus exception {code}: {name}", code=code)
        expected = _FUNCTION_CODES[table]
        if response.function_code != expected:
            self._counters.request_errors += 1
            self._counters.bad_responses += 1
            return Failure(f"bad response: function code {response.function_code}, expected {expected}")
        data: Sequence[Any] = response.bits if table in BIT_TABLES else response.registers
        if len(data) < count:
            self._counters.request_errors += 1
            self._counters.bad_responses += 1
            kind = "bits" if table in BIT_TABLES else "registers"
            return Failure(f"short response: {len(data)} of {count} {kind}")
        return data

    def _lease(self) -> LineConnection:
        connection = self._connection
        if connection is not None:
            if connection.line.key == self._line.key:
                return connection
            self.close()
        connection = lines.acquire(self._line)
        connection.set_intervals(id(self), self._intervals)
        self._connection = self._last_connection = connection
        return connection

    # ------------------------------------------------------------------ planning (no I/O)

    def plan_requests(self, addresses: Sequence[str]) -> list[ModbusRequest]:
        """The requests one tick due at ``addresses`` costs, with what the unit taught so far.

        No I/O. Raises ``ValueError`` naming the first address that does not parse.
        """
        parsed = [self._parse(text) for text in addresses]
        return self._pack({(a.table, a.offset, a.end) for a in parsed})

    def _parse(self, text: str) -> ModbusAddress:
        return _parse_shared(text)

    def _unit_state(self) -> UnitState | None:
        connection = self._connection
        return connection.units.get(self.unit) if connection is not None else None

    def _pack(self, spans: set[tuple[Any, int, int]]) -> list[ModbusRequest]:
        unit = self._unit_state()
        return pack(
            spans,
            max_gap=self.max_gap,
            max_registers=self.max_registers,
            max_bits=self.max_bits,
            bad=unit.bad_sorted if unit is not None else None,
            alone=unit.alone if unit is not None else (),
            limits=unit.limits if unit is not None else None,
        )

    def _compile(self, key: tuple[str, ...], variables: Sequence[VariableSpec | CollectedVariable]) -> _Plan:
        unit = self._unit_state()
        shared: tuple[object, ...] | None = None
        if unit is None or not (unit.bad or unit.alone or unit.limits):
            # A unit that taught nothing yet: its plan is any such unit's with these settings.
            # A plant of identical devices (and the engine's loop, which plans every reader of
            # a start on its one thread) compiles it once.
            intervals = tuple(v.interval_ms for v in variables)
            shared = (key, intervals, self.max_gap, self.max_registers, self.max_bits)
            plan = _shared_plans.get(shared)
            if plan is not None:
                return self._keep(key, plan)
        plan = self._compile_now(key, variables)
        if shared is not None:
            _shared_plans.put(shared, plan)
        return self._keep(key, plan)

    def _keep(self, key: tuple[str, ...], plan: _Plan) -> _Plan:
        if len(self._plans) >= _MAX_PLANS:
            # Due sets repeat tick after tick; this many distinct ones means they do not, and
            # a cache that only grows would be a leak.
            self._plans.clear()
        self._plans[key] = plan
        return plan

    def _compile_now(
        self, key: tuple[str, ...], variables: Sequence[VariableSpec | CollectedVariable]
    ) -> _Plan:
        invalid: list[tuple[int, str]] = []
        slots_by_span: dict[tuple[str, int, int], list[_Slot]] = {}
        soonest: dict[tuple[str, int, int], int] = {}
        decoders: dict[ModbusAddress, Decoder] = {}
        for index, text in enumerate(key):
            try:
                address = self._parse(text)
            except ValueError as exc:
                invalid.append((index, f"invalid address: {exc}"))
                continue
            decoder = decoders.get(address)
            if decoder is None:
                decoder = decoders[address] = decoder_for(address)
            span_key = (address.table, address.offset, address.end)
            slots_by_span.setdefault(span_key, []).append((index, decoder, address.natural_type))
            interval = variables[index].interval_ms
            soonest[span_key] = min(soonest.get(span_key, interval), interval)
        steps: list[_Step] = []
        for request in self._pack(set(slots_by_span)):
            groups = [_Group(span, slots_by_span[(request.table, *span)]) for span in request.spans]
            steps.append(_Step(request, groups, _flatten(groups, request.start)))
        # Deadline order: the values due again soonest are read first, so a tick cut short by
        # the line's time loses the slower ones.
        steps.sort(key=lambda s: min(soonest[(s.request.table, *span)] for span in s.request.spans))
        return _Plan(steps, invalid)

    # ------------------------------------------------------------------ exception splitting

    def _split(
        self, unit: UnitState, columns: _Columns, types: Sequence[str], step: _Step
    ) -> Generator[_Asked, _Answer, Failure | None]:
        """Re-read a request refused with an address exception in halves, down to single values.

        Delivers what can be read this tick, then remembers (``_learn``) which registers the
        unit refuses, so later plans steer around them without extra requests.
        """
        request = step.request
        table = request.table
        good: list[Span] = []
        refused: list[Span] = []
        stop: Failure | None = None
        self._counters.splits += 1

        def attempt(groups: list[_Group]) -> Generator[_Asked, _Answer, None]:
            nonlocal stop
            start = groups[0].span[0]
            end = max(g.span[1] for g in groups)
            if stop is not None:
                _fail_groups(columns, groups, stop.text)
                return
            self._counters.split_requests += 1
            answer = yield from self._request(table, start, end - start)
            if not isinstance(answer, Failure):
                _deliver(columns, types, _flatten(groups, start), answer)
                good.append((start, end))
            elif answer.fatal or answer.timeout:
                stop = answer
                _fail_groups(columns, groups, answer.text)
            elif answer.code in _SPLIT_CODES and len(groups) > 1:
                middle = len(groups) // 2
                yield from attempt(groups[:middle])
                yield from attempt(groups[middle:])
            else:
                _fail_groups(columns, groups, answer.text)
                if answer.code in _SPLIT_CODES:
                    refused.append((start, end))

        middle = len(step.groups) // 2
        yield from attempt(step.groups[:middle])
        yield from attempt(step.groups[middle:])
        if stop is None:
            self._learn(unit, table, request, good, refused)
        return stop

    def _learn(
        self, unit: UnitState, table: str, request: ModbusRequest, good: list[Span], refused: list[Span]
    ) -> None:
        """Remember what a split showed (for every reader of this unit on the line), so the
        next plans cost no extra requests.

        Registers of the refused request that no successful part covered hold the fault: no
        merged request may cover them again. Values refused even alone are read alone. If every
        part succeeded, the unit refused the request's size: lower that table's limit.
        """
        covered: set[int] = set()
        for start, end in good:
            covered.update(range(start, end))
        suspects = [r for r in range(request.start, request.end) if r not in covered]
        learned = unit.learn()
        if suspects:
            bad = learned.bad.setdefault(table, set())
            bad.update(suspects)
            learned.bad_sorted[table] = sorted(bad)
        learned.alone.update((table, start, end) for start, end in refused)
        if not suspects and not refused and good:
            largest = max(end - start for start, end in good)
            if largest < request.count:
                learned.limits[table] = largest
        unit.generation += 1

    def _learn_alone(self, unit: UnitState, table: str, start: int, end: int) -> None:
        if (table, start, end) not in unit.alone:
            unit.learn().alone.add((table, start, end))
            unit.generation += 1

    def __repr__(self) -> str:
        return f"ModbusDataReader(type={self._type!r}, {self._line.key}, unit={self.unit})"


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _due_sets(variables: Sequence[VariableSpec], intervals: frozenset[int]) -> list[list[VariableSpec]]:
    """The distinct sets of ``variables`` (whose ``intervals`` these are) due together over one
    hyperperiod (its first ``_MAX_PREPLAN_INSTANTS`` due instants), in their order."""
    walk = _walk(intervals)
    return [[v for v in variables if v.interval_ms in pattern.intervals] for pattern in walk.patterns]


@functools.lru_cache(maxsize=256)
def _walk(intervals: frozenset[int]) -> DueWalk:
    """The due walk of a set of intervals, once for the process (every device of a plant has
    the same few)."""
    return due_patterns(intervals, _MAX_PREPLAN_INSTANTS)


def _path(value: str | os.PathLike[str] | None) -> str | None:
    return None if value is None else (os.fspath(value) if isinstance(value, os.PathLike) else value)


def _resolve_line(
    line: ModbusLine | None, host: str | None, port: int | None, security: ModbusTls, tls: bool
) -> tuple[ModbusLine | None, list[str]]:
    """The reader's line: the one given, or a Modbus TCP (or TLS) line of its own."""
    given: object = line  # callers without type checking pass anything
    if given is not None:
        problem = None
        if not isinstance(given, ModbusLine):
            problem = f"ModbusDataReader line: must be a ModbusLine, got {given!r}"
        elif host is not None or port is not None:
            problem = "ModbusDataReader host/port: give either line= or host= and port=, not both"
        elif tls is not False or security != ModbusTls():
            problem = "ModbusDataReader tls: give the TLS settings to the ModbusLine, not its readers"
        return (given, []) if problem is None and isinstance(given, ModbusLine) else (None, [str(problem)])
    if host is None:
        return None, [
            "ModbusDataReader host: must be a non-empty str, got None (or give line=, a ModbusLine)"
        ]
    try:
        return _line_of(host, port, security, tls), []
    except ConfigError as exc:
        return None, [p.replace("ModbusLine", "ModbusDataReader") for p in exc.problems]


def _line_of(host: str | None, port: str | int | None, security: ModbusTls | None, tls: bool) -> ModbusLine:
    if security is None:
        return ModbusLine(host=host, port=port)
    return ModbusLine(
        host=host,
        port=port,
        tls=tls,
        ca_file=security.ca_file,
        cert_file=security.cert_file,
        key_file=security.key_file,
        tls_verify=security.verify,
        server_name=security.server_name,
    )


def _flatten(groups: list[_Group], start: int) -> list[tuple[int, int, Decoder, str]]:
    return [
        (index, group.span[0] - start, decoder, natural)
        for group in groups
        for index, decoder, natural in group.slots
    ]


def _deliver(
    columns: _Columns, types: Sequence[str], flat: list[tuple[int, int, Decoder, str]], data: Sequence[Any]
) -> None:
    values, errors = columns
    for index, offset, decoder, natural in flat:
        try:
            # The plain register is by far the commonest value: skip the call for it.
            value = data[offset] if decoder is plain_register else decoder(data, offset)
            value_type = types[index]
            if value_type != natural:
                value = convert(value, natural, value_type)
        except KeyError:
            values[index] = None
            errors[index] = f"value_type {types[index]!r} cannot hold this {natural} value"
            continue
        except Exception as exc:  # a device's bytes must never end the tick
            values[index] = None
            errors[index] = f"cannot decode: {short_text(exc)}"
            continue
        values[index] = value
        errors[index] = None


def _fail_groups(columns: _Columns, groups: list[_Group], text: str) -> None:
    values, errors = columns
    for group in groups:
        for index, _decoder, _natural in group.slots:
            values[index] = None
            errors[index] = text


def _check_settings(
    type_: object,
    unit: object,
    timeout_s: object,
    retries: object,
    max_gap: object,
    max_registers: object,
    max_bits: object,
    min_interval_ms: object,
) -> list[str]:
    where = "ModbusDataReader"
    problems: list[str] = []
    if not isinstance(type_, str) or not type_.strip():
        problems.append(f"{where} type: must be a non-empty str, got {type_!r}")
    ranges: tuple[tuple[str, object, int, int | None, str], ...] = (
        ("unit", unit, 0, 255, ""),
        ("retries", retries, 0, 10, ""),
        ("max_gap", max_gap, 0, None, ""),
        ("max_registers", max_registers, 1, 125, " (the protocol's limit per request)"),
        ("max_bits", max_bits, 1, 2000, " (the protocol's limit per request)"),
        ("min_interval_ms", min_interval_ms, 1, None, ""),
    )
    for name, value, low, high, why in ranges:
        in_range = isinstance(value, int) and not isinstance(value, bool) and value >= low
        if in_range and high is not None and isinstance(value, int):
            in_range = value <= high
        if not in_range:
            span = f"{low}..{high}" if high is not None else f"{low} or more"
            problems.append(f"{where} {name}: must be an int {span}{why}, got {value!r}")
    if (
        not isinstance(timeout_s, int | float)
        or isinstance(timeout_s, bool)
        or not 0 < timeout_s < float("inf")
    ):
        problems.append(f"{where} timeout_s: must be a positive number of seconds, got {timeout_s!r}")
    return problems
