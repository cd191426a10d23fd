"""Real etcd processes for tests: one server, or a three-node cluster, on free loopback ports.

Usage::

    binary = etcd_binary()          # skips, or fails under FLOWCOLLECT_REQUIRE_SERVERS=1
    with Etcd(binary, tmp_path / "etcd") as etcd:    # started and healthy
        ...talk to etcd.endpoint ("127.0.0.1:PORT")...
        etcd.stop(); etcd.start()   # same ports and data: a real outage and a real recovery

``kill()`` is SIGKILL, ``pause()``/``resume()`` freeze the process (connections stay open and
nothing answers). ``EtcdCluster(binary, folder, size=3)`` starts three members that know each
other; ``cluster.nodes[i]`` is each one's ``Etcd``. The ``etcd`` fixture gives one server per
module (tests keep apart by group name), ``etcd_factory`` fresh ones stopped after the test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import pytest

from flowcollect.group import group_status
from tests.support.process import ServerProcess
from tests.support.victoria import REQUIRE_SERVERS_ENV, free_port
from tests.support.waiting import wait_until

__all__ = [
    "ETCD_EXPIRY_LATE_S",
    "ETCD_FIXTURES",
    "Etcd",
    "EtcdCluster",
    "EtcdError",
    "etcd",
    "etcd_binary",
    "etcd_factory",
    "member_gone",
]

ETCD_FIXTURES = frozenset({"etcd", "etcd_factory"})
ETCD_EXPIRY_LATE_S = 0.5 + 3.0
"""How long after its TTL etcd may still hold an expired lease's keys. Its lessor looks for
expired leases every 500 ms and hands them to the server's loop without waiting; when that loop
is busy at that moment, the lease is looked at again 3 s later (``expiredLeaseRetryInterval``
in etcd's lease/lessor.go). No client can shorten either, so a test of a member's take-over
measures from the keys' deletion (``member_gone``), not from the kill."""
_POLL_S = 0.05


class EtcdError(RuntimeError):
    """etcd did not start, answer or stop as asked; the message ends with its log's tail."""


def find_binary() -> str | None:
    configured = os.environ.get("FLOWCOLLECT_ETCD")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    return shutil.which("etcd") or ("/usr/bin/etcd" if os.access("/usr/bin/etcd", os.X_OK) else None)


def etcd_binary() -> str:
    """The executable, or skip the test; a failure under ``FLOWCOLLECT_REQUIRE_SERVERS=1``."""
    binary = find_binary()
    if binary is not None:
        return binary
    reason = "etcd is not installed (`make servers`, or apt-get install etcd-server)"
    if os.environ.get(REQUIRE_SERVERS_ENV) == "1":
        pytest.fail(f"{reason}, and {REQUIRE_SERVERS_ENV}=1 forbids skipping server tests", pytrace=False)
    pytest.skip(reason)


class Etcd(ServerProcess):
    """One etcd member on ``127.0.0.1``: a client port, a peer port and a data folder."""

    error = EtcdError

    def describe(self) -> str:
        return f"etcd {self.name} on {self.url}"

    def __init__(
        self,
        binary: str,
        data: Path,
        *,
        name: str = "n0",
        client_port: int | None = None,
        peer_port: int | None = None,
        initial_cluster: str | None = None,
        start: bool = True,
        ready_timeout_s: float = 20.0,
        tls: tuple[Path, Path, Path] | None = None,
        client_cert: tuple[Path, Path] | None = None,
        args: Sequence[str] = (),
    ) -> None:
        # tls: (server certificate, its key, the CA) -> https on the client port; client_cert:
        # (certificate, key) the helper presents, and etcd then demands one (--client-cert-auth).
        self.tls = tls
        self.client_cert = client_cert
        self.args = list(args)
        self.binary = binary
        self.data = Path(data)
        self.name = name
        self.client_port = client_port if client_port is not None else free_port()
        self.peer_port = peer_port if peer_port is not None else free_port()
        self.initial_cluster = initial_cluster or f"{name}=http://127.0.0.1:{self.peer_port}"
        self.ready_timeout_s = ready_timeout_s
        self.log_path = self.data.parent / f"{self.data.name}.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        if start:
            self.start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.endpoint}"

    def _context(self) -> ssl.SSLContext | None:
        if self.tls is None:
            return None
        context = ssl.create_default_context(cafile=str(self.tls[2]))
        if self.client_cert is not None:
            context.load_cert_chain(*self.client_cert)
        return context

    def _tls_args(self) -> list[str]:
        if self.tls is None:
            return []
        cert, key, ca = self.tls
        out = [f"--cert-file={cert}", f"--key-file={key}", f"--trusted-ca-file={ca}"]
        return out + (["--client-cert-auth"] if self.client_cert is not None else [])

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, wait: bool = True) -> None:
        if self.running:
            raise EtcdError(f"etcd {self.name} on {self.url} is already running")
        self._close_log()
        self.data.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - held open for the process's life
        command = [
            self.binary,
            f"--name={self.name}",
            f"--data-dir={self.data}",
            f"--listen-client-urls={self.url}",
            f"--advertise-client-urls={self.url}",
            f"--listen-peer-urls=http://127.0.0.1:{self.peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{self.peer_port}",
            f"--initial-cluster={self.initial_cluster}",
            "--initial-cluster-state=new",
            "--initial-cluster-token=flowcollect-test",
            "--logger=zap",
            "--log-outputs=stderr",
            *self._tls_args(),
            *self.args,
        ]
        self._process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            process = self._process
            if process is None or process.poll() is not None:
                code = None if process is None else process.returncode
                raise EtcdError(f"etcd {self.name} on {self.url} exited with {code}\n{self.log_tail()}")
            if self.healthy():
                return
            if time.monotonic() >= deadline:
                self.kill()
                raise EtcdError(
                    f"etcd {self.name} on {self.url} not healthy after {self.ready_timeout_s} s\n"
                    + self.log_tail()
                )
            time.sleep(_POLL_S)

    def healthy(self) -> bool:
        try:
            health = self.url + "/health"
            with urllib.request.urlopen(health, timeout=1.0, context=self._context()) as response:  # noqa: S310
                return bool(json.loads(response.read()).get("health") == "true")
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        if self.running:
            self._signal(signal.SIGCONT)
            self.stop()
        self._close_log()

    def __enter__(self) -> Etcd:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Etcd({self.name}, {self.url}, {'running' if self.running else 'stopped'})"

    # -- direct access, bypassing flowcollect (what the tests check against) -----------------------

    def call(
        self, path: str, body: dict[str, Any], timeout_s: float = 5.0, token: str | None = None
    ) -> dict[str, Any]:
        """POST ``body`` to the v3 JSON gateway (``/v3/<path>``) and return the answer."""
        headers = {"Content-Type": "application/json"} | ({"Authorization": token} if token else {})
        request = urllib.request.Request(  # noqa: S310 - loopback
            f"{self.url}/v3/{path}", data=json.dumps(body).encode(), headers=headers
        )
        with urllib.request.urlopen(request, timeout=timeout_s, context=self._context()) as response:  # noqa: S310
            answer: dict[str, Any] = json.loads(response.read())
            return answer


class EtcdCluster:
    """``size`` etcd members on loopback forming one cluster."""

    def __init__(self, binary: str, folder: Path, size: int = 3) -> None:
        names = [f"n{i}" for i in range(size)]
        peers = {name: free_port() for name in names}
        initial = ",".join(f"{name}=http://127.0.0.1:{port}" for name, port in peers.items())
        self.nodes = [
            Etcd(
                binary,
                Path(folder) / name,
                name=name,
                peer_port=peers[name],
                initial_cluster=initial,
                start=False,
            )
            for name in names
        ]
        try:
            for node in self.nodes:  # each waits for a quorum: start all, then wait
                node.start(wait=False)
            for node in self.nodes:
                node.wait_ready()
        except BaseException:
            self.close()
            raise

    @property
    def endpoints(self) -> list[str]:
        return [node.endpoint for node in self.nodes]

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def __enter__(self) -> EtcdCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Etcd]:
    """One etcd per test module; tests keep apart by group name."""
    binary = etcd_binary()
    with Etcd(binary, tmp_path_factory.mktemp("etcd") / "data") as server:
        yield server


@pytest.fixture
def etcd_factory(tmp_path: Path) -> Iterator[Any]:
    """``make(**options)`` gives a fresh etcd; every one is stopped after the test."""
    binary = etcd_binary()
    servers: list[Etcd] = []

    def make(**options: Any) -> Etcd:
        server = Etcd(binary, tmp_path / f"etcd{len(servers)}", **options)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


def endpoints_url(endpoints: Sequence[str], name: str) -> str:
    """``etcd://a,b,c/name`` for a group on these endpoints."""
    return f"etcd://{','.join(endpoints)}/{name}"


def member_gone(url: str, member_id: str, timeout_s: float) -> float:
    """Wait until etcd no longer holds ``member_id``'s member key (its lease expired or was
    revoked); the seconds that took."""
    return wait_until(
        lambda: member_id not in {m.id for m in group_status(url).members},
        timeout_s,
        f"etcd dropped member {member_id}'s key",
    )
