"""A group member in a process of its own, for tests that kill it: prints each assignment.

    python -m tests.group.member_process ETCD_URL MEMBER_ID TTL LANE...

Each line on stdout is JSON: {"t": <time.monotonic()>, "lanes": [...]} (CLOCK_MONOTONIC is
shared by every process on the host, so times compare across members).
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time

from flowcollect.group import GroupMember


def main() -> None:
    url, member_id, ttl, *lanes = sys.argv[1:]
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())

    def on_assignment(owned: frozenset[str]) -> None:
        print(json.dumps({"t": time.monotonic(), "lanes": sorted(owned)}), flush=True)

    member = GroupMember(url, lanes, on_assignment, member_id=member_id, ttl_s=int(ttl))
    member.start()
    done.wait()
    member.stop()


if __name__ == "__main__":
    main()
