"""The Modbus TCP reader: planned requests, decoding, reconnects and learned splits."""

from __future__ import annotations

import logging
import socket
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.pdu.register_message import ReadHoldingRegistersResponse, ReadInputRegistersResponse

from flowcollect._logs import RateLimitedLog
from flowcollect.errors import ConfigError
from flowcollect.models import Variable
from flowcollect.readers.base import DataReader
from flowcollect.readers.modbus.address import (
    BIT_TABLES,
    ModbusAddress,
    check_value_type,
    parse_address,
)
from flowcollect.readers.modbus.decoding import Decoder, convert, decoder_for, plain_register
from flowcollect.readers.modbus.packing import ModbusRequest, Span, pack
from flowcollect.values import CollectedVariable

__all__ = ["MAX_RETRY_DELAY_S", "ModbusDataReader", "retry_delay"]

_log = logging.getLogger("flowcollect.readers.modbus")

MAX_RETRY_DELAY_S: Final = 5.0
"""The longest wait between two connection attempts to a device that is down."""

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
_MAX_PLANS: Final = 256


def _decode_registers(pdu: ModbusPDU, data: bytes) -> None:
    # pymodbus unpacks a response one register at a time; for 125 registers that is most of
    # the client's CPU per request. One unpack of the whole payload, with the same checks.
    byte_count = data[0]
    if byte_count >= len(data) or byte_count % 2:
        raise ValueError(f"byte count {byte_count} does not fit a {len(data) - 1}-byte register payload")
    pdu.registers = list(struct.unpack_from(f">{byte_count // 2}H", data, 1))


class _FastHoldingResponse(ReadHoldingRegistersResponse):
    def decode(self, data: bytes) -> None:
        _decode_registers(self, data)


class _FastInputResponse(ReadInputRegistersResponse):
    def decode(self, data: bytes) -> None:
        _decode_registers(self, data)


class _TcpClient(ModbusTcpClient):
    """pymodbus's sync TCP client, with a quiet connect and faster register responses.

    pymodbus logs an ERROR line for every failed connect; a device that is down for an hour
    would log one per tick. The reader logs state changes itself, rate-limited. The response
    classes are registered on this client's own decoder only.
    """

    connect_error: OSError | None = None

    def __init__(self, host: str, *, port: int, timeout: float) -> None:
        super().__init__(host, port=port, timeout=timeout, retries=0)
        self.register(_FastHoldingResponse)
        self.register(_FastInputResponse)

    def connect(self) -> bool:
        if self.socket is not None:
            return True
        params = self.comm_params
        try:
            sock = socket.create_connection((params.host, int(params.port)), timeout=params.timeout_connect)
        except OSError as exc:
            self.connect_error = exc
            return False
        # Requests are small and answered one at a time; never let Nagle hold one back.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.socket = sock
        self.connect_error = None
        return True

    def close(self) -> None:
        # pymodbus's own close does the same but is unannotated; strict typing wants ours.
        if self.socket is not None:
            self.socket.close()
        self.socket = None


@dataclass(slots=True)
class _Failure:
    text: str
    code: int | None = None
    """The Modbus exception code, when the device answered with one."""
    fatal: bool = False
    """The connection is gone or out of step: close it and stop this tick."""
    slow: bool = False
    """The failure cost a whole timeout, so retrying it backs off."""


# (variable index, the decoder, the address's natural type)
_Slot = tuple[int, Decoder, str]


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
    steps: list[_Step]
    invalid: list[tuple[int, str]]


class ModbusDataReader(DataReader):
    """Reads coils, discrete inputs, input and holding registers from one Modbus TCP device.

    Addresses: ``<table>:<offset>[:<type>[:<order>]]`` (see ``docs/modbus.md``). Each tick's
    variables are read in the fewest requests (``plan_requests``), over one reused connection.
    A device that is down or silent yields values with ``error`` set, never an exception; the
    reader reconnects by itself (see ``docs/modbus.md``, failure behaviour).
    """

    def __init__(
        self,
        type: str,  # noqa: A002 - the contract's name for a reader's type
        host: str,
        port: int = 502,
        unit: int = 1,
        timeout_s: float = 1.0,
        max_gap: int = 10,
        max_registers: int = 125,
        max_bits: int = 2000,
        min_interval_ms: int = 50,
    ) -> None:
        problems = _check_settings(
            type, host, port, unit, timeout_s, max_gap, max_registers, max_bits, min_interval_ms
        )
        if problems:
            raise ConfigError(problems)
        self._type = type
        self.host = host
        self.port = port
        self.unit = unit
        self.timeout_s = float(timeout_s)
        self.max_gap = max_gap
        self.max_registers = max_registers
        self.max_bits = max_bits
        self._min_interval_ms = min_interval_ms

        self._client: _TcpClient | None = None
        self._addresses: dict[str, ModbusAddress] = {}
        self._plans: dict[tuple[str, ...], _Plan] = {}
        # What exception responses taught us about the device (see _learn).
        self._bad: dict[str, set[int]] = {}
        self._bad_sorted: dict[str, list[int]] = {}
        self._alone: set[tuple[str, int, int]] = set()
        self._limits: dict[str, int] = {}
        # Connection state.
        self._ever_connected = False
        self._retry_at = 0.0
        self._slow_failures = 0
        self._down_text = "not connected"
        self._down_log = RateLimitedLog(_log, window_s=60.0)
        self._counters: dict[str, int] = dict.fromkeys(
            (
                "requests",
                "request_errors",
                "exceptions",
                "timeouts",
                "bad_responses",
                "splits",
                "split_requests",
                "connect_attempts",
                "connect_failures",
                "reconnects",
                "backoff_skips",
                "learned_bad_registers",
                "learned_alone",
            ),
            0,
        )

    # ------------------------------------------------------------------ DataReader contract

    @property
    def type(self) -> str:
        return self._type

    @property
    def min_interval_ms(self) -> int:
        return self._min_interval_ms

    def validate(self, variable: Variable) -> None:
        address = self._parse(variable.address)
        check_value_type(address, variable.value_type or "float")  # the engine resolves None first
        limit = self.max_bits if address.is_bit else self.max_registers
        if address.width > limit:
            raise ValueError(
                f"modbus address {variable.address!r} needs {address.width} registers, more than "
                f"this reader's max_registers={limit} per request"
            )

    def open(self) -> None:
        self._ensure_connection()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def stats(self) -> Mapping[str, float]:
        # DataCollector.stats() calls this from its caller's thread while this reader's thread
        # reads: only copy counters and read single references here, never iterate its state.
        result: dict[str, float] = dict(self._counters)
        client = self._client
        result["connected"] = 1 if client is not None and client.connected else 0
        result["plans"] = len(self._plans)
        return result

    def read(self, variables: Sequence[CollectedVariable]) -> None:
        if not variables:
            return
        key = tuple([v.address for v in variables])
        plan = self._plans.get(key)
        if plan is None:
            plan = self._compile(key)
        for index, text in plan.invalid:
            _fail(variables[index], text)
        if not plan.steps:
            return
        if not self._ensure_connection():
            for step in plan.steps:
                _fail_step(variables, step, self._down_text)
            return
        self._read_steps(variables, plan.steps)

    def _read_steps(self, variables: Sequence[CollectedVariable], steps: list[_Step]) -> None:
        stop: _Failure | None = None
        for step in steps:
            if stop is not None:
                _fail_step(variables, step, stop.text)
                continue
            request = step.request
            answer = self._request(request.table, request.start, request.count)
            if not isinstance(answer, _Failure):
                _deliver(variables, step.flat, answer)
            elif answer.fatal:
                _fail_step(variables, step, answer.text)
                stop = answer
            elif answer.code in _SPLIT_CODES and len(step.groups) > 1:
                stop = self._split(variables, step)
            else:
                _fail_step(variables, step, answer.text)
                if answer.code in _SPLIT_CODES:
                    self._learn_alone(request.table, request.start, request.end)

    # ------------------------------------------------------------------ planning (no I/O)

    def plan_requests(self, addresses: Sequence[str]) -> list[ModbusRequest]:
        """The requests one tick due at ``addresses`` costs, with what the device taught so far.

        No I/O. Raises ``ValueError`` naming the first address that does not parse.
        """
        parsed = [self._parse(text) for text in addresses]
        return self._pack({(a.table, a.offset, a.end) for a in parsed})

    def _parse(self, text: str) -> ModbusAddress:
        address = self._addresses.get(text)
        if address is None:
            address = parse_address(text)
            self._addresses[text] = address
        return address

    def _pack(self, spans: set[tuple[Any, int, int]]) -> list[ModbusRequest]:
        return pack(
            spans,
            max_gap=self.max_gap,
            max_registers=self.max_registers,
            max_bits=self.max_bits,
            bad=self._bad_sorted,
            alone=self._alone,
            limits=self._limits,
        )

    def _compile(self, key: tuple[str, ...]) -> _Plan:
        invalid: list[tuple[int, str]] = []
        slots_by_span: dict[tuple[str, int, int], list[_Slot]] = {}
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
        steps: list[_Step] = []
        for request in self._pack(set(slots_by_span)):
            groups = [_Group(span, slots_by_span[(request.table, *span)]) for span in request.spans]
            steps.append(_Step(request, groups, _flatten(groups, request.start)))
        if len(self._plans) >= _MAX_PLANS:
            # Due sets repeat tick after tick; this many distinct ones means they do not, and
            # a cache that only grows would be a leak.
            self._plans.clear()
        plan = _Plan(steps, invalid)
        self._plans[key] = plan
        return plan

    # ------------------------------------------------------------------ I/O

    def _ensure_connection(self) -> bool:
        client = self._client
        if client is not None and client.connected:
            return True
        if client is None or (client.comm_params.host, client.comm_params.port) != (self.host, self.port):
            # host and port are plain attributes: a pipeline may point the reader elsewhere
            # (an embedded simulator on the port it got); the next connection goes there.
            client = self._client = _TcpClient(self.host, port=self.port, timeout=self.timeout_s)
        now = time.monotonic()
        if now < self._retry_at:
            self._counters["backoff_skips"] += 1
            return False
        self._counters["connect_attempts"] += 1
        if client.connect():
            if self._ever_connected:
                self._counters["reconnects"] += 1
                _log.info("modbus %s:%d (reader %r): connected again", self.host, self.port, self._type)
            self._ever_connected = True
            self._retry_at = 0.0
            return True
        self._counters["connect_failures"] += 1
        error = client.connect_error
        reason = _describe_os_error(error)
        # A refusal comes back at once (the host is up, the device process is not): retrying at
        # the next tick is free and brings values back within two ticks of its restart. Any
        # other failure cost up to timeout_s of this thread, so those back off.
        self._went_down(f"not connected: {reason}", slow=not isinstance(error, ConnectionRefusedError))
        return False

    def _went_down(self, text: str, *, slow: bool) -> None:
        self._down_text = text
        if self._client is not None:
            self._client.close()
        if slow:
            self._slow_failures += 1
            self._retry_at = time.monotonic() + retry_delay(self._slow_failures, self.timeout_s)
        else:
            self._retry_at = 0.0
        self._down_log.warning(
            (self.host, self.port, text),
            "modbus %s:%d (reader %r): %s; reconnecting",
            self.host,
            self.port,
            self._type,
            text,
        )

    def _request(self, table: str, start: int, count: int) -> Sequence[Any] | _Failure:
        """One read request; any trouble comes back as a ``_Failure``, never raised."""
        client = self._client
        if client is None or not client.connected:
            return _Failure(self._down_text, fatal=True)
        self._counters["requests"] += 1
        started = time.monotonic()
        try:
            response = _READS[table](client, start, count, self.unit)
        except ConnectionException as exc:
            return self._fatal(f"connection lost: {_short(exc)}", slow=False)
        except ModbusIOException as exc:
            if time.monotonic() - started >= self.timeout_s / 2:
                self._counters["timeouts"] += 1
                return self._fatal(f"no response within {self.timeout_s:g} s", slow=True)
            self._counters["bad_responses"] += 1
            return self._fatal(f"bad response: {_short(exc)}", slow=False)
        except Exception as exc:  # pymodbus may raise anything on garbage bytes
            self._counters["bad_responses"] += 1
            return self._fatal(f"bad response: {_short(exc)}", slow=False)
        return self._check_response(response, table, count)

    def _check_response(self, response: ModbusPDU, table: str, count: int) -> Sequence[Any] | _Failure:
        # Only an answer ends the backoff: a device that accepts connections and then stays
        # silent must not be retried at full rate.
        self._slow_failures = 0
        if isinstance(response, ExceptionResponse):
            self._counters["request_errors"] += 1
            self._counters["exceptions"] += 1
            code = response.exception_code
            name = _EXCEPTION_NAMES.get(code, "unknown exception")
            return _Failure(f"modbus exception {code}: {name}", code=code)
        expected = _FUNCTION_CODES[table]
        if response.function_code != expected:
            self._counters["request_errors"] += 1
            self._counters["bad_responses"] += 1
            return _Failure(f"bad response: function code {response.function_code}, expected {expected}")
        data: Sequence[Any] = response.bits if table in BIT_TABLES else response.registers
        if len(data) < count:
            self._counters["request_errors"] += 1
            self._counters["bad_responses"] += 1
            unit = "bits" if table in BIT_TABLES else "registers"
            return _Failure(f"short response: {len(data)} of {count} {unit}")
        return data

    def _fatal(self, text: str, *, slow: bool) -> _Failure:
        self._counters["request_errors"] += 1
        self._went_down(text, slow=slow)
        return _Failure(text, fatal=True, slow=slow)

    # ------------------------------------------------------------------ exception splitting

    def _split(self, variables: Sequence[CollectedVariable], step: _Step) -> _Failure | None:
        """Re-read a request refused with an address exception in halves, down to single values.

        Delivers what can be read this tick, then remembers (``_learn``) which registers the
        device refuses, so later plans steer around them without extra requests.
        """
        request = step.request
        table = request.table
        good: list[Span] = []
        refused: list[Span] = []
        fatal: _Failure | None = None
        self._counters["splits"] += 1

        def attempt(groups: list[_Group]) -> None:
            nonlocal fatal
            start = groups[0].span[0]
            end = max(g.span[1] for g in groups)
            if fatal is not None:
                _fail_groups(variables, groups, fatal.text)
                return
            self._counters["split_requests"] += 1
            answer = self._request(table, start, end - start)
            if not isinstance(answer, _Failure):
                _deliver(variables, _flatten(groups, start), answer)
                good.append((start, end))
            elif answer.fatal:
                fatal = answer
                _fail_groups(variables, groups, answer.text)
            elif answer.code in _SPLIT_CODES and len(groups) > 1:
                middle = len(groups) // 2
                attempt(groups[:middle])
                attempt(groups[middle:])
            else:
                _fail_groups(variables, groups, answer.text)
                if answer.code in _SPLIT_CODES:
                    refused.append((start, end))

        middle = len(step.groups) // 2
        attempt(step.groups[:middle])
        attempt(step.groups[middle:])
        if fatal is None:
            self._learn(table, request, good, refused)
        return fatal

    def _learn(self, table: str, request: ModbusRequest, good: list[Span], refused: list[Span]) -> None:
        """Remember what a split showed, so the next plans cost no extra requests.

        Registers of the refused request that no successful part covered hold the fault: no
        merged request may cover them again. Values refused even alone are read alone. If every
        part succeeded, the device refused the request's size: lower that table's limit.
        """
        covered: set[int] = set()
        for start, end in good:
            covered.update(range(start, end))
        suspects = [r for r in range(request.start, request.end) if r not in covered]
        if suspects:
            bad = self._bad.setdefault(table, set())
            bad.update(suspects)
            self._bad_sorted[table] = sorted(bad)
            self._counters["learned_bad_registers"] = sum(len(b) for b in self._bad.values())
        self._alone.update((table, start, end) for start, end in refused)
        self._counters["learned_alone"] = len(self._alone)
        if not suspects and not refused and good:
            largest = max(end - start for start, end in good)
            if largest < request.count:
                self._limits[table] = largest
        self._plans.clear()

    def _learn_alone(self, table: str, start: int, end: int) -> None:
        if (table, start, end) not in self._alone:
            self._alone.add((table, start, end))
            self._counters["learned_alone"] = len(self._alone)
            self._plans.clear()

    def __repr__(self) -> str:
        return f"ModbusDataReader(type={self._type!r}, {self.host}:{self.port}, unit={self.unit})"


def retry_delay(failures: int, timeout_s: float) -> float:
    """Seconds to wait after ``failures`` attempts in a row that each cost up to ``timeout_s``.

    Starts at one timeout (a dead device then takes at most half the reader's time), doubles,
    and never exceeds ``MAX_RETRY_DELAY_S``.
    """
    if failures <= 0:
        return 0.0
    return float(min(MAX_RETRY_DELAY_S, timeout_s * 2 ** min(failures - 1, 16)))


_FUNCTION_CODES: Final[dict[str, int]] = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}

_READS: Final[dict[str, Callable[[ModbusTcpClient, int, int, int], ModbusPDU]]] = {
    "coil": lambda c, start, count, unit: c.read_coils(start, count=count, device_id=unit),
    "discrete": lambda c, start, count, unit: c.read_discrete_inputs(start, count=count, device_id=unit),
    "holding": lambda c, start, count, unit: c.read_holding_registers(start, count=count, device_id=unit),
    "input": lambda c, start, count, unit: c.read_input_registers(start, count=count, device_id=unit),
}


def _flatten(groups: list[_Group], start: int) -> list[tuple[int, int, Decoder, str]]:
    return [
        (index, group.span[0] - start, decoder, natural)
        for group in groups
        for index, decoder, natural in group.slots
    ]


def _deliver(
    variables: Sequence[CollectedVariable], flat: list[tuple[int, int, Decoder, str]], data: Sequence[Any]
) -> None:
    for index, offset, decoder, natural in flat:
        variable = variables[index]
        try:
            # The plain register is by far the commonest value: skip the call for it.
            value = data[offset] if decoder is plain_register else decoder(data, offset)
            value_type = variable.value_type
            if value_type != natural:
                value = convert(value, natural, value_type)
        except KeyError:
            _fail(variable, f"value_type {variable.value_type!r} cannot hold this {natural} value")
            continue
        except Exception as exc:  # a device's bytes must never end the tick
            _fail(variable, f"cannot decode: {_short(exc)}")
            continue
        variable.value = value
        variable.error = None


def _fail(variable: CollectedVariable, text: str) -> None:
    variable.value = None
    variable.error = text


def _fail_step(variables: Sequence[CollectedVariable], step: _Step, text: str) -> None:
    _fail_groups(variables, step.groups, text)


def _fail_groups(variables: Sequence[CollectedVariable], groups: list[_Group], text: str) -> None:
    for group in groups:
        for index, _decoder, _natural in group.slots:
            _fail(variables[index], text)


def _describe_os_error(error: OSError | None) -> str:
    if error is None:
        return "connection failed"
    if isinstance(error, TimeoutError):
        return "connect timed out"
    if isinstance(error, socket.gaierror):
        return f"cannot resolve host ({error.strerror or error})"
    return (error.strerror or str(error) or type(error).__name__).lower()


def _short(exc: BaseException, limit: int = 120) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_settings(
    type_: object,
    host: object,
    port: object,
    unit: object,
    timeout_s: object,
    max_gap: object,
    max_registers: object,
    max_bits: object,
    min_interval_ms: object,
) -> list[str]:
    where = "ModbusDataReader"
    problems: list[str] = []
    for name, value in (("type", type_), ("host", host)):
        if not isinstance(value, str) or not value.strip():
            problems.append(f"{where} {name}: must be a non-empty str, got {value!r}")
    ranges: tuple[tuple[str, object, int, int | None, str], ...] = (
        ("port", port, 1, 65535, ""),
        ("unit", unit, 0, 255, ""),
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
