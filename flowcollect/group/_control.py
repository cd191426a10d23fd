"""``flowcollect group status|pause|resume|stop``: read the group, or write its wish for a context.

Control keys carry no lease: the wish stays after every member has left, and a member that
joins later reads it before it collects anything.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from flowcollect.errors import ConfigError
from flowcollect.group._access import EtcdAccess
from flowcollect.group._address import GroupAddress, parse_address
from flowcollect.group._core import rendezvous
from flowcollect.group._etcd import EtcdUnavailable, Store
from flowcollect.group._hrw import Pin
from flowcollect.group._keys import CONTROL_STATES, control_key, parse_view

__all__ = ["GroupStatus", "LaneStatus", "MemberStatus", "group_status", "set_context_state"]


@dataclass(frozen=True, slots=True)
class MemberStatus:
    id: str
    host: str
    pid: int
    labels: tuple[str, ...]
    lease: int
    lease_age_s: float | None
    """Seconds since etcd last renewed the member's lease (granted TTL - TTL left)."""
    lease_left_s: float | None
    lanes: tuple[str, ...]
    """Lanes it holds now."""
    ttl_s: float | None = None
    """The lease's granted TTL (None when etcd did not say)."""

    @property
    def suspect(self) -> bool:
        """True when the member has missed its renewals: a live member renews its lease every
        quarter TTL, so a lease not renewed for half its TTL belongs to a member that is gone
        or cut off (killed, frozen, partitioned). Its lease, and its lanes, go when the TTL runs
        out; until then only this flag tells it from a healthy member."""
        return self.lease_age_s is not None and self.ttl_s is not None and self.lease_age_s >= self.ttl_s / 2


@dataclass(frozen=True, slots=True)
class LaneStatus:
    lane: str
    owner: str | None
    token: int | None
    """The fencing token: the ownership key's create revision."""
    rendezvous_owner: str | None
    """Who should own it among the live members (differs while a lane moves or waits for a label)."""


@dataclass(frozen=True, slots=True)
class GroupStatus:
    group: str
    revision: int
    members: tuple[MemberStatus, ...]
    lanes: tuple[LaneStatus, ...]
    control: dict[int, str]

    def as_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "revision": self.revision,
            "members": [
                {
                    "id": m.id,
                    "host": m.host,
                    "pid": m.pid,
                    "labels": list(m.labels),
                    "lease": m.lease,
                    "lease_age_s": m.lease_age_s,
                    "lease_left_s": m.lease_left_s,
                    "lease_ttl_s": m.ttl_s,
                    "suspect": m.suspect,
                    "lanes": list(m.lanes),
                }
                for m in self.members
            ],
            "lanes": [
                {"lane": s.lane, "owner": s.owner, "token": s.token, "rendezvous_owner": s.rendezvous_owner}
                for s in self.lanes
            ],
            "control": {str(k): v for k, v in self.control.items()},
        }

    def lines(self) -> list[str]:
        out = [f"group {self.group} (etcd revision {self.revision}): {len(self.members)} member(s)"]
        for m in self.members:
            age = "?" if m.lease_age_s is None else f"{m.lease_age_s:.0f} s"
            labels = f" labels={','.join(m.labels)}" if m.labels else ""
            line = (
                f"  member {m.id} on {m.host} pid {m.pid}: {len(m.lanes)} lane(s), lease {m.lease:x} "
                f"renewed {age} ago{labels}"
            )
            if m.suspect and m.lease_left_s is not None:
                line += (
                    f" -- SUSPECT: not renewed for half its TTL ({m.ttl_s:.0f} s), gone or cut off? "
                    f"its lease and lanes go in {m.lease_left_s:.0f} s"
                )
            out.append(line)
        out.append(f"{len(self.lanes)} lane(s):")
        for lane in self.lanes:
            if lane.owner is None:
                if lane.rendezvous_owner:
                    why = "waiting for " + lane.rendezvous_owner
                elif not self.members:
                    why = "no member in the group"
                else:
                    why = "no member may own it: none has the label its pin asks for"
                out.append(f"  {lane.lane}: unowned ({why})")
            else:
                moving = (
                    f", moving to {lane.rendezvous_owner}"
                    if lane.rendezvous_owner not in (None, lane.owner)
                    else ""
                )
                out.append(f"  {lane.lane}: {lane.owner} (token {lane.token}){moving}")
        for context_id, state in sorted(self.control.items()):
            out.append(f"context {context_id}: {state} (group control)")
        return out


def group_status(
    address: GroupAddress | str,
    pins: Iterable[Pin] = (),
    request_timeout_s: float = 5.0,
    etcd: EtcdAccess | None = None,
) -> GroupStatus:
    """Read the group once: members and their lease ages, lanes and owners, context control.
    ``etcd``: TLS and credentials (default: from ``FLOWCOLLECT_ETCD_*``)."""
    addr = parse_address(address) if isinstance(address, str) else address
    store = Store(addr.endpoints, request_timeout_s, EtcdAccess.from_env() if etcd is None else etcd)
    try:
        revision, kvs = _read_any(store, addr)
        view = parse_view(addr.prefix, revision, kvs)
        held: dict[str, list[str]] = {}
        for record in view.owners.values():
            held.setdefault(record.member, []).append(record.lane)
        members = []
        for info in sorted(view.members.values(), key=lambda m: m.id):
            try:
                left, granted = store.time_to_live(info.lease)
                age: float | None = float(granted - left) if left >= 0 else None
                left_s: float | None = float(left) if left >= 0 else None
                ttl: float | None = float(granted) if granted > 0 else None
            except EtcdUnavailable:
                age = left_s = ttl = None
            members.append(
                MemberStatus(
                    info.id,
                    info.host,
                    info.pid,
                    tuple(sorted(info.labels)),
                    info.lease,
                    age,
                    left_s,
                    tuple(sorted(held.get(info.id, []))),
                    ttl,
                )
            )
        lanes = sorted(set(view.plan) | set(view.owners))
        expected = rendezvous(lanes, view.members, pins)
        lane_status = tuple(
            LaneStatus(
                lane,
                view.owners[lane].member if lane in view.owners else None,
                view.owners[lane].token if lane in view.owners else None,
                expected[lane],
            )
            for lane in lanes
        )
        return GroupStatus(addr.name, revision, tuple(members), lane_status, dict(view.control))
    finally:
        store.close()


def set_context_state(
    address: GroupAddress | str,
    context_id: int,
    state: str,
    request_timeout_s: float = 5.0,
    etcd: EtcdAccess | None = None,
) -> int:
    """Write the group's wish for ``context_id`` (``paused``, ``running`` or ``stopped``); its revision."""
    if state not in CONTROL_STATES:
        raise ConfigError(f"group control: state {state!r} is not one of {', '.join(CONTROL_STATES)}")
    if context_id < 0:
        raise ConfigError(f"group control: context id {context_id} must not be negative")
    addr = parse_address(address) if isinstance(address, str) else address
    store = Store(addr.endpoints, request_timeout_s, EtcdAccess.from_env() if etcd is None else etcd)
    try:
        for _ in addr.endpoints:
            try:
                return store.put(control_key(addr.prefix, context_id), state.encode())
            except EtcdUnavailable:
                continue
        raise EtcdUnavailable(f"no etcd endpoint of {addr} answered")
    finally:
        store.close()


def _read_any(store: Store, addr: GroupAddress) -> tuple[int, list[Any]]:
    last: EtcdUnavailable | None = None
    for _ in addr.endpoints:
        try:
            return store.read_prefix(addr.prefix)
        except EtcdUnavailable as exc:
            last = exc
    raise EtcdUnavailable(f"no etcd endpoint of {addr} answered ({last})")
