"""One overall deadline per network exchange, whatever the peer does; a cap on what is read.

A socket timeout bounds each read, not an exchange: a server that drips a byte a second keeps
every read short and the request alive for ever. Here a thread opens a ``deadline(timeout_s)``
scope around an exchange (connect, TLS handshake, request, the whole answer), and the sockets of
the project's HTTP clients (``DeadlineSocket``, ``DeadlineSSLSocket``) set their timeout to
what is left of it before every send and receive, and raise ``TimeoutError`` once it has
passed. No watchdog thread: each blocking call is itself bounded by the time left (CPython's
``sendall`` and TLS calls keep one deadline across their internal retries), so the exchange ends
by its deadline. Outside any scope the sockets behave as plain ones.

``read_capped`` reads at most a fixed number of bytes of an answer; the caller drops the
connection instead of reading the rest, so an endless body costs nothing.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

__all__ = [
    "DeadlineExpiredError",
    "DeadlineSSLSocket",
    "DeadlineSocket",
    "deadline",
    "deadline_socket",
    "expired",
    "read_capped",
    "tls_context",
]

_scope = threading.local()  # .at: this thread's deadline (time.monotonic()), or None


class DeadlineExpiredError(TimeoutError):
    """The exchange's deadline passed."""


@contextmanager
def deadline(timeout_s: float) -> Iterator[float]:
    """Bound every send and receive of this thread's deadline sockets to ``timeout_s`` from now
    (an inner scope never extends an outer one). Yields the deadline."""
    outer: float | None = getattr(_scope, "at", None)
    at = time.monotonic() + max(0.0, timeout_s)
    if outer is not None:
        at = min(at, outer)
    _scope.at = at
    try:
        yield at
    finally:
        _scope.at = outer


def expired() -> bool:
    """Whether this thread's current deadline has passed."""
    at: float | None = getattr(_scope, "at", None)
    return at is not None and time.monotonic() >= at


def _arm(sock: socket.socket) -> None:
    at: float | None = getattr(_scope, "at", None)
    if at is None:
        return
    left = at - time.monotonic()
    if left <= 0:
        raise DeadlineExpiredError("the exchange's deadline passed")
    sock.settimeout(left)


class DeadlineSocket(socket.socket):
    """A TCP socket whose every send and receive ends by the thread's ``deadline``."""

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        _arm(self)
        return super().recv(bufsize, flags)

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        _arm(self)
        return super().recv_into(buffer, nbytes, flags)

    def send(self, data: Any, flags: int = 0) -> int:
        _arm(self)
        return super().send(data, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:
        _arm(self)
        super().sendall(data, flags)


class DeadlineSSLSocket(ssl.SSLSocket):
    """The TLS counterpart (``SSLContext.sslsocket_class``): handshake, reads and writes."""

    def do_handshake(self, block: bool = False) -> None:
        _arm(self)
        super().do_handshake(block)

    def read(self, len: int = 1024, buffer: Any = None) -> Any:  # noqa: A002 - the base's name
        _arm(self)
        return super().read(len, buffer)

    def write(self, data: Any) -> int:
        _arm(self)
        return super().write(data)

    def send(self, data: Any, flags: int = 0) -> int:
        _arm(self)
        return super().send(data, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:
        _arm(self)
        super().sendall(data, flags)


def deadline_socket(sock: socket.socket) -> socket.socket:
    """``sock`` (just connected) as a ``DeadlineSocket``: the same connection, bounded."""
    if isinstance(sock, DeadlineSocket | ssl.SSLSocket):
        return sock
    timeout = sock.gettimeout()
    out = DeadlineSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
    out.settimeout(timeout)
    return out


def tls_context(
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    verify: bool = True,
) -> ssl.SSLContext:
    """A client TLS context: the system's CAs (or ``ca_file``'s), an optional client certificate,
    verification of the server's certificate and name unless ``verify`` is False; its sockets
    keep the thread's deadline. Raises ``OSError``/``ssl.SSLError`` for unreadable files."""
    context = ssl.create_default_context(cafile=ca_file)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert_file is not None:
        context.load_cert_chain(cert_file, key_file)
    context.sslsocket_class = DeadlineSSLSocket
    return context


class _Readable(Protocol):
    def read(self, amt: int | None = None, /) -> bytes: ...


def read_capped(response: _Readable, limit: int) -> tuple[bytes, bool]:
    """At most ``limit`` bytes of a response body and whether that was all of it. The rest is
    never read: the caller drops the connection instead."""
    data = response.read(limit + 1)
    if len(data) > limit:
        return data[:limit], False
    return data, True
