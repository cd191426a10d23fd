"""uvicorn on a thread of its own, started and stopped in bounded time."""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn

from flowcollect.errors import ConfigError, FlowcollectError

__all__ = ["ApiServer"]

_log = logging.getLogger("flowcollect.service")

START_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 5.0


class ApiServer:
    """Binds ``host:port`` at construction (a port in use fails before anything starts), serves
    ``app`` from ``start()`` on, and ends within ``STOP_TIMEOUT_S`` (plus one) on ``close()``:
    open event streams are told to end, then cut."""

    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        *,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
    ) -> None:
        if (tls_cert is None) != (tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together: give both or neither")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise FlowcollectError(f"--http {host}:{port}: cannot listen: {exc.strerror}") from None
        self._sock = sock
        self.host = host
        self.port: int = sock.getsockname()[1]
        self.tls = tls_cert is not None
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,  # nothing of a request is logged (an Authorization header never is)
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=1,
            limit_concurrency=64,
            ssl_certfile=None if tls_cert is None else str(tls_cert),
            ssl_keyfile=None if tls_key is None else str(tls_key),
        )
        try:
            config.load()  # TLS files are read here: a bad one fails the start, named
        except (OSError, ValueError) as exc:
            sock.close()
            raise ConfigError(f"--tls-cert/--tls-key: cannot use them: {exc}") from None
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="service-http", daemon=True)
        self._closed = False
        self.closing = threading.Event()
        """Set first on close: event streams end at their next poll."""

    def _serve(self) -> None:
        try:
            self._server.run(sockets=[self._sock])
        except BaseException:  # never silently: the run goes on, the API is gone
            _log.exception("the HTTP API stopped")

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise FlowcollectError(f"the HTTP API on {self.url} did not start within {START_TIMEOUT_S} s")
            time.sleep(0.005)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.closing.set()
        if self._thread.is_alive():
            self._server.should_exit = True
            self._thread.join(STOP_TIMEOUT_S)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(1.0)
                if self._thread.is_alive():
                    _log.warning("the HTTP API thread did not end within %s s", STOP_TIMEOUT_S + 1)
        self._sock.close()
