"""A real Mosquitto broker for tests: start, stop, kill, restart on the same port.

Debian's ``mosquitto`` (installed by ``scripts/install-servers.sh``). Each broker gets its own
folder with a generated ``mosquitto.conf``: one loopback listener, anonymous by default, or a
password file (``users={"name": "password"}``, hashed with ``mosquitto_passwd``), or TLS
(``tls=TlsFiles(...)``, certificates the tests generate). Persistence is on, so a stop and
start keeps QoS 1 sessions that asked to be kept.

Usage::

    with Mosquitto(mosquitto_binary(), tmp_path / "broker") as broker:   # started, free port
        ...connect to broker.url (mqtt://127.0.0.1:PORT)...
        broker.kill(); broker.start()                                     # a real outage

The fixture ``mosquitto_factory`` gives fresh brokers, all stopped after the test; a
``conftest.py`` that imports it marks the tests using it ``server`` (as for VictoriaMetrics).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import pytest

from tests.support.process import ServerProcess
from tests.support.victoria import REQUIRE_SERVERS_ENV, free_port

__all__ = ["Mosquitto", "MosquittoError", "TlsFiles", "broker_tls", "mosquitto_binary", "mosquitto_factory"]

_POLL_S = 0.05
_CANDIDATES = ("/usr/sbin/mosquitto", "/usr/bin/mosquitto")


class MosquittoError(RuntimeError):
    """The broker did not start or stop as asked; the message ends with its log's tail."""


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for a TLS listener: the CA that signed the server certificate, and its key.

    ``require_client_cert`` makes the broker ask for a client certificate signed by ``ca``.
    """

    ca: Path
    cert: Path
    key: Path
    require_client_cert: bool = False


def broker_tls(pki: Any, *, require_client_cert: bool = False) -> TlsFiles:
    """A broker's TLS files from the tests' certificates (``tests.support.certs.Pki``)."""
    return TlsFiles(pki.ca, pki.server_cert, pki.server_key, require_client_cert)


def find_binary() -> str | None:
    configured = os.environ.get("FLOWCOLLECT_MOSQUITTO")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    found = shutil.which("mosquitto")
    if found:
        return found
    return next((path for path in _CANDIDATES if os.access(path, os.X_OK)), None)


def mosquitto_binary() -> str:
    """The executable, or skip the test with the reason; a failure under ``FLOWCOLLECT_REQUIRE_SERVERS=1``."""
    binary = find_binary()
    if binary is not None:
        return binary
    reason = "mosquitto is not installed (`make servers`, or apt-get install mosquitto)"
    if os.environ.get(REQUIRE_SERVERS_ENV) == "1":
        pytest.fail(f"{reason}, and {REQUIRE_SERVERS_ENV}=1 forbids skipping server tests", pytrace=False)
    pytest.skip(reason)


class Mosquitto(ServerProcess):
    """One broker on ``127.0.0.1:port`` with its configuration, log and persistence in ``folder``."""

    error = MosquittoError

    def __init__(
        self,
        binary: str,
        folder: Path,
        *,
        port: int | None = None,
        users: Mapping[str, str] | None = None,
        tls: TlsFiles | None = None,
        extra_config: str = "",
        start: bool = True,
        ready_timeout_s: float = 10.0,
    ) -> None:
        self.binary = binary
        self.folder = Path(folder)
        self.port = port if port is not None else free_port()
        self.users = dict(users) if users else None
        self.tls = tls
        self.extra_config = extra_config
        self.ready_timeout_s = ready_timeout_s
        self.log_path = self.folder / "mosquitto.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        if start:
            self.start()

    def describe(self) -> str:
        return f"Mosquitto on {self.url}"

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        """Start (again) on the same port, configuration and persistence; wait until it listens."""
        if self.running:
            raise MosquittoError(f"{self.describe()} is already running")
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        self._close_log()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - held open for the process's life
        self._process = subprocess.Popen(
            [self.binary, "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready()

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        if self.running:
            self.resume()  # a paused process would ignore SIGTERM until resumed
            self.stop()
        self._close_log()

    def __enter__(self) -> Mosquitto:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Mosquitto({self.url}, {'running' if self.running else 'stopped'})"

    def _write_config(self) -> Path:
        lines = [
            f"listener {self.port} 127.0.0.1",
            "persistence true",
            f"persistence_location {self.folder}/",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if os.geteuid() == 0:
            # As root, mosquitto drops to the `mosquitto` user, who cannot read pytest's 0700 folders.
            lines.append("user root")
        if self.users:
            password_file = self.folder / "passwords"
            password_file.write_text("")
            for name, password in self.users.items():
                subprocess.run(
                    ["mosquitto_passwd", "-b", str(password_file), name, password],
                    check=True,
                    capture_output=True,
                    timeout=10,
                )
            lines += ["allow_anonymous false", f"password_file {password_file}"]
        else:
            lines.append("allow_anonymous true")
        if self.tls is not None:
            lines += [f"cafile {self.tls.ca}", f"certfile {self.tls.cert}", f"keyfile {self.tls.key}"]
            if self.tls.require_client_cert:
                lines.append("require_certificate true")
        if self.extra_config:
            lines.append(self.extra_config)
        path = self.folder / "mosquitto.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            process = self._process
            if process is None or process.poll() is not None:
                code = None if process is None else process.returncode
                self._close_log()
                raise MosquittoError(
                    f"{self.describe()} exited with {code} while starting\n{self.log_tail()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                pass
            if time.monotonic() >= deadline:
                self.kill()
                raise MosquittoError(
                    f"{self.describe()} not listening after {self.ready_timeout_s} s\n{self.log_tail()}"
                )
            time.sleep(_POLL_S)


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[Any]:
    """``make(users=..., tls=..., start=...)`` gives a fresh broker; all are stopped after the test."""
    binary = mosquitto_binary()
    brokers: list[Mosquitto] = []

    def make(**options: Any) -> Mosquitto:
        broker = Mosquitto(binary, tmp_path / f"mosquitto{len(brokers)}", **options)
        brokers.append(broker)
        return broker

    yield make
    for broker in brokers:
        broker.close()
