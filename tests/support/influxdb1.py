"""A real InfluxDB 1.x (``influxd`` from Debian's ``influxdb`` package) for tests.

    server = InfluxDB1(binary, tmp_path / "influx", auth=True)   # starts it, waits for /ping
    server.query("CREATE DATABASE plant")                        # InfluxQL over HTTP, as the admin
    server.select("SELECT * FROM flowcollect", database="plant") # rows as dicts

Each server gets its own config file, meta/data/wal folders and two free loopback ports (HTTP
and the RPC bind address that backup/restore use); the ports are kept across ``stop()`` /
``kill()`` / ``start()``, as is the data, so a writer pointed at ``url`` sees a real outage and a
real recovery. With ``auth=True`` the server demands credentials, and the helper creates the
admin user ``ADMIN`` (the one user InfluxDB accepts without credentials is the first admin).
``max_body_size`` sets ``[http] max-body-size`` (a larger request is answered 413).

The fixture ``influxdb1_factory`` makes servers that are stopped after the test; a test using it
is marked ``server`` (see tests/writers/conftest.py), and it never skips when
``FLOWCOLLECT_REQUIRE_SERVERS=1``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from tests.support.process import ServerProcess
from tests.support.victoria import REQUIRE_SERVERS_ENV, free_port

__all__ = [
    "ADMIN",
    "BINARY_ENV",
    "InfluxDB1",
    "InfluxDB1Error",
    "InfluxFactory",
    "find_influxd",
    "influxd_binary",
    "influxdb1_factory",
]

BINARY_ENV = "FLOWCOLLECT_INFLUXD"
ADMIN = ("admin", "admin-password")
_POLL_S = 0.05

_CONFIG = """\
reporting-enabled = false
bind-address = "127.0.0.1:{rpc_port}"
[meta]
  dir = "{root}/meta"
  logging-enabled = false
[data]
  dir = "{root}/data"
  wal-dir = "{root}/wal"
  query-log-enabled = false
  wal-fsync-delay = "0s"
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = false
[http]
  enabled = true
  bind-address = "127.0.0.1:{http_port}"
  auth-enabled = {auth}
  log-enabled = false
  pprof-enabled = false
  max-body-size = {max_body_size}
"""


class InfluxDB1Error(RuntimeError):
    """The server did not start, answer or stop as asked; the message ends with its log's tail."""


def find_influxd() -> str | None:
    """The influxd executable (``$FLOWCOLLECT_INFLUXD``, else on PATH), or None."""
    configured = os.environ.get(BINARY_ENV)
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    return shutil.which("influxd") or ("/usr/bin/influxd" if os.access("/usr/bin/influxd", os.X_OK) else None)


def influxd_binary() -> str:
    """The executable, or skip the test; a failure under ``FLOWCOLLECT_REQUIRE_SERVERS=1``."""
    binary = find_influxd()
    if binary is not None:
        return binary
    reason = "influxd is not installed (`make servers`, or apt-get install influxdb)"
    if os.environ.get(REQUIRE_SERVERS_ENV) == "1":
        pytest.fail(f"{reason}, and {REQUIRE_SERVERS_ENV}=1 forbids skipping server tests", pytrace=False)
    pytest.skip(reason)


class InfluxDB1(ServerProcess):
    """One ``influxd`` process on ``127.0.0.1`` keeping its data under ``root``."""

    error = InfluxDB1Error

    def describe(self) -> str:
        return f"influxd on {self.url}"

    def __init__(
        self,
        binary: str,
        root: Path,
        *,
        auth: bool = False,
        max_body_size: int = 25_000_000,
        start: bool = True,
        ready_timeout_s: float = 20.0,
    ) -> None:
        self.binary = binary
        self.root = Path(root)
        self.auth = auth
        self.max_body_size = max_body_size
        self.http_port = free_port()
        self.rpc_port = free_port()
        self.ready_timeout_s = ready_timeout_s
        self.config_path = self.root / "influxdb.conf"
        self.log_path = self.root / "influxd.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._admin_created = False
        if start:
            self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start (again) with the same ports and data; wait until ``/ping`` answers."""
        if self.running:
            raise InfluxDB1Error(f"influxd on {self.url} is already running")
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            _CONFIG.format(
                root=self.root,
                rpc_port=self.rpc_port,
                http_port=self.http_port,
                auth="true" if self.auth else "false",
                max_body_size=self.max_body_size,
            )
        )
        self._close_log()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - held open for the process's life
        self._process = subprocess.Popen(
            [self.binary, "run", "-config", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready()
        if self.auth and not self._admin_created:
            # With auth on, InfluxDB takes one statement without credentials: the first admin.
            self.query(
                f"CREATE USER {ADMIN[0]} WITH PASSWORD '{ADMIN[1]}' WITH ALL PRIVILEGES", as_admin=False
            )
            self._admin_created = True

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        if self.running:
            self.stop()
        self._close_log()

    def __enter__(self) -> InfluxDB1:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"InfluxDB1({self.url}, {'running' if self.running else 'stopped'}, auth={self.auth})"

    # -- InfluxQL ---------------------------------------------------------------------------------

    def query(
        self, statement: str, database: str | None = None, *, as_admin: bool = True
    ) -> list[dict[str, Any]]:
        """Run InfluxQL (``POST /query``); return the ``results``; raise on any statement's error."""
        params = {"q": statement, "epoch": "ns"}
        if database is not None:
            params["db"] = database
        body = self._request("/query", urllib.parse.urlencode(params).encode(), as_admin=as_admin)
        results: list[dict[str, Any]] = json.loads(body)["results"]
        for result in results:
            if "error" in result:
                raise InfluxDB1Error(f"{statement!r}: {result['error']}")
        return results

    def write_lines(self, text: str, database: str) -> None:
        """Store line protocol directly (``/write``, nanoseconds), bypassing any writer."""
        query = urllib.parse.urlencode({"db": database, "precision": "ns"})
        self._request(f"/write?{query}", text.encode("utf-8"))

    def select(self, statement: str, database: str) -> list[dict[str, Any]]:
        """The rows of a SELECT as dicts (column -> value; ``time`` in epoch ns), with the series'
        tags (``GROUP BY *``) merged in."""
        rows: list[dict[str, Any]] = []
        for result in self.query(statement, database):
            for series in result.get("series", []):
                tags = series.get("tags") or {}
                for values in series["values"]:
                    row = dict(zip(series["columns"], values, strict=True))
                    row.update(tags)
                    rows.append(row)
        return rows

    # -- internals -------------------------------------------------------------------------------

    def _request(
        self, path: str, data: bytes | None, *, as_admin: bool = True, timeout_s: float = 10.0
    ) -> bytes:
        request = urllib.request.Request(self.url + path, data=data)  # noqa: S310 - our own loopback url
        if data is not None and path == "/query":
            request.add_header("Content-Type", "application/x-www-form-urlencoded")
        if self.auth and as_admin:
            pair = base64.b64encode(f"{ADMIN[0]}:{ADMIN[1]}".encode()).decode()
            request.add_header("Authorization", f"Basic {pair}")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - as above
                body: bytes = response.read()
                return body
        except urllib.error.HTTPError as exc:
            raise InfluxDB1Error(f"{path} on {self.url}: HTTP {exc.code}: {exc.read()[:300]!r}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise InfluxDB1Error(f"{path} on {self.url} failed: {exc}\n{self.log_tail()}") from exc

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        process = self._process
        while True:
            if process is None or process.poll() is not None:
                code = None if process is None else process.returncode
                self._close_log()
                raise InfluxDB1Error(
                    f"influxd on {self.url} exited with {code} while starting\n{self.log_tail()}"
                )
            try:
                self._request("/ping", None, as_admin=False, timeout_s=1.0)
                return
            except InfluxDB1Error:
                pass
            if time.monotonic() >= deadline:
                self.kill()
                raise InfluxDB1Error(
                    f"influxd on {self.url} not ready after {self.ready_timeout_s} s\n{self.log_tail()}"
                )
            time.sleep(_POLL_S)


InfluxFactory = Any
"""The ``influxdb1_factory`` fixture: ``make(auth=..., max_body_size=..., start=...)``."""


@pytest.fixture
def influxdb1_factory(tmp_path: Path) -> Iterator[InfluxFactory]:
    """``make(**options)`` gives a fresh ``InfluxDB1``; all are stopped after the test."""
    binary = influxd_binary()
    servers: list[InfluxDB1] = []

    def make(**options: Any) -> InfluxDB1:
        server = InfluxDB1(binary, tmp_path / f"influxdb{len(servers)}", **options)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()
