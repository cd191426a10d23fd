"""How a group lays out its keys in etcd, and how a read of them becomes a ``View``.

Under ``/flowcollect/<group>/``:

- ``members/<id>``: one per live member, under its lease (JSON: labels, host, pid);
- ``lanes/<lane key>``: the lane's ownership key, under its owner's lease (JSON: member); its
  create revision is the fencing token;
- ``plan``: the lane keys of the pipeline's plan (JSON list), written by each member as it joins,
  with no lease: ``group status`` lists lanes nobody owns from it. Kept out of the member keys,
  which every member reads every round, so the read volume grows with members + lanes, not
  with their product;
- ``control/<context id>``: ``paused``, ``running`` or ``stopped``, with no lease: the group's
  wish, which outlives every member and is applied by each, including those that join later.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable

from flowcollect.group._core import MemberInfo, OwnerRecord, View
from flowcollect.group._etcd import Kv

__all__ = [
    "CONTROL_STATES",
    "control_key",
    "lane_key",
    "member_key",
    "member_value",
    "parse_view",
    "plan_key",
    "plan_value",
]

_log = logging.getLogger("flowcollect.group")
CONTROL_STATES = ("paused", "running", "stopped")


def member_key(prefix: str, member: str) -> str:
    return f"{prefix}members/{member}"


def lane_key(prefix: str, lane: str) -> str:
    return f"{prefix}lanes/{lane}"


def control_key(prefix: str, context_id: int) -> str:
    return f"{prefix}control/{context_id}"


def plan_key(prefix: str) -> str:
    return f"{prefix}plan"


def member_value(labels: Iterable[str], host: str, pid: int) -> bytes:
    record = {"labels": sorted(labels), "host": host, "pid": pid}
    return json.dumps(record, separators=(",", ":")).encode()


def plan_value(lanes: Iterable[str]) -> bytes:
    return json.dumps(sorted(lanes), separators=(",", ":")).encode()


def parse_view(prefix: str, revision: int, kvs: Iterable[Kv]) -> View:
    members: dict[str, MemberInfo] = {}
    owners: dict[str, OwnerRecord] = {}
    control: dict[int, str] = {}
    plan: tuple[str, ...] = ()
    for kv in kvs:
        rest = kv.key[len(prefix) :] if kv.key.startswith(prefix) else ""
        kind, _, name = rest.partition("/")
        try:
            if kind == "members" and name:
                record = json.loads(kv.value or b"{}")
                members[name] = MemberInfo(
                    id=name,
                    lease=kv.lease,
                    labels=frozenset(str(label) for label in record.get("labels", [])),
                    host=str(record.get("host", "")),
                    pid=int(record.get("pid", 0)),
                )
            elif kind == "lanes" and name:
                record = json.loads(kv.value or b"{}")
                owners[name] = OwnerRecord(name, str(record.get("member", "")), kv.lease, kv.create_revision)
            elif kind == "plan" and not name:
                plan = tuple(str(lane) for lane in json.loads(kv.value or b"[]"))
            elif kind == "control" and name:
                state = kv.value.decode("utf-8", "replace").strip()
                if state in CONTROL_STATES:
                    control[int(name)] = state
        except (ValueError, AttributeError, TypeError) as exc:
            # A key written by hand or by another version: skip it, say so, keep the group going.
            _log.warning("group key %s ignored: %s", kv.key, exc)
    return View(revision, members, owners, control, plan)
