"""Group members against a real etcd: sharing, hand-over, takeover, fencing, control, clusters."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from flowcollect.group import GroupMember, Pin, group_status, owner, set_context_state
from tests.support.etcd import ETCD_EXPIRY_LATE_S, Etcd, EtcdCluster, etcd_binary, member_gone
from tests.support.proxy import TcpProxy
from tests.support.waiting import wait_until

TTL = 2
LANES = [f"modbus+tcp://127.0.0.1:{5100 + i}" for i in range(8)]
ROOT = Path(__file__).resolve().parents[2]


class Recorder:
    """Every assignment a member reported, with the time it was reported."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.history: list[tuple[float, frozenset[str]]] = []
        self.controls: list[tuple[int, str]] = []

    def __call__(self, lanes: frozenset[str]) -> None:
        with self.lock:
            self.history.append((time.monotonic(), lanes))

    def control(self, context_id: int, state: str) -> None:
        with self.lock:
            self.controls.append((context_id, state))
            self.history.append((time.monotonic(), frozenset({f"control:{context_id}:{state}"})))

    @property
    def lanes(self) -> frozenset[str]:
        with self.lock:
            for _, lanes in reversed(self.history):
                if not any(lane.startswith("control:") for lane in lanes):
                    return lanes
            return frozenset()


@pytest.fixture
def group(
    etcd: Etcd, request: pytest.FixtureRequest
) -> Iterator[Callable[..., tuple[GroupMember, Recorder]]]:
    """``join(member_id, **options)`` starts a member of a group named after the test."""
    name = request.node.name.replace("[", "-").replace("]", "")[:90]
    started: list[GroupMember] = []

    def join(member_id: str, lanes: list[str] = LANES, **options: object) -> tuple[GroupMember, Recorder]:
        recorder = Recorder()
        options.setdefault("ttl_s", TTL)
        member = GroupMember(
            options.pop("url", f"etcd://{etcd.endpoint}/{name}"),  # type: ignore[arg-type]
            lanes,
            recorder,
            member_id=member_id,
            on_control=recorder.control,
            **options,  # type: ignore[arg-type]
        )
        started.append(member.start())
        return member, recorder

    yield join
    for member in started:
        member.stop()


def all_owned_once(recorders: list[Recorder], lanes: list[str] = LANES) -> bool:
    owned = [lane for r in recorders for lane in r.lanes]
    return sorted(owned) == sorted(lanes)


def assert_never_both(recorders: dict[str, Recorder]) -> None:
    """No lane was in two members' assignments at any moment (from their recorded histories)."""
    events = sorted((t, member, lanes) for member, r in recorders.items() for t, lanes in r.history)
    current: dict[str, frozenset[str]] = {}
    for t, member, lanes in events:
        current[member] = frozenset(lane for lane in lanes if not lane.startswith("control:"))
        for other, held in current.items():
            both = held & current[member] if other != member else frozenset()
            assert not both, f"{sorted(both)} held by {member} and {other} at {t:.3f}"


def shared(members: dict[str, Recorder], lanes: list[str] = LANES) -> bool:
    """Every member holds exactly its rendezvous share of the lanes."""
    labels = {m: frozenset[str]() for m in members}
    return all(r.lanes == {lane for lane in lanes if owner(lane, labels) == m} for m, r in members.items())


def test_members_share_every_lane_exactly_once(
    group: Callable[..., tuple[GroupMember, Recorder]], etcd: Etcd
) -> None:
    joined = [group(m) for m in ("a", "b", "c")]
    recorders = [r for _, r in joined]
    wait_until(lambda: all_owned_once(recorders), 5, "every lane owned once")
    labels = {"a": frozenset[str](), "b": frozenset[str](), "c": frozenset[str]()}
    for member_id, (_, recorder) in zip("abc", joined, strict=True):
        assert recorder.lanes == {lane for lane in LANES if owner(lane, labels) == member_id}
    status = group_status(joined[0][0].address)
    assert [m.id for m in status.members] == ["a", "b", "c"]
    assert {s.lane: s.owner for s in status.lanes} == {lane: owner(lane, labels) for lane in LANES}
    assert all(s.token is not None and s.token > 0 for s in status.lanes)
    stats = joined[0][0].stats()
    assert stats.state == "active" and set(stats.owned) == recorders[0].lanes
    assert stats.members == ("a", "b", "c")


def test_a_leaving_member_hands_its_lanes_over_at_once(
    group: Callable[..., tuple[GroupMember, Recorder]],
) -> None:
    (a, ra), (_, rb) = group("a"), group("b")
    wait_until(lambda: all_owned_once([ra, rb]), 5, "lanes shared")
    given = ra.lanes
    assert given, "with 8 lanes over two members, each holds some"
    a.stop()
    stopped_at = ra.history[-1][0]
    assert ra.lanes == frozenset()
    waited = wait_until(lambda: rb.lanes == frozenset(LANES), 2 * TTL, "b holds every lane")
    taken_at = next(t for t, lanes in rb.history if given <= lanes)
    assert taken_at >= stopped_at, "b started a lane before a had stopped it"
    # Revoking the lease deletes a's keys at once: far sooner than the TTL.
    assert waited < TTL / 2
    assert_never_both({"a": ra, "b": rb})


def test_a_joining_member_moves_only_lanes_whose_owner_changed(
    group: Callable[..., tuple[GroupMember, Recorder]],
) -> None:
    joined = [group(m) for m in ("a", "b", "c")]
    recorders = [r for _, r in joined]
    # Every lane owned once is not enough: two members may own them all before the third is seen.
    three = {m: frozenset[str]() for m in "abc"}
    shares = {m: {lane for lane in LANES if owner(lane, three) == m} for m in "abc"}
    wait_until(
        lambda: all(r.lanes == shares[m] for m, r in zip("abc", recorders, strict=True)),
        5,
        "lanes shared by three",
    )
    before = {m: r.lanes for m, r in zip("abc", recorders, strict=True)}
    _, rd = group("d")
    four = {m: frozenset[str]() for m in "abcd"}
    expected_d = {lane for lane in LANES if owner(lane, four) == "d"}
    wait_until(lambda: rd.lanes == expected_d and all_owned_once([*recorders, rd]), 5, "d holds its lanes")
    for m, r in zip("abc", recorders, strict=True):
        assert r.lanes == before[m] - expected_d, f"{m} lost or gained a lane d did not take"
        # No lane came and went on the members that kept theirs: each history only shrinks.
        for _, lanes in r.history[r.history.index(next(h for h in r.history if h[1] == before[m])) :]:
            assert lanes <= before[m]
    assert_never_both({**dict(zip("abc", recorders, strict=True)), "d": rd})


def test_a_killed_member_is_taken_over_after_its_lease_expires(
    etcd: Etcd, group: Callable[..., tuple[GroupMember, Recorder]]
) -> None:
    url = f"etcd://{etcd.endpoint}/killed"
    _, rb = group("b", url=url)
    victim = subprocess.Popen(
        [sys.executable, "-m", "tests.group.member_process", url, "a", str(TTL), *LANES],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        two = {"a": frozenset[str](), "b": frozenset[str]()}
        victims = {lane for lane in LANES if owner(lane, two) == "a"}
        assert victims
        assert victim.stdout is not None
        while True:  # the child reports its lanes as it takes them
            line = victim.stdout.readline()
            assert line, "the member process ended"
            if set(json.loads(line)["lanes"]) == victims:
                break
        wait_until(lambda: rb.lanes == frozenset(LANES) - victims, 5, "b holds its own lanes")
        os.kill(victim.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        # etcd drops the keys when the lease expires (renewed at most a keep-alive ago), give or
        # take its own lessor's rounds, which no client can shorten (ETCD_EXPIRY_LATE_S)...
        gone = member_gone(url, "a", TTL + ETCD_EXPIRY_LATE_S + 1)
        assert gone >= TTL - TTL / 4 - 0.1, (
            f"a's keys went {gone:.2f} s after the kill, before its lease expired"
        )
        # ...and b takes the lanes as soon as they are free: its watch wakes it, or its next read.
        wait_until(lambda: rb.lanes == frozenset(LANES), 1.5, "b took the killed member's lanes")
        with rb.lock:
            took = min(t for t, lanes in rb.history if t > killed_at and lanes & victims) - killed_at
        assert took >= TTL - TTL / 4 - 0.1, f"taken over after {took:.2f} s, before the lease could expire"
    finally:
        victim.kill()
        victim.wait()
        assert victim.stdout is not None
        victim.stdout.close()


def test_a_member_cut_off_from_etcd_stops_before_anyone_else_starts(
    etcd: Etcd, group: Callable[..., tuple[GroupMember, Recorder]]
) -> None:
    url = f"etcd://{etcd.endpoint}/partition"
    with TcpProxy(etcd.client_port) as proxy:
        _, ra = group("a", url=f"etcd://{proxy.endpoint}/partition")
        _, rb = group("b", url=url)
        wait_until(lambda: shared({"a": ra, "b": rb}), 5, "lanes shared")
        held = ra.lanes
        proxy.cut()
        cut_at = time.monotonic()
        wait_until(lambda: rb.lanes == frozenset(LANES), TTL + 3, "b took a's lanes")
        stopped_at = next(t for t, lanes in ra.history if t > cut_at and not lanes)
        taken_at = min(t for t, lanes in rb.history if t > cut_at and lanes & held)
        assert stopped_at < taken_at, "a lane was collected by two members at once"
        assert ra.lanes == frozenset()
        # a rejoins when etcd is reachable again, with a new lease, and gets its share back.
        proxy.restore()
        wait_until(lambda: ra.lanes == held and all_owned_once([ra, rb]), 3 * TTL, "a rejoined")
        assert_never_both({"a": ra, "b": rb})


def test_fencing_deadline_in_virtual_time_against_a_frozen_etcd(etcd_factory: Callable[..., Etcd]) -> None:
    etcd = etcd_factory()
    now = [0.0]
    recorder = Recorder()
    member = GroupMember(
        f"etcd://{etcd.endpoint}/virtual", LANES, recorder, member_id="v", ttl_s=TTL, clock=lambda: now[0]
    )
    try:
        member.step()  # lease granted at virtual 0, member key created, lanes acquired
        member.step()
        assert recorder.lanes == frozenset(LANES)
        deadline = TTL - max(0.2, TTL / 5)
        etcd.pause()
        now[0] = deadline - 0.05  # keep-alives due, etcd silent: cut at the deadline, not fenced yet
        member.step()
        assert recorder.lanes == frozenset(LANES)
        assert member.stats().etcd_errors >= 1
        now[0] = deadline  # the lease may expire in etcd any moment: stop without asking etcd
        member.step()
        assert recorder.lanes == frozenset()
        assert member.stats().fenced_count == 1
        assert member.stats().state == "fenced"
        etcd.resume()
        now[0] = deadline + 0.5  # a retry later, etcd is back and the lease still alive there: collect again
        member.step()
        member.step()
        assert recorder.lanes == frozenset(LANES)
        assert member.stats().state == "active"
    finally:
        etcd.resume() if etcd.running else None
        member.stop()


@pytest.mark.slow  # 6-8 s of real processes: make test-slow (CI) runs it
def test_stopping_etcd_stops_every_member_and_they_resume_after(
    etcd_factory: Callable[..., Etcd], group: Callable[..., tuple[GroupMember, Recorder]]
) -> None:
    etcd = etcd_factory()
    url = f"etcd://{etcd.endpoint}/outage"
    joined = [group(m, url=url) for m in ("a", "b")]
    recorders = [r for _, r in joined]
    wait_until(lambda: all_owned_once(recorders), 5, "lanes shared")
    etcd.stop()
    stopped = time.monotonic()
    wait_until(lambda: all(not r.lanes for r in recorders), TTL, "every member stopped its lanes")
    assert time.monotonic() - stopped < TTL
    time.sleep(TTL)  # longer than the TTL
    etcd.start()
    wait_until(lambda: all_owned_once(recorders), 3 * TTL, "members collect again")
    assert_never_both(dict(zip("ab", recorders, strict=True)))


def test_group_control_reaches_every_member_and_a_later_joiner(
    group: Callable[..., tuple[GroupMember, Recorder]],
) -> None:
    (a, ra), (_, rb) = group("a"), group("b")
    wait_until(lambda: all_owned_once([ra, rb]), 5, "lanes shared")
    set_context_state(a.address, 7, "paused")
    wait_until(lambda: ra.controls == [(7, "paused")] == rb.controls, 2, "both paused context 7")
    _, rc = group("c")
    wait_until(lambda: rc.controls == [(7, "paused")], 2 * TTL, "the later joiner applied the pause")
    # It applied the group's state before it collected anything.
    assert rc.history[0][1] == {"control:7:paused"}
    set_context_state(a.address, 7, "running")
    wait_until(lambda: all(r.controls[-1] == (7, "running") for r in (ra, rb, rc)), 2, "all resumed")
    status = group_status(a.address)
    assert status.control == {7: "running"}
    assert [len(m.lanes) for m in status.members] == [len(r.lanes) for r in (ra, rb, rc)]


def test_a_second_process_with_the_same_member_id_waits(
    group: Callable[..., tuple[GroupMember, Recorder]],
) -> None:
    _, first = group("same")
    wait_until(lambda: first.lanes == frozenset(LANES), 5, "first holds every lane")
    twin, second = group("same")
    time.sleep(TTL / 2)
    assert second.lanes == frozenset() and twin.stats().state == "joining"
    assert first.lanes == frozenset(LANES)


def test_a_member_survives_losing_one_node_of_a_three_node_cluster(tmp_path: Path) -> None:
    with EtcdCluster(etcd_binary(), tmp_path / "cluster", size=3) as cluster:
        url = f"etcd://{','.join(cluster.endpoints)}/cluster"
        a, b = Recorder(), Recorder()
        ttl = 5  # well above an election (1 s timeout), which a lost leader costs
        with (
            GroupMember(url, LANES, a, member_id="a", ttl_s=ttl) as ma,
            GroupMember(url, LANES, b, member_id="b", ttl_s=ttl) as mb,
        ):
            wait_until(lambda: shared({"a": a, "b": b}), 10, "lanes shared")
            first = ma.stats().endpoint
            node = next(n for n in cluster.nodes if n.endpoint == first)
            node.kill()
            killed_at = time.monotonic()
            # a moves on to another node; two of three keep a quorum and the leases live on.
            wait_until(lambda: ma.stats().endpoint != first, ttl, "a switched endpoint")
            # Both keep (or, after a pause while the election ran, take back) their own lanes.
            wait_until(lambda: shared({"a": a, "b": b}), 2 * ttl, "lanes shared again")
            assert ma.stats().state == mb.stats().state == "active"
            # At most a member stopped its lanes while the election ran (fenced), or even lost
            # its lease on a slow machine and joined again: never two members on one lane.
            assert_never_both({"a": a, "b": b})
            assert time.monotonic() - killed_at < 3 * ttl


def test_pinned_lanes_go_only_to_labelled_members(group: Callable[..., tuple[GroupMember, Recorder]]) -> None:
    serial = ["modbus+rtu:///dev/ttyUSB0", "modbus+rtu:///dev/ttyUSB1"]
    lanes = [*LANES[:4], *serial]
    pins = [Pin("modbus+rtu://*", "line3")]
    (a, ra), (_, rb) = group("a", lanes, labels=["line3"], pins=pins), group("b", lanes, pins=pins)
    wait_until(lambda: all_owned_once([ra, rb], lanes), 5, "every lane owned")
    assert set(serial) <= ra.lanes and not set(serial) & rb.lanes
    a.stop()
    # b takes a's other lanes but never the serial lines: nobody owns them until a labelled
    # member is back.
    wait_until(lambda: rb.lanes == frozenset(LANES[:4]), 2, "b took the unpinned lanes")
    time.sleep(0.5)
    assert rb.lanes == frozenset(LANES[:4])
    status = group_status(a.address, pins)
    assert {s.lane: s.owner for s in status.lanes if s.lane in serial} == dict.fromkeys(serial)


class Reads:
    """Stands in for a collector's ``lanes_stopped``: the lanes whose read is still in flight."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.in_flight: set[str] = set()

    def __call__(self, lanes: frozenset[str]) -> frozenset[str]:
        with self.lock:
            return frozenset(lanes - self.in_flight)

    def set(self, lanes: Iterable[str]) -> None:
        with self.lock:
            self.in_flight = set(lanes)


def test_a_lane_given_up_mid_read_is_given_back_only_once_that_read_has_ended(
    group: Callable[..., tuple[GroupMember, Recorder]],
) -> None:
    reads = Reads()
    _, ra = group("a", lanes_stopped=reads)
    wait_until(lambda: ra.lanes == frozenset(LANES), 5, "a holds every lane")
    reads.set(LANES)  # every lane of a is in a read that has not ended
    _, rb = group("b")
    moving = {lane for lane in LANES if owner(lane, {"a": frozenset(), "b": frozenset()}) == "b"}
    assert moving, "with 8 lanes over two members, b should own some"
    wait_until(lambda: ra.lanes == frozenset(LANES) - moving, 5, "a stopped the lanes that move to b")
    time.sleep(TTL / 2)
    assert rb.lanes == frozenset(), "b started lanes whose reads on a had not ended"
    reads.set(())
    waited = wait_until(lambda: rb.lanes == moving, 2, "b holds its lanes once a's reads ended")
    assert waited < 1.0
    assert_never_both({"a": ra, "b": rb})


def test_a_read_that_never_ends_holds_its_lane_no_longer_than_the_ttl(
    group: Callable[..., tuple[GroupMember, Recorder]], caplog: pytest.LogCaptureFixture
) -> None:
    reads = Reads()
    _, ra = group("a", lanes_stopped=reads)
    wait_until(lambda: ra.lanes == frozenset(LANES), 5, "a holds every lane")
    reads.set(LANES)  # stuck for good
    _, rb = group("b")
    moving = {lane for lane in LANES if owner(lane, {"a": frozenset(), "b": frozenset()}) == "b"}
    wait_until(lambda: ra.lanes == frozenset(LANES) - moving, 5, "a stopped the lanes that move to b")
    gave_up = time.monotonic()
    wait_until(lambda: rb.lanes == moving, 2 * TTL, "b holds its lanes after a's bound")
    assert time.monotonic() - gave_up >= TTL * 0.8
    assert "still reading after" in caplog.text


def test_a_leaving_member_revokes_its_lease_only_once_its_reads_have_ended(
    group: Callable[..., tuple[GroupMember, Recorder]],
) -> None:
    reads = Reads()
    a, ra = group("a", lanes_stopped=reads)
    _, rb = group("b")
    wait_until(lambda: all_owned_once([ra, rb]), 5, "lanes shared")
    given = ra.lanes
    reads.set(given)
    leaving = threading.Thread(target=a.stop, daemon=True)
    leaving.start()
    wait_until(lambda: ra.lanes == frozenset(), 2, "a stopped its lanes")
    time.sleep(TTL / 4)
    assert not (rb.lanes & given), "b started lanes whose reads on a had not ended"
    reads.set(())
    wait_until(lambda: rb.lanes == frozenset(LANES), 2, "b holds every lane")
    leaving.join(5)
    assert not leaving.is_alive()
    assert_never_both({"a": ra, "b": rb})
