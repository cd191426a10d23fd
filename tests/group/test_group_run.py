"""`flowcollect run --group` members as real processes, on simulated Modbus devices and real etcd.

Six simulated devices (each its own port, so its own lane) in three simulator processes; each
member writes its own CSV. Every check is made on what was really read and written: the CSV rows
(variable, instant) of all members, and the request arrival times the simulators logged.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from flowcollect.group import group_status, owner
from tests.support.etcd import ETCD_EXPIRY_LATE_S, Etcd, member_gone

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = Path(__file__).with_name("group_pipeline.py")
TTL = 2
INTERVAL_MS = 200
DEVICES_PER_SIM = 2
SIMS = 3


@dataclass
class Sims:
    """The simulator processes of a test module, and what their devices received."""

    ports: list[int]
    processes: list[subprocess.Popen[str]]
    logs: list[Path]
    since_ns: int = 0
    """Requests before this (a previous test's) are not this test's."""
    dumps: int = 0

    def requests(self) -> dict[int, list[int]]:
        """Port -> arrival times (epoch ns) since ``since_ns``: each process dumps its log."""
        self.dumps += 1
        for process in self.processes:
            process.send_signal(signal.SIGUSR1)
        out: dict[int, list[int]] = {}
        for log in self.logs:
            deadline = time.monotonic() + 10
            while True:
                try:
                    found = json.loads(log.read_text())
                    if found["dump"] >= self.dumps:
                        break
                except (OSError, ValueError):
                    pass
                assert time.monotonic() < deadline, f"{log} was not written"
                time.sleep(0.02)
            for port, times in found["ports"].items():
                out[int(port)] = [t for t in times if t >= self.since_ns]
        return out

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            process.wait(10)
            if process.stdout is not None:
                process.stdout.close()


@pytest.fixture(scope="module")
def sim_processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sims]:
    folder = tmp_path_factory.mktemp("sims")
    processes, logs, ports = [], [], []
    for i in range(SIMS):
        log = folder / f"sim{i}.json"
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.group.sim_process", str(DEVICES_PER_SIM), str(log)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        processes.append(process)
        logs.append(log)
    found = Sims([], processes, logs)
    try:
        for process in processes:
            assert process.stdout is not None
            ports.extend(json.loads(process.stdout.readline())["ports"])
        found.ports = ports
        yield found
    finally:
        found.close()


@pytest.fixture
def sims(sim_processes: Sims) -> Sims:
    """The module's devices, their request logs counted from this test's start."""
    sim_processes.since_ns = time.time_ns()
    return sim_processes


def device_of(key: str, ports: list[int]) -> int:
    """The device (index into ``ports``) a lane key names: ``modbus+tcp://127.0.0.1:PORT``, or
    ``reader:unitN`` for a reader that names no shared resource."""
    for index, port in enumerate(ports):
        if key.endswith(f":{port}") or key == f"reader:unit{index}":
            return index
    raise AssertionError(f"lane {key!r} names none of the simulated devices")


class Members:
    """`flowcollect run` member processes of one group, each with its CSV and its log."""

    def __init__(self, url: str, sims: Sims, folder: Path) -> None:
        self.url = url
        self.name = url.rsplit("/", 1)[1]
        self.sims = sims
        self.folder = folder
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._lanes: list[str] = []

    @property
    def lanes(self) -> list[str]:
        """The plan's lane keys, as the members published them (one per device)."""
        if not self._lanes:
            plan = [s.lane for s in group_status(self.url).lanes]
            if len(plan) == len(self.sims.ports):
                self._lanes = sorted(plan, key=lambda key: device_of(key, self.sims.ports))
        return self._lanes

    def start(self, member_id: str, *extra: str) -> None:
        env = {
            **os.environ,
            "GROUP_TEST_PORTS": ",".join(map(str, self.sims.ports)),
            "GROUP_TEST_CSV": str(self.folder / f"{member_id}.csv"),
            "GROUP_TEST_INTERVAL_MS": str(INTERVAL_MS),
        }
        command = [
            sys.executable, "-m", "flowcollect", "run", str(PIPELINE), "--group", self.url,
            "--member", member_id, "--group-ttl", str(TTL), "--status-every", "0", *extra,
        ]  # fmt: skip
        with open(self.folder / f"{member_id}.log", "wb") as log:
            self.processes[member_id] = subprocess.Popen(
                command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )

    def log(self, member_id: str) -> str:
        return (self.folder / f"{member_id}.log").read_text(errors="replace")

    def expected(self, live: list[str]) -> dict[str, str | None]:
        return {key: owner(key, {m: frozenset() for m in live}) for key in self.lanes}

    def owners(self) -> dict[str, str | None]:
        status = group_status(self.url)
        return {s.lane: s.owner for s in status.lanes}

    def wait_owned(self, live: list[str], timeout_s: float) -> float:
        """Wait until the group's members are ``live`` and every lane is held by its rendezvous
        owner among them; the wait's length. A member killed with no lane of its own counts
        until its lease expires (its member key goes with it): the lanes that would hash to it
        wait till then, so a step that needs the group settled must wait for that too."""
        began = time.monotonic()
        got: dict[str, str | None] = {}
        want: dict[str, str | None] = {}
        while time.monotonic() - began < timeout_s:
            status = group_status(self.url)
            got = {s.lane: s.owner for s in status.lanes}
            want = self.expected(live)
            if want and got == want and {m.id for m in status.members} == set(live):
                return time.monotonic() - began
            for member_id, process in self.processes.items():
                if member_id in live and process.poll() is not None:
                    raise AssertionError(f"member {member_id} exited:\n{self.log(member_id)[-3000:]}")
            time.sleep(0.05)
        raise AssertionError(f"owners {got} are not {want} after {timeout_s} s")

    def terminate(self, member_id: str) -> None:
        process = self.processes[member_id]
        process.send_signal(signal.SIGTERM)
        process.wait(20)
        assert process.returncode == 0, self.log(member_id)[-3000:]

    def kill(self, member_id: str) -> None:
        self.processes[member_id].kill()
        self.processes[member_id].wait(10)

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def rows(self) -> dict[str, list[tuple[int, int]]]:
        """Member -> (variable id, instant epoch ms) of every value it wrote (a killed member's
        last rows may be cut short: incomplete lines are skipped)."""
        out: dict[str, list[tuple[int, int]]] = {}
        for member_id in self.processes:
            path = self.folder / f"{member_id}.csv"
            found: list[tuple[int, int]] = []
            if path.exists():
                with open(path, newline="", encoding="utf-8") as file:
                    for row in csv.DictReader(file):
                        if row.get("time") and row.get("id") and not row.get("error"):
                            try:
                                instant = round(datetime.fromisoformat(row["time"]).timestamp() * 1000)
                            except ValueError:
                                continue
                            found.append((int(row["id"]), instant))
            out[member_id] = found
        return out


@pytest.fixture
def members(etcd: Etcd, sims: Sims, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Members]:
    group = Members(f"etcd://{etcd.endpoint}/{request.node.name[:60]}", sims, tmp_path)
    yield group
    group.close()


def by_lane(group: Members) -> dict[str, dict[str, list[int]]]:
    """Lane -> member -> sorted instants at which that member wrote the lane's first variable."""
    out: dict[str, dict[str, list[int]]] = defaultdict(dict)
    for member_id, found in group.rows().items():
        for key in group.lanes:
            index = device_of(key, group.sims.ports)
            instants = sorted({t for vid, t in found if vid == 100 * (index + 1)})
            if instants:
                out[key][member_id] = instants
    return out


def assert_each_instant_once(group: Members) -> None:
    """No (variable, instant) written twice, and no device asked twice within one interval."""
    counts = Counter(pair for found in group.rows().values() for pair in found)
    twice = [pair for pair, n in counts.items() if n > 1]
    assert not twice, f"{len(twice)} (variable, instant) written by two members, e.g. {twice[:5]}"
    requests = group.sims.requests()
    assert sorted(requests) == sorted(group.sims.ports) and all(requests.values()), "every device was read"
    for port, arrivals in requests.items():
        # One request per device and tick (its variables share one read); a due instant t is
        # read at t plus a small lateness, so two reads of one instant share a bucket.
        buckets = Counter(t_ns // 1_000_000 // INTERVAL_MS for t_ns in arrivals)
        doubled = sorted(b * INTERVAL_MS for b, n in buckets.items() if n > 1)
        assert not doubled, f"device {port} read twice in the intervals starting at {doubled[:5]} (epoch ms)"


def longest_gap(instants: list[int], after_ms: float, before_ms: float) -> int:
    inside = [t for t in instants if after_ms <= t <= before_ms]
    return max((b - a for a, b in itertools.pairwise(inside)), default=0)


@pytest.mark.slow
def test_members_share_lanes_join_take_over_and_hand_over(members: Members) -> None:
    for member_id in ("m1", "m2", "m3"):
        members.start(member_id)
    members.wait_owned(["m1", "m2", "m3"], 30)
    before = members.expected(["m1", "m2", "m3"])
    time.sleep(0.6)

    # A fourth member takes exactly the lanes whose rendezvous owner is now m4.
    joined_at = time.time() * 1000
    members.start("m4", "--json")
    members.wait_owned(["m1", "m2", "m3", "m4"], 20)
    after = members.expected(["m1", "m2", "m3", "m4"])
    moved = {key for key in members.lanes if before[key] != after[key]}
    assert all(after[key] == "m4" for key in moved)
    time.sleep(0.6)

    # kill -9: the victim's lanes resume elsewhere within TTL + two intervals.
    victim_lanes = {key for key, m in after.items() if m == "m1"}
    killed_at = time.time() * 1000
    members.kill("m1")
    member_gone(members.url, "m1", TTL + ETCD_EXPIRY_LATE_S + 1)
    gone_at = time.time() * 1000
    members.wait_owned(["m2", "m3", "m4"], 5)
    time.sleep(0.6)

    # SIGTERM: the leaver's lanes resume elsewhere with no gap longer than two intervals.
    three = members.expected(["m2", "m3", "m4"])
    leaver_lanes = {key for key, m in three.items() if m == "m2"}
    members.terminate("m2")
    # Its summary says what it did in the group, before the verdict line.
    summary = members.log("m2").rstrip("\n").splitlines()
    assert summary[-1].startswith("result: OK"), summary[-3:]
    assert summary[-2].startswith(f"  group {members.name}: m2 left: 0/6 lane(s)"), summary[-3:]
    members.wait_owned(["m3", "m4"], 5)
    time.sleep(0.6)
    members.close()
    ended_at = time.time() * 1000

    # m4's JSON summary carries its group figures: every lane it took, as it saw them.
    figures = json.loads(next(line for line in members.log("m4").splitlines() if line.startswith("{")))
    taken = figures["group"]
    assert (taken["member"], taken["state"]) == ("m4", "left")
    expected_m4 = {key for key, m in members.expected(["m3", "m4"]).items() if m == "m4"}
    assert taken["acquired"] == len(expected_m4 | moved | {k for k in victim_lanes if three[k] == "m4"}), (
        taken
    )

    lanes = by_lane(members)
    for key in members.lanes:
        assert lanes[key], f"nothing written for {key}"
    # Lanes that stayed put through the join kept their owner's values flowing.
    for key in set(members.lanes) - moved:
        kept = lanes[key][before[key] or ""]
        assert longest_gap(kept, joined_at - 1000, joined_at + 3000) <= 2 * INTERVAL_MS, key
    for key in moved:
        assert lanes[key]["m4"], f"m4 wrote nothing for {key}"
    for key in victim_lanes:
        successor = three[key] or ""
        first = min(t for t in lanes[key].get(successor, []) if t > killed_at)
        # The contract: the TTL + two intervals. etcd's own rounds (ETCD_EXPIRY_LATE_S), which no
        # client can shorten, come between the TTL and the keys' deletion, so the two are
        # measured apart: the keys went after at least the TTL less a keep-alive, and the lanes
        # resumed within two intervals of that.
        assert gone_at - killed_at >= (TTL - TTL / 4 - 0.1) * 1000, (
            f"m1's keys went {gone_at - killed_at} ms after kill"
        )
        assert first - gone_at <= 2 * INTERVAL_MS, f"{key} resumed {first - gone_at} ms after m1's keys went"
    for key in leaver_lanes:
        last_old = max(lanes[key]["m2"])
        successor = members.expected(["m3", "m4"])[key] or ""
        first_new = min(t for t in lanes[key][successor] if t > last_old)
        assert first_new - last_old <= 2 * INTERVAL_MS, f"{key}: {first_new - last_old} ms gap on SIGTERM"
    assert ended_at > killed_at
    assert_each_instant_once(members)


@pytest.mark.slow  # 6-8 s of real processes: make test-slow (CI) runs it
def test_members_stop_while_etcd_is_down_and_never_read_an_instant_twice(
    etcd_factory: Callable[..., Etcd], sims: Sims, tmp_path: Path
) -> None:
    etcd = etcd_factory()
    group = Members(f"etcd://{etcd.endpoint}/outage", sims, tmp_path)
    try:
        for member_id in ("m1", "m2"):
            group.start(member_id)
        group.wait_owned(["m1", "m2"], 30)
        time.sleep(0.6)
        etcd.stop()
        stopped_at = time.time() * 1000
        time.sleep(TTL + 0.5)  # longer than the TTL
        etcd.start()
        started_at = time.time() * 1000
        group.wait_owned(["m1", "m2"], 3 * TTL)
        time.sleep(0.6)
        group.close()
    finally:
        group.close()
    found = group.rows()
    # Nothing was read from the fencing deadline (before the TTL) until etcd was back.
    silent = [
        (vid, t) for rows in found.values() for vid, t in rows if stopped_at + TTL * 1000 <= t < started_at
    ]
    assert not silent, f"values read while etcd was down: {silent[:5]}"
    assert any(t > started_at for rows in found.values() for _, t in rows), "collection resumed"
    assert_each_instant_once(group)


def test_group_pause_and_resume_reach_every_member_and_a_later_joiner(members: Members) -> None:
    for member_id in ("m1", "m2"):
        members.start(member_id)
    members.wait_owned(["m1", "m2"], 30)
    flowcollect = [sys.executable, "-m", "flowcollect", "group"]
    done = subprocess.run(
        [*flowcollect, "pause", "1", "--group", members.url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    marker = "context 1 paused (group control)"
    deadline = time.monotonic() + 5
    while not all(marker in members.log(m) for m in ("m1", "m2")):
        assert time.monotonic() < deadline, "the pause did not reach every member"
        time.sleep(0.05)
    paused_at = time.time() * 1000
    members.start("m3", "--metrics-port", "0", "--status-every", "0.3")  # joins while paused
    members.wait_owned(["m1", "m2", "m3"], 20)
    # It applies the paused state before it collects; its log reaches us through a pipe, later.
    deadline = time.monotonic() + 5
    while marker not in members.log("m3"):
        assert time.monotonic() < deadline, f"the later joiner did not apply the pause: {members.log('m3')}"
        time.sleep(0.05)
    # Its metrics and status lines show the group as it sees it.
    url = re.search(r"metrics at (http://\S+)", members.log("m3"))
    assert url is not None, members.log("m3")
    with urllib.request.urlopen(url.group(1), timeout=5) as response:  # noqa: S310 - loopback
        metrics = response.read().decode()
    owned = sum(1 for owner_id in members.expected(["m1", "m2", "m3"]).values() if owner_id == "m3")
    assert f'flowcollect_group_lanes_owned{{group="{members.name}",member="m3"}} {owned}.0' in metrics
    assert f'flowcollect_group_members{{group="{members.name}",member="m3"}} 3.0' in metrics
    line = f"m3 active: {owned}/6 lane(s), 3 member(s)"
    deadline = time.monotonic() + 5
    while line not in members.log("m3"):
        assert time.monotonic() < deadline, f"no status line {line!r}"
        time.sleep(0.05)
    time.sleep(0.6)
    resumed_at = time.time() * 1000
    done = subprocess.run(
        [*flowcollect, "resume", "1", "--group", members.url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + 5
    while not all("context 1 running (group control)" in members.log(m) for m in ("m1", "m2", "m3")):
        assert time.monotonic() < deadline, "the resume did not reach every member"
        time.sleep(0.05)
    # Each member that owns a lane collects again: wait for its rows (its CSV flushes every
    # second) rather than for a fixed time a loaded machine may not keep. The lanes' keys hold
    # the simulators' ports, picked afresh each run, so the rendezvous may leave a member of
    # three with none of the six lanes: that member has nothing to resume.
    collecting = {owner_id for owner_id in members.expected(["m1", "m2", "m3"]).values() if owner_id}
    deadline = time.monotonic() + 10
    while not all(any(t > resumed_at for _, t in members.rows()[m]) for m in collecting):
        if time.monotonic() > deadline:
            break  # the assertions below say which member did not resume
        time.sleep(0.1)
    members.close()
    found = members.rows()
    during = [
        (m, t) for m, rows in found.items() for _, t in rows if paused_at + INTERVAL_MS <= t < resumed_at
    ]
    assert not during, f"values while paused: {during[:5]}"
    assert collecting, "six lanes and three members: someone owns a lane"
    for member_id in ("m1", "m2", "m3"):
        resumed = any(t > resumed_at for _, t in found[member_id])
        if member_id in collecting:
            assert resumed, f"{member_id} did not resume"
        else:
            assert not resumed, f"{member_id} owns no lane, yet collected after the resume"
    assert_each_instant_once(members)
