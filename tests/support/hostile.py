"""A hostile HTTP server in the test's own process: it answers whatever the test tells it to.

Usage::

    with HostileServer() as server:          # 127.0.0.1, a free port, one thread per connection
        server.answer = drip(b"HTTP/1.1 204 No Content\\r\\n\\r\\n", every_s=0.2)
        ...point a client at server.url...
        server.answer = respond(204)         # healed

An answer is a function ``(request, sock) -> None`` that writes to the socket (it may block
for ever: the server shuts every socket down on ``close()``). ``requests`` counts the requests
read; ``sent`` the bytes written.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable
from types import TracebackType

__all__ = ["Answer", "HostileServer", "drip", "endless", "respond"]

Answer = Callable[[bytes, socket.socket], None]


def respond(
    status: int = 204, body: bytes = b"", reason: str = "X", headers: dict[str, str] | None = None
) -> Answer:
    """A well-formed answer (kept alive)."""

    def answer(request: bytes, sock: socket.socket) -> None:
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        head = f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode()
        sock.sendall(head + body)

    return answer


def drip(text: bytes, every_s: float = 0.2, then: bytes = b"", forever: bool = True) -> Answer:
    """``text`` a byte at a time, ``every_s`` apart; then a byte of ``then`` each time, for ever."""

    def answer(request: bytes, sock: socket.socket) -> None:
        for i in range(len(text)):
            sock.sendall(text[i : i + 1])
            time.sleep(every_s)
        while forever:
            sock.sendall(then[:1] or b" ")
            time.sleep(every_s)

    return answer


def endless(head: bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 100000000000\r\n\r\n") -> Answer:
    """A head promising a huge body, then bytes as fast as the client takes them, for ever."""

    def answer(request: bytes, sock: socket.socket) -> None:
        sock.sendall(head)
        block = b"x" * 65536
        while True:
            sock.sendall(block)

    return answer


class HostileServer:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.answer: Answer = respond(204)
        self.requests = 0
        self.sent = 0
        self._tls = tls
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, name="hostile-accept", daemon=True)
        self._accepter.start()

    @property
    def url(self) -> str:
        return f"{'https' if self._tls else 'http'}://127.0.0.1:{self.port}"

    def __enter__(self) -> HostileServer:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sockets = list(self._sockets)
        self._listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(5)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._closed:
                    sock.close()
                    return
                self._sockets.append(sock)
            thread = threading.Thread(target=self._serve, args=(sock,), name="hostile-conn", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            sock: socket.socket = raw
            if self._tls is not None:
                sock = self._tls.wrap_socket(raw, server_side=True)
                with self._lock:
                    self._sockets.append(sock)
            reader = sock.makefile("rb")
            while True:
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    line = reader.readline()
                    if not line:
                        return
                    head += line
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = reader.read(length) if length else b""
                self.requests += 1
                self.answer(head + body, sock)
        except (OSError, ValueError):
            return
        finally:
            raw.close()
