"""``flowcollect run --http --group``: a member's API against real etcd and real processes. Its
status shows the membership and which lanes this member owns; context operations act on this
member's collector; a reload is refused (every member runs the same file)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.service.conftest import TOKEN, Api
from tests.support.etcd import Etcd

pytestmark = pytest.mark.realtime

PIPELINE = """\
from flowcollect import DataCollectionContext, Pipeline, Variable
from flowcollect.readers import RandomDataReader
from flowcollect.writers import CsvFileDataWriter

pipeline = Pipeline(
    name="member-api",
    readers=[RandomDataReader("r0"), RandomDataReader("r1")],
    writers=[CsvFileDataWriter("out/{member}.csv")],
    contexts=[
        DataCollectionContext(
            id=1,
            interval_ms=100,
            duration_s=None,
            variables=[Variable(id=n + 1, address="x", reader=f"r{n}") for n in range(2)],
        )
    ],
)
"""
LANES = {"reader:r0", "reader:r1"}


@pytest.fixture
def members() -> Iterator[list[Api]]:
    started: list[Api] = []
    yield started
    for api in started:
        api.kill()


def member(folder: Path, url: str, name: str, token_file: Path) -> Api:
    return Api(
        folder,
        "--http",
        "127.0.0.1:0",
        "--token-file",
        str(token_file),
        "--group",
        url,
        "--member",
        name,
        "--group-ttl",
        "2",
    )


def owned(status: dict[str, Any]) -> set[str]:
    group = status["group"] or {}
    return set(group.get("owned", {}))


def test_a_members_api_shows_its_membership_and_acts_on_its_own_collector(
    etcd: Etcd, tmp_path: Path, members: list[Api]
) -> None:
    (tmp_path / "pipe.py").write_text(PIPELINE)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    url = f"etcd://{etcd.endpoint}/member-api"
    one = member(tmp_path, url, "m1", token_file)
    members.append(one)
    status = one.wait_for("/api/v1/status", lambda s: owned(s) == LANES)
    group = status["group"]
    assert (group["group"], group["member"], group["state"], group["members"]) == (
        "member-api",
        "m1",
        "active",
        ["m1"],
    ), group
    assert {key: lane["owned"] for key, lane in status["lanes"].items()} == dict.fromkeys(LANES, True)

    # A second member: the lanes are shared out, and each member's status says which are its.
    two = member(tmp_path, url, "m2", token_file)
    members.append(two)
    deadline = time.monotonic() + 20
    while True:
        first, second = one.get("/api/v1/status"), two.get("/api/v1/status")
        # Settled: both see both members, none waits for a lane, and each lane has one owner.
        settled = (
            all(len(s["group"]["members"]) == 2 and not s["group"]["waiting"] for s in (first, second))
            and owned(first) | owned(second) == LANES
            and not owned(first) & owned(second)
        )
        if settled or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert settled, (first["group"], second["group"])
    for status in (first, second):  # each lane says whether this member collects it
        assert {k: lane["owned"] for k, lane in status["lanes"].items()} == {
            k: k in owned(status) for k in LANES
        }
    assert sorted(second["group"]["members"]) == ["m1", "m2"]

    # Context operations act on this member's collector only.
    status_code, body = one.post("/api/v1/contexts/1/pause", token=TOKEN)
    assert status_code == 200 and body["state"] == "paused", body
    assert two.get("/api/v1/contexts/1")["state"] == "running"
    assert one.post("/api/v1/contexts/1/resume", token=TOKEN)[1]["state"] == "running"
    # A member's values are those of the lanes it collected (m2 never gave one back).
    if owned(second):
        got = two.wait_for("/api/v1/values", lambda v: v["total"] > 0)["values"]
        assert {v["reader"] for v in got} == {key.removeprefix("reader:") for key in owned(second)}
    else:
        assert two.get("/api/v1/values")["total"] == 0

    status_code, body = one.post("/api/v1/reload", token=TOKEN)
    assert status_code == 409 and "group member does not reload" in body["detail"], body
    assert two.stop() == 0
    assert one.wait_for("/api/v1/status", lambda s: owned(s) == LANES, timeout_s=20)["group"]["members"] == [
        "m1"
    ]
    assert one.stop() == 0
