"""The event-loop runtime (issue 23): every lane on one loop thread, asynchronous readers awaited
on it, synchronous ones on a bounded worker pool, clock-step detection a held-up thread cannot
fool. Virtual time where the logic is; the real clock only for which thread runs what."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import pytest

from flowcollect import (
    CollectedVariable,
    ConfigError,
    DataCollectionContext,
    DataCollector,
    Variable,
)
from flowcollect.testing import (
    AsyncDataReader,
    MemoryDataWriter,
    StaticDataReader,
    VirtualScheduler,
    virtual_collector,
)
from flowcollect.values import ValueBatch, VariableSpec
from tests.conftest import collector_threads
from tests.reliability.support import wait_until

T0 = 1_699_999_200_000


def context(cid: int, reader: str, interval_ms: int = 100, address: str = "x") -> DataCollectionContext:
    return DataCollectionContext(
        id=cid,
        interval_ms=interval_ms,
        min_interval_ms=10,
        variables=[Variable(id=1, address=address, reader=reader)],
    )


def times(writer: MemoryDataWriter, cid: int | None = None) -> list[int]:
    return [
        round(v.time.timestamp() * 1000) - T0
        for v in writer.snapshot()
        if v.time is not None and (cid is None or v.context_id == cid)
    ]


# -- virtual time ----------------------------------------------------------------------------


def test_an_asynchronous_reader_is_read_at_every_instant_in_virtual_time() -> None:
    writer = MemoryDataWriter()
    reader = AsyncDataReader({"x": 7.0})
    collector, clock = virtual_collector([reader], [writer], start_ms=T0)
    with collector:
        collector.start(context(1, "async"))
        clock.advance_ms(1000)
        stats = collector.stats().readers["async"]
    assert times(writer) == list(range(100, 1001, 100))
    assert {v.value for v in writer.values} == {7.0}
    assert stats.ticks == 10 and stats.values == 10 and stats.errors == 0
    # Both figures: the request's lateness and the time to the value's delivery.
    assert stats.lateness_ms_p99 == 0 and stats.delivery_ms_p99 == 0
    assert reader.opened == 1 and reader.closed == 1


def test_a_failing_asynchronous_read_marks_its_values_and_the_lane_goes_on() -> None:
    class Flaky(AsyncDataReader):
        async def read_batch_async(self, batch: ValueBatch) -> None:
            if len(self.reads) == 2:
                self.reads.append(batch.t_ms)
                raise ConnectionError("device gone")
            await super().read_batch_async(batch)

    writer = MemoryDataWriter()
    collector, clock = virtual_collector([Flaky({"x": 1.0})], [writer], start_ms=T0)
    with collector:
        collector.start(context(1, "async"))
        clock.advance_ms(500)
    errors = [v.error for v in writer.values]
    assert len(errors) == 5
    assert errors[2] is not None and "device gone" in errors[2]
    assert [e for i, e in enumerate(errors) if i != 2] == [None] * 4


def test_delivery_time_counts_the_read_and_lateness_only_its_start() -> None:
    scheduler = VirtualScheduler()

    class Slow(StaticDataReader):
        def read(self, variables: Sequence[CollectedVariable]) -> None:
            scheduler.sleep(0.03)  # a read of 30 ms
            super().read(variables)

    writer = MemoryDataWriter()
    with DataCollector([Slow({"x": 1.0})], [writer], scheduler=scheduler) as collector:
        collector.start(context(1, "static"))
        scheduler.advance_by(1.0)
        stats = collector.stats().readers["static"]
    assert stats.lateness_ms_p99 == 0
    assert stats.delivery_ms_p50 == pytest.approx(30) and stats.delivery_ms_p99 == pytest.approx(30)


class HeldUpScheduler(VirtualScheduler):
    """A busy process in virtual time: while ``holding``, a thread that reads the monotonic
    clock is held up ``hold_ms`` (the GIL, the OS) before its next wall-clock read. Time passes
    meanwhile; the wall clock does not step."""

    def __init__(self) -> None:
        super().__init__()
        self.holding = 0  # held-up readings left
        self.hold_ms = 2500.0
        self._after_monotonic = False

    def monotonic_ms(self) -> float:
        self._after_monotonic = True
        return super().monotonic_ms()

    def wall_ms(self) -> float:
        if self.holding and self._after_monotonic:
            self.holding -= 1
            self.sleep(self.hold_ms / 1000)
        self._after_monotonic = False
        return super().wall_ms()


def test_a_thread_held_up_between_its_clock_reads_is_no_clock_step() -> None:
    scheduler = HeldUpScheduler()
    writer = MemoryDataWriter()
    with DataCollector([StaticDataReader({"x": 1.0})], [writer], scheduler=scheduler) as collector:
        collector.start(context(1, "static"))
        scheduler.advance_by(1.0)
        scheduler.holding = 6  # a few readings, each held up longer than a step
        scheduler.advance_by(10.0)
        stats = collector.stats().readers["static"]
        # The grid never moved: every value on the 100 ms grid, none twice, in order.
        t = [round(v.time.timestamp() * 1000) for v in writer.values if v.time is not None]
        assert stats.clock_steps == 0
        assert scheduler.holding == 0  # the hold-ups happened
        assert all(x % 100 == 0 for x in t) and t == sorted(set(t))
        # And a real step is still seen and re-anchored on, once.
        scheduler.step_wall_ms(60_000)
        scheduler.advance_by(1.0)
        assert collector.stats().readers["static"].clock_steps == 1


class GlitchyScheduler(VirtualScheduler):
    """A wall clock whose next ``glitches`` readings come back 5 s ahead, the clock itself not
    stepping (a reading gone wrong): one such reading must not re-anchor a lane."""

    def __init__(self) -> None:
        super().__init__()
        self.glitches = 0

    def wall_ms(self) -> float:
        if self.glitches:
            self.glitches -= 1
            return super().wall_ms() + 5000
        return super().wall_ms()


def test_one_odd_clock_reading_is_no_step_it_takes_two_sightings() -> None:
    scheduler = GlitchyScheduler()
    writer = MemoryDataWriter()
    with DataCollector([StaticDataReader({"x": 1.0})], [writer], scheduler=scheduler) as collector:
        collector.start(context(1, "static"))
        scheduler.advance_by(1.0)
        for _ in range(5):  # five single odd readings, at different moments of a tick
            scheduler.advance_by(0.13)
            scheduler.glitches = 1
        scheduler.advance_by(1.0)
        assert scheduler.glitches == 0
        assert collector.stats().readers["static"].clock_steps == 0
        scheduler.step_wall_ms(60_000)  # a real step: every reading from now on sees it
        scheduler.advance_by(0.5)
        assert collector.stats().readers["static"].clock_steps == 1
        t = [round(v.time.timestamp() * 1000) for v in writer.values if v.time is not None]
        assert all(x % 100 == 0 for x in t) and t == sorted(set(t))


# -- the real clock: which thread runs what -------------------------------------------------


@pytest.mark.realtime
def test_asynchronous_readers_run_on_the_loop_and_synchronous_ones_on_workers(
    no_leftover_threads: None,
) -> None:
    reader = AsyncDataReader({"x": 1.0})
    calls: list[str] = []

    class Sync(StaticDataReader):
        def read(self, variables: Sequence[CollectedVariable]) -> None:
            calls.append(threading.current_thread().name)
            super().read(variables)

    writer = MemoryDataWriter()
    with DataCollector([reader, Sync({"x": 2.0})], [writer]) as collector:
        collector.start(context(1, "async", 20))
        collector.start(context(2, "static", 20))
        assert wait_until(lambda: len(reader.reads) >= 5 and len(calls) >= 5)
        stats = collector.stats().readers
    assert reader.threads == {"flowcollect-loop"}
    assert {name.rsplit("-", 1)[0] for name in calls} == {"flowcollect-worker"}
    assert stats["async"].delivery_ms_p50 is not None and stats["static"].delivery_ms_p50 is not None
    assert reader.opened == 1 and reader.closed == 1


@pytest.mark.realtime
def test_threads_do_not_grow_with_lanes_and_a_blocking_reader_stalls_no_other(
    no_leftover_threads: None,
) -> None:
    release = threading.Event()

    class Blocking(StaticDataReader):
        def read(self, variables: Sequence[CollectedVariable]) -> None:
            release.wait(10)
            super().read(variables)

    readers: list[StaticDataReader | AsyncDataReader] = [Blocking({"x": 0.0}, type="blocking")]
    readers += [StaticDataReader({"x": 1.0}, type=f"sync{n}") for n in range(60)]
    readers += [AsyncDataReader({"x": 2.0}, type=f"async{n}") for n in range(60)]
    writer = MemoryDataWriter()
    collector = DataCollector(readers, [writer], reader_workers=4)
    try:
        for n, r in enumerate(readers, 1):
            collector.start(context(n, r.type, 50))
        # Every lane but the blocked one is read, again and again, with 4 workers for 61
        # synchronous lanes and one of them held by the blocked read.
        assert wait_until(lambda: len({v.context_id for v in writer.snapshot()}) == len(readers) - 1, 10)
        seen = len(writer.snapshot())
        assert wait_until(lambda: len(writer.snapshot()) >= seen + 4 * (len(readers) - 1), 10)
        names = {t.name for t in collector_threads()}
        workers = {n for n in names if n.startswith("flowcollect-worker-")}
        assert len(workers) <= 4
        assert names - workers <= {
            "flowcollect-loop",
            "flowcollect-timer",
            "flowcollect-writer-MemoryDataWriter",
        }
    finally:
        release.set()
        collector.close()


@pytest.mark.realtime
def test_close_abandons_a_hung_asynchronous_read_within_its_bound(no_leftover_threads: None) -> None:
    class Hung(AsyncDataReader):
        async def read_batch_async(self, batch: ValueBatch) -> None:
            self.reads.append(batch.t_ms)
            await __import__("asyncio").sleep(60)

    hung = Hung({"x": 1.0}, type="hung")
    fine = AsyncDataReader({"x": 1.0}, type="fine")
    writer = MemoryDataWriter()
    collector = DataCollector([hung, fine], [writer], close_timeout_s=0.5)
    collector.start(context(1, "hung", 50))
    collector.start(context(2, "fine", 50))
    assert wait_until(lambda: hung.reads and len(fine.reads) >= 3)
    began = time.monotonic()
    collector.close()
    assert time.monotonic() - began < 1.0
    assert hung.aborted == 1 and hung.closed == 0  # abandoned: its connection let go by abort
    assert fine.closed == 1 and fine.aborted == 0


def test_a_lane_cannot_mix_asynchronous_and_synchronous_readers() -> None:
    class OnLine(AsyncDataReader):
        @property
        def lane(self) -> str | None:
            return "line:x"

    class SyncOnLine(StaticDataReader):
        @property
        def lane(self) -> str | None:
            return "line:x"

    with pytest.raises(ConfigError, match="lane 'line:x' mixes asynchronous readers"):
        DataCollector([OnLine({"x": 1.0}), SyncOnLine({"x": 1.0})], [])
    with pytest.raises(ConfigError, match="reader_workers must be a positive number"):
        DataCollector([StaticDataReader({"x": 1.0})], [], reader_workers=0)


@pytest.mark.realtime
def test_the_async_reader_example_reads(no_leftover_threads: None) -> None:
    """The asynchronous reader of docs/plugins.md, as printed, against a line server."""
    import re
    import socketserver
    from pathlib import Path

    page = (Path(__file__).parents[2] / "docs" / "plugins.md").read_text(encoding="utf-8")
    block = next(
        b for b in re.findall(r"```python\n(.*?)```", page, re.S) if b.startswith('"""An asynchronous reader')
    )
    namespace: dict[str, object] = {}
    exec(compile(block, "plugins.md", "exec"), namespace)  # noqa: S102 - the page's own example

    class Lines(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            for line in self.rfile:
                address = line.decode().split()[1]
                self.wfile.write(b"42.5\n" if address == "temp" else b"oops\n")

    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), Lines) as server:
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        reader = namespace["LineProtocolReader"]("127.0.0.1", server.server_address[1])  # type: ignore[operator]
        writer = MemoryDataWriter()
        with DataCollector([reader], [writer]) as collector:
            collector.start(
                DataCollectionContext(
                    id=1,
                    interval_ms=50,
                    min_interval_ms=10,
                    variables=[
                        Variable(id=1, address="temp", reader="line"),
                        Variable(id=2, address="bad", reader="line"),
                    ],
                )
            )
            assert wait_until(lambda: len(writer.snapshot()) >= 6)
        server.shutdown()
    values = writer.snapshot()
    assert {v.value for v in values if v.id == 1} == {42.5}
    assert all(v.value is None and v.error == "not a number: b'oops\\n'" for v in values if v.id == 2)


class HungReader(StaticDataReader):
    """Hangs in its first read until ``release`` is set (a device that never answers)."""

    def __init__(self, type: str, release: threading.Event) -> None:  # noqa: A002
        super().__init__({"x": 1.0}, type=type)
        self.release = release
        self.entered = threading.Event()
        self.aborted = 0

    def read(self, variables: Sequence[CollectedVariable]) -> None:
        self.entered.set()
        self.release.wait(30)
        super().read(variables)

    def abort(self) -> None:
        self.aborted += 1


@pytest.mark.realtime
def test_hung_synchronous_readers_do_not_starve_the_pool() -> None:
    # A pool of 2 and five hung devices: stuck workers stop counting after STUCK_S, so the
    # other lanes get workers again and go on.
    release = threading.Event()
    hung = [HungReader(f"hung{n}", release) for n in range(5)]
    fine = [StaticDataReader({"x": 2.0}, type=f"fine{n}") for n in range(5)]
    writer = MemoryDataWriter()
    collector = DataCollector([*hung, *fine], [writer], reader_workers=2, close_timeout_s=1.0)
    try:
        for n, r in enumerate([*hung, *fine], 1):
            collector.start(context(n, r.type, 100))
        assert wait_until(lambda: all(r.entered.is_set() for r in hung), 10)
        assert wait_until(lambda: all(len(r.reads) >= 5 for r in fine), 10)
    finally:
        collector.close()
        release.set()
    assert [r.aborted for r in hung] == [1] * 5 and [r.closed for r in hung] == [0] * 5
    assert [r.closed for r in fine] == [1] * 5


@pytest.mark.realtime
def test_close_of_two_thousand_lanes_a_hundred_hung_stays_within_its_bound() -> None:
    release = threading.Event()
    hung = [HungReader(f"hung{n}", release) for n in range(100)]
    fine = [StaticDataReader({"x": 2.0}, type=f"fine{n}") for n in range(1900)]
    readers = [*hung, *fine]
    writer = MemoryDataWriter()
    collector = DataCollector(readers, [writer], close_timeout_s=2.0)
    try:
        collector.start(
            DataCollectionContext(
                id=1,
                interval_ms=1000,
                variables=[Variable(id=n, address="x", reader=r.type) for n, r in enumerate(readers, 1)],
            )
        )
        assert wait_until(lambda: all(r.entered.is_set() for r in hung), 15)
        assert wait_until(lambda: len({v.id for v in writer.snapshot()}) == len(fine), 15)
        began = time.monotonic()
        collector.close()
        took = time.monotonic() - began
    finally:
        release.set()
    assert took < 2.0 + 1.0, took  # the bound, plus the constant close() promises
    assert sum(r.aborted for r in hung) == 100 and not any(r.closed for r in hung)
    assert all(r.closed == 1 for r in fine)


@pytest.mark.realtime
def test_a_pushing_asynchronous_reader_lives_on_the_loop_and_is_sampled_from_what_it_pushed(
    no_leftover_threads: None,
) -> None:
    """A subscription whose client lives on the engine's loop: every call the engine makes (open,
    start_pushing, plan_changed, close) and every push come on the loop thread, and due instants
    sample what was pushed; read_batch_async is never awaited for it."""
    import asyncio

    from flowcollect.readers.base import engine_loop

    class Subscribing(AsyncDataReader):
        def __init__(self) -> None:
            super().__init__({}, type="sub")
            self.emit: Callable[[ValueBatch], None] | None = None
            self.pushing: asyncio.Task[None] | None = None
            self.watched: Sequence[VariableSpec] = ()
            self.on_engine_loop = False

        @property
        def pushes(self) -> bool:
            return True

        def start_pushing(self, emit: Callable[[ValueBatch], None]) -> None:
            self.threads.add(threading.current_thread().name)
            self.on_engine_loop = engine_loop() is asyncio.get_running_loop()
            self.emit = emit
            self.pushing = asyncio.get_running_loop().create_task(self._push())

        def plan_changed(self, variables: Sequence[VariableSpec]) -> None:
            super().plan_changed(variables)
            self.watched = variables

        async def _push(self) -> None:
            n = 0
            while True:
                n += 1
                if self.emit is not None and self.watched:
                    self.threads.add(threading.current_thread().name)
                    specs = list(self.watched)
                    self.emit(ValueBatch(0, specs, [float(n)] * len(specs), reader="sub"))
                await asyncio.sleep(0.01)

        def close(self) -> None:
            super().close()
            if self.pushing is not None:
                self.pushing.cancel()

    reader = Subscribing()
    writer = MemoryDataWriter()
    with DataCollector([reader], [writer]) as collector:
        collector.start(context(1, "sub", 50))
        assert wait_until(lambda: sum(v.error is None for v in writer.snapshot()) >= 5)
        collector.stop(1)
    assert reader.threads == {"flowcollect-loop"}
    assert reader.reads == []  # sampled from the store, never read
    assert reader.on_engine_loop and engine_loop() is None  # the engine's loop says so, here none
    sampled = [v.value for v in writer.snapshot() if v.error is None]
    assert sampled == sorted(sampled) and len(set(sampled)) == len(sampled)  # fresh pushes each instant
    assert reader.opened == 1 and reader.closed == 1


@pytest.mark.realtime
def test_the_loop_lets_a_readers_closing_task_end_and_cancels_one_past_its_bound(
    no_leftover_threads: None,
) -> None:
    """close() on the loop must not wait: a reader leaves its goodbye to a ``closing_task``. The
    loop lets it end before it stops; one that hangs is cancelled at its own bound, its cleanup
    (``finally``) runs, and the collector's close stays within its bound."""
    import asyncio

    from flowcollect.readers.base import closing_task

    log: list[str] = []

    class Goodbye(AsyncDataReader):
        def __init__(self, type: str, goodbye_s: float) -> None:  # noqa: A002
            super().__init__({"x": 1.0}, type=type)
            self.goodbye_s = goodbye_s

        def close(self) -> None:
            super().close()
            closing_task(self._goodbye(), self.type, 0.5)

        async def _goodbye(self) -> None:
            try:
                await asyncio.sleep(self.goodbye_s)
                log.append(f"{self.type}: said goodbye")
            finally:
                log.append(f"{self.type}: socket closed")

    quick, hung = Goodbye("quick", 0.2), Goodbye("hung", 60)
    collector = DataCollector([quick, hung], [MemoryDataWriter()], close_timeout_s=5.0)
    collector.start(context(1, "quick", 50))
    collector.start(context(2, "hung", 50))
    assert wait_until(lambda: len(quick.reads) >= 2 and len(hung.reads) >= 2)
    began = time.monotonic()
    collector.close()
    elapsed = time.monotonic() - began
    assert sorted(log) == ["hung: socket closed", "quick: said goodbye", "quick: socket closed"]
    assert 0.2 <= elapsed < 0.5 + 0.5, elapsed  # the quick goodbye waited for, the hung one cut at 0.5 s


@pytest.mark.realtime
def test_the_lane_awaits_what_an_asynchronous_readers_plan_changed_returns(
    no_leftover_threads: None,
) -> None:
    """An asynchronous reader cannot wait in plan_changed (the loop's): it returns an awaitable
    (items created, first values in), and the lane's first tick of the plan comes after it."""
    import asyncio

    class Preparing(AsyncDataReader):
        ready_at: float | None = None

        def plan_changed(self, variables: Sequence[VariableSpec]) -> asyncio.Task[None] | None:
            super().plan_changed(variables)
            return asyncio.get_running_loop().create_task(self._prepare()) if variables else None

        async def _prepare(self) -> None:
            await asyncio.sleep(0.3)
            self.ready_at = time.time() * 1000

    reader = Preparing({"x": 1.0})
    writer = MemoryDataWriter()
    with DataCollector([reader], [writer]) as collector:
        started = time.time() * 1000
        collector.start(context(1, "async", 20))
        assert wait_until(lambda: len(reader.reads) >= 3)
        collector.stop(1)
    assert reader.ready_at is not None and reader.ready_at - started >= 300
    assert reader.reads[0] >= reader.ready_at - 1  # no tick read before the reader was ready
    assert reader.threads == {"flowcollect-loop"}


def test_stats_computes_a_readers_figures_only_when_looked_at() -> None:
    # stats() of thousands of lanes must not snapshot every reader: each reader's figures (its
    # percentiles, its plugin's own counters) are made when first looked at, then kept.
    calls: list[str] = []

    class Counting(StaticDataReader):
        def stats(self) -> dict[str, float]:
            calls.append(self.type)
            return {"own": 1.0}

    readers = [Counting({"x": 1.0}, type=f"r{i}") for i in range(3)]
    collector, clock = virtual_collector(readers, [MemoryDataWriter()], start_ms=T0)
    with collector:
        collector.start(context(1, "r0"))
        collector.start(context(2, "r1"))
        clock.advance_ms(300)
        stats = collector.stats()
        assert calls == []
        assert list(stats.readers) == ["r0", "r1"] and len(stats.readers) == 2  # r2: never wanted
        assert "r1" in stats.readers and "r2" not in stats.readers
        with pytest.raises(KeyError):
            stats.readers["r2"]
        assert stats.readers["r1"].ticks == 3 and stats.readers["r1"].extra == {"own": 1.0}
        assert stats.readers["r1"] is stats.readers["r1"]
        assert calls == ["r1"]


class _SendingReader(AsyncDataReader):
    """An asynchronous reader whose class writes at the instant (``send_batch``): what the engine
    called, in order, into a log shared by every reader of the test."""

    def __init__(self, name: str, log: list[tuple[str, str, int, int]]) -> None:
        super().__init__({"x": 1.0}, type=name, lane=name)
        self.log = log

    def send_batch(self, batch: ValueBatch) -> None:
        self.log.append(("send", self.type, batch.t_ms, id(batch)))

    async def read_batch_async(self, batch: ValueBatch) -> None:
        self.log.append(("read", self.type, batch.t_ms, id(batch)))
        await super().read_batch_async(batch)


def test_every_due_lane_sends_at_the_instant_before_any_lane_reads(no_leftover_threads: None) -> None:
    # One timer per instant for every lane due at it: each lane's send_batch (its request
    # written) comes before any lane's read is awaited, and the read takes the batch it sent.
    log: list[tuple[str, str, int, int]] = []
    names = [f"lane{i}" for i in range(20)]
    readers = [_SendingReader(name, log) for name in names]
    writer = MemoryDataWriter()
    contexts = DataCollectionContext(
        id=1,
        interval_ms=100,
        min_interval_ms=10,
        variables=[Variable(id=i + 1, address="x", reader=name) for i, name in enumerate(names)],
    )
    with DataCollector(readers, [writer]) as collector:
        collector.start(contexts)
        assert wait_until(lambda: len({t for _, _, t, _ in log}) >= 4, timeout_s=5.0)
    instants = sorted({t for _, _, t, _ in log})[:-1]  # the last may have been cut by the close
    assert len(instants) >= 3
    for t in instants:
        at = [(kind, name, batch) for kind, name, when, batch in log if when == t]
        kinds = [kind for kind, _, _ in at]
        assert kinds == ["send"] * len(names) + ["read"] * len(names), t
        sent = {name: batch for kind, name, batch in at if kind == "send"}
        assert {name: batch for kind, name, batch in at if kind == "read"} == sent
