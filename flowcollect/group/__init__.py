"""Collector groups on etcd: lanes shared out across processes and hosts, taken over on failure.

Several ``flowcollect run PIPELINE --group etcd://HOST:PORT/NAME`` processes form one group.
Each lane (a device, a serial line, an OPC UA endpoint) is owned by one live member, chosen by
rendezvous hashing and held as an etcd key under the member's lease; see docs/scaling.md.
"""

from __future__ import annotations

from flowcollect.group._access import EtcdAccess
from flowcollect.group._address import GroupAddress, parse_address
from flowcollect.group._cli import group_app
from flowcollect.group._control import (
    GroupStatus,
    LaneStatus,
    MemberStatus,
    group_status,
    set_context_state,
)
from flowcollect.group._core import Decision, LeaseTimer, MemberInfo, OwnerRecord, View, decide, rendezvous
from flowcollect.group._etcd import EtcdUnavailable
from flowcollect.group._hrw import Pin, owner, weight
from flowcollect.group._member import GroupMember, GroupStats, default_member_id
from flowcollect.group._metrics import GroupStatsCollector
from flowcollect.group._options import GroupOptions, parse_pins
from flowcollect.group._run import GroupMembership, run_in_group

__all__ = [
    # Running a pipeline as a member (what `flowcollect run --group` calls)
    "GroupMembership",
    "GroupOptions",
    "run_in_group",
    # Joining a group
    "EtcdAccess",
    "GroupAddress",
    "GroupMember",
    "GroupStats",
    "GroupStatsCollector",
    "Pin",
    "default_member_id",
    "parse_address",
    "parse_pins",
    # Controlling and inspecting a group
    "GroupStatus",
    "LaneStatus",
    "MemberStatus",
    "group_status",
    "set_context_state",
    # The state machine (pure: tested in virtual time)
    "Decision",
    "LeaseTimer",
    "MemberInfo",
    "OwnerRecord",
    "View",
    "decide",
    "owner",
    "rendezvous",
    "weight",
    # Errors
    "EtcdUnavailable",
    # The ``flowcollect group`` command (typer), mounted by flowcollect.cli
    "group_app",
]
