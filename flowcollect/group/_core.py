"""The member's state machine, free of I/O and of the clock: what to collect, take and give back.

``decide`` turns one consistent read of the group's keys (a ``View``) and the time into a
``Decision``; ``LeaseTimer`` says when to keep the lease alive and when this member must stop
collecting because its lease may be gone. The etcd driver (``_member.py``) feeds both with real
reads and ``time.monotonic``; the tests feed them with made-up views and virtual times.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from flowcollect.group._hrw import Pin, owner

__all__ = ["Decision", "LeaseTimer", "MemberInfo", "OwnerRecord", "View", "decide", "rendezvous"]


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """A live member: its key exists, so its lease is alive in etcd."""

    id: str
    lease: int
    labels: frozenset[str] = frozenset()
    host: str = ""
    pid: int = 0


@dataclass(frozen=True, slots=True)
class OwnerRecord:
    """A lane's ownership key: who holds it, under which lease, since which revision."""

    lane: str
    member: str
    lease: int
    token: int
    """The key's create revision: grows with every new owner, so it is the fencing token."""


@dataclass(frozen=True, slots=True)
class View:
    """The group's keys as read at one etcd revision."""

    revision: int
    members: Mapping[str, MemberInfo] = field(default_factory=dict)
    owners: Mapping[str, OwnerRecord] = field(default_factory=dict)
    control: Mapping[int, str] = field(default_factory=dict)
    """Context id -> ``paused``, ``running`` or ``stopped`` (``flowcollect group pause`` ...)."""
    plan: tuple[str, ...] = ()
    """The plan's lane keys as the last member to join wrote them (for status)."""


@dataclass(frozen=True, slots=True)
class Decision:
    collect: frozenset[str]
    """Lanes to run now: held under this member's lease, still its by rendezvous, not fenced."""
    acquire: tuple[str, ...]
    """Lanes that are this member's by rendezvous and that nobody holds: create their keys."""
    release: tuple[str, ...]
    """Lanes held but no longer this member's: stop them first, then delete their keys."""
    waiting: tuple[str, ...]
    """Lanes that are this member's but still held by another (it must let go, or expire)."""
    fenced: bool
    """The lease may have expired: collect nothing and touch no key until it is renewed."""


def rendezvous(
    lanes: Iterable[str], members: Mapping[str, MemberInfo], pins: Iterable[Pin] = ()
) -> dict[str, str | None]:
    """Each lane's rendezvous owner among the live members (None: no member may own it)."""
    labels = {member.id: member.labels for member in members.values()}
    pin_list = list(pins)
    return {lane: owner(lane, labels, pin_list) for lane in lanes}


def decide(
    me: str,
    lease: int | None,
    lanes: Iterable[str],
    view: View,
    pins: Iterable[Pin],
    *,
    fenced: bool,
) -> Decision:
    """What member ``me`` (holding ``lease``) does with ``lanes`` given ``view``.

    Only keys under this member's current lease count as held: a key left by an earlier lease
    of the same member id (a restart) is someone else's until it expires.
    """
    lane_list = sorted(set(lanes))
    if fenced or lease is None:
        return Decision(frozenset(), (), (), (), True)
    members = dict(view.members)
    if me not in members:
        # Our member key is not (yet) readable: others do not count us, so neither do we.
        members = {}
    owners = rendezvous(lane_list, members, pins)
    held = {lane for lane, rec in view.owners.items() if rec.lease == lease and rec.member == me}
    mine = {lane for lane in lane_list if owners[lane] == me}
    acquire = tuple(lane for lane in lane_list if lane in mine and lane not in view.owners)
    waiting = tuple(lane for lane in lane_list if lane in mine and lane in view.owners and lane not in held)
    # Held lanes of a plan we no longer run (another pipeline version) go back too.
    release = tuple(sorted(held - mine))
    return Decision(frozenset(held & mine), acquire, release, waiting, False)


class LeaseTimer:
    """When to renew the lease, and the local deadline after which it may be gone.

    The deadline counts from when the last successful keep-alive was *sent*: etcd renewed the
    lease at some moment after that, so its expiry in etcd is no earlier than ``sent + ttl``.
    Stopping ``margin_s`` before it leaves time for a tick in progress to end, so no other member
    can have taken a lane over while this one still reads it.
    """

    def __init__(self, keepalive_s: float, margin_s: float, retry_s: float) -> None:
        self.keepalive_s = keepalive_s
        self.margin_s = margin_s
        self.retry_s = retry_s
        self.ttl_s: float | None = None
        self.last_ok: float | None = None
        self.deadline = -math.inf
        self.next_keepalive = -math.inf

    def renewed(self, sent_at: float, ttl_s: float) -> None:
        """A grant or keep-alive sent at ``sent_at`` succeeded with ``ttl_s`` seconds left."""
        self.ttl_s = ttl_s
        self.last_ok = sent_at
        self.deadline = max(self.deadline, sent_at + ttl_s - self.margin_s)
        self.next_keepalive = sent_at + self.keepalive_s

    def failed(self, now: float) -> None:
        """A keep-alive did not get through: try again soon, the deadline stands."""
        self.next_keepalive = now + self.retry_s

    def lost(self) -> None:
        """etcd says the lease is gone (expired or revoked)."""
        self.ttl_s = None
        self.deadline = -math.inf
        self.next_keepalive = -math.inf

    def fenced(self, now: float) -> bool:
        return now >= self.deadline

    def due(self, now: float) -> bool:
        return now >= self.next_keepalive

    def next_wake(self, now: float) -> float:
        """Seconds until the next keep-alive or the deadline, whichever comes first."""
        wake = self.next_keepalive
        if not self.fenced(now):
            wake = min(wake, self.deadline)
        return max(0.0, wake - now)

    def age(self, now: float) -> float | None:
        """Seconds since the last successful keep-alive was sent (None: never)."""
        return None if self.last_ok is None else now - self.last_ok
