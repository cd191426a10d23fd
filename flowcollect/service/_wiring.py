"""``flowcollect run --http``: the service around a pipeline's run."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowcollect.collector import DataCollector
from flowcollect.errors import ConfigError
from flowcollect.pipeline import Pipeline
from flowcollect.service._app import build_app
from flowcollect.service._auth import TOKEN_ENV, is_loopback, load_token
from flowcollect.service._latest import LatestValues
from flowcollect.service._server import ApiServer
from flowcollect.service._service import Service
from flowcollect.service._state import StateStore
from flowcollect.stats import CollectorStats

__all__ = ["HttpOptions", "ServiceRun", "parse_listen"]

_log = logging.getLogger("flowcollect.service")

WATCH_EVERY_S = 1.0
"""How often ``--watch`` looks at the pipeline file's modification time and size."""


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6; port 0: any free one)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--http {text!r}: expected HOST:PORT, such as 127.0.0.1:8080")
    return host.strip("[]"), int(port)


@dataclass(frozen=True, slots=True)
class HttpOptions:
    listen: str
    token_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    state_dir: Path | None = None
    pipeline_path: Path | None = None
    """The pipeline file, absolute: reloaded on ``POST /api/v1/reload``, SIGHUP and ``watch``."""
    watch: bool = False


class ServiceRun:
    """Everything checked and the port bound at construction (nothing started yet: a bad option
    or a port in use fails the run before any device or context); ``started`` attaches the
    service to the collector, restores recorded contexts and serves; ``close`` ends the server."""

    def __init__(
        self, pipeline: Pipeline, options: HttpOptions, membership: Callable[[], Any] | None = None
    ) -> None:
        began = time.perf_counter()
        host, port = parse_listen(options.listen)
        token = load_token(options.token_file)
        if token is None and not is_loopback(host):
            raise ConfigError(
                f"--http {options.listen}: a non-loopback address needs a token "
                f"(--token-file or ${TOKEN_ENV}); anyone who reaches it could stop the collection"
            )
        store = None if options.state_dir is None else StateStore(options.state_dir)
        self.latest = LatestValues()
        # In a group (``membership``: the member's figures, None until it joined) the service
        # acts on this member's collector, and shows which lanes it owns.
        self.service = Service(pipeline.name, pipeline.contexts, self.latest, store, membership)
        self.service.pipeline = pipeline
        self.service.pipeline_path = options.pipeline_path
        self._watch = options.watch and options.pipeline_path is not None
        self._reload = threading.Event()
        self._ending = threading.Event()
        self._reloader: threading.Thread | None = None
        self._previous_hup: Any = None
        self._server: ApiServer | None = None
        app = build_app(
            self.service,
            token=token,
            open_reads=is_loopback(host),
            closing=lambda: self._server is None or self._server.closing.is_set(),
        )
        self._server = ApiServer(app, host, port, tls_cert=options.tls_cert, tls_key=options.tls_key)
        # Served from now on (503 until the collector runs): the server's own start-up (its
        # event loop, its imports) happens before the first tick, not while lanes tick.
        self._server.start()
        # Attached to every collector the run builds: the latest values and the events.
        pipeline.writers = [*pipeline.writers, self.latest]
        pipeline.listeners = [*pipeline.listeners, self.service]
        self._setup_s = time.perf_counter() - began

    @property
    def url(self) -> str:
        return "" if self._server is None else self._server.url

    def visible(self, stats: CollectorStats) -> CollectorStats:
        """``stats`` without the latest-values writer (see ``Service.visible``)."""
        return self.service.visible(stats)

    def started(self, collector: DataCollector) -> None:
        began = time.perf_counter()
        self.service.attach(collector)
        self.service.restore()
        if self.service.pipeline_path is not None:
            self._start_reloader()
        added_ms = (self._setup_s + time.perf_counter() - began) * 1000
        _log.info("HTTP API at %s/api/v1/ (added %.0f ms to the start)", self.url, added_ms)

    def _start_reloader(self) -> None:
        # SIGHUP only sets an event (on the main thread, where run calls started()); the reload
        # itself runs on this thread, never inside a signal handler.
        if threading.current_thread() is threading.main_thread():
            self._previous_hup = signal.signal(signal.SIGHUP, lambda _s, _f: self._reload.set())
        self._reloader = threading.Thread(target=self._reloads, name="service-reload", daemon=True)
        self._reloader.start()

    def _reloads(self) -> None:
        path = self.service.pipeline_path
        if path is None:
            return
        seen = _stamp(path)
        while not self._ending.is_set():
            asked = self._reload.wait(WATCH_EVERY_S)
            self._reload.clear()
            if self._ending.is_set():
                return
            if not asked:
                if not self._watch:
                    continue
                now = _stamp(path)
                if now == seen:
                    continue
                seen = now
                _log.info("pipeline file %s changed: reloading", path)
            try:
                self.service.reload()
            except ConfigError as exc:
                _log.error("reload refused, nothing changed: %s", "; ".join(exc.problems))
            except Exception:  # never silently: the thread goes on for the next change
                _log.exception("reload failed")

    def close(self) -> None:
        self._ending.set()
        self._reload.set()
        if self._previous_hup is not None:
            signal.signal(signal.SIGHUP, self._previous_hup)
            self._previous_hup = None
        if self._reloader is not None:
            self._reloader.join(5.0)
        if self._server is not None:
            self._server.close()


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size
