"""``flowcollect group status|pause|resume|stop`` against a real etcd, and the run options."""

from __future__ import annotations

import json
import time

import pytest
from typer.testing import CliRunner

from flowcollect.errors import ConfigError
from flowcollect.group import GroupMember, GroupOptions, Pin
from flowcollect.group._cli import group_app
from tests.support.etcd import Etcd

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
        assert f"{LANES[2]}: unowned (no member may own it)" in out
        assert "member m1" in out and "context 3: paused (group control)" in out
        code, out, _ = invoke("resume", "3", "--group", url)
        assert code == 0 and "resumed" in out
        code, out, _ = invoke("stop", "3", "--group", url)
        assert code == 0 and "stopped" in out


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
