"""``flowcollect group status|pause|resume|stop`` against a real etcd, and the run options."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flowcollect.errors import ConfigError
from flowcollect.group import GroupMember, GroupOptions, Pin
from flowcollect.group._cli import group_app
from tests.support.etcd import Etcd
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]

LANES = ["modbus+tcp://127.0.0.1:5201", "modbus+tcp://127.0.0.1:5202", "modbus+rtu:///dev/ttyUSB0"]


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(group_app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_status_lists_members_lanes_owners_and_control(etcd: Etcd) -> None:
    url = f"etcd://{etcd.endpoint}/cli-status"
    pins = [Pin("modbus+rtu://*", "serial")]
    got: list[frozenset[str]] = []
    with GroupMember(url, LANES, got.append, member_id="m1", ttl_s=2, pins=pins):
        deadline = time.monotonic() + 5
        while not (got and len(got[-1]) == 2) and time.monotonic() < deadline:
            time.sleep(0.02)
        code, out, _ = invoke("pause", "3", "--group", url)
        assert code == 0 and "context 3: paused" in out
        code, out, _ = invoke("status", "--group", url, "--json", "--pin", "modbus+rtu://*=serial")
        assert code == 0
        status = json.loads(out)
        assert [m["id"] for m in status["members"]] == ["m1"]
        assert 0 <= status["members"][0]["lease_age_s"] <= 2
        owners = {lane["lane"]: lane["owner"] for lane in status["lanes"]}
        # The serial lane is pinned to a label no member carries: listed, owned by nobody.
        assert owners == {LANES[0]: "m1", LANES[1]: "m1", LANES[2]: None}
        assert status["control"] == {"3": "paused"}
        code, out, _ = invoke("status", "--group", url, "--pin", "modbus+rtu://*=serial")
        assert code == 0
        assert f"{LANES[2]}: unowned (no member may own it: none has the label its pin asks for)" in out
        assert "member m1" in out and "context 3: paused (group control)" in out
        code, out, _ = invoke("resume", "3", "--group", url)
        assert code == 0 and "resumed" in out
        code, out, _ = invoke("stop", "3", "--group", url)
        assert code == 0 and "stopped" in out


def test_a_lane_without_any_member_says_so(etcd: Etcd) -> None:
    url = f"etcd://{etcd.endpoint}/cli-empty"
    got: list[frozenset[str]] = []
    with GroupMember(url, LANES[:1], got.append, member_id="m1", ttl_s=2):
        wait_until(lambda: bool(got and got[-1]), 5, "m1 owns its lane")
    # m1 left: the plan it wrote (no lease) still names the lane, and nobody is there to own it.
    code, out, _ = invoke("status", "--group", url)
    assert code == 0, out
    assert out.splitlines()[0].endswith(": 0 member(s)")
    unowned = [line for line in out.splitlines() if "unowned" in line]
    # Not "no member may own it" (that is a pin no member's labels match): there is no member.
    assert unowned == [f"  {LANES[0]}: unowned (no member in the group)"], out


def test_a_killed_member_is_flagged_suspect_until_its_lease_expires(etcd: Etcd) -> None:
    url = f"etcd://{etcd.endpoint}/cli-killed"
    ttl = 6
    victim = subprocess.Popen(
        [sys.executable, "-m", "tests.group.member_process", url, "gone", str(ttl), LANES[0]],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert victim.stdout is not None
        assert json.loads(victim.stdout.readline())["lanes"] == [LANES[0]]
        code, out, _ = invoke("status", "--group", url, "--json")
        assert code == 0 and json.loads(out)["members"][0]["suspect"] is False
        os.kill(victim.pid, signal.SIGKILL)
        killed_at = time.monotonic()

        def suspect() -> str | None:
            code, out, _ = invoke("status", "--group", url)
            return out if code == 0 and "SUSPECT" in out else None

        wait_until(suspect, ttl, "the killed member flagged")
        flagged = suspect()
        assert flagged is not None
        # Before its lease ran out (the member is still listed), and not before it missed renewals.
        assert time.monotonic() - killed_at < ttl
        assert time.monotonic() - killed_at >= ttl / 2 - ttl / 4 - 0.5
        line = next(line for line in flagged.splitlines() if line.startswith("  member gone "))
        flag = "-- SUSPECT: not renewed for half its TTL (6 s), gone or cut off? its lease and lanes go in"
        assert flag in line
        status = json.loads(invoke("status", "--group", url, "--json")[1])
        members = status["members"]
        assert members == [] or (members[0]["suspect"] is True and members[0]["lease_ttl_s"] == ttl)
    finally:
        victim.kill()
        victim.wait()
        assert victim.stdout is not None
        victim.stdout.close()


def test_unreachable_etcd_and_bad_addresses_are_one_line_errors() -> None:
    code, _, err = invoke("status", "--group", "etcd://127.0.0.1:1/nowhere")
    assert code == 1 and err.startswith("error: ") and "127.0.0.1:1" in err and len(err.splitlines()) == 1
    code, _, err = invoke("pause", "1", "--group", "http://x/y")
    assert code == 1 and "--group" in err


def test_run_options_are_checked_together() -> None:
    with pytest.raises(ConfigError) as caught:
        GroupOptions.parse(
            "etcd://h:1/", member_id="a/b", labels=["ok", "bad label"], pins=["nolabel"], ttl_s=1
        )
    text = str(caught.value)
    for field in ("--group", "--member", "--label", "--pin", "--group-ttl"):
        assert field in text
    options = GroupOptions.parse("etcd://h:1/g", labels=["serial"], pins=["modbus+rtu://*=serial"], ttl_s=3)
    assert options.pins == (Pin("modbus+rtu://*", "serial"),) and options.ttl_s == 3


def test_group_metrics_show_the_members_lanes_and_state(etcd: Etcd) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from flowcollect.group import GroupStatsCollector

    got: list[frozenset[str]] = []
    with GroupMember(
        f"etcd://{etcd.endpoint}/cli-metrics", LANES[:2], got.append, member_id="m", ttl_s=2
    ) as member:
        deadline = time.monotonic() + 5
        while not (got and len(got[-1]) == 2) and time.monotonic() < deadline:
            time.sleep(0.02)
        registry = CollectorRegistry()
        registry.register(GroupStatsCollector(member.stats))
        text = generate_latest(registry).decode()
    labels = 'group="cli-metrics",member="m"'
    assert f'flowcollect_group_state{{{labels},state="active"}} 1.0' in text
    assert f"flowcollect_group_lanes_owned{{{labels}}} 2.0" in text
    assert f"flowcollect_group_lanes_acquired_total{{{labels}}} 2.0" in text
    tokens = [line for line in text.splitlines() if line.startswith("flowcollect_group_lane_token{")]
    assert len(tokens) == 2 and all(float(line.split()[-1]) > 0 for line in tokens)


def test_the_live_status_shows_the_members_group_line(etcd: Etcd) -> None:
    from rich.console import Console

    from flowcollect import DataCollectionContext, DataCollector, Variable
    from flowcollect.cli import _Status
    from flowcollect.testing import StaticDataReader

    collector = DataCollector(readers=[StaticDataReader({"a": 1.0})], writers=[])
    collector.start(DataCollectionContext(id=1, variables=[Variable(id=1, address="a", reader="static")]))
    url = f"etcd://{etcd.endpoint}/cli-live"
    try:
        with GroupMember(url, LANES, lambda lanes: None, member_id="m1", ttl_s=2) as member:
            assert member.wait_joined(5)
            deadline = time.monotonic() + 5
            while len(member.stats().owned) < len(LANES) and time.monotonic() < deadline:
                time.sleep(0.02)
            console = Console(record=True, width=200)
            console.print(_Status("plant").table(collector.stats(), member.stats()))
            text = console.export_text()
    finally:
        collector.close()
    assert "group cli-live: m1 active: 3/3 lane(s), 1 member(s)" in text
    # Without a group, no group line.
    console = Console(record=True, width=200)
    console.print(_Status("plant").table(collector.stats()))
    assert "group" not in console.export_text()


RUN = [sys.executable, "-m", "flowcollect", "run", "pipe.py"]
MEMBER_PATHS = """\
from flowcollect import DataCollectionContext, Pipeline, Variable
from flowcollect.readers import RandomDataReader
from flowcollect.writers import CsvFileDataWriter, SpoolOptions

pipeline = Pipeline(
    name="shared-file",
    readers=[RandomDataReader(f"r{n}") for n in range(4)],
    writers=[CsvFileDataWriter("out/{member}.csv")],
    spools={"csv:out/{member}.csv": SpoolOptions(path="spool/{member}", max_bytes=10_000_000)},
    contexts=[
        DataCollectionContext(
            id=1,
            interval_ms=100,
            variables=[Variable(id=n + 1, address="x", reader=f"r{n}") for n in range(4)],
        )
    ],
)
"""


@pytest.mark.slow
def test_members_sharing_one_pipeline_file_get_their_own_csv_and_spool(etcd: Etcd, tmp_path: Path) -> None:
    # Two members of one group, one pipeline file, one folder: "{member}" in the CSV path and the
    # spool folder gives each its own (one spool folder would refuse the second member).
    (tmp_path / "pipe.py").write_text(MEMBER_PATHS)
    url = f"etcd://{etcd.endpoint}/cli-paths"
    runs = {
        member: subprocess.Popen(
            [*RUN, "--json", "--duration", "3", "--group", url, "--member", member, "--group-ttl", "2"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for member in ("a", "b")
    }
    outputs = {member: proc.communicate(timeout=60) for member, proc in runs.items()}
    for member, (_, err) in outputs.items():
        assert runs[member].returncode == 0, err
    written = {member: json.loads(out)["written"] for member, (out, _) in outputs.items()}
    assert sum(written.values()) > 0
    for member in ("a", "b"):
        assert (tmp_path / "spool" / member).is_dir()
        rows = tmp_path / "out" / f"{member}.csv"
        assert (len(rows.read_text().splitlines()) - 1 if rows.exists() else 0) == written[member]
        assert json.loads(outputs[member][0])["files"] == {f"csv:out/{member}.csv": f"out/{member}.csv"}
    assert not list(tmp_path.rglob("*{member}*"))
    # Outside a group nobody can say which member: refused before anything starts.
    alone = subprocess.run(
        [*RUN, "--duration", "1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert alone.returncode == 1
    refused = "error: writer csv:out/{member}.csv: path out/{member}.csv names {member}, a group member's id"
    assert refused in alone.stderr
    assert "path spool/{member} names {member}" in alone.stderr
    assert not list(tmp_path.rglob("*{member}*"))
