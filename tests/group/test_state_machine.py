"""The member's decisions and its lease clock, in virtual time (no etcd, no threads)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowcollect.errors import ConfigError
from flowcollect.group import (
    GroupAddress,
    LeaseTimer,
    MemberInfo,
    OwnerRecord,
    Pin,
    View,
    decide,
    owner,
    parse_address,
)

LANES = [f"modbus+tcp://127.0.0.1:{5000 + i}" for i in range(12)]


def view(
    members: dict[str, int], owners: dict[str, tuple[str, int]] | None = None, revision: int = 10
) -> View:
    live = {m: MemberInfo(m, lease) for m, lease in members.items()}
    records = {
        lane: OwnerRecord(lane, m, lease, token=i + 1)
        for i, (lane, (m, lease)) in enumerate((owners or {}).items())
    }
    return View(revision, live, records)


def test_a_member_acquires_its_rendezvous_lanes_when_nobody_holds_them() -> None:
    state = view({"a": 1, "b": 2})
    decision = decide("a", 1, LANES, state, (), fenced=False)
    expected = {lane for lane in LANES if owner(lane, {"a": frozenset(), "b": frozenset()}) == "a"}
    assert set(decision.acquire) == expected
    assert decision.collect == frozenset()  # nothing is collected before its key is held


def test_only_lanes_held_under_the_current_lease_are_collected() -> None:
    labels = {"a": frozenset[str](), "b": frozenset[str]()}
    mine = [lane for lane in LANES if owner(lane, labels) == "a"]
    # One key under our lease, one under an older lease of the same member id (a restart).
    state = view({"a": 1, "b": 2}, {mine[0]: ("a", 1), mine[1]: ("a", 99)})
    decision = decide("a", 1, LANES, state, (), fenced=False)
    assert decision.collect == {mine[0]}
    assert mine[1] in decision.waiting
    assert mine[1] not in decision.acquire


def test_lanes_whose_owner_changed_are_released() -> None:
    three = {"a": frozenset[str](), "b": frozenset[str](), "c": frozenset[str]()}
    held = {lane: ("a", 1) for lane in LANES if owner(lane, {"a": frozenset(), "b": frozenset()}) == "a"}
    decision = decide("a", 1, LANES, view({"a": 1, "b": 2, "c": 3}, held), (), fenced=False)
    assert set(decision.release) == {lane for lane in held if owner(lane, three) != "a"}
    assert decision.collect == {lane for lane in held if owner(lane, three) == "a"}


def test_a_fenced_member_collects_and_touches_nothing() -> None:
    held = {lane: ("a", 1) for lane in LANES}
    decision = decide("a", 1, LANES, view({"a": 1}, held), (), fenced=True)
    assert (decision.collect, decision.acquire, decision.release, decision.fenced) == (
        frozenset(),
        (),
        (),
        True,
    )


def test_a_member_not_yet_in_the_view_claims_nothing() -> None:
    decision = decide("a", 1, LANES, view({"b": 2}), (), fenced=False)
    assert decision.acquire == () and decision.collect == frozenset()


def test_pinned_lanes_wait_for_a_labelled_member() -> None:
    serial = "modbus+rtu:///dev/ttyUSB0"
    decision = decide("a", 1, [serial], view({"a": 1}), [Pin("modbus+rtu://*", "serial")], fenced=False)
    assert decision.acquire == ()


def test_lease_deadline_counts_from_when_the_keepalive_was_sent() -> None:
    timer = LeaseTimer(keepalive_s=0.5, margin_s=0.4, retry_s=0.25)
    assert timer.fenced(0.0)  # no lease yet
    timer.renewed(sent_at=10.0, ttl_s=2)
    assert timer.deadline == pytest.approx(11.6)
    assert not timer.fenced(11.59) and timer.fenced(11.6)
    assert not timer.due(10.49) and timer.due(10.5)
    assert timer.next_wake(10.0) == pytest.approx(0.5)


def test_failed_keepalives_retry_but_never_move_the_deadline() -> None:
    timer = LeaseTimer(keepalive_s=0.5, margin_s=0.4, retry_s=0.25)
    timer.renewed(sent_at=0.0, ttl_s=2)
    now = 0.5
    while not timer.fenced(now):  # etcd gone: every keep-alive fails
        assert timer.due(now)
        timer.failed(now)
        now += timer.next_wake(now)
    assert now == pytest.approx(1.6)  # woke exactly at the deadline, not a retry later
    timer.renewed(sent_at=now, ttl_s=2)  # etcd back, lease alive
    assert not timer.fenced(now)
    timer.lost()
    assert timer.fenced(now)


def test_a_late_answer_does_not_extend_the_deadline_beyond_its_send_time() -> None:
    timer = LeaseTimer(keepalive_s=0.5, margin_s=0.4, retry_s=0.25)
    timer.renewed(sent_at=0.0, ttl_s=2)
    # The keep-alive sent at 0.5 is answered only at 1.5: etcd renewed at some point in
    # between, so the lease holds at least until 0.5 + 2, never 1.5 + 2.
    timer.renewed(sent_at=0.5, ttl_s=2)
    assert timer.deadline == pytest.approx(2.1)


def test_group_addresses() -> None:
    assert parse_address("etcd://127.0.0.1:2379/plant") == GroupAddress((("127.0.0.1", 2379),), "plant")
    assert parse_address("etcd://a:1,b:2,c/g-1").endpoints == (("a", 1), ("b", 2), ("c", 2379))
    assert str(parse_address("etcd://a:1,b:2/x")) == "etcd://a:1,b:2/x"
    assert parse_address("etcd://h:1/x").prefix == "/flowcollect/x/"


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        ("http://h:1/x", "is not etcd://"),
        ("etcd://h:1", "names no group"),
        ("etcd://h:1/a/b", "group name"),
        ("etcd://h:99999/x", "not a TCP port"),
        ("etcd://h:1,,h:2/x", "empty etcd endpoint"),
        ("etcd://h h:1/x", "not a host name"),
    ],
)
def test_bad_group_addresses_are_named(text: str, fault: str) -> None:
    with pytest.raises(ConfigError, match=fault) as caught:
        parse_address(text)
    assert "--group" in str(caught.value)


member_ids = st.sampled_from(["a", "b", "c", "d", "e"])


@st.composite
def group_views(draw: st.DrawFn) -> tuple[View, list[str]]:
    """A consistent read of the group: live members with leases, and ownership keys each under
    some lease (a live member's, or a stale one of a member gone or restarted)."""
    live = draw(st.sets(member_ids, max_size=5))
    leases = {m: i + 1 for i, m in enumerate(sorted(live))}
    lanes = [f"lane{i}" for i in range(draw(st.integers(0, 12)))]
    owners = {}
    for lane in lanes:
        if draw(st.booleans()):
            holder = draw(member_ids)
            lease = leases.get(holder, 100) if draw(st.booleans()) else 99
            owners[lane] = OwnerRecord(lane, holder, lease, token=draw(st.integers(1, 1000)))
    members = {m: MemberInfo(m, lease) for m, lease in leases.items()}
    return View(draw(st.integers(1, 10_000)), members, owners), lanes


@given(group_views(), st.booleans())
def test_decisions_never_let_two_members_collect_one_lane(case: tuple[View, list[str]], fenced: bool) -> None:
    state, lanes = case
    collecting: dict[str, str] = {}
    for member in state.members.values():
        decision = decide(member.id, member.lease, lanes, state, (), fenced=fenced)
        held = {
            lane
            for lane, rec in state.owners.items()
            if rec.lease == member.lease and rec.member == member.id
        }
        assert decision.collect <= held, "collects only lanes whose key it holds under its lease"
        assert not set(decision.acquire) & set(state.owners), "creates only absent keys"
        assert set(decision.release) <= held and not set(decision.release) & decision.collect
        if fenced:
            assert decision.collect == frozenset() and not decision.acquire and not decision.release
        for lane in decision.collect:
            assert lane not in collecting, f"{lane} collected by {collecting.get(lane)} and {member.id}"
            collecting[lane] = member.id
        # What it acquires or collects is its own by rendezvous among the live members.
        labels = {m: frozenset[str]() for m in state.members}
        assert all(owner(lane, labels) == member.id for lane in [*decision.acquire, *decision.collect])
