"""A real ``flowcollect run --http`` process over the Modbus simulator, and plain-urllib calls."""

from __future__ import annotations

import json
import re
import signal
import ssl
import subprocess
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import clean_env, command

TOKEN = "s3cret-token-for-the-api-tests-0123456789"

PIPELINE = """\
from flowcollect import DataCollectionContext, Pipeline, Variable
from flowcollect.pipeline import EmbeddedModbusSimulator
from flowcollect.readers import ModbusDataReader
from flowcollect.writers import CsvFileDataWriter

plc = ModbusDataReader("plc", host="127.0.0.1", port=502, timeout_s=0.5)


def var(vid, address, name):
    return Variable(id=vid, address=address, reader="plc", name=name)


pipeline = Pipeline(
    name="api",
    devices=[EmbeddedModbusSimulator([plc], name="line")],
    readers=[plc],
    writers=[CsvFileDataWriter("out/api.csv", append=False)],
    contexts=[
        DataCollectionContext(
            id=1,
            interval_ms=200,
            duration_s=None,
            variables=[var(1, "holding:0:float32", "temp_1"), var(2, "holding:6:uint16", "pump_speed")],
        ),
        DataCollectionContext(
            id=2, interval_ms=500, duration_s=None, variables=[var(3, "coil:0", "pump_running")]
        ),
    ],
)
"""


class Api:
    """``flowcollect run pipe.py --http 127.0.0.1:0 ...`` with its log in a file; ``url`` once
    the API said where it listens."""

    def __init__(
        self, folder: Path, *extra: str, env: dict[str, str] | None = None, wait: bool = True
    ) -> None:
        self.folder = folder
        pipe = folder / "pipe.py"
        if not pipe.exists():
            pipe.write_text(textwrap.dedent(PIPELINE))
        self.log_path = folder / f"run-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            command("run", str(pipe), "--status-every", "0", *extra),
            cwd=folder,
            env=clean_env(**(env or {})),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.url = ""
        if wait:
            found = self.wait_log(r"HTTP API at (https?://[^ ]+)/api/v1/")
            self.url = found.group(1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, pattern: str, timeout_s: float = 20.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = re.search(pattern, self.log())
            if found:
                return found
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        found = re.search(pattern, self.log())
        if found is None:
            self.kill()
            pytest.fail(f"{pattern!r} not seen within {timeout_s} s; log:\n{self.log()}")
        return found

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        context: ssl.SSLContext | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        request = urllib.request.Request(self.url + path, data=data, method=method)  # noqa: S310
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        for key, value in (headers or {}).items():
            request.add_header(key, value)
        try:
            with urllib.request.urlopen(request, timeout=10, context=context) as response:  # noqa: S310
                text = response.read().decode()
                status, got_headers = response.status, dict(response.headers)
        except urllib.error.HTTPError as exc:
            text = exc.read().decode()
            status, got_headers = exc.code, dict(exc.headers)
        try:
            parsed: Any = json.loads(text)
        except json.JSONDecodeError:
            parsed = text
        return status, parsed, got_headers

    def get(self, path: str, **kw: Any) -> Any:
        status, body, _ = self.call("GET", path, **kw)
        assert status == 200, (path, status, body)
        return body

    def post(self, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        status, got, _ = self.call("POST", path, body, **kw)
        return status, got

    def wait_for(self, path: str, check: Any, timeout_s: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            got = self.get(path)
            if check(got) or time.monotonic() > deadline:
                return got
            time.sleep(0.1)

    def stop(self, timeout_s: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"did not end within {timeout_s} s after SIGTERM; log:\n{self.log()}")
        self._log.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@pytest.fixture
def apis() -> Iterator[list[Api]]:
    started: list[Api] = []
    yield started
    for api in started:
        api.kill()


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path
