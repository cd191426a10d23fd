"""The MQTT writer and reader in pipeline files run by the real ``flowcollect`` command: check with
and without the preflight, and kill -9 of the collector while the broker is down."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import clean_env, command, flowcollect, write_pipeline
from tests.reliability.test_spool_kill import spooled_points
from tests.support.mqtt_peer import Peer
from tests.support.waiting import wait_until

SECRET = "Pipe-pw-55"

CHECKED = """\
from flowcollect import DataCollectionContext, Pipeline, Variable
from flowcollect.readers import RandomDataReader
from flowcollect.writers import MqttDataWriter

pipeline = Pipeline(
    name="mqtt-check",
    readers=[RandomDataReader()],
    writers=[MqttDataWriter({url!r}, topic={topic!r}, username="c", password={password!r})],
    contexts=[
        DataCollectionContext(
            id=1,
            variables=[
                Variable(id=1, address="r1", reader="random", tags={{"line": "l1"}}),
                Variable(id=2, address="r2", reader="random"),
            ],
        )
    ],
)
"""


def test_check_with_and_without_the_preflight(mosquitto_factory: Any, tmp_path: Path) -> None:
    broker = mosquitto_factory(users={"c": SECRET})
    good = write_pipeline(
        tmp_path, CHECKED.format(url=broker.url, topic="p/{name}", password=SECRET), "good.py"
    )
    result = flowcollect("check", str(good), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    bad = write_pipeline(
        tmp_path, CHECKED.format(url=broker.url, topic="p/{name}", password="wrong"), "bad.py"
    )
    result = flowcollect("check", str(bad), cwd=tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode != 0
    line = next(line for line in out.splitlines() if "refused the connection" in line)
    assert f"writer mqtt:127.0.0.1:{broker.port}/p/{{name}}" in line
    assert SECRET not in out and "wrong" not in out
    assert flowcollect("check", str(bad), "--no-preflight", cwd=tmp_path).returncode == 0
    for args in (("plan", str(good)), ("plan", str(good), "--format", "mermaid")):
        shown = flowcollect(*args, cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
        assert SECRET not in shown.stdout + shown.stderr
    tagged = write_pipeline(
        tmp_path, CHECKED.format(url=broker.url, topic="p/{tag:line}", password=SECRET), "tag.py"
    )
    result = flowcollect("check", str(tagged), "--no-preflight", cwd=tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "context 1, variable 2" in out and "names the tag 'line'" in out


KILLED = """\
from flowcollect import DataCollectionContext, Pipeline, Variable
from flowcollect.readers import RandomDataReader
from flowcollect.writers import MqttDataWriter, SpoolOptions

writer = MqttDataWriter({url!r}, topic="k/{{context}}/{{name}}", qos=1)
pipeline = Pipeline(
    name="mqtt-kill",
    readers=[RandomDataReader()],
    writers=[writer],
    spools={{writer.name: SpoolOptions(path={spool!r}, max_bytes=64 << 20, close_timeout_s=10)}},
    contexts=[
        DataCollectionContext(
            id=1,
            interval_ms=20,
            min_interval_ms=10,
            variables=[Variable(id=n, address=f"r{{n}}", reader="random") for n in range(1, 6)],
        )
    ],
)
"""


@pytest.mark.slow  # 6-8 s of real processes: make test-slow (CI) runs it
@pytest.mark.realtime
def test_kill_9_while_the_broker_is_down_loses_nothing_the_spool_accepted(
    mosquitto_factory: Any, tmp_path: Path
) -> None:
    broker = mosquitto_factory(extra_config="autosave_interval 1\nmax_queued_messages 0")
    spool = tmp_path / "spool"
    path = write_pipeline(tmp_path, KILLED.format(url=broker.url, spool=str(spool)))
    peer = Peer(broker.url, clean=False, client_id="kill-counter")
    try:
        peer.subscribe("k/#", qos=1)
        time.sleep(1.5)  # the autosave keeps the subscription through the outage
        broker.stop()
        with open(tmp_path / "run.log", "ab") as log:
            proc = subprocess.Popen(
                command("run", str(path), "--log-level", "warning"),
                cwd=tmp_path,
                env=clean_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_until(
                lambda: len(spooled_points(spool)) >= 200 if spool.exists() else False,
                what="values spooled",
                timeout_s=30,
            )
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        accepted = spooled_points(spool)
        assert accepted
        broker.start()
        result = flowcollect("run", str(path), "--duration", "2", cwd=tmp_path, timeout=60)
        assert result.returncode == 0, (tmp_path / "run.log").read_text() + result.stdout + result.stderr
        arrived: set[tuple[int, int]] = set()

        def collect() -> int:
            from datetime import datetime

            for topic, payload, _dup in peer.taken():
                when = datetime.fromisoformat(json.loads(payload)["time"].replace("Z", "+00:00"))
                arrived.add((int(topic.rsplit("/r", 1)[1]), round(when.timestamp() * 1000)))
            return len(accepted - arrived)

        wait_until(
            lambda: collect() == 0, what="every value the spool accepted before the kill", timeout_s=20
        )
    finally:
        peer.close()
