"""Rendezvous hashing: every member agrees, joining or leaving moves only what must move."""

from __future__ import annotations

import subprocess
import sys

import pytest

from flowcollect.group import Pin, owner, weight
from flowcollect.group._core import MemberInfo, rendezvous

LANES = [f"modbus+tcp://10.0.0.{i}:502" for i in range(200)]


def members(*ids: str, labels: dict[str, set[str]] | None = None) -> dict[str, frozenset[str]]:
    return {m: frozenset((labels or {}).get(m, set())) for m in ids}


def test_weights_are_the_same_in_another_process() -> None:
    # Python's hash() is salted per process; the weight must not be, or members would disagree.
    code = "from flowcollect.group import weight; print(weight('opc.tcp://plc:4840', 'host-a-17'))"
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123"},
    )
    assert int(other.stdout) == weight("opc.tcp://plc:4840", "host-a-17")


def test_owner_does_not_depend_on_member_order() -> None:
    forward = members("a", "b", "c", "d")
    backward = dict(reversed(list(forward.items())))
    assert [owner(lane, forward) for lane in LANES] == [owner(lane, backward) for lane in LANES]


def test_lanes_spread_over_members() -> None:
    group = members("a", "b", "c", "d")
    counts = {m: 0 for m in group}
    for lane in LANES:
        counts[owner(lane, group) or ""] += 1
    # 200 lanes over 4 members: 50 each on average; a binomial spread stays well inside 25..75.
    assert all(25 <= n <= 75 for n in counts.values()), counts


def test_a_joining_member_takes_only_lanes_it_now_owns() -> None:
    before = {lane: owner(lane, members("a", "b", "c")) for lane in LANES}
    after = {lane: owner(lane, members("a", "b", "c", "d")) for lane in LANES}
    moved = {lane for lane in LANES if before[lane] != after[lane]}
    assert moved, "a fourth member takes some lanes"
    assert all(after[lane] == "d" for lane in moved)


def test_a_leaving_member_gives_only_its_own_lanes() -> None:
    before = {lane: owner(lane, members("a", "b", "c")) for lane in LANES}
    after = {lane: owner(lane, members("a", "c")) for lane in LANES}
    moved = {lane for lane in LANES if before[lane] != after[lane]}
    assert moved == {lane for lane in LANES if before[lane] == "b"}


def test_pins_keep_lanes_on_labelled_members() -> None:
    serial = [f"modbus+rtu:///dev/ttyUSB{i}" for i in range(20)]
    pins = [Pin("modbus+rtu://*", "serial")]
    group = members("a", "b", "c", labels={"b": {"serial"}})
    assert {owner(lane, group, pins) for lane in serial} == {"b"}
    # Unpinned lanes still go anywhere.
    assert len({owner(lane, group, pins) for lane in LANES}) == 3
    # No member with the label: nobody may own the lane.
    assert owner(serial[0], members("a", "c"), pins) is None


@pytest.mark.parametrize("count", [1, 2, 5])
def test_rendezvous_names_an_owner_for_every_lane(count: int) -> None:
    live = {f"m{i}": MemberInfo(f"m{i}", lease=i + 1) for i in range(count)}
    owners = rendezvous(LANES, live)
    assert set(owners) == set(LANES)
    assert set(owners.values()) <= set(live)
