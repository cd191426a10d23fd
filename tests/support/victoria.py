"""A real VictoriaMetrics process for tests: start, stop, kill, restart, and read points back.

VictoriaMetrics accepts InfluxDB's v2 write endpoint (``/api/v2/write``), so a writer built for
InfluxDB talks to it unchanged. It names a series ``{measurement}_{field}`` (``flowcollect_value``)
with the tags as labels, keeps timestamps in milliseconds, stores bools as 1/0 and strings as
the number they spell (0 when they spell none); see ``docs/influxdb.md``.

Usage::

    binary = victoria_binary()          # skips, or fails under FLOWCOLLECT_REQUIRE_SERVERS=1
    with VictoriaMetrics(binary, tmp_path / "vm") as vm:   # started, on a free loopback port
        ...write to vm.url...
        series = vm.wait_for_samples('{__name__="flowcollect_value"}', count=100)

``vm.stop()`` / ``vm.kill()`` / ``vm.start()`` keep the port and the storage folder, so a writer
pointed at ``vm.url`` sees a real outage and a real recovery. ``VictoriaMetrics(..., start=False)``
gives a url where nothing listens yet. The fixtures ``victoria`` (one server per module) and
``victoria_factory`` (fresh servers, stopped after the test) are imported by a ``conftest.py``
(see ``tests/writers/conftest.py``, which also marks the tests using them ``server``).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import pytest

from tests.support.process import ServerProcess

__all__ = [
    "REQUIRE_SERVERS_ENV",
    "SERVER_FIXTURES",
    "Factory",
    "Series",
    "VictoriaMetrics",
    "VictoriaMetricsError",
    "find_binary",
    "free_port",
    "sample_count",
    "victoria",
    "victoria_binary",
    "victoria_factory",
]

REQUIRE_SERVERS_ENV = "FLOWCOLLECT_REQUIRE_SERVERS"
BINARY_ENV = "FLOWCOLLECT_VICTORIA_METRICS"
SERVER_FIXTURES = frozenset({"victoria", "victoria_factory"})
"""Fixtures that start a server: a conftest marks the tests using them ``server``."""
_POLL_S = 0.05


class VictoriaMetricsError(RuntimeError):
    """The server did not start, answer or stop as asked; the message ends with its log's tail."""


@dataclass(frozen=True)
class Series:
    """One exported series: its labels (``__name__`` included) and its samples, oldest first."""

    labels: dict[str, str]
    values: list[float]
    timestamps_ms: list[int]

    @property
    def name(self) -> str:
        return self.labels.get("__name__", "")


def find_binary() -> str | None:
    """The victoria-metrics executable (``$FLOWCOLLECT_VICTORIA_METRICS``, else on PATH), or None."""
    configured = os.environ.get(BINARY_ENV)
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    return shutil.which("victoria-metrics") or (
        "/usr/bin/victoria-metrics" if os.access("/usr/bin/victoria-metrics", os.X_OK) else None
    )


def victoria_binary() -> str:
    """The executable, or skip the test with the reason; a failure under ``FLOWCOLLECT_REQUIRE_SERVERS=1``."""
    binary = find_binary()
    if binary is not None:
        return binary
    reason = "victoria-metrics is not installed (`make servers`, or apt-get install victoria-metrics)"
    if os.environ.get(REQUIRE_SERVERS_ENV) == "1":
        pytest.fail(f"{reason}, and {REQUIRE_SERVERS_ENV}=1 forbids skipping server tests", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class VictoriaMetrics(ServerProcess):
    """One VictoriaMetrics process on ``127.0.0.1:port`` storing into ``storage``.

    ``args`` adds command-line flags (``-httpAuth.username=...``, ``-dedup.minScrapeInterval=1ms``).
    ``auth`` is the (user, password) the helper's own reads use when the server demands Basic auth.
    ``tls_ca``: the server runs with ``-tls`` (its flags in ``args``); the URL is https and the
    helper's own requests trust that CA.
    ``kill()`` loses what VictoriaMetrics held in memory, acknowledged or not.
    """

    error = VictoriaMetricsError

    def describe(self) -> str:
        return f"VictoriaMetrics on {self.url}"

    def __init__(
        self,
        binary: str,
        storage: Path,
        *,
        port: int | None = None,
        args: Sequence[str] = (),
        auth: tuple[str, str] | None = None,
        start: bool = True,
        ready_timeout_s: float = 15.0,
        tls_ca: Path | None = None,
    ) -> None:
        self.tls_ca = tls_ca
        self.binary = binary
        self.storage = Path(storage)
        self.port = port if port is not None else free_port()
        self.args = list(args)
        self.auth = auth
        self.ready_timeout_s = ready_timeout_s
        self.log_path = self.storage.parent / f"{self.storage.name}.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        if start:
            self.start()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls_ca else 'http'}://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, args: Sequence[str] | None = None) -> None:
        """Start (again) on the same port and storage and wait until ``/health`` answers.

        ``args`` replaces the extra flags for this and later starts.
        """
        if self.running:
            raise VictoriaMetricsError(f"VictoriaMetrics on {self.url} is already running")
        if args is not None:
            self.args = list(args)
        self.storage.mkdir(parents=True, exist_ok=True)
        self._close_log()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - held open for the process's life
        command = [
            self.binary,
            f"-storageDataPath={self.storage}",
            f"-httpListenAddr=127.0.0.1:{self.port}",
            # Fresh samples show in reads at once instead of after the default 30 s.
            "-search.latencyOffset=0s",
            "-retentionPeriod=100y",
            *self.args,
        ]
        self._process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )
        self._wait_ready()

    def restart(self, args: Sequence[str] | None = None) -> None:
        self.stop()
        self.start(args)

    def close(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._signal(signal.SIGCONT)  # a paused process would ignore SIGTERM until resumed
            self.stop()
        self._close_log()

    def __enter__(self) -> VictoriaMetrics:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"VictoriaMetrics({self.url}, {state}, storage={str(self.storage)!r})"

    # -- reading back ------------------------------------------------------------------------------

    def write_lines(self, text: str) -> None:
        """Store line protocol directly (``/api/v2/write``, nanoseconds), bypassing any writer."""
        self._request("/api/v2/write?bucket=test&precision=ns", text.encode("utf-8"))

    def force_flush(self) -> None:
        """Make recently written samples searchable (``/internal/force_flush``)."""
        self._get("/internal/force_flush")

    def export(self, match: str = '{__name__=~".+"}') -> list[Series]:
        """Every stored series matching the selector, with all its samples (``/api/v1/export``)."""
        body = self._get("/api/v1/export?" + urllib.parse.urlencode({"match[]": match}))
        out = []
        for line in body.decode("utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                out.append(Series(dict(row["metric"]), list(row["values"]), list(row["timestamps"])))
        return out

    def wait_for(
        self,
        match: str,
        done: Callable[[list[Series]], bool],
        timeout_s: float = 10.0,
    ) -> list[Series]:
        """Flush and export until ``done(series)`` holds; the last export if the deadline passes first.

        Fresh samples can take about a second to show even after a flush, hence the polling.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            self.force_flush()
            series = self.export(match)
            if done(series) or time.monotonic() >= deadline:
                return series
            time.sleep(_POLL_S)

    def wait_for_samples(self, match: str, count: int, timeout_s: float = 10.0) -> list[Series]:
        """Poll until at least ``count`` samples match (or the deadline); return the series."""
        return self.wait_for(match, lambda series: sample_count(series) >= count, timeout_s)

    # -- internals -------------------------------------------------------------------------------

    def _get(self, path: str, timeout_s: float = 10.0) -> bytes:
        return self._request(path, None, timeout_s)

    def _request(self, path: str, data: bytes | None, timeout_s: float = 10.0) -> bytes:
        request = urllib.request.Request(self.url + path, data=data)  # noqa: S310 - our own http loopback url
        if self.auth is not None:
            pair = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
            request.add_header("Authorization", f"Basic {pair}")
        try:
            context = ssl.create_default_context(cafile=self.tls_ca) if self.tls_ca else None
            with urllib.request.urlopen(request, timeout=timeout_s, context=context) as response:  # noqa: S310
                data: bytes = response.read()
                return data
        except (urllib.error.URLError, OSError) as exc:
            verb = "GET" if data is None else "POST"
            raise VictoriaMetricsError(
                f"{verb} {path} on {self.url} failed: {exc}\n{self.log_tail()}"
            ) from exc

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        process = self._process
        while True:
            if process is None or process.poll() is not None:
                code = None if process is None else process.returncode
                self._close_log()
                raise VictoriaMetricsError(
                    f"VictoriaMetrics on {self.url} exited with {code} while starting\n{self.log_tail()}"
                )
            try:
                if self._get("/health", timeout_s=1.0).strip() == b"OK":
                    return
            except VictoriaMetricsError:
                pass
            if time.monotonic() >= deadline:
                self.kill()
                raise VictoriaMetricsError(
                    f"VictoriaMetrics on {self.url} not ready after {self.ready_timeout_s} s\n"
                    + self.log_tail()
                )
            time.sleep(_POLL_S)


Factory = Callable[..., VictoriaMetrics]
"""The ``victoria_factory`` fixture's type: ``make(args=..., auth=..., start=...)``."""


def sample_count(series: Sequence[Series]) -> int:
    return sum(len(s.values) for s in series)


@pytest.fixture(scope="module")
def victoria(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetrics]:
    """One running server shared by a test module; tests keep apart by measurement name."""
    binary = victoria_binary()
    with VictoriaMetrics(binary, tmp_path_factory.mktemp("victoria") / "data") as server:
        yield server


@pytest.fixture
def victoria_factory(tmp_path: Path) -> Iterator[Factory]:
    """``make(args=..., start=..., auth=...)`` gives a fresh server; all are stopped after the test."""
    binary = victoria_binary()
    servers: list[VictoriaMetrics] = []

    def make(**options: Any) -> VictoriaMetrics:
        server = VictoriaMetrics(binary, tmp_path / f"victoria{len(servers)}", **options)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()
