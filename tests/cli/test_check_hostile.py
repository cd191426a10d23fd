"""``flowcollect check`` against InfluxDB endpoints that misbehave or are not what the user
thinks: a server dripping its answer (check ends within its bound, not when the server stops),
and the preflight's 404 telling a missing database from a missing endpoint."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.cli.conftest import flowcollect, write_pipeline
from tests.support.hostile import HostileServer, drip, respond

pytestmark = pytest.mark.timeout(90)

PIPELINE = """\
from flowcollect import DataCollectionContext, Pipeline, Variable
from flowcollect.readers import RandomDataReader
from flowcollect.writers import InfluxDBDataWriter

pipeline = Pipeline(
    name="hostile",
    readers=[RandomDataReader()],
    writers=[InfluxDBDataWriter("{url}", api="v1", database="plant", timeout_s=2.0)],
    contexts=[DataCollectionContext(id=1, variables=[Variable(id=1, address="x", reader="random")])],
)
"""


def test_check_against_a_dripping_server_ends_within_its_bound(tmp_path: Path) -> None:
    with HostileServer() as server:
        server.answer = drip(b"HTTP/1.1 204 No Content\r\nX-Pad: ", every_s=0.2, then=b"x")
        path = write_pipeline(tmp_path, PIPELINE.format(url=server.url))
        began = time.monotonic()
        result = flowcollect("check", str(path), cwd=tmp_path, timeout=60)
        took = time.monotonic() - began
    assert result.returncode == 1, result.stderr
    assert "no complete answer within 2 s" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    # 2 s for the preflight, the rest is starting Python on a loaded machine.
    assert took < 15, took


SECRET_PIPELINE = """\
from flowcollect import DataCollectionContext, Pipeline, Variable, secret_from_env
from flowcollect.readers import RandomDataReader
from flowcollect.writers import InfluxDBDataWriter

influx = InfluxDBDataWriter(
    "{url}", token=secret_from_env("INFLUX_TOKEN"), org="o", bucket="b", timeout_s=2.0
)
print("configured:", influx)
pipeline = Pipeline(
    name="secret",
    readers=[RandomDataReader()],
    writers=[influx],
    contexts=[DataCollectionContext(id=1, variables=[Variable(id=1, address="x", reader="random")])],
)
"""


def test_a_pipeline_file_takes_its_token_from_the_environment_and_never_shows_it(tmp_path: Path) -> None:
    token = "pipeline-token-8c2d41"

    def echo(request: bytes, sock: object) -> None:
        head = request.split(b"\r\n\r\n", 1)[0].replace(b"\r\n", b" | ")
        respond(401, b'{"error":"you sent ' + head + b'"}', reason="Unauthorized")(request, sock)  # type: ignore[arg-type]

    with HostileServer() as server:
        server.answer = echo
        path = write_pipeline(tmp_path, SECRET_PIPELINE.format(url=server.url))
        result = flowcollect("check", str(path), cwd=tmp_path, env={"INFLUX_TOKEN": token})
        unset = flowcollect("check", str(path), cwd=tmp_path)
    assert result.returncode == 1
    assert "refused the credentials" in result.stderr and "Authorization: Token ***" in result.stderr
    assert "token=<set>" in result.stdout
    assert token not in result.stdout + result.stderr
    assert unset.returncode != 0 and "INFLUX_TOKEN is not set" in unset.stderr
