"""Modbus TCP's framing (MBAP) on an asyncio transport: the engine loop's client for plain TCP lines.

Why not pymodbus's asyncio client here: at a plant's size the cost of a request before it
leaves decides how late the last device of an instant is sampled. pymodbus builds a request
object, a transaction, its own timer and a log record per request, behind two awaits (about
60 us, 2,000 of them between the instant and the last request). Here a read request is 12 bytes
packed at once, written synchronously by ``send`` (so the engine can write every due request
of an instant in one pass before it awaits any answer, see ``DataReader.send_batch``), and an
answer is matched to its request by transaction id and decoded in one unpack.

Only what the line reads: function codes 1-4. Everything the line decides (timeouts it asked
for, retries, back-offs, texts, counters) stays ``LineConnection``'s; this module frames,
matches and says what went wrong in the exceptions the line already understands:
``UnansweredError`` (a ``ModbusIOException``) for an unanswered request, ``ConnectionException``
for a connection that dropped under it, ``BadFrameError`` for bytes that are no answer to it.
pymodbus's RTU-over-TCP and TLS clients stay where they are (their framing is not this one). No
``assert``: the peer's bytes are untrusted; a frame that cannot be Modbus TCP ends the buffer's
parse, never the loop.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Final

from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.pdu import ExceptionResponse

__all__ = ["FUNCTION_CODES", "BadFrameError", "MbapAnswer", "MbapProtocol", "UnansweredError", "read_request"]

FUNCTION_CODES: Final[dict[str, int]] = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}

_HEADER: Final = struct.Struct(">HHHB")
"""Transaction id, protocol id (0), length (of what follows it: the unit and the PDU), unit."""
_REQUEST: Final = struct.Struct(">HHHBBHH")
_MAX_LENGTH: Final = 254
"""The most a length field may say: the unit byte and a PDU of at most 253 bytes."""
_BITS: Final = tuple(tuple(bool(byte >> i & 1) for i in range(8)) for byte in range(256))
"""Per byte value, its eight bits, least significant first (Modbus's order)."""


class BadFrameError(Exception):
    """Bytes from the device that are no answer to the request waiting (said in the value's error)."""


class UnansweredError(ModbusIOException):
    """A request's timeout passed, counted from when it was written (which may be before the
    read that awaits it began): a timeout by construction, whatever the read's own clock says."""


class MbapAnswer:
    """A read answer: ``registers`` (function codes 3 and 4) or ``bits`` (1 and 2), like pymodbus's
    answers (the reader checks both alike). Another function code comes back with neither."""

    __slots__ = ("bits", "function_code", "registers")

    def __init__(self, function_code: int, registers: list[int], bits: list[bool]) -> None:
        self.function_code = function_code
        self.registers = registers
        self.bits = bits


def read_request(transaction: int, unit: int, table: str, start: int, count: int) -> bytes:
    """The 12 bytes of a read request (``table`` as in ``FUNCTION_CODES``)."""
    return _REQUEST.pack(transaction, 0, 6, unit, FUNCTION_CODES[table], start, count)


def _decode(pdu: bytes) -> MbapAnswer | ExceptionResponse:
    """A response PDU (function code first); raises ``BadFrameError`` for one that cannot be an answer."""
    code = pdu[0]
    if code & 0x80:
        if len(pdu) != 2:
            raise BadFrameError(f"exception answer of {len(pdu)} bytes")
        return ExceptionResponse(code & 0x7F, pdu[1])
    if code not in (1, 2, 3, 4):
        return MbapAnswer(code, [], [])
    if len(pdu) < 2 or pdu[1] != len(pdu) - 2:
        said = pdu[1] if len(pdu) > 1 else "no"
        raise BadFrameError(f"byte count {said} does not fit a {len(pdu) - 2}-byte payload")
    if code >= 3:
        if pdu[1] % 2:
            raise BadFrameError(f"odd byte count {pdu[1]} for registers")
        return MbapAnswer(code, list(struct.unpack_from(f">{pdu[1] // 2}H", pdu, 2)), [])
    bits = _BITS
    return MbapAnswer(code, [], [bit for byte in pdu[2:] for bit in bits[byte]])


def _checked(asked: int, unit: int, pdu: bytes) -> MbapAnswer | ExceptionResponse:
    """The answer in ``pdu`` from ``unit`` to a request asked of ``asked``; raises ``BadFrameError``
    for one that is no answer to it (another unit's, or undecodable)."""
    if unit != asked:
        raise BadFrameError(f"unit {unit} answered, unit {asked} was asked")
    return _decode(pdu)


class _Pending:
    __slots__ = ("future", "timer", "unit")

    def __init__(self, future: asyncio.Future[MbapAnswer | ExceptionResponse], unit: int) -> None:
        self.future = future
        self.unit = unit
        self.timer: asyncio.TimerHandle | None = None


class _Reserved:
    """A request ``reserve`` wrote that nobody awaits yet: its unit, when it was written, and
    what came for it meanwhile (its unit byte and PDU, or why it failed), if anything."""

    __slots__ = ("came", "unit", "written")

    def __init__(self, unit: int, written: float) -> None:
        self.unit = unit
        self.written = written
        self.came: bytes | Exception | None = None


class MbapProtocol(asyncio.Protocol):
    """One Modbus TCP connection's requests and answers. Loop thread only.

    ``send`` writes a request now and returns the future of its answer, failed with
    ``UnansweredError`` after ``timeout_s`` unanswered, with ``ConnectionException`` when the
    connection drops, with ``BadFrameError`` when the device answers it with bytes that are no
    answer (a wrong unit, a byte count that does not fit). An answer nobody waits for any more
    (its request timed out, or was given up) is dropped. Bytes that cannot be Modbus TCP at all
    (a protocol id other than 0, a length out of range) fail every request waiting and the
    buffer is dropped: nothing after them can be framed.
    """

    # Slotted: one a line (asyncio.Protocol has no dict of its own to keep): 64 bytes a line.
    __slots__ = (
        "_buffer",
        "_loop",
        "_next",
        "_on_lost",
        "_pending",
        "_reserved",
        "_transport",
    )

    def __init__(self, on_lost: Callable[[bool], None]) -> None:
        self._on_lost = on_lost
        """Called once the connection is gone, with whether a request was waiting in it."""
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._pending: dict[int, _Pending] = {}
        self._reserved: dict[int, _Reserved] = {}
        """Requests written by ``reserve`` that nobody awaits yet, with what came for them before
        ``expect`` (one dict, not two: each kept its table once used, 180 bytes a line)."""
        self._next = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- asyncio's callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # a stream transport: create_connection's
        self._loop = asyncio.get_running_loop()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        waiting = any(not p.future.done() for p in self._pending.values())
        self.fail_all(ConnectionException("connection closed by the device"))
        self._on_lost(waiting)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= 7:
            transaction, protocol, length, unit = _HEADER.unpack_from(buffer)
            if protocol != 0 or not 2 <= length <= _MAX_LENGTH:
                what = f"protocol id {protocol}" if protocol != 0 else f"length {length}"
                buffer.clear()
                self.fail_all(BadFrameError(f"not a Modbus TCP frame ({what})"))
                return
            end = 6 + length
            if len(buffer) < end:
                return
            pdu = bytes(buffer[7:end])
            del buffer[:end]
            self._answer(transaction, unit, pdu)

    # -- requests

    @property
    def connected(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def send(
        self, unit: int, table: str, start: int, count: int, timeout_s: float
    ) -> asyncio.Future[MbapAnswer | ExceptionResponse]:
        """Write a read request now; the future of its answer (see the class)."""
        loop = self._loop
        transport = self._transport
        if loop is None or transport is None:
            raise ConnectionException("not connected")
        self._next = transaction = self._next % 0xFFFF + 1
        future: asyncio.Future[MbapAnswer | ExceptionResponse] = loop.create_future()
        pending = _Pending(future, unit)
        pending.timer = loop.call_at(loop.time() + timeout_s, self._expire, transaction, timeout_s)
        self._pending[transaction] = pending
        transport.write(read_request(transaction, unit, table, start, count))
        return future

    def reserve(self, unit: int, table: str, start: int, count: int) -> int:
        """Write a read request now, with nothing else: no future, no timer (the engine writes
        every due request of an instant this way, touching as little as it can). Its
        transaction id, for ``expect`` (or ``release``) later."""
        loop = self._loop
        transport = self._transport
        if loop is None or transport is None:
            raise ConnectionException("not connected")
        self._next = transaction = self._next % 0xFFFF + 1
        transport.write(read_request(transaction, unit, table, start, count))
        self._reserved[transaction] = _Reserved(unit, loop.time())
        return transaction

    def take(self, transaction: int) -> MbapAnswer | ExceptionResponse | None:
        """A reserved request's answer if it came already (raising what ``expect``'s future would
        raise: a bad frame, a lost connection); None when it has not come (then ``expect``)."""
        reserved = self._reserved.get(transaction)
        if reserved is None or reserved.came is None:
            return None
        del self._reserved[transaction]
        came = reserved.came
        if isinstance(came, Exception):
            raise came
        return _checked(reserved.unit, came[0], came[1:])

    def expect(
        self, transaction: int, timeout_s: float
    ) -> asyncio.Future[MbapAnswer | ExceptionResponse] | None:
        """After ``take`` found nothing: the future of a reserved request's answer (``send``'s
        rules, its timeout counted from when it was written); None when it is not reserved
        (released, or never)."""
        reserved = self._reserved.pop(transaction, None)
        loop = self._loop
        if reserved is None or loop is None:
            return None
        future: asyncio.Future[MbapAnswer | ExceptionResponse] = loop.create_future()
        pending = self._pending[transaction] = _Pending(future, reserved.unit)
        pending.timer = loop.call_at(reserved.written + timeout_s, self._expire, transaction, timeout_s)
        return future

    def release(self, transaction: int) -> None:
        """Nobody will ``expect`` this reserved request: its answer, if it comes, is dropped."""
        self._reserved.pop(transaction, None)

    def close(self) -> None:
        transport = self._transport
        if transport is not None:
            transport.close()

    def abort(self) -> None:
        transport = self._transport
        if transport is not None:
            transport.abort()

    # -- inside

    def _answer(self, transaction: int, unit: int, pdu: bytes) -> None:
        pending = self._settle(transaction)
        if pending is None:
            reserved = self._reserved.get(transaction)
            if reserved is not None:  # written early, not awaited yet: kept for take
                reserved.came = bytes([unit]) + pdu
            return  # else an answer that came after its request gave up
        if pending.future.done():
            return
        try:
            answer = _checked(pending.unit, unit, pdu)
        except BadFrameError as exc:
            pending.future.set_exception(exc)
            return
        pending.future.set_result(answer)

    def _expire(self, transaction: int, timeout_s: float) -> None:
        pending = self._settle(transaction)
        if pending is not None and not pending.future.done():
            pending.future.set_exception(UnansweredError(f"no response within {timeout_s:g} s"))

    def _settle(self, transaction: int) -> _Pending | None:
        pending = self._pending.pop(transaction, None)
        if pending is not None and pending.timer is not None:
            pending.timer.cancel()
        return pending

    def fail_all(self, exc: Exception) -> None:
        """Fail every request waiting with ``exc`` (the connection is closing, or lost)."""
        for reserved in self._reserved.values():
            reserved.came = exc
        for transaction in list(self._pending):
            pending = self._settle(transaction)
            if pending is not None and not pending.future.done():
                pending.future.set_exception(exc)
