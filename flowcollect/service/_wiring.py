"""``flowcollect run --http``: the service around a pipeline's run."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

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


class ServiceRun:
    """Everything checked and the port bound at construction (nothing started yet: a bad option
    or a port in use fails the run before any device or context); ``started`` attaches the
    service to the collector, restores recorded contexts and serves; ``close`` ends the server."""

    def __init__(self, pipeline: Pipeline, options: HttpOptions) -> None:
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
        self.service = Service(pipeline.name, pipeline.contexts, self.latest, store)
        self._server: ApiServer | None = None
        app = build_app(
            self.service,
            token=token,
            open_reads=is_loopback(host),
            closing=lambda: self._server is None or self._server.closing.is_set(),
        )
        self._server = ApiServer(app, host, port, tls_cert=options.tls_cert, tls_key=options.tls_key)
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
        if self._server is not None:
            self._server.start()
        added_ms = (self._setup_s + time.perf_counter() - began) * 1000
        _log.info("HTTP API at %s/api/v1/ (added %.0f ms to the start)", self.url, added_ms)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
