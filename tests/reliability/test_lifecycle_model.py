"""The collector's lifecycle against a model of what it should be.

``LifecycleMachine`` (hypothesis stateful, virtual time) drives random start, stop, pause,
resume, close, check and clock advances over several contexts and, after every step, holds the
collector to a small model: the state queries agree with it, listener events are balanced, only
the documented errors escape, and what reached the writer is exactly what the running contexts
were due (every due instant once, nothing while paused or stopped, each read once).

``test_hammered_from_many_threads`` does the same kind of abuse from many real threads at once on
a collector with its own threads, then checks the invariants that hold whatever the interleaving.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from flowcollect import (
    CollectedVariable,
    CollectorClosedError,
    ConfigError,
    ContextAlreadyRunningError,
    DataCollectionContext,
    DataCollector,
    UnknownContextError,
    Variable,
)
from flowcollect.testing import MemoryDataWriter, RecordingListener, StaticDataReader, virtual_collector
from tests.conftest import collector_threads
from tests.reliability.support import DOCUMENTED_ERRORS, check_listener_events, ms, wait_until

T0 = 1_699_999_200_000  # a round hour: every interval below divides it

# (variable id, address, value type, interval ms) per context id. Addresses are shared between
# contexts (and "b" is also read as an int), so reads are shared and deduplicated.
PLANS: dict[int, list[tuple[int, str, str, int]]] = {
    1: [(1, "a", "float", 100), (2, "b", "float", 200)],
    2: [(1, "a", "float", 300), (5, "c", "float", 200)],
    3: [(1, "b", "int", 500), (2, "a", "float", 100), (3, "c", "float", 100)],
}
VALUES = {"a": 1.5, "b": 2, "c": -3.25}


def plan_context(cid: int, reader: str = "static", speedup: int = 1, **fields: Any) -> DataCollectionContext:
    """Context ``cid`` of PLANS; ``speedup`` divides its intervals (the real-clock tests run 10x)."""
    variables = [
        Variable(id=vid, address=a, value_type=vt, reader=reader, interval_ms=i // speedup)  # type: ignore[arg-type]
        for vid, a, vt, i in PLANS[cid]
    ]
    return DataCollectionContext(id=cid, variables=variables, **fields)


def bad_context(cid: int) -> DataCollectionContext:
    # Valid as a model, refused by the collector: no reader of that type.
    return DataCollectionContext(id=cid, variables=[Variable(id=1, address="a", reader="nope")])


context_ids = st.sampled_from(sorted(PLANS))


class LifecycleMachine(RuleBasedStateMachine):
    """Model: ``states`` (context id -> "running" | "paused"), ``closed``, values expected."""

    def __init__(self) -> None:
        super().__init__()
        self.reader = StaticDataReader(VALUES)
        self.writer = MemoryDataWriter()
        self.listener = RecordingListener()
        self.collector, self.clock = virtual_collector(
            [self.reader], [self.writer], [self.listener], start_ms=T0
        )
        self.states: dict[int, str] = {}
        self.closed = False
        self.delivered: dict[int, int] = {}  # values per started context since its start
        self.seen_values = 0
        self.seen_reads = 0

    # -- helpers --------------------------------------------------------------------------------

    def expect(self, call: Callable[[], Any], *errors: type[Exception]) -> Exception | None:
        """Run ``call``; it must raise one of ``errors`` when any applies, and succeed otherwise."""
        try:
            call()
        except DOCUMENTED_ERRORS as exc:
            assert errors, f"{call} raised {exc!r}; the model expected success"
            assert isinstance(exc, errors), f"{call} raised {exc!r}; the model expected one of {errors}"
            return exc
        assert not errors, f"{call} succeeded; the model expected one of {errors}"
        return None

    def lifecycle_errors(self, cid: int) -> list[type[Exception]]:
        if self.closed:
            return [CollectorClosedError]
        return [] if cid in self.states else [UnknownContextError]

    # -- rules ----------------------------------------------------------------------------------

    @rule(cid=context_ids)
    def start(self, cid: int) -> None:
        errors: list[type[Exception]] = []
        if self.closed:
            errors.append(CollectorClosedError)
        elif cid in self.states:
            errors.append(ContextAlreadyRunningError)
        context = plan_context(cid)
        if self.expect(lambda: self.collector.start(context), *errors) is None:
            self.states[cid] = "running"
            self.delivered[cid] = 0
            assert context.start_date is not None and context.end_date is None
            assert ms_of(context.start_date) == self.clock.now_ms

    @rule(cid=context_ids)
    def start_invalid(self, cid: int) -> None:
        # Which of several applicable errors wins is not specified; any applicable one will do.
        errors: list[type[Exception]] = [ConfigError]
        if self.closed:
            errors.append(CollectorClosedError)
        if cid in self.states:
            errors.append(ContextAlreadyRunningError)
        self.expect(lambda: self.collector.start(bad_context(cid)), *errors)

    @precondition(lambda self: not self.closed)
    @rule(cid=context_ids)
    def check(self, cid: int) -> None:
        self.expect(lambda: self.collector.check(plan_context(cid)))
        self.expect(lambda: self.collector.check(bad_context(cid)), ConfigError)

    @rule(cid=context_ids)
    def stop(self, cid: int) -> None:
        result: list[DataCollectionContext] = []
        if self.expect(lambda: result.append(self.collector.stop(cid)), *self.lifecycle_errors(cid)) is None:
            del self.states[cid]
            (context,) = result
            assert context.end_date is not None and ms_of(context.end_date) == self.clock.now_ms
            assert self.collector.stats().contexts[cid].state == "stopped"
            assert self.collector.stats().contexts[cid].delivered == self.delivered.pop(cid)

    @rule(cid=context_ids)
    def pause(self, cid: int) -> None:
        if self.expect(lambda: self.collector.pause(cid), *self.lifecycle_errors(cid)) is None:
            self.states[cid] = "paused"

    @rule(cid=context_ids)
    def resume(self, cid: int) -> None:
        if self.expect(lambda: self.collector.resume(cid), *self.lifecycle_errors(cid)) is None:
            self.states[cid] = "running"

    @rule(draw=st.integers(0, 3))
    def close(self, draw: int) -> None:
        if draw:  # closes one time in four it is picked, so runs live long enough to matter
            return
        self.collector.close()  # idempotent: never raises
        self.states.clear()
        self.delivered.clear()
        self.closed = True

    @rule(step=st.sampled_from([50, 100, 150, 300, 700]))
    def advance(self, step: int) -> None:
        before = self.clock.now_ms
        self.clock.advance_ms(step)
        expected_values: Counter[tuple[int, int, int, Any]] = Counter()
        expected_reads: dict[int, Counter[str]] = {}
        for t in range(before + 1, before + step + 1):
            keys: set[tuple[str, str]] = set()
            for cid, state in self.states.items():
                if state != "running":
                    continue
                for vid, address, vtype, interval in PLANS[cid]:
                    if t % interval == 0:
                        expected_values[(cid, vid, t, VALUES[address])] += 1
                        keys.add((address, vtype))
                        self.delivered[cid] += 1
            if keys:
                expected_reads[t] = Counter(address for address, _ in keys)
        new_values = self.writer.values[self.seen_values :]
        self.seen_values = len(self.writer.values)
        got = Counter((v.context_id, v.id, ms(v), v.value) for v in new_values)
        assert got == expected_values
        assert all(v.error is None for v in new_values)
        # One read call per due instant, each (address, value type) in it once.
        new_reads = self.reader.reads[self.seen_reads :]
        self.seen_reads = len(self.reader.reads)
        reads = [(ms_of(t), Counter(addresses)) for t, addresses in new_reads if t is not None]
        assert len(reads) == len(new_reads)
        assert dict(reads) == expected_reads and len(reads) == len(expected_reads)

    # -- invariants -----------------------------------------------------------------------------

    @invariant()
    def queries_agree_with_the_model(self) -> None:
        collector = self.collector
        assert collector.closed == self.closed
        assert collector.is_running() == (not self.closed and bool(self.states))
        assert set(collector.contexts()) == set(self.states)
        for cid in PLANS:
            assert collector.is_context_running(cid) == (self.states.get(cid) == "running")
        stats = collector.stats().contexts
        for cid, state in self.states.items():
            assert stats[cid].state == state
            assert stats[cid].delivered == self.delivered[cid]
            assert collector.contexts()[cid].id == cid

    @invariant()
    def listener_events_are_balanced(self) -> None:
        paused = [cid for cid, state in self.states.items() if state == "paused"]
        check_listener_events(self.listener.events, self.states, self.closed, paused)

    def teardown(self) -> None:
        self.collector.close()
        self.closed = True
        self.states.clear()
        self.queries_agree_with_the_model()
        self.listener_events_are_balanced()
        # close() is called once for a reader the collector used, opened or not.
        assert self.reader.opened <= 1 and self.reader.closed <= 1
        assert self.reader.closed >= self.reader.opened
        assert self.writer.closed


def ms_of(when: datetime) -> int:
    return round(when.timestamp() * 1000)


LifecycleMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.timeout(120)
class TestLifecycleModel(LifecycleMachine.TestCase):  # type: ignore[misc,valid-type]
    pass


# -- many threads, real clock ---------------------------------------------------------------------

THREADS = 8
SPEEDUP = 10  # intervals of 10 to 50 ms: contexts that live a few ms still see due instants
OPS_PER_THREAD = 120


class Hammer:
    """Random lifecycle calls from many threads on one real collector; records every outcome."""

    def __init__(self, collector: DataCollector, seed: int) -> None:
        self.collector = collector
        self.seed = seed
        self.lock = threading.Lock()
        self.outcomes: list[tuple[str, int, str]] = []  # (op, context id, "ok" or error name)
        # Successful state changes with the wall-clock span of the call: (op, cid, began, ended).
        self.spans: list[tuple[str, int, float, float]] = []
        self.started: list[DataCollectionContext] = []  # every context object that started
        self.unexpected: list[BaseException] = []
        self.leftover_after_close: list[list[str]] = []

    def op(self, rng: random.Random, name: str, cid: int) -> None:
        collector = self.collector
        began = time.time() * 1000
        try:
            if name == "start":
                # Some contexts end by their duration, racing the explicit stops and the close.
                duration = rng.choice([86400.0, 86400.0, 0.15, 0.4])
                reader = rng.choice(["s1", "s2"])
                context = collector.start(
                    plan_context(cid, reader=reader, speedup=SPEEDUP, duration_s=duration, min_interval_ms=10)
                )
                with self.lock:
                    self.started.append(context)
            elif name == "start_invalid":
                collector.start(bad_context(cid))
            elif name == "stop":
                collector.stop(cid)
            elif name == "pause":
                collector.pause(cid)
            elif name == "resume":
                collector.resume(cid)
            elif name == "query":
                collector.is_running()
                collector.contexts()
                collector.is_context_running(cid)
                collector.stats()
                collector.schedules()
            elif name == "close":
                collector.close()
                # close() returned: every thread of this collector has ended, whoever closed it.
                left = [t.name for t in collector_threads()]
                if left:
                    with self.lock:
                        self.leftover_after_close.append(left)
            outcome = "ok"
        except DOCUMENTED_ERRORS as exc:
            outcome = type(exc).__name__
        except BaseException as exc:
            with self.lock:
                self.unexpected.append(exc)
            outcome = f"unexpected {exc!r}"
        ended = time.time() * 1000
        with self.lock:
            self.outcomes.append((name, cid, outcome))
            if outcome == "ok" and name in ("start", "stop", "pause", "resume", "close"):
                self.spans.append((name, cid, began, ended))

    def surely_paused(self) -> dict[int, list[tuple[float, float]]]:
        """Per context, the stretches it was paused whatever the interleaving: from a pause's
        return to the start of the first call after it that could have ended the pause (a call
        still running when the pause returned may have come after it: then the stretch is
        empty)."""
        out: dict[int, list[tuple[float, float]]] = {}
        for name, cid, _, pause_end in self.spans:
            if name != "pause":
                continue
            enders = [
                began
                for other, other_cid, began, ended in self.spans
                if other in ("resume", "stop", "start", "close")
                and (other_cid == cid or other == "close")
                and ended > pause_end
            ]
            until = min(enders, default=math.inf)
            if until > pause_end:
                out.setdefault(cid, []).append((pause_end, until))
        return out

    def run(self, ops: list[str], per_thread: int, closers: int = 0) -> None:
        barrier = threading.Barrier(THREADS)
        closing = threading.Barrier(max(closers, 1))

        def worker(n: int) -> None:
            rng = random.Random(self.seed * 1000 + n)
            barrier.wait()
            for k in range(per_thread):
                if n < closers and k == per_thread // 2:
                    closing.wait()  # the closers call close() together, amid the others' calls
                    self.op(rng, "close", 0)
                self.op(rng, rng.choice(ops), rng.choice(sorted(PLANS)))
                if rng.random() < 0.2:
                    time.sleep(rng.random() * 0.01)

        threads = [
            threading.Thread(target=worker, args=(n,), name=f"hammer-{n}", daemon=True)
            for n in range(THREADS)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not [t.name for t in threads if t.is_alive()], "a lifecycle call is stuck (deadlock?)"


OPS = ["start", "start", "start_invalid", "stop", "stop", "pause", "resume", "resume", "query"]


@pytest.mark.realtime
@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", [1, 2])
def test_hammered_from_many_threads(seed: int, no_leftover_threads: None) -> None:
    writer = MemoryDataWriter()
    listener = RecordingListener()
    readers = [StaticDataReader(VALUES, type="s1"), StaticDataReader(VALUES, type="s2")]
    collector = DataCollector(readers, [writer], [listener], close_timeout_s=10)
    hammer = Hammer(collector, seed)

    # Phase 1: everything but close, from all threads at once.
    hammer.run(OPS, OPS_PER_THREAD)
    assert not hammer.unexpected, hammer.unexpected
    # Contexts with a short duration may still be ending on the timer thread: let them, then
    # the state is quiet and every query must tell the same story.
    assert wait_until(lambda: all(c.end_date is not None or c.duration_s > 1000 for c in hammer.started))
    contexts = collector.contexts()
    running = {cid for cid in PLANS if collector.is_context_running(cid)}
    stats = collector.stats().contexts
    is_running = collector.is_running()
    events = list(listener.events)
    assert is_running == bool(contexts)
    assert running <= set(contexts)
    for cid in PLANS:
        if cid in contexts:
            assert stats[cid].state == ("running" if cid in running else "paused")
        elif cid in stats:
            assert stats[cid].state == "stopped"
    per_context = check_listener_events(events, contexts, closed=False)
    started_ok = Counter(cid for op, cid, outcome in hammer.outcomes if op == "start" and outcome == "ok")
    stopped_ok = Counter(cid for op, cid, outcome in hammer.outcomes if op == "stop" and outcome == "ok")
    for cid in PLANS:
        seq = per_context.get(cid, [])
        assert seq.count("after_start") == started_ok[cid]
        # Explicit stops, plus those by duration.
        assert seq.count("after_stop") >= stopped_ok[cid]
    assert all(outcome != "ok" for op, _, outcome in hammer.outcomes if op == "start_invalid")
    n_ops = len(hammer.outcomes)
    assert n_ops == THREADS * OPS_PER_THREAD
    assert started_ok.total() > 10 and stopped_ok.total() > 10, "the hammer did too little to be a test"

    # Phase 2: the same, while three threads close the collector concurrently.
    hammer.run(OPS, OPS_PER_THREAD, closers=3)
    assert not hammer.unexpected, hammer.unexpected
    assert not hammer.leftover_after_close, (
        f"close() returned with threads alive: {hammer.leftover_after_close}"
    )
    assert collector.closed and not collector.is_running() and collector.contexts() == {}
    # Every call after the first close completed raised CollectorClosedError (or was a query).
    check_listener_events(listener.events, (), closed=True)
    assert not collector_threads()
    assert all(r.closed == 1 for r in readers if r.opened)
    assert writer.closed

    # What the writer got: each value at a due instant of its variable, once, inside a run of
    # its context (runs of one id never overlap; a paused stretch is inside its run): strictly
    # after its start (docs/guarantees.md) and not after its end. A stop ends a run at the
    # millisecond it happened, so the tick of that very millisecond may be in.
    intervals = {(cid, vid): i // SPEEDUP for cid, plan in PLANS.items() for vid, _, _, i in plan}
    runs: dict[int, list[tuple[int, int]]] = {}
    for context in hammer.started:
        assert context.start_date is not None and context.end_date is not None
        runs.setdefault(context.id, []).append((ms_of(context.start_date), ms_of(context.end_date)))
    per_key = Counter((v.context_id, v.id, ms(v)) for v in writer.values)
    assert per_key and set(per_key.values()) == {1}
    outside = []
    for cid, vid, t in per_key:
        assert t % intervals[(cid, vid)] == 0
        if not any(start < t <= end for start, end in runs[cid]):
            outside.append((cid, vid, t, runs[cid]))
    assert not outside, f"values outside every run of their context: {outside[:5]}"
    # And none of an instant at which its context was paused (docs/guarantees.md: a value is
    # read only for a running, not paused, context due then).
    paused = hammer.surely_paused()
    assert sum(len(p) for p in paused.values()) > 5, "the hammer paused too little to be a test"
    in_pause = [
        (cid, vid, t, (begin, end))
        for cid, vid, t in per_key
        for begin, end in paused.get(cid, ())
        if begin < t < end
    ]
    assert not in_pause, f"values of instants while their context was paused: {in_pause[:5]}"


class GatedWriter(MemoryDataWriter):
    """Holds every write until ``release`` is set: a writer busy with a slow destination."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def write(self, values: Sequence[CollectedVariable]) -> None:
        self.entered.set()
        self.release.wait(20)
        super().write(values)


@pytest.mark.realtime
@pytest.mark.timeout(60)
def test_a_close_racing_another_returns_only_once_everything_is_written(no_leftover_threads: None) -> None:
    writer = GatedWriter()
    listener = RecordingListener()
    collector = DataCollector([StaticDataReader(VALUES)], [writer], [listener])
    collector.start(plan_context(1))
    assert writer.entered.wait(5)  # the writer holds a batch: the first close() must wait for it
    first = threading.Thread(target=collector.close, name="first-close", daemon=True)
    first.start()
    assert wait_until(lambda: ("after_stop", 1) in listener.events)
    seen: dict[str, object] = {}

    def second_close() -> None:
        collector.close()
        seen["writer_closed"] = writer.closed
        seen["threads"] = [t.name for t in collector_threads()]

    second = threading.Thread(target=second_close, name="second-close", daemon=True)
    second.start()
    # Give the second close() time to return too early if it is going to (the fault this test
    # guards against); the test cannot pass by luck the other way round.
    second.join(0.3)
    writer.release.set()
    first.join(30)
    second.join(30)
    assert not first.is_alive() and not second.is_alive()
    assert seen == {"writer_closed": True, "threads": []}
    assert len(writer.values) == collector.stats().contexts[1].delivered > 0
