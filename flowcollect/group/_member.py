"""A group member: its lease, its ownership keys, and the loop that keeps both true.

One thread (``flowcollect-group``) runs ``step()`` again and again: renew the lease when due,
read the group's keys, let ``decide`` say what to collect, take and give back, and tell the
collector through ``on_assignment``. A watch on the group's prefix wakes the loop as soon as
anything changes (a member leaves, a key is released); without it the loop still reads every
keep-alive interval, so a broken watch costs promptness, never correctness.

Safety rests on two rules. A lane is collected only while its ownership key exists under this
member's lease (etcd's create-if-absent transaction makes that key unique). And once the lease
may have expired in etcd (``LeaseTimer``'s deadline: last good keep-alive + TTL - margin), the
member stops every lane without waiting for etcd to say so; every call to etcd is cut short at
that deadline, so a hanging etcd cannot keep a member collecting past it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flowcollect.errors import ConfigError
from flowcollect.group._access import EtcdAccess
from flowcollect.group._address import GroupAddress, parse_address
from flowcollect.group._core import LeaseTimer, View, decide
from flowcollect.group._etcd import MAX_TXN_OPS, EtcdUnavailable, Store, Watch
from flowcollect.group._hrw import Pin
from flowcollect.group._keys import lane_key, member_key, member_value, parse_view, plan_key, plan_value

__all__ = ["GroupMember", "GroupStats", "default_member_id"]

_log = logging.getLogger("flowcollect.group")
# How often a member looks again at a lane it gave up that is still finishing its read.
_DRAIN_POLL_S = 0.05

Clock = Callable[[], float]
Wait = Callable[[threading.Event, float], bool]


def default_member_id() -> str:
    """``<host name>-<process id>``: unique on a host, readable in ``group status``."""
    return f"{socket.gethostname()}-{os.getpid()}"


def _event_wait(event: threading.Event, timeout_s: float) -> bool:
    return event.wait(timeout_s)


@dataclass(frozen=True, slots=True)
class GroupStats:
    """One member's view of its group, for stats, metrics and the live status."""

    group: str
    member: str
    state: str
    """``joining`` (no lease yet), ``active``, ``fenced`` (lost etcd: collecting nothing) or ``left``."""
    endpoint: str
    lease: int | None
    ttl_s: float | None
    lease_age_s: float | None
    """Seconds since the last keep-alive that etcd answered."""
    members: tuple[str, ...]
    lanes_total: int
    owned: Mapping[str, int] = field(default_factory=dict)
    """Lanes this member collects, each with its fencing token."""
    waiting: tuple[str, ...] = ()
    """Lanes that are this member's by rendezvous but still held by another member."""
    acquired: int = 0
    released: int = 0
    fenced_count: int = 0
    """Times this member stopped its lanes because its lease might have expired."""
    etcd_errors: int = 0
    control: Mapping[int, str] = field(default_factory=dict)

    def line(self) -> str:
        """One line for logs and the live status."""
        age = "never" if self.lease_age_s is None else f"{self.lease_age_s:.1f} s ago"
        return (
            f"{self.member} {self.state}: {len(self.owned)}/{self.lanes_total} lane(s), "
            f"{len(self.members)} member(s), lease renewed {age}, "
            f"{self.acquired} taken, {self.released} given back, {self.fenced_count} fenced"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "member": self.member,
            "state": self.state,
            "endpoint": self.endpoint,
            "lease": self.lease,
            "ttl_s": self.ttl_s,
            "lease_age_s": self.lease_age_s,
            "members": list(self.members),
            "lanes_total": self.lanes_total,
            "owned": dict(self.owned),
            "waiting": list(self.waiting),
            "acquired": self.acquired,
            "released": self.released,
            "fenced_count": self.fenced_count,
            "etcd_errors": self.etcd_errors,
            "control": {str(k): v for k, v in self.control.items()},
        }


class GroupMember:
    """Join ``address``'s group, own a fair share of ``lanes``, and say which through ``on_assignment``.

    ``on_assignment(lanes)`` gets the full set of lanes to collect every time it changes (the
    empty set before a lane may be read elsewhere). A lane taken out of the set may still finish
    the read it is in: ``lanes_stopped(lanes)`` says which of those have stopped, and only their
    keys are given back (a lane still reading after ``ttl_s``, the bound a crashed member gives
    too, is given back with a warning); without it, ``on_assignment`` must return only once they
    have stopped. ``on_control(context_id, state)`` applies the group's
    ``paused``/``running``/``stopped`` wish for a context. ``clock`` (monotonic seconds) and
    ``wait(event, timeout)`` are injectable so the loop can run in virtual time.
    """

    def __init__(
        self,
        address: GroupAddress | str,
        lanes: Iterable[str],
        on_assignment: Callable[[frozenset[str]], None],
        *,
        member_id: str | None = None,
        labels: Iterable[str] = (),
        pins: Iterable[Pin] = (),
        on_control: Callable[[int, str], None] | None = None,
        lanes_stopped: Callable[[frozenset[str]], frozenset[str]] | None = None,
        ttl_s: int = 10,
        keepalive_s: float | None = None,
        margin_s: float | None = None,
        request_timeout_s: float | None = None,
        etcd: EtcdAccess | None = None,
        clock: Clock = time.monotonic,
        wait: Wait = _event_wait,
        logger: logging.Logger | None = None,
    ) -> None:
        self.address = parse_address(address) if isinstance(address, str) else address
        self.member_id = member_id or default_member_id()
        if "/" in self.member_id or not self.member_id.strip():
            raise ConfigError(f"--member: {self.member_id!r} must be a non-empty id without '/'")
        self.lanes = frozenset(lanes)
        self.labels = frozenset(labels)
        self.pins = tuple(pins)
        self.ttl_s = int(ttl_s)
        keepalive = self.ttl_s / 4 if keepalive_s is None else keepalive_s
        margin = max(0.2, self.ttl_s / 5) if margin_s is None else margin_s
        timeout = max(0.5, min(2.0, self.ttl_s / 3)) if request_timeout_s is None else request_timeout_s
        _check_timing(self.ttl_s, keepalive, margin, timeout)
        self._on_assignment = on_assignment
        self._on_control = on_control
        self._lanes_stopped = lanes_stopped
        self._draining: dict[str, float] = {}  # lane given up but still reading -> since when
        self._nap = threading.Event()  # never set: a plain bounded sleep through ``wait``
        self._leave_within_s = 10.0  # stop()'s timeout: leaving waits for reads within half of it
        self._clock = clock
        self._wait = wait
        self._log = logger or _log
        # TLS and credentials: as given, else from FLOWCOLLECT_ETCD_* (flowcollect.group._access).
        self._store = Store(self.address.endpoints, timeout, EtcdAccess.from_env() if etcd is None else etcd)
        self._timer = LeaseTimer(keepalive, margin, retry_s=max(0.1, keepalive / 2))
        self._prefix = self.address.prefix
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._watch: Watch | None = None
        self._next_watch = -float("inf")
        self._lease: int | None = None
        self._registered = False
        self._next_grant = -float("inf")
        self._collecting: frozenset[str] = frozenset()
        self._view = View(0)
        self._tokens: dict[str, int] = {}
        self._waiting: tuple[str, ...] = ()
        self._applied_control: dict[int, str] = {}
        self._counts = {"acquired": 0, "released": 0, "fenced": 0, "errors": 0}
        self._state = "joining"
        self._was_fenced = False
        self._last_error = ""

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> GroupMember:
        """Start the loop thread; it joins as soon as etcd answers (and keeps trying until then)."""
        if self._thread is not None:
            raise RuntimeError("this group member was already started")
        self._thread = threading.Thread(target=self._run, name="flowcollect-group", daemon=True)
        self._thread.start()
        return self

    def wait_joined(self, timeout_s: float) -> bool:
        """Wait until the member holds a lease and its member key (True), or ``timeout_s`` passes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if self._registered and self._state == "active":
                    return True
            time.sleep(0.02)
        return False

    def stop(self, timeout_s: float = 10.0) -> None:
        """Leave: stop collecting every lane, then revoke the lease so the others take over at once."""
        self._leave_within_s = timeout_s
        self._stopping.set()
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout_s)
            if thread.is_alive():
                self._log.warning(
                    "group %s: member loop did not end within %.1f s", self.address.name, timeout_s
                )
        else:
            self._leave()
        self._store.close()

    def __enter__(self) -> GroupMember:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stats(self) -> GroupStats:
        now = self._clock()
        with self._lock:
            view = self._view
            return GroupStats(
                group=self.address.name,
                member=self.member_id,
                state=self._state,
                endpoint=self._store.endpoint,
                lease=self._lease,
                ttl_s=self._timer.ttl_s,
                lease_age_s=self._timer.age(now),
                members=tuple(sorted(view.members)),
                lanes_total=len(self.lanes),
                owned={lane: self._tokens.get(lane, 0) for lane in sorted(self._collecting)},
                waiting=self._waiting,
                acquired=self._counts["acquired"],
                released=self._counts["released"],
                fenced_count=self._counts["fenced"],
                etcd_errors=self._counts["errors"],
                control=dict(self._applied_control),
            )

    # -- the loop --------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    pause = self.step()
                except Exception:
                    # A bug must not leave lanes running unfenced: stop them, retry later.
                    self._log.exception("group %s: member loop failed", self.address.name)
                    self._fence(self._clock())
                    pause = self._timer.retry_s
                self._wait(self._wake, pause)
                self._wake.clear()
        finally:
            self._leave()

    def step(self) -> float:
        """One round: lease, read, decide, act. Returns the seconds until the next round is due."""
        try:
            self._keep_lease()
            now = self._clock()
            if self._lease is None or not self._registered or self._timer.fenced(now):
                self._fence(now)
                return self._pause(now)
            for _ in range(4):  # acquiring or releasing changes the view: read again at once
                if not self._round():
                    break
            self._ensure_watch()
        except EtcdUnavailable as exc:
            self._error(exc)
            now = self._clock()
            if self._timer.fenced(now):
                self._fence(now)
            self._timer.failed(now)
        return self._pause(self._clock())

    def _pause(self, now: float) -> float:
        if self._lease is None:
            return max(0.0, min(self._timer.retry_s, self._next_grant - now))
        # Read at least once per keep-alive interval even when the watch says nothing; soon
        # when a lane given up is still finishing its read (its key goes once it has).
        pause = min(self._timer.next_wake(now), self._timer.keepalive_s)
        return min(pause, _DRAIN_POLL_S) if self._draining else pause

    def _budget(self) -> float | None:
        """Seconds left before the fencing deadline: no etcd call may run longer (None: fenced
        already, nothing left to protect, so calls get their whole timeout to find etcd again)."""
        now = self._clock()
        return None if self._timer.fenced(now) else self._timer.deadline - now

    def _keep_lease(self) -> None:
        now = self._clock()
        if self._lease is None:
            if now < self._next_grant:
                return
            self._next_grant = now + self._timer.retry_s
            sent = self._clock()
            lease, ttl = self._store.grant(self.ttl_s)
            with self._lock:
                self._lease = lease
                self._registered = False
            self._timer.renewed(sent, ttl)
            self._log.debug("group %s: lease %x granted (%d s)", self.address.name, lease, ttl)
        elif self._timer.due(now):
            sent = self._clock()
            left = self._store.keepalive(self._lease, self._budget())
            if left <= 0:
                self._lost_lease()
                return
            self._timer.renewed(sent, left)
        if not self._registered:
            self._register()

    def _register(self) -> None:
        if self._lease is None:
            return
        key = member_key(self._prefix, self.member_id)
        value = member_value(self.labels, socket.gethostname(), os.getpid())
        token = self._store.create(key, value, self._lease, self._budget())
        if token is None:
            _, kvs = self._store.read_prefix(key, self._budget())
            holder = next((kv.lease for kv in kvs if kv.key == key), None)
            if holder != self._lease:
                self._error(
                    EtcdUnavailable(
                        f"member id {self.member_id!r} is held by lease {holder:x} (another process, or this "
                        "member before a restart: waiting for that lease to expire)"
                        if holder
                        else f"member key {key} vanished while registering"
                    )
                )
                return
        self._store.put(plan_key(self._prefix), plan_value(self.lanes), budget_s=self._budget())
        with self._lock:
            self._registered = True
            self._state = "active"
        self._log.info(
            "group %s: joined as %s (lease %x, ttl %s s, etcd %s)",
            self.address.name,
            self.member_id,
            self._lease,
            self._timer.ttl_s,
            self._store.endpoint,
        )

    def _lost_lease(self) -> None:
        self._log.warning(
            "group %s: lease of %s expired in etcd; rejoining with a new one",
            self.address.name,
            self.member_id,
        )
        self._timer.lost()
        with self._lock:
            self._lease = None
            self._registered = False
        self._fence(self._clock())
        self._next_grant = -float("inf")

    def _round(self) -> bool:
        """Read, decide and act once; True if a key changed (so read again)."""
        if self._lease is None:
            return False
        revision, kvs = self._store.read_prefix(self._prefix, self._budget())
        view = parse_view(self._prefix, revision, kvs)
        with self._lock:
            self._view = view
        self._apply_control(view)
        now = self._clock()
        decision = decide(
            self.member_id, self._lease, self.lanes, view, self.pins, fenced=self._timer.fenced(now)
        )
        if decision.fenced:
            self._fence(now)
            return False
        with self._lock:
            self._state = "active"
        if self._was_fenced:
            self._was_fenced = False
            self._log.info(
                "group %s: etcd answers again; %s collects its lanes again", self.address.name, self.member_id
            )
        tokens = {lane: view.owners[lane].token for lane in decision.collect}
        # Lanes to give back stop here, before their keys go: nobody else may start them sooner.
        self._assign(decision.collect, tokens, decision.waiting)
        released = self._stopped(decision.release)
        self._release(released, view)
        acquired = self._acquire(decision.acquire)
        if acquired and not self._timer.fenced(self._clock()):
            # The keys are ours under a lease still inside its deadline: start them now rather
            # than after another read.
            waiting = tuple(lane for lane in decision.waiting if lane not in acquired)
            self._assign(decision.collect | acquired.keys(), {**tokens, **acquired}, waiting)
        return bool(released or decision.acquire)

    def _stopped(self, lanes: Iterable[str]) -> list[str]:
        """Those of ``lanes`` (no longer assigned) that may be given back: their read has ended."""
        lanes = list(lanes)
        if self._lanes_stopped is None:
            return lanes
        # If the question fails, none has stopped: they wait for the next round, up to the TTL.
        stopped = self._ask_stopped(frozenset(lanes), frozenset()) if lanes else frozenset()
        now = self._clock()
        ready = []
        for lane in lanes:
            since = self._draining.setdefault(lane, now)
            if lane in stopped:
                ready.append(lane)
            elif now - since >= self.ttl_s:
                self._log.warning(
                    "group %s: %s gives lane %s back still reading after %d s (a read stuck?)",
                    self.address.name,
                    self.member_id,
                    lane,
                    self.ttl_s,
                )
                ready.append(lane)
        self._draining = {lane: since for lane, since in self._draining.items() if lane in lanes}
        for lane in ready:
            del self._draining[lane]
        return ready

    def _await_stopped(self, lanes: frozenset[str], bound_s: float) -> None:
        """Wait (at most ``bound_s``) until ``lanes`` have ended their reads in flight."""
        if self._lanes_stopped is None or not lanes:
            return
        deadline = self._clock() + bound_s
        # If the question fails, waiting cannot end better: leave now.
        while not self._ask_stopped(lanes, lanes) >= lanes:
            if self._clock() >= deadline:
                self._log.warning(
                    "group %s: %s leaves with lane(s) still reading after %.1f s",
                    self.address.name,
                    self.member_id,
                    bound_s,
                )
                return
            self._wait(self._nap, _DRAIN_POLL_S)

    def _ask_stopped(self, lanes: frozenset[str], failed: frozenset[str]) -> frozenset[str]:
        """``lanes_stopped(lanes)``; ``failed`` (logged) when that raises."""
        if self._lanes_stopped is None:
            return lanes
        try:
            return self._lanes_stopped(lanes)
        except Exception:
            self._log.exception("group %s: asking which lanes have stopped failed", self.address.name)
            return failed

    def _release(self, lanes: Iterable[str], view: View) -> None:
        """Delete the keys of lanes already stopped, each only if still the incarnation we made."""
        for chunk in _chunks(lanes):
            owned = [(lane_key(self._prefix, lane), view.owners[lane].token) for lane in chunk]
            if self._store.delete_all_if_created(owned, self._budget()):
                gone = list(chunk)
            else:  # one of them changed meanwhile: give back the others one by one
                gone = [
                    lane
                    for lane, (key, token) in zip(chunk, owned, strict=True)
                    if self._store.delete_if_created(key, token, self._budget())
                ]
            for lane in gone:
                self._count("released")
                self._log.info("group %s: %s gave lane %s back", self.address.name, self.member_id, lane)

    def _acquire(self, lanes: Iterable[str]) -> dict[str, int]:
        """Create the keys of free lanes under our lease: lane -> fencing token, for those created."""
        acquired: dict[str, int] = {}
        if self._lease is None:
            return acquired
        value = json.dumps({"member": self.member_id}).encode()
        for chunk in _chunks(lanes):
            # One transaction for all: a member taking over a dead one's lanes needs one round trip.
            items = [(lane_key(self._prefix, lane), value) for lane in chunk]
            token = self._store.create_all(items, self._lease, self._budget())
            if token is not None:
                acquired.update(dict.fromkeys(chunk, token))
                continue
            for lane, (key, _) in zip(chunk, items, strict=True):  # one is taken: the others alone
                token = self._store.create(key, value, self._lease, self._budget())
                if token is not None:
                    acquired[lane] = token
        for lane, token in acquired.items():
            self._count("acquired")
            self._log.info(
                "group %s: %s took lane %s (token %d)", self.address.name, self.member_id, lane, token
            )
        return acquired

    def _assign(self, lanes: frozenset[str], tokens: Mapping[str, int], waiting: tuple[str, ...]) -> None:
        with self._lock:
            self._tokens = dict(tokens)
            self._waiting = waiting
            if lanes == self._collecting:
                return
        try:
            self._on_assignment(lanes)
        except Exception:
            self._log.exception("group %s: applying the lane assignment failed", self.address.name)
        with self._lock:
            self._collecting = lanes

    def _fence(self, now: float) -> None:
        if self._collecting:
            self._count("fenced")
            self._was_fenced = True
            self._log.warning(
                "group %s: %s cannot reach etcd (%s); stopped its %d lane(s) before its lease can expire",
                self.address.name,
                self.member_id,
                self._last_error or "no answer",
                len(self._collecting),
            )
        with self._lock:
            if self._registered:
                self._state = "fenced"
        self._assign(frozenset(), {}, ())

    def _apply_control(self, view: View) -> None:
        if self._on_control is None:
            return
        for context_id, state in sorted(view.control.items()):
            if self._applied_control.get(context_id, "running") == state:
                continue
            try:
                self._on_control(context_id, state)
                self._log.info(
                    "group %s: context %d %s (group control)", self.address.name, context_id, state
                )
            except Exception as exc:
                self._log.warning(
                    "group %s: applying %s to context %d failed: %s",
                    self.address.name,
                    state,
                    context_id,
                    exc,
                )
            with self._lock:
                self._applied_control[context_id] = state

    def _ensure_watch(self) -> None:
        watch = self._watch
        if watch is not None and not watch.ended.is_set():
            return
        now = self._clock()
        if now < self._next_watch:
            return
        self._next_watch = now + self._timer.retry_s
        if watch is not None:
            watch.cancel()
        self._watch = self._store.watch(self._prefix, self._wake.set)

    def _leave(self) -> None:
        with self._lock:
            held = self._collecting
        self._assign(frozenset(), {}, ())
        # Revoking the lease frees every key at once: first let the reads in flight end.
        # Within half of stop()'s timeout, so the loop still ends (and revokes) inside it.
        self._await_stopped(held | frozenset(self._draining), min(self.ttl_s, self._leave_within_s / 2))
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        lease = self._lease
        if lease is not None:
            try:
                self._store.revoke(lease)
                self._log.info("group %s: %s left (lanes handed over)", self.address.name, self.member_id)
            except EtcdUnavailable as exc:
                self._log.warning(
                    "group %s: %s could not revoke its lease (%s); others take over when it expires",
                    self.address.name,
                    self.member_id,
                    exc,
                )
        with self._lock:
            self._lease = None
            self._registered = False
            self._state = "left"

    def _error(self, exc: Exception) -> None:
        self._count("errors")
        text = str(exc)
        if text != self._last_error:
            self._log.warning("group %s: %s", self.address.name, text)
        self._last_error = text

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1


def _chunks(lanes: Iterable[str]) -> list[tuple[str, ...]]:
    items = tuple(lanes)
    return [items[i : i + MAX_TXN_OPS] for i in range(0, len(items), MAX_TXN_OPS)]


def _check_timing(ttl_s: int, keepalive_s: float, margin_s: float, request_timeout_s: float) -> None:
    problems = []
    if ttl_s < 2:
        problems.append(f"group ttl: {ttl_s} s is below etcd's minimum lease TTL (2 s)")
    if not keepalive_s > 0:
        problems.append(f"group keep-alive interval: {keepalive_s} s must be positive")
    if not margin_s >= 0:
        problems.append(f"group fencing margin: {margin_s} s must not be negative")
    if not request_timeout_s > 0:
        problems.append(f"group request timeout: {request_timeout_s} s must be positive")
    if not problems and keepalive_s + margin_s >= ttl_s:
        problems.append(
            f"group timing: keep-alive interval {keepalive_s} s + margin {margin_s} s must stay below the "
            f"ttl {ttl_s} s, or one late keep-alive would stop every lane"
        )
    if problems:
        raise ConfigError(problems)
