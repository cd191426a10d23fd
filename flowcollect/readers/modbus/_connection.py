"""The connection of a Modbus line, shared by its units: one client, one request at a time.

The registry (``lines``) owns a line's identity: it refuses one key with two settings and hands
every reader of a line the same ``LineConnection``, opened once and closed when the last reader
closes. pymodbus's sync clients (plain, TLS, serial) frame and parse, through their public API
only; the line opens their socket or port itself (``_Link``) and keeps what pymodbus would
otherwise decide for the whole line:

- pymodbus gives up on a client after ``retries + 3`` requests in a row go unanswered, so one
  dead unit would bounce every unit on the line: its public ``set_max_no_responses`` moves
  that out of reach, and the line decides when a connection is dead.
- Timeouts and retries are per unit: the client is made with ``retries=0`` and the line
  resends an unanswered request itself (``request``), pacing and draining like any other.
- A unit that does not answer is backed off on its own (``UnitState``).
- pymodbus logs an ERROR line for every timeout, refused connect and stray frame. The reader
  reports those failures itself (as value errors and rate-limited log lines), so while a
  request of ours runs, pymodbus's WARNING and ERROR records are dropped (``_QuietFilter``).
- ``close`` may come from another thread under a request (a reader's ``abort`` at the close
  deadline): it shuts the transport down under that request instead of waiting for it.

Two ways to the same line, one connection at a time: the sync clients above (``_Link``, for
serial ports and direct callers of ``read``/``read_batch``), and the event loop's (``_AsyncLink``,
when the engine awaits ``read_batch_async`` on its loop): the own Modbus TCP framing
(``_mbap``) for plain TCP, pymodbus's asyncio clients for RTU over TCP and TLS. Everything the
line decides (connect back-off, unit back-off, retries, pacing, dead connections, texts and
counters) is ``LineConnection``'s, shared by both; only the waiting differs. No
``select.select`` anywhere: it cannot watch a descriptor of 1,024 or above, which a process with
a thousand connections soon has.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import logging
import os
import re
import select
import selectors
import socket
import ssl
import struct
import threading
import time
import weakref
from collections.abc import Callable, Generator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, cast

from pymodbus.client import (
    AsyncModbusTcpClient,
    AsyncModbusTlsClient,
    ModbusSerialClient,
    ModbusTcpClient,
    ModbusTlsClient,
)
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU

from flowcollect._logs import RateLimitedLog
from flowcollect._text import peer_text
from flowcollect.errors import ConfigError
from flowcollect.readers.modbus._mbap import MbapAnswer, MbapProtocol, UnansweredError
from flowcollect.readers.modbus.line import ModbusLine, ModbusTls, load_error
from flowcollect.readers.modbus.timing import Pacer

Answer = ModbusPDU | MbapAnswer
"""A device's answer: pymodbus's (its clients) or the own protocol's (plain TCP on the loop)."""

__all__ = [
    "CLOSED",
    "Answer",
    "EarlyLink",
    "MAX_RETRY_DELAY_S",
    "Failure",
    "Learned",
    "LineConnection",
    "UnitState",
    "LineRegistry",
    "describe_error",
    "lines",
    "quiet_pymodbus",
    "retry_delay",
    "short_text",
]

_log = logging.getLogger("flowcollect.readers.modbus")

CLOSED: Final = "closed"
"""The error of values a closed (or aborted) reader did not read."""

MAX_RETRY_DELAY_S: Final = 5.0
"""The longest wait between two attempts: to reopen a line, or to ask a unit that is silent."""

# After this many unanswered requests in a row, with no unit of the line answering, a TCP
# connection is taken for dead (a device rebooted without a reset reaches nobody) and reopened.
_DEAD_AFTER_TIMEOUTS: Final = 3
# pymodbus's count of unanswered requests before it gives up on a connection: never reached
# (the line decides when a connection is dead, see _DEAD_AFTER_TIMEOUTS).
_NEVER: Final = 1 << 30

# ---------------------------------------------------------------------------- pymodbus's logs

_quiet: contextvars.ContextVar[int] = contextvars.ContextVar("flowcollect_quiet_pymodbus", default=0)
"""Depth of ``quiet_pymodbus`` blocks: a context variable, so it holds per thread and per task (an
event loop's callbacks for a connection run in a copy of the context it was opened in)."""


class _QuietFilter(logging.Filter):
    """Drops pymodbus's WARNING/ERROR records emitted inside one of our requests."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING or not _quiet.get()


_PYMODBUS_LOGGER: Final = logging.getLogger("pymodbus.logging")
if not any(isinstance(f, _QuietFilter) for f in _PYMODBUS_LOGGER.filters):
    _PYMODBUS_LOGGER.addFilter(_QuietFilter())


class quiet_pymodbus:  # noqa: N801 - used as the function-style context manager it was
    """Within: pymodbus's own warnings and errors in this thread (or task) are not logged.

    A class, not a ``contextlib.contextmanager``: it wraps every request, and a generator-based
    manager costs several times as much."""

    __slots__ = ("_token",)

    def __enter__(self) -> None:
        self._token = _quiet.set(_quiet.get() + 1)

    def __exit__(self, *_exc: object) -> None:
        _quiet.reset(self._token)


# ---------------------------------------------------------------------------- clients


class _RegistersAnswer(ModbusPDU):
    """A read-registers answer decoded in one unpack.

    pymodbus unpacks an answer one register at a time; for 125 registers that is most of the
    client's CPU per request. A ``ModbusPDU`` subclass given to ``client.register`` is
    pymodbus's public way to decode a function code one's own way; the checks are the same.
    """

    rtu_byte_count_pos = 2

    def encode(self) -> bytes:
        return struct.pack(f">B{len(self.registers)}H", 2 * len(self.registers), *self.registers)

    def decode(self, data: bytes) -> None:
        byte_count = data[0]
        if byte_count >= len(data) or byte_count % 2:
            raise ValueError(f"byte count {byte_count} does not fit a {len(data) - 1}-byte register payload")
        self.registers = list(struct.unpack_from(f">{byte_count // 2}H", data, 1))


class _HoldingAnswer(_RegistersAnswer):
    function_code = 3


class _InputAnswer(_RegistersAnswer):
    function_code = 4


def _wait_ready(sock: socket.socket, *, write: bool, timeout_s: float) -> bool:
    """Wait until ``sock`` can be read (or written), up to ``timeout_s``.

    ``poll`` (or the platform's best selector), never ``select.select``: that one cannot watch a
    descriptor of 1,024 or above and fails as if the device had closed.
    """
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLOUT if write else select.POLLIN)
        return bool(poller.poll(max(0.0, timeout_s) * 1000))
    with selectors.DefaultSelector() as selector:  # pragma: no cover - platforms without poll
        selector.register(sock, selectors.EVENT_WRITE if write else selectors.EVENT_READ)
        return bool(selector.select(max(0.0, timeout_s)))


def _receive(client: ModbusTcpClient, size: int | None) -> bytes:
    """The sync TCP and TLS clients' ``recv``, waiting in the socket's own timeout (poll).

    pymodbus's ``recv`` waits in ``select.select``, which fails for a descriptor of 1,024 or above
    as if the device had closed. Same contract: up to ``size`` bytes (one read when None) within
    the client's timeout, fewer when it expires; the end of the stream before any byte is a
    ``ConnectionException`` whose text says the device closed.
    """
    sock = client.socket
    if sock is None:
        raise ConnectionException(str(client))
    want = size or 4096
    data: list[bytes] = []
    got = 0
    deadline = time.monotonic() + (client.comm_params.timeout_connect or 0)
    while got < want:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            sock.settimeout(remaining)
            chunk = sock.recv(want - got)
        except TimeoutError:
            break
        except OSError:
            _close_client(client)
            raise ConnectionException(f"{client}: connection closed by an error") from None
        if not chunk:
            if data:
                break
            _close_client(client)
            raise ConnectionException(f"{client}: connection closed by the device without a response")
        data.append(chunk)
        got += len(chunk)
        if size is None:
            break
    return b"".join(data)


def _close_client(client: ModbusTcpClient) -> None:
    # pymodbus's close is unannotated; strict typing wants its type said.
    close = cast("Callable[[], None]", client.close)
    close()


class _TcpClient(ModbusTcpClient):
    """pymodbus's sync TCP client, receiving without ``select.select`` (``_receive``)."""

    def recv(self, size: int | None) -> bytes:
        return _receive(self, size)


class _TlsClient(ModbusTlsClient):
    """pymodbus's sync TLS client, receiving without ``select.select`` (``_receive``)."""

    def recv(self, size: int | None) -> bytes:
        return _receive(self, size)


class _Link:
    """A pymodbus sync client, and the socket (or serial port) the line opens for it.

    pymodbus frames, sends and parses; the line opens the transport itself and hands it to the
    client through its ``socket`` attribute (what the client's ``connected``, ``send``, ``recv``
    and ``close`` go by). pymodbus's own ``connect`` only logs why it failed (and repeats of a
    text not even that), where the line must say why, back off on a timeout and not on a
    refusal, set ``TCP_NODELAY``, open a serial port exclusively and close it when a setting is
    refused, and check a TLS device's certificate against its name under one deadline
    (pymodbus's TLS connect wraps the socket without a server name, so a context that checks
    names cannot connect through it at all).

    ``abort`` is the one method another thread may call: it shuts the transport down under a
    read in progress, which then fails at once.
    """

    def __init__(self, line: ModbusLine, timeout_s: float) -> None:
        self.line = line
        self.connect_error: Exception | None = None
        client: ModbusTcpClient | ModbusSerialClient
        if line.kind == "serial":
            client = ModbusSerialClient(
                str(line.port),
                framer=FramerType.RTU,
                baudrate=line.baudrate or 19_200,
                bytesize=line.bytesize,
                parity=line.parity,
                stopbits=line.stopbits,
                timeout=timeout_s,
                retries=0,
            )
        elif line.tls is not None:
            # Modbus/TCP Security: MBAP frames over TLS, pymodbus's TLS client and framer.
            # (No sslctx: the client's own connect is never used, _dial_tls builds the context
            # at each connect, where a file that no longer loads is a connect failure.)
            client = _TlsClient(
                str(line.host),
                port=int(line.port),
                framer=FramerType.TLS,
                timeout=timeout_s,
                retries=0,
            )
        else:
            framer = FramerType.RTU if line.kind == "rtu-tcp" else FramerType.SOCKET
            client = _TcpClient(
                str(line.host), port=int(line.port), timeout=timeout_s, retries=0, framer=framer
            )
        # pymodbus's count of unanswered requests before it gives up on a connection: out of
        # reach; the line decides when a connection is dead (_DEAD_AFTER_TIMEOUTS).
        client.set_max_no_responses(_NEVER)
        client.register(_HoldingAnswer)
        client.register(_InputAnswer)
        self.client = client
        self._transport: Any = None
        """The open socket or port, also held here: ``abort`` must reach it from another
        thread even after the client dropped it, and during a TLS handshake."""
        self._aborted = False
        """Set by ``abort`` (any thread); a connect in progress then hands nothing over."""

    @property
    def connected(self) -> bool:
        return self.client.connected

    def set_timeout(self, timeout_s: float) -> None:
        """The wait for each answer (a unit's own ``timeout_s``)."""
        self.client.comm_params.timeout_connect = timeout_s

    def connect(self, timeout_s: float) -> bool:
        if self.client.connected:
            return True
        try:
            client = self.client
            if isinstance(client, ModbusSerialClient):
                transport = _open_serial(self.line, timeout_s, client.inter_byte_timeout)
            elif self.line.tls is not None:
                transport = _dial_tls(self.line, self.line.tls, timeout_s, self._hold)
            else:
                transport = _dial(self.line, timeout_s)
        except Exception as exc:  # sockets raise OSError; pyserial termios and OS errors as they come
            self._transport = None
            self.connect_error = exc
            return False
        self._hold(transport)
        if self._aborted:
            # Aborted while connecting: what was being opened is closed, not handed over.
            self.abort()
            self.connect_error = ConnectionAbortedError("closed while connecting")
            return False
        self.connect_error = None
        self.client.socket = transport
        return True

    def _hold(self, transport: Any) -> None:
        """What ``abort`` must close, as soon as it exists (a TLS handshake may take long)."""
        self._transport = transport

    def drain(self) -> None:
        """Drop bytes already received: a late answer must never pass for the next one's."""
        sock = self.client.socket
        if sock is None or self.line.kind == "serial":
            # pymodbus's serial send drops whatever waits in the input buffer before each request.
            return
        pending = getattr(sock, "pending", lambda: 0)  # TLS: decrypted bytes poll cannot see
        with contextlib.suppress(OSError, ValueError):
            while pending() or _wait_ready(sock, write=False, timeout_s=0):
                if not sock.recv(4096):
                    return

    def close(self) -> None:
        self._transport = None
        # pymodbus's close is unannotated; strict typing wants its type said.
        close = cast("Callable[[], None]", self.client.close)
        with contextlib.suppress(Exception):  # a port that vanished may fail to close
            close()

    def abort(self) -> None:
        """From any thread: shut the transport down now, even under a read in progress.

        A socket shut down wakes a ``select`` waiting on it (its read sees the end at once) and
        the device sees the connection closed; a serial port's read is cancelled.
        """
        self._aborted = True
        transport = self._transport
        if transport is None:
            return
        if isinstance(transport, socket.socket):
            with contextlib.suppress(OSError):
                # The plain socket's shutdown, also under TLS: the TLS object stays as the read
                # in progress knows it, and that read sees the end of the stream.
                socket.socket.shutdown(transport, socket.SHUT_RDWR)
        else:
            with contextlib.suppress(Exception):
                transport.cancel_read()
        with contextlib.suppress(Exception):
            transport.close()


def _dial(line: ModbusLine, timeout_s: float) -> socket.socket:
    sock = socket.create_connection((str(line.host), int(line.port)), timeout=timeout_s)
    # Requests are small and answered one at a time; never let Nagle hold one back.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _dial_tls(
    line: ModbusLine, tls: ModbusTls, timeout_s: float, hold: Callable[[socket.socket], None]
) -> ssl.SSLSocket:
    """A TLS connection, handshake done; ``hold`` is given each socket as it exists."""
    deadline = time.monotonic() + timeout_s
    context = _tls_context(tls)
    sock: socket.socket = _dial(line, timeout_s)
    try:
        # From here the TLS socket owns the connection (the plain one is detached into it).
        sock = wrapped = context.wrap_socket(
            sock, server_hostname=tls.server_name or line.host, do_handshake_on_connect=False
        )
        hold(wrapped)
        # One deadline for the whole handshake: a device dribbling it out cannot hold the line
        # for a timeout per byte.
        wrapped.setblocking(False)
        while True:
            try:
                wrapped.do_handshake()
                break
            except ssl.SSLWantReadError:
                write = False
            except ssl.SSLWantWriteError:
                write = True
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not _wait_ready(wrapped, write=write, timeout_s=remaining):
                raise TimeoutError("TLS handshake timed out")
        wrapped.settimeout(timeout_s)
    except BaseException:
        sock.close()
        raise
    return wrapped


def _tls_context(tls: ModbusTls) -> ssl.SSLContext:
    """The line's TLS context, loaded at each connect: a certificate renewed on disk is used from
    the next one; a file that no longer loads is a connect failure naming the files."""
    try:
        return tls.context()
    except (OSError, ssl.SSLError) as exc:
        reason = load_error(exc)
        raise TlsFilesError(f"TLS files did not load ({reason}): {tls.files()}") from exc


def _open_serial(line: ModbusLine, timeout_s: float, inter_byte_timeout: float) -> Any:
    import serial

    # Opened exclusively (pyserial's flock): a second program (or collector) opening the same
    # port fails with "port busy" instead of interleaving its frames.
    port = serial.serial_for_url(
        str(line.port),
        timeout=timeout_s,
        write_timeout=timeout_s,
        bytesize=line.bytesize,
        stopbits=line.stopbits,
        baudrate=line.baudrate or 19_200,
        parity=line.parity,
        exclusive=True,
    )
    try:
        port.inter_byte_timeout = inter_byte_timeout  # the client's, for the line's baud rate
    except Exception:  # a port that refuses a setting: close it, or its lock stays
        port.close()
        raise
    return port


class _AsyncLink:
    """A connection on the loop that made it, over a socket the line dialled: the own Modbus TCP
    protocol (``MbapProtocol``) for a plain TCP line, else a pymodbus asyncio client.

    The line dials (``_open``) for the reasons ``_Link`` does: to say why a connect failed
    (pymodbus's ``connect`` only logs it), to check a TLS device's name (``server_name``) and to
    hold the socket that ``abort`` shuts down from another thread. The connected socket goes to
    the protocol (the own, or the client's ``client.ctx``) through asyncio's
    ``create_connection(sock=...)``; from there it frames, sends and matches answers to
    requests. The own protocol fails a request when its connection drops. pymodbus's reconnect
    (``reconnect_delay=0``), retries (0) and give-up count (out of reach) are off, and its
    timeout is the opening unit's (other units' requests are timed by the line): the line
    decides. An answer that comes after its request gave up finds no
    request waiting and pymodbus drops it, so nothing needs draining here.

    pymodbus leaves a request whose connection dropped waiting for its timeout: the
    ``trace_connect`` hook (public) cancels the task waiting in it, which then fails at once.
    A client is used for one connection: each connect makes a new ``_AsyncLink``.
    Loop thread only, but for ``abort`` (any thread) and ``connected`` (a read).
    """

    # Slotted: one a line, 56 bytes less than with a dict.
    __slots__ = (
        "_aborted",
        "_closing",
        "_early",
        "_handed",
        "_lost",
        "_sock",
        "_waiter",
        "client",
        "connect_error",
        "dropped",
        "line",
        "loop",
        "protocol",
        "timeout_s",
    )

    def __init__(self, line: ModbusLine, loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
        self.line = line
        self.loop = loop
        self.timeout_s = timeout_s
        """pymodbus's own wait for an answer: the timeout of the unit that opened the line.
        A request with this timeout is timed by pymodbus alone; another unit's, by the line."""
        self.connect_error: Exception | None = None
        self.protocol: MbapProtocol | None = None
        """Plain Modbus TCP: the line's own framing (``_mbap``), no pymodbus client."""
        self.client: AsyncModbusTcpClient | None = None
        self._early: tuple[tuple[str, int, int, int, float], int, int] | None = None
        """A request ``send_early`` wrote before anyone awaited it: what it asked, the instant
        it was written for and its transaction id. The loop thread only."""
        if line.kind == "tcp" and line.tls is None:
            self.protocol = MbapProtocol(self._protocol_lost)
        else:
            self.client = self._pymodbus_client(line, timeout_s)
        self._sock: socket.socket | None = None
        """The dialled socket, for ``abort`` from any thread (a plain reference read)."""
        self._handed = False
        """The socket belongs to the transport (which closes it)."""
        self._waiter: asyncio.Task[Any] | None = None
        """The task inside a connect or a request, cancelled when the connection drops (or is
        closed) under it."""
        self._lost = False
        self._closing = False
        self._aborted = False
        self.dropped = False
        """The device closed the connection while no request waited in it."""

    def _pymodbus_client(self, line: ModbusLine, timeout_s: float) -> AsyncModbusTcpClient:
        client: AsyncModbusTcpClient
        if line.tls is not None:
            client = AsyncModbusTlsClient(
                str(line.host),
                port=int(line.port),
                framer=FramerType.TLS,
                timeout=timeout_s,
                retries=0,
                reconnect_delay=0,
                trace_connect=self._traced,
            )
        else:
            client = AsyncModbusTcpClient(
                str(line.host),
                port=int(line.port),
                framer=FramerType.RTU if line.kind == "rtu-tcp" else FramerType.SOCKET,
                timeout=timeout_s,
                retries=0,
                reconnect_delay=0,
                trace_connect=self._traced,
            )
        client.set_max_no_responses(_NEVER)
        # One unpack per answer instead of one per register: 30 us of a 20-register read on
        # a loaded loop. (Registering deep-copies pymodbus's PDU table for the client, 0.35 ms
        # a connect: paid back within a dozen reads.)
        client.register(_HoldingAnswer)
        client.register(_InputAnswer)
        return client

    @property
    def connected(self) -> bool:
        if self._lost:
            return False
        if self.protocol is not None:
            return self.protocol.connected
        return self.client is not None and bool(self.client.connected)

    def _protocol_lost(self, waiting: bool) -> None:
        """The own protocol's connection is gone; ``waiting``: a request was waiting in it
        (and has failed already)."""
        if self._lost:
            return
        self._lost = True
        waiter = self._waiter  # a connect in progress
        if waiter is not None and not waiter.done():
            waiter.cancel()
        elif not waiting and not self._closing:
            self.dropped = True

    def _traced(self, connected: bool) -> None:
        if connected or self._lost:
            return  # (the waiter is cancelled once: its cancellation is then known to be ours)
        self._lost = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.cancel()
        elif not self._closing:
            self.dropped = True

    async def connect(self, timeout_s: float) -> bool:
        task = self._waiter = asyncio.current_task()
        # The transport's callbacks run in (a copy of) this context: quiet for a pymodbus
        # client's. The own framing has no pymodbus in them, and a context the transport kept
        # with the variable set would be 120 bytes a line.
        quiet = quiet_pymodbus() if self.client is not None else contextlib.nullcontext()
        try:
            with quiet:
                await self._open(timeout_s)
        except asyncio.CancelledError:
            self._drop_socket()
            if not self._lost or task is None or task.uncancel() > 0:
                raise  # the caller's cancellation
            # Closed while connecting (a reader's abort): what was being opened is closed.
            self.connect_error = ConnectionAbortedError("closed while connecting")
            return False
        except Exception as exc:  # OSError, TimeoutError, ssl.SSLError, TlsFilesError
            self._waiter = None  # (or close would cancel this very task)
            self._drop_socket()
            self.close()
            self.connect_error = exc
            return False
        finally:
            self._waiter = None
        if self._aborted:
            self.close()
            self.connect_error = ConnectionAbortedError("closed while connecting")
            return False
        return self.connected

    async def _open(self, timeout_s: float) -> None:
        loop = self.loop
        line = self.line
        context = _tls_context(line.tls) if line.tls is not None else None
        try:
            async with asyncio.timeout(timeout_s):
                sock = await self._dial()
        except TimeoutError:
            if self._sock is None or not _has_peer(self._sock):
                raise
            # The device accepted in time, but the loop, busy with other lines (a thousand
            # opening at one instant), saw it only with its deadline: connected all the same.
            sock = self._sock
        if self._aborted:
            raise ConnectionAbortedError("closed while connecting")
        try:
            async with asyncio.timeout(timeout_s):  # the handshake's own deadline
                await loop.create_connection(
                    self._protocol_factory,
                    sock=sock,
                    ssl=context,
                    server_hostname=(line.tls.server_name or line.host) if line.tls is not None else None,
                )
        except ConnectionError as exc:
            if context is None:
                raise
            # asyncio says "connection reset" where the sync handshake sees an EOF: the device
            # closed during the handshake, said (and backed off) alike.
            raise ssl.SSLEOFError(8, "EOF occurred in violation of protocol") from exc
        self._handed = True

    async def _dial(self) -> socket.socket:
        """A connected socket to the line's address (``self._sock``, also while connecting)."""
        loop = self.loop
        line = self.line
        infos = _numeric_address(str(line.host), int(line.port))
        if infos is None:
            # A name: resolved on the loop's executor. (An address is not: a thousand lines
            # connecting at one instant would queue behind a few resolver threads.)
            infos = await loop.getaddrinfo(str(line.host), int(line.port), type=socket.SOCK_STREAM)
        error: OSError = OSError("no address")
        for family, kind, proto, _name, address in infos:
            sock = self._sock = socket.socket(family, kind, proto)
            try:
                sock.setblocking(False)
                await loop.sock_connect(sock, address)
            except OSError as exc:
                sock.close()
                self._sock = None
                # asyncio says "Connect call failed (address)": the OS's words say why.
                error = OSError(exc.errno, os.strerror(exc.errno)) if exc.errno else exc
                continue
            return sock
        raise error

    def _drop_socket(self) -> None:
        """Close a socket no transport took over (a connect that failed or was cancelled)."""
        sock = self._sock
        if sock is not None and not self._handed:
            sock.close()

    async def request(self, table: str, start: int, count: int, unit: int, timeout_s: float) -> Answer:
        """One request and its answer within ``timeout_s``; raises as the sync client would: a
        ``ModbusIOException`` unanswered, a ``ConnectionException`` when the device closed."""
        if self.protocol is not None:
            return await self._own_request(self.protocol, table, start, count, unit, timeout_s)
        task = asyncio.current_task()
        self._waiter = task
        client = self.client
        try:
            with quiet_pymodbus():
                if timeout_s == self.timeout_s:
                    # pymodbus's own timer (it makes one per request anyway): a thousand lines'
                    # requests keep one timer each, not two.
                    answer: ModbusPDU = await _READS[table](client, start, count, unit)
                    return answer
                async with asyncio.timeout(timeout_s):
                    answer = await _READS[table](client, start, count, unit)
                    return answer
        except TimeoutError:
            raise ModbusIOException(f"no response within {timeout_s:g} s") from None
        except asyncio.CancelledError:
            if self._lost and task is not None and task.uncancel() == 0:
                # Ours (the connection dropped), not the caller's: a failure, not a cancellation.
                raise ConnectionException("connection closed by the device") from None
            raise
        finally:
            self._waiter = None

    def _protocol_factory(self) -> asyncio.BaseProtocol:
        if self.protocol is not None:
            return self.protocol
        if self.client is None:  # (one of the two is set at construction)
            raise RuntimeError("an asynchronous link without a protocol")
        protocol: asyncio.BaseProtocol = self.client.ctx
        return protocol

    def send_early(self, table: str, start: int, count: int, unit: int, timeout_s: float, t_ms: int) -> None:
        """Write a request now, for the ``request`` with the same arguments that the read of
        instant ``t_ms`` makes next to take up (the engine writes every due request of an
        instant before it awaits any answer). Only on the own protocol; nothing is written when
        one is written already or the connection is down. Loop thread only."""
        protocol = self.protocol
        if protocol is None or self._early is not None or self._lost:
            return
        try:
            transaction = protocol.reserve(unit, table, start, count)
        except ConnectionException:
            return
        self._early = ((table, start, count, unit, timeout_s), t_ms, transaction)

    def keep_early(self, t_ms: int) -> None:
        """A read of instant ``t_ms`` begins: a request written early for another instant (its
        read never came: a clock step, a plan change) is dropped, never taken for this one."""
        early = self._early
        if early is not None and early[1] != t_ms:
            self.forget_early()

    def forget_early(self) -> None:
        """A request written early that its read did not take up: its answer, if it comes, is
        dropped."""
        early, self._early = self._early, None
        if early is not None and self.protocol is not None:
            self.protocol.release(early[2])

    async def _own_request(
        self, protocol: MbapProtocol, table: str, start: int, count: int, unit: int, timeout_s: float
    ) -> Answer:
        early = self._early
        future: asyncio.Future[Any] | None = None
        if early is not None:
            self._early = None
            if early[0] == (table, start, count, unit, timeout_s):
                came = protocol.take(early[2])  # the engine lets answers in before reads begin
                if came is not None:
                    return came
                future = protocol.expect(early[2], timeout_s)
            else:
                protocol.release(early[2])
        if future is None:
            future = protocol.send(unit, table, start, count, timeout_s)
        # UnansweredError, ConnectionException (dropped), BadFrameError: see _mbap.
        answer: Answer = await future
        return answer

    def close(self) -> None:
        """Close the connection; the request waiting in it fails at once. From any thread."""
        if not self._on_loop():
            with contextlib.suppress(RuntimeError):  # the loop is gone: so is its transport
                self.loop.call_soon_threadsafe(self.close)
            return
        self._closing = True
        self._traced(False)  # a connect or request in progress is cancelled, and closes its socket
        protocol = self.protocol
        if protocol is not None:
            # Its requests fail now, not when the transport's goodbye reaches the loop.
            protocol.fail_all(ConnectionException("connection closed by the device"))
            protocol.close()
            self.forget_early()
        elif self._handed and self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close()

    def abort(self) -> None:
        """From any thread: shut the socket down now (the device sees it closed at once, the
        loop sees the end of the stream) and close the connection on its loop."""
        self._aborted = True
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            if self.loop.is_closed():
                sock.close()
        self.close()

    def _on_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False


EarlyLink = _AsyncLink
"""What ``LineConnection.early_link`` hands a reader: a link it may ``send_early`` on."""


def _has_peer(sock: socket.socket) -> bool:
    """Did a non-blocking connect on ``sock`` complete?"""
    try:
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            return False
        sock.getpeername()
    except OSError:
        return False
    return True


def _numeric_address(host: str, port: int) -> list[tuple[Any, Any, int, str, Any]] | None:
    """``getaddrinfo``'s answer for an IP address, without asking it; None for a name."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        address = (host, port) if family == socket.AF_INET else (host, port, 0, 0)
        return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", address)]
    return None


# The requests, on a sync client (a ModbusPDU back) or an asyncio one (an awaitable of it).
_READS: Final[dict[str, Callable[[Any, int, int, int], Any]]] = {
    "coil": lambda c, start, count, unit: c.read_coils(start, count=count, device_id=unit),
    "discrete": lambda c, start, count, unit: c.read_discrete_inputs(start, count=count, device_id=unit),
    "holding": lambda c, start, count, unit: c.read_holding_registers(start, count=count, device_id=unit),
    "input": lambda c, start, count, unit: c.read_input_registers(start, count=count, device_id=unit),
}


# ---------------------------------------------------------------------------- state


@dataclass(slots=True)
class Failure:
    """Why a request brought no data."""

    text: str
    code: int | None = None
    """The Modbus exception code, when the device answered with one."""
    fatal: bool = False
    """The line's connection is gone: stop this tick for every unit."""
    timeout: bool = False
    """The unit did not answer: the rest of its requests this tick would only wait again."""


@dataclass(slots=True)
class Learned:
    """What exception answers taught of one unit (see ``ModbusDataReader._learn``)."""

    bad: dict[str, set[int]] = field(default_factory=dict)
    bad_sorted: dict[str, list[int]] = field(default_factory=dict)
    alone: set[tuple[str, int, int]] = field(default_factory=set)
    limits: dict[str, int] = field(default_factory=dict)


# What a unit that taught nothing shows: read-only, so nobody writes into what all share.
_NO_BAD: Final[Mapping[str, AbstractSet[int]]] = MappingProxyType({})
_NO_BAD_SORTED: Final[Mapping[str, Sequence[int]]] = MappingProxyType({})
_NO_ALONE: Final[AbstractSet[tuple[str, int, int]]] = frozenset()
_NO_LIMITS: Final[Mapping[str, int]] = MappingProxyType({})


@dataclass(slots=True)
class UnitState:
    """What the line knows of one unit, shared by every reader of that unit on the line.

    What it taught (``learned``) is made with the first fact: most units never teach anything,
    and four empty containers were 0.4 KB a unit (2,000 devices are 2,000 units). Until then
    ``bad``, ``bad_sorted``, ``alone`` and ``limits`` are shared read-only empties.
    """

    unit: int
    failures: int = 0
    """Requests in a row the unit left unanswered."""
    retry_at: float = 0.0
    """Monotonic time before which the unit is not asked again (it is backed off)."""
    last_text: str = ""
    tried_at: float = float("-inf")
    """Monotonic time of the last request to the unit."""
    answer_s: float | None = None
    """A moving average of how long the unit's answered requests took."""
    learned: Learned | None = None
    """What exception answers taught (``learn()`` makes it); written under the line's lock."""
    generation: int = 0
    """Bumped whenever the learned facts change: readers drop their cached plans."""

    @property
    def bad(self) -> Mapping[str, AbstractSet[int]]:
        """Per table, the registers no merged request may cover."""
        return _NO_BAD if self.learned is None else self.learned.bad

    @property
    def bad_sorted(self) -> Mapping[str, Sequence[int]]:
        """``bad``, each table's registers sorted (what planning takes)."""
        return _NO_BAD_SORTED if self.learned is None else self.learned.bad_sorted

    @property
    def alone(self) -> AbstractSet[tuple[str, int, int]]:
        """The ``(table, start, end)`` spans read alone (refused even so)."""
        return _NO_ALONE if self.learned is None else self.learned.alone

    @property
    def limits(self) -> Mapping[str, int]:
        """Per table, the largest request the unit took when it refused a larger one."""
        return _NO_LIMITS if self.learned is None else self.learned.limits

    def learn(self) -> Learned:
        """What the unit taught, to add to: made on the first fact."""
        learned = self.learned
        if learned is None:
            learned = self.learned = Learned()
        return learned

    def backed_off(self, now: float) -> bool:
        return self.failures > 0 and now < self.retry_at

    def answered(self, elapsed_s: float) -> None:
        self.failures = 0
        self.retry_at = 0.0
        self.answer_s = elapsed_s if self.answer_s is None else 0.8 * self.answer_s + 0.2 * elapsed_s

    def missed(self, now: float, timeout_s: float, text: str) -> None:
        self.failures += 1
        self.last_text = text
        # The first back-off is two timeouts, so a silent unit costs the line at most a third
        # of its time from the start, and less and less after.
        self.retry_at = now + retry_delay(self.failures + 1, timeout_s)


def retry_delay(failures: int, timeout_s: float) -> float:
    """Seconds to wait after ``failures`` attempts in a row that each cost up to ``timeout_s``.

    Starts at one timeout, doubles, and never exceeds ``MAX_RETRY_DELAY_S``.
    """
    if failures <= 0:
        return 0.0
    return float(min(MAX_RETRY_DELAY_S, timeout_s * 2 ** min(failures - 1, 16)))


# ---------------------------------------------------------------------------- the connection

_NO_INTERVALS: Final[frozenset[int]] = frozenset()
"""A line no reader serves yet (``frozenset()`` is a new 216-byte object each time)."""

_TROUBLES_LOCK: Final = threading.Lock()
"""Makes a line's ``_down_log`` once, whatever thread has its first trouble."""

_LINES_LOCK: Final = threading.Lock()
"""Guards every line's ``intervals`` (and ``_line_intervals``), ``_worker`` and the making of
its ``_lock``: one for all the lines, where a lock of each was 88 bytes a line. Held only to
replace a few fields, never around anything that waits or takes another lock."""


class LineConnection:
    """One line's client, shared by its readers; every request holds ``lock``.

    The engine runs a line's readers on one lane thread, so the lock is uncontended there; it
    keeps requests apart when readers of one line are called from several threads anyway.
    """

    # Slotted: one a line (2,000 devices are 2,000 lines), 64 bytes less than with a dict.
    __slots__ = (
        "_answered",
        "_async_lock",
        "_async_loop",
        "_clock",
        "_closed",
        "_connecting",
        "_down_log",
        "_ever_connected",
        "_line_intervals",
        "_link",
        "_lock",
        "_pacer",
        "_probed_at",
        "_retry_at",
        "_sleep",
        "_slow_failures",
        "_stale",
        "_unanswered",
        "_worker",
        "counters",
        "down_text",
        "intervals",
        "line",
        "units",
        "users",
    )

    def __init__(
        self,
        line: ModbusLine,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.line = line
        self._sleep = sleep
        self._lock: threading.RLock | None = None
        """What ``lock`` gives, made on first use (under ``_LINES_LOCK``): a line read on the
        event loop never takes it (96 bytes a line)."""
        self.users = 0
        self.units: dict[int, UnitState] = {}
        self.intervals: tuple[tuple[int, frozenset[int]], ...] = ()
        """Per reader (its id), the intervals it serves: when the line's next instant is due.
        A tuple of pairs, replaced whole (a line has one reader or a few: a dict was 224 bytes
        a line). Written under ``_LINES_LOCK`` (a reader's ``abort`` leaves from the closing
        thread); ``_line_intervals`` is replaced whole under it, and read without it."""
        self._line_intervals: frozenset[int] = _NO_INTERVALS
        self._probed_at: int | None = None
        self._clock = clock
        self._link: _Link | _AsyncLink | None = None
        """The connection: a thread's (``_Link``) or an event loop's (``_AsyncLink``), one at a time."""
        self._async_lock: asyncio.Lock | None = None
        self._async_loop: asyncio.AbstractEventLoop | None = None
        """The loop ``_async_lock`` serves (two fields, not a tuple of them: 56 bytes a line)."""
        self._connecting: asyncio.Task[bool] | None = None
        """The event loop's connect in progress (or done), awaited by reads that need it."""
        self._closed = False
        """Closed (the last reader let go, or aborted): a connect still waiting opens nothing."""
        self._worker: concurrent.futures.ThreadPoolExecutor | None = None
        """A serial line's own thread when read from the event loop (guarded by _LINES_LOCK)."""
        self._pacer = Pacer(line.gap_s)
        self._ever_connected = False
        self._retry_at = 0.0
        self._slow_failures = 0
        self._unanswered = 0
        self._answered = False
        """An answer came on this connection (any answer: the device accepts us)."""
        self._stale = False
        self.down_text = "not connected"
        self._down_log: RateLimitedLog | None = None
        """The line's troubles, one line each a minute: made by ``_troubles`` the first time it has
        one (under ``_TROUBLES_LOCK``), then only read."""
        self.counters: dict[str, int] = dict.fromkeys(
            ("connect_attempts", "connect_failures", "reconnects", "dead_connections"), 0
        )

    # -- state

    @property
    def lock(self) -> threading.RLock:
        """Held by every request made from a thread (``ModbusDataReader.read``)."""
        lock = self._lock
        if lock is None:
            with _LINES_LOCK:
                lock = self._lock
                if lock is None:
                    lock = self._lock = threading.RLock()
        return lock

    @property
    def connected(self) -> bool:
        link = self._link
        return link is not None and link.connected

    def unit(self, unit: int) -> UnitState:
        state = self.units.get(unit)
        if state is None:
            state = self.units[unit] = UnitState(unit)
        return state

    def set_intervals(self, reader: int, intervals: frozenset[int] | None) -> None:
        """What ``reader`` (its id) serves now; ``None``: it left the line."""
        with _LINES_LOCK:
            pairs = list(self.intervals)
            at = next((k for k, (r, _i) in enumerate(pairs) if r == reader), None)
            if intervals is None:
                if at is not None:
                    del pairs[at]
            elif at is None:
                pairs.append((reader, intervals))
            else:
                pairs[at] = (reader, intervals)
            self.intervals = tuple(pairs)
            served = [i for _r, i in pairs]
            if not served:
                self._line_intervals = _NO_INTERVALS
            elif len(served) == 1:
                self._line_intervals = served[0]  # not a copy of it: 216 bytes a line
            else:
                self._line_intervals = frozenset().union(*served)

    def line_intervals(self) -> frozenset[int]:
        """The intervals every reader of the line serves: when the line's next instant is due."""
        return self._line_intervals

    def now(self) -> float:
        return self._clock()

    def pacing_s(self) -> float:
        """How long the next request must wait for the line's silence (and pause)."""
        return self._pacer.wait_s(self._clock())

    # -- connecting

    def ensure(self, timeout_s: float, name: str) -> bool:
        """Connect unless connected or backing off; at most one attempt per call."""
        link = self._link
        if isinstance(link, _Link) and link.connected:
            return True
        if not isinstance(link, _Link):
            if link is not None:
                link.abort()  # read on an event loop until now: one connection per line
            link = self._link = _Link(self.line, timeout_s)
        if not self._may_connect():
            return False
        return self._connected(link, link.connect(timeout_s), name, timeout_s)

    async def ensure_async(self, timeout_s: float, name: str) -> bool:
        """``ensure`` on the running event loop (pymodbus's asyncio client); never blocks it.

        The connect runs as a task of its own (``connect_soon`` may have started it already),
        awaited here: a read cancelled while it waits leaves the connect to finish or fail by
        its own deadline.
        """
        link = self._link
        loop = asyncio.get_running_loop()
        if isinstance(link, _AsyncLink) and link.loop is loop and link.connected:
            return True
        return await asyncio.shield(self._connect_task(loop, timeout_s, name))

    def connect_soon(self, timeout_s: float, name: str) -> None:
        """Start connecting on the running loop now (a reader's ``open`` there), so the line is
        up by its first instant; nothing waits for it here."""
        link = self._link
        loop = asyncio.get_running_loop()
        if not (isinstance(link, _AsyncLink) and link.loop is loop and link.connected):
            self._connect_task(loop, timeout_s, name)

    def _connect_task(
        self, loop: asyncio.AbstractEventLoop, timeout_s: float, name: str
    ) -> asyncio.Task[bool]:
        task = self._connecting
        if task is None or task.done() or task.get_loop() is not loop:
            task = self._connecting = loop.create_task(self._connect_async(loop, timeout_s, name))
            task.add_done_callback(self._connected_task_done)
        return task

    def _connected_task_done(self, task: asyncio.Task[bool]) -> None:
        # A finished task kept for nothing is 0.4 KB a line (its awaiters hold their own).
        if self._connecting is task:
            self._connecting = None

    async def _connect_async(self, loop: asyncio.AbstractEventLoop, timeout_s: float, name: str) -> bool:
        # A few connects at a time per loop: a thousand lines opening at one instant would
        # otherwise hold the loop long enough for their own deadlines to pass, each connect
        # waiting behind the others' set-up (and taken for a device that does not answer).
        async with _connect_slots(loop):
            if self._closed:
                self.down_text = CLOSED
                return False
            link = self._link
            if isinstance(link, _AsyncLink) and link.loop is loop:
                if link.connected:
                    return True
                if link.dropped:
                    # Dropped by the device between two requests (asyncio saw the end of the
                    # stream): said like a drop under a request, and reopened now.
                    self.went_down(
                        _connection_lost(self.line, ConnectionError("closed")),
                        slow=False,
                        name=name,
                        timeout_s=timeout_s,
                    )
            elif link is not None:
                link.abort()  # read by a thread (or on another loop) until now: one connection per line
            if not self._may_connect():
                return False
            # A client serves one connection (pymodbus keeps a closed client's state): a new one.
            link = self._link = _AsyncLink(self.line, loop, timeout_s)
            return self._connected(link, await link.connect(timeout_s), name, timeout_s)

    def _may_connect(self) -> bool:
        if self._clock() < self._retry_at:
            return False
        self.counters["connect_attempts"] += 1
        return True

    def _connected(self, link: _Link | _AsyncLink, ok: bool, name: str, timeout_s: float) -> bool:
        """What a connect attempt's outcome means for the line."""
        if ok and self._link is link:
            if self._ever_connected:
                self.counters["reconnects"] += 1
                _log.info("modbus %s (reader %r): connected again", self.line.key, name)
            self._ever_connected = True
            self._retry_at = 0.0
            if self.line.tls is None:
                # (A TLS device may refuse this client only after the handshake: its back-off
                # ends with the first answer instead.)
                self._slow_failures = 0
            self._answered = False
            self._unanswered = 0
            self._stale = False
            return True
        if self._link is not link:
            # Closed while connecting, from another thread (a reader's abort): not a failure.
            self.down_text = CLOSED
            return False
        self.counters["connect_failures"] += 1
        error = link.connect_error
        # A refusal, or a port that is not there, comes back at once: retrying at the next tick
        # is free and brings values back within two ticks of the device's return. A failure
        # that cost a timeout (an unreachable gateway) backs off.
        # So does a TLS handshake refused (a certificate not trusted): each try costs the
        # device a handshake, and the answer will not change by the next tick.
        slow = isinstance(error, TimeoutError | socket.timeout | ssl.SSLError)
        self.went_down(f"not connected: {describe_error(error)}", slow=slow, name=name, timeout_s=timeout_s)
        return False

    def went_down(self, text: str, *, slow: bool, name: str, timeout_s: float) -> None:
        self.down_text = text
        if self._link is not None:
            self._link.close()
        if slow:
            self._slow_failures += 1
            self._retry_at = self._clock() + retry_delay(self._slow_failures, timeout_s)
        else:
            self._retry_at = 0.0
        self._troubles().warning(
            (self.line.key, text), "modbus %s (reader %r): %s; reopening", self.line.key, name, text
        )

    def _troubles(self) -> RateLimitedLog:
        # Made on first use: most lines never have a trouble, and a log (its lock, its dict)
        # is 0.3 KB a line. A line's requests may come from a thread and the loop in turn.
        log = self._down_log
        if log is None:
            with _TROUBLES_LOCK:
                log = self._down_log
                if log is None:
                    log = self._down_log = RateLimitedLog(_log, window_s=60.0)
        return log

    def close(self) -> None:
        """Close the connection; from any thread, never waiting for a request in progress
        (it takes no ``lock``): the transport is shut down under it, and it fails at once."""
        self._closed = True
        link = self._link
        self._link = None
        if link is not None:
            link.abort()
            link.close()
        worker = self._worker
        self._worker = None
        if worker is not None:
            worker.shutdown(wait=False)

    # -- where requests wait

    def async_lock(self) -> asyncio.Lock:
        """Keeps a line's requests one at a time on the running loop (the engine's lane already
        does; direct callers of ``read_batch_async`` may not). Loop thread only."""
        loop = asyncio.get_running_loop()
        lock = self._async_lock
        if lock is None or self._async_loop is not loop:
            lock = self._async_lock = asyncio.Lock()
            self._async_loop = loop
        return lock

    def early_link(self) -> _AsyncLink | None:
        """After a read on the loop (the lock held): the link a request may be written on early
        at the next instant (``ModbusDataReader.send_batch``): the own protocol's, connected,
        with nothing for the line's pacing to wait for and no unit silent; else None."""
        link = self._link
        if type(link) is not _AsyncLink or link.protocol is None or not link.connected:
            return None
        if self.line.gap_s > 0 or self.bus_silent():
            return None
        return link

    def keep_early(self, t_ms: int | None) -> None:
        """A read of instant ``t_ms`` begins (the lock held): see ``_AsyncLink.keep_early``."""
        link = self._link
        if type(link) is _AsyncLink:
            if t_ms is None:
                link.forget_early()
            else:
                link.keep_early(t_ms)

    def forget_early(self) -> None:
        """After a read on the loop: drop what ``send_early`` wrote that the read did not take."""
        link = self._link
        if type(link) is _AsyncLink:
            link.forget_early()

    def worker(self) -> concurrent.futures.ThreadPoolExecutor:
        """The line's own thread, for a serial port read from the event loop: pyserial only
        blocks, and a bus waits for each answer anyway."""
        with _LINES_LOCK:
            if self._worker is None:
                self._worker = concurrent.futures.ThreadPoolExecutor(
                    1, thread_name_prefix=f"flowcollect {self.line.key}"
                )
            return self._worker

    # -- one request

    def request(
        self,
        unit: UnitState,
        table: str,
        start: int,
        count: int,
        *,
        timeout_s: float,
        retries: int,
        name: str,
    ) -> Answer | Failure:
        """One read request to ``unit``; any trouble comes back as a ``Failure``, never raised."""
        link = self._link
        if not isinstance(link, _Link) or not link.connected:
            return Failure(self.down_text, fatal=True)
        link.set_timeout(timeout_s)
        exchange = self._exchange(link, unit, timeout_s, retries, name)
        wait = next(exchange)
        while True:
            if wait > 0:
                self._sleep(wait)
                wait = exchange.send(None)
                continue
            if self._stale:
                link.drain()
                self._stale = False
            try:
                with quiet_pymodbus():
                    answer: ModbusPDU | Exception = _READS[table](link.client, start, count, unit.unit)
            except Exception as exc:  # pymodbus may raise anything on garbage bytes
                answer = exc
            try:
                wait = exchange.send(answer)
            except StopIteration as done:
                outcome: Answer | Failure = done.value
                return outcome

    async def request_async(
        self,
        unit: UnitState,
        table: str,
        start: int,
        count: int,
        *,
        timeout_s: float,
        retries: int,
        name: str,
    ) -> Answer | Failure:
        """``request`` on the running event loop: the same exchange, awaited. (No drain: an
        answer that comes late finds no request waiting, and the protocol drops it.)"""
        link = self._link
        if not isinstance(link, _AsyncLink) or not link.connected:
            return Failure(self.down_text, fatal=True)
        exchange = self._exchange(link, unit, timeout_s, retries, name)
        wait = next(exchange)
        while True:
            if wait > 0:
                await asyncio.sleep(wait)
                wait = exchange.send(None)
                continue
            self._stale = False
            try:
                answer: Answer | Exception = await link.request(table, start, count, unit.unit, timeout_s)
            except Exception as exc:  # pymodbus may raise anything on garbage bytes
                answer = exc
            try:
                wait = exchange.send(answer)
            except StopIteration as done:
                outcome: Answer | Failure = done.value
                return outcome

    def _exchange(
        self, link: _Link | _AsyncLink, unit: UnitState, timeout_s: float, retries: int, name: str
    ) -> Generator[float, Answer | Exception | None, Answer | Failure]:
        """The line's rules for one request, without I/O: yields how long to wait first (the
        line's silent interval and pause: a bus must be quiet between frames, or the next unit
        cannot tell where the last answer ended; sent None once waited), then 0.0 to send, and
        is sent the answer or what the client raised. Returns the answer or a ``Failure``.

        Retries are ours, not pymodbus's: a unit already failing gets one attempt per back-off
        period, never its retries too, and every resend keeps the line's silent interval.
        """
        attempts = 1 + (retries if unit.failures == 0 else 0)
        while True:
            attempts -= 1
            wait = self._pacer.wait_s(self._clock())
            if wait > 0:
                yield wait
            started = unit.tried_at = self._clock()
            answer = yield 0.0
            self._pacer.done(self._clock())
            if isinstance(answer, Exception):
                failure = self._after_error(link, answer, attempts, unit, started, timeout_s, name)
                if failure is None:
                    continue
                return failure
            # (None is sent only after a wait, never after a send.)
            return self._after_answer(unit, started, name, cast("Answer", answer))

    def _after_error(
        self,
        link: _Link | _AsyncLink,
        exc: Exception,
        attempts: int,
        unit: UnitState,
        started: float,
        timeout_s: float,
        name: str,
    ) -> Failure | None:
        """What a request that raised means; None: send it again (a retry is left)."""
        if self._link is not link:
            # Closed under the request, from another thread (a reader's abort): ours, not the
            # device's doing; nothing to reopen or to warn about.
            return Failure(CLOSED, fatal=True)
        if attempts > 0 and self._unanswered_in_time(exc, started, timeout_s):
            self._stale = True  # an answer arriving late is dropped before the resend
            return None
        return self._failed(exc, unit, started, timeout_s, name)

    def _after_answer(self, unit: UnitState, started: float, name: str, response: Answer) -> Answer:
        """Any answer, an exception answer too, shows the unit and the line are alive."""
        self._unanswered = 0
        if not self._answered:
            self._answered = True
            self._slow_failures = 0
        if unit.failures:
            _log.info("modbus %s unit %d (reader %r): answers again", self.line.key, unit.unit, name)
        if unit.failures and self.bus_silent():
            # The first answer after the whole bus was silent: the others were silent for the
            # same reason (a cable, an adapter, the gateway's serial side), not each their own.
            for other in self.units.values():
                other.failures = 0
                other.retry_at = 0.0
        unit.answered(self._clock() - started)
        return response

    def _failed(
        self, exc: Exception, unit: UnitState, started: float, timeout_s: float, name: str
    ) -> Failure:
        """What an exception out of pymodbus means for the line and the unit."""
        if (
            isinstance(exc, ConnectionException)
            or (self.line.kind == "serial" and _port_failed(exc))
            or (self.line.tls is not None and isinstance(exc, OSError))
        ):
            # pyserial's termios calls fail outside pymodbus's OSError net when a port vanishes
            # (an adapter unplugged): that is the line gone too, not a bad answer. A TLS device
            # closing before its first answer is refusing this client (TLS 1.3 says so only
            # after the handshake): backed off like a refused handshake, not retried each tick.
            refused = self.line.tls is not None and not self._answered
            text = _connection_lost(self.line, exc, refused=refused)
            self.went_down(text, slow=refused, name=name, timeout_s=timeout_s)
            return Failure(self.down_text, fatal=True)
        self._stale = True
        if self._unanswered_in_time(exc, started, timeout_s):
            return self._timed_out(unit, timeout_s, name)
        return Failure(f"bad response: {short_text(exc)}")

    def _unanswered_in_time(self, exc: Exception, started: float, timeout_s: float) -> bool:
        """Did the request go unanswered for its timeout? (A bad frame fails sooner.)"""
        if isinstance(exc, UnansweredError):
            return True  # the own protocol's timer, from when the request was written
        return isinstance(exc, ModbusIOException) and self._clock() - started >= timeout_s / 2

    def bus_silent(self) -> bool:
        """True when the line has several units and none of them answers."""
        units = list(self.units.values())
        return len(units) > 1 and all(u.failures > 0 for u in units)

    def may_probe(self, unit: UnitState, instant: int) -> bool:
        """May a unit be asked at ``instant`` while the whole bus is silent? Once per instant:
        the line then has nothing else to do, and the first answer brings every unit back
        within two ticks. (A lone unit's silence is its own, and keeps its back-off.)
        """
        if self._probed_at == instant:
            return False
        if unit is not min(self.units.values(), key=lambda u: u.tried_at):
            return False  # another unit's turn: every unit gets asked, one per instant
        self._probed_at = instant
        return True

    def _timed_out(self, unit: UnitState, timeout_s: float, name: str) -> Failure:
        text = f"no response within {timeout_s:g} s"
        unit.missed(self._clock(), timeout_s, text)
        if unit.failures == 1:
            # Once per silence (and at most once a minute): every later probe says the same.
            self._troubles().warning(
                (self.line.key, unit.unit, text),
                "modbus %s unit %d (reader %r): %s; asking again after a back-off",
                self.line.key,
                unit.unit,
                name,
                text,
            )
        self._unanswered += 1
        everyone = all(u.failures > 0 for u in list(self.units.values()))
        if self.line.kind != "serial" and everyone and self._unanswered >= _DEAD_AFTER_TIMEOUTS:
            # Nobody on the line answers: a connection to a device that went away without a
            # reset looks exactly like this. Reopening costs nothing if the device is fine.
            self._unanswered = 0
            self.counters["dead_connections"] += 1
            self.went_down(f"{text} from any unit", slow=False, name=name, timeout_s=timeout_s)
        return Failure(text, timeout=True)


_CONNECTS_AT_ONCE: Final = 64
"""Connects in progress at once on one event loop (the others wait their turn, untimed)."""
_slots_lock = threading.Lock()
_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()
"""Per loop, its connect slots (guarded by ``_slots_lock``: loops may run on several threads)."""


def _connect_slots(loop: asyncio.AbstractEventLoop) -> asyncio.Semaphore:
    with _slots_lock:
        slots = _slots.get(loop)
        if slots is None:
            slots = _slots[loop] = asyncio.Semaphore(_CONNECTS_AT_ONCE)
        return slots


# ---------------------------------------------------------------------------- the registry


class LineRegistry:
    """The one owner of a line's identity: its settings, and its shared connection.

    A line's settings are known while any ``ModbusLine`` of that key lives (a reader holds its
    line), so a second reader naming the same port with other settings is refused when it is
    made, before anything opens. The connection exists while some reader has it open: the
    first ``acquire`` makes it, the last ``release`` closes it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Guarded by _lock, both.
        self._lines: weakref.WeakValueDictionary[str, ModbusLine] = weakref.WeakValueDictionary()
        self._connections: dict[str, LineConnection] = {}

    def claim(self, line: ModbusLine) -> str | None:
        """Remember ``line``'s settings under its key; the problem if the key has others."""
        with self._lock:
            return self._claim_locked(line)

    def _claim_locked(self, line: ModbusLine) -> str | None:
        connection = self._connections.get(line.key)
        known = self._lines.get(line.key) or (connection.line if connection is not None else None)
        if known is not None and known is not line and known != line:
            return f"modbus line {line.key} is configured twice: {', '.join(known.differences(line))}"
        self._lines.setdefault(line.key, line)
        return None

    def acquire(self, line: ModbusLine) -> LineConnection:
        """The line's shared connection (made on first use); ``release`` it when done."""
        with self._lock:
            problem = self._claim_locked(line)
            if problem is not None:
                raise ConfigError(problem)
            connection = self._connections.get(line.key)
            if connection is None:
                connection = self._connections[line.key] = LineConnection(line)
            connection.users += 1
            return connection

    def release(self, connection: LineConnection) -> None:
        """One reader less; the last one closes the connection."""
        with self._lock:
            connection.users -= 1
            if connection.users > 0:
                return
            if self._connections.get(connection.line.key) is connection:
                del self._connections[connection.line.key]
        connection.close()


lines: Final = LineRegistry()
"""Every Modbus line of the process."""


# ---------------------------------------------------------------------------- texts

_PYMODBUS_PREFIX = re.compile(r"^\s*Modbus Error:\s*\[[^\]]*\]\s*")


def short_text(exc: BaseException, limit: int = 80) -> str:
    """A short, whole-word text for an exception: pymodbus's ``Modbus Error: [...]`` prefix
    dropped, the first line only, cut at a word boundary."""
    text = _PYMODBUS_PREFIX.sub("", str(exc)).strip().splitlines()
    # What a device or library said is escaped before it becomes an error (flowcollect._text).
    first = peer_text(text[0].strip(), 4 * limit) if text else ""
    if not first:
        return type(exc).__name__
    if len(first) <= limit:
        return first
    cut = first.rfind(" ", 0, limit - 3)
    if cut < limit // 2:
        cut = limit - 3
    return first[:cut].rstrip(" ,;:.-") + "..."


# Words of pyserial's and the OS's errors, and what to say instead.
_OPEN_ERRORS: Final = (
    ("No such file or directory", "no such port"),
    ("exclusively lock", "port busy (another program has it open)"),
    ("Resource temporarily unavailable", "port busy (another program has it open)"),
    ("Permission denied", "permission denied"),
)


def describe_error(error: BaseException | None) -> str:
    """Why a connect or open failed, in a few words."""
    if error is None:
        return "connection failed"
    special = _special_error(error)
    if special is not None:
        return special
    text = str(error)
    said = next((words for marker, words in _OPEN_ERRORS if marker in text), None)
    if said is not None:
        return said
    if isinstance(error, OSError) and error.strerror:
        return peer_text(error.strerror.lower())
    return short_text(error)


class TlsFilesError(OSError):
    """A TLS line's files (``ca_file``, ``cert_file``, ``key_file``) did not load at connect."""


def _special_error(error: BaseException) -> str | None:
    if isinstance(error, TimeoutError | socket.timeout):
        return "connect timed out"
    if isinstance(error, TlsFilesError):
        return str(error)
    if isinstance(error, ssl.SSLError | socket.gaierror):
        return _tls_or_name_error(error)
    return None


_REFUSED_CLIENT: Final = "does it accept this client's certificate?"
"""What a TLS device that closes on us without a word most often means."""


def _tls_or_name_error(error: ssl.SSLError | socket.gaierror) -> str:
    if isinstance(error, socket.gaierror):
        return f"cannot resolve host ({error.strerror or error})"
    if isinstance(error, ssl.SSLEOFError):
        return f"TLS: closed by the device during the handshake ({_REFUSED_CLIENT})"
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS: certificate verify failed: {error.verify_message or short_text(error)}"
    return f"TLS: {(error.reason or short_text(error)).replace('_', ' ').lower()}"


def _port_failed(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return True
    try:
        import termios
    except ImportError:  # not POSIX: pyserial raises OSError subclasses there
        return False
    return isinstance(exc, termios.error)


def _connection_lost(line: ModbusLine, exc: Exception, *, refused: bool = False) -> str:
    if line.kind == "serial":
        return "connection lost: the port failed"
    if isinstance(exc, ssl.SSLError):
        return f"connection lost: {_tls_or_name_error(exc)}"
    if refused:
        return f"connection lost: closed by the device before any answer ({_REFUSED_CLIENT})"
    if "closed" in str(exc):
        return "connection lost: closed by the device"
    return "connection lost"
