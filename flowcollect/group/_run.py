"""``flowcollect run PIPELINE --group ...``: a pipeline run as one member of a group.

The run is the pipeline's own, with three additions. Before the first context starts, the
collector is told to run no lane at all, so nothing is read before ownership is settled. Once
every context has started, the member joins and hands the collector the lanes it holds. On
SIGTERM/SIGINT the member leaves before the collector closes: its lanes stop (the read in
flight completes and goes to the writers, and the member waits for it through
``DataCollector.lanes_stopped``), its lease is revoked so the others take over at once, and only
then are the writers flushed and closed. A lane moved to another member is given back the same
way: its key goes once its read in flight has ended.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from flowcollect.errors import CollectorClosedError
from flowcollect.group._member import GroupMember, GroupStats, default_member_id
from flowcollect.group._options import GroupOptions
from flowcollect.listeners import DataCollectionListener

if TYPE_CHECKING:
    from flowcollect.models import DataCollectionContext
    from flowcollect.pipeline import Pipeline, RunSummary

__all__ = ["GroupMembership", "run_in_group"]

_log = logging.getLogger("flowcollect.group")


class LaneCollector(Protocol):
    """What a member needs of the collector (``DataCollector`` has it)."""

    def assign_lanes(self, keys: Iterable[str] | None) -> None: ...
    def lanes_stopped(self, keys: Iterable[str]) -> frozenset[str]: ...
    def lanes(self) -> Any: ...
    def pause(self, context_id: int) -> Any: ...
    def resume(self, context_id: int) -> Any: ...
    def stop(self, context_id: int) -> Any: ...


class _HoldLanes(DataCollectionListener):
    """Runs no lane until the member says which: set before the first context starts."""

    def __init__(self) -> None:
        self._held = False

    def before_start(self, collector: Any, context: DataCollectionContext) -> None:
        if not self._held:
            # On the starting thread, under the collector's (re-entrant) lock.
            collector.assign_lanes(())
            self._held = True


class GroupMembership:
    """One run's membership: attach it to a pipeline, start it with the collector, leave at the end."""

    def __init__(self, options: GroupOptions, logger: logging.Logger | None = None) -> None:
        self.options = options
        self.member_id = options.member_id or default_member_id()
        """This member's id: ``options.member_id``, else ``<host name>-<process id>``."""
        self._log = logger or _log
        self._member: GroupMember | None = None
        self._lock = threading.Lock()
        self._left = False

    def attach(self, pipeline: Pipeline) -> Pipeline:
        """A copy of ``pipeline`` that reads nothing until this membership assigns lanes, its
        writers' ``{member}`` paths (CSV files, spool folders) naming this member."""
        from flowcollect.pipeline import for_member

        pipeline, changed = for_member(pipeline, self.member_id)
        for template, path in changed:
            self._log.info(
                "group %s: %s is %s for member %s", self.options.address, template, path, self.member_id
            )
        return pipeline.model_copy(update={"listeners": [*pipeline.listeners, _HoldLanes()]})

    def start(self, collector: LaneCollector) -> GroupMember:
        """Join with the collector's lanes; the member assigns them as it takes ownership."""
        lanes = list(collector.lanes())

        # A run that ends by its duration closes the collector before the member leaves: a
        # closed collector reads nothing, so there is nothing left to stop or to apply.
        def on_assignment(keys: frozenset[str]) -> None:
            with contextlib.suppress(CollectorClosedError):
                collector.assign_lanes(keys)

        def on_control(context_id: int, state: str) -> None:
            with contextlib.suppress(CollectorClosedError):
                if state == "paused":
                    collector.pause(context_id)
                elif state == "running":
                    collector.resume(context_id)
                elif state == "stopped":
                    collector.stop(context_id)

        member = GroupMember(
            self.options.address,
            lanes,
            on_assignment,
            member_id=self.member_id,
            labels=self.options.labels,
            pins=self.options.pins,
            on_control=on_control,
            lanes_stopped=collector.lanes_stopped,
            ttl_s=self.options.ttl_s,
            etcd=self.options.etcd,
            logger=self._log,
        )
        with self._lock:
            if self._left:
                raise RuntimeError("this membership has already left its group")
            self._member = member
        self._log.info(
            "group %s: joining as %s with %d lane(s)", self.options.address, member.member_id, len(lanes)
        )
        return member.start()

    def leave(self, timeout_s: float = 10.0) -> None:
        """Stop the member's lanes and revoke its lease (idempotent)."""
        with self._lock:
            member, self._left = self._member, True
        if member is not None:
            member.stop(timeout_s)

    def stats(self) -> GroupStats | None:
        """The member's view of the group (None before it has started)."""
        member = self._member
        return None if member is None else member.stats()

    def run(
        self,
        pipeline: Pipeline,
        duration_s: float | None = None,
        *,
        stop: threading.Event | None = None,
        on_started: Callable[[Any], None] | None = None,
        **options: Any,
    ) -> RunSummary:
        """``pipeline.run(duration_s, stop=..., on_started=..., **options)`` as a member of the group.

        ``stop`` (set by a signal handler) makes the member leave first, then the run end; the
        run sets ``stop`` itself when it ends another way, so no helper thread outlives it.
        """
        outer = stop if stop is not None else threading.Event()
        inner = threading.Event()

        def relay() -> None:
            outer.wait()
            self.leave()
            inner.set()

        relay_thread = threading.Thread(target=relay, name="flowcollect-group-leave", daemon=True)
        relay_thread.start()

        def started(collector: Any) -> None:
            self.start(collector)
            if on_started is not None:
                on_started(collector)

        try:
            return self.attach(pipeline).run(duration_s, stop=inner, on_started=started, **options)
        finally:
            outer.set()
            relay_thread.join(15.0)
            self.leave()
            final = self.stats()
            if final is not None:
                self._log.info("group %s: %s", self.options.address, final.line())


def run_in_group(
    pipeline: Pipeline,
    options: GroupOptions,
    duration_s: float | None = None,
    *,
    on_membership: Callable[[GroupMembership], None] | None = None,
    **run_options: Any,
) -> RunSummary:
    """Run ``pipeline`` as a member of ``options``'s group (the one call ``flowcollect run --group`` makes).

    ``on_membership(membership)`` gets the membership before the run starts (for its ``stats()``).
    """
    membership = GroupMembership(options, run_options.get("logger"))
    if on_membership is not None:
        on_membership(membership)
    return membership.run(pipeline, duration_s, **run_options)
