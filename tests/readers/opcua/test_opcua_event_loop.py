"""The OPC UA reader's client on the engine's event loop (issue 23): under a ``DataCollector`` the
asyncua client of every reader (connects, reconnects, polled reads, subscriptions, keep-alives,
goodbyes) runs on the collector's one loop thread, with no thread of the reader's. Real asyncua
servers: the in-process simulator, and a simulator process the tests kill, restart and freeze."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from opcua_helpers import ServerProcess, free_port, read, specs, wait_for

from flowcollect import DataCollectionContext, DataCollector, Variable
from flowcollect.readers import OpcUaDataReader
from flowcollect.simulator.opcua import OpcUaSimulator
from flowcollect.values import ValueBatch
from flowcollect.writers.memory import MemoryDataWriter
from tests.conftest import collector_threads

pytestmark = pytest.mark.realtime


def counter(reader: str, cid: int = 1, **extra: object) -> DataCollectionContext:
    interval = extra.pop("interval_ms", 100)
    return DataCollectionContext(
        id=cid,
        interval_ms=interval,  # type: ignore[arg-type]
        duration_s=120,
        variables=[
            Variable(
                id=1,
                address=OpcUaSimulator.browse_path("Line1/Counter"),
                value_type="int",
                reader=reader,
                **extra,  # type: ignore[arg-type]
            )
        ],
    )


def grid_gaps(writer: MemoryDataWriter, cid: int, interval_ms: int) -> list[int]:
    """The instants of the grid between a context's first and last value that have no row."""
    times = sorted(
        {round(v.time.timestamp() * 1000) for v in writer.snapshot() if v.context_id == cid and v.time}
    )
    if not times:
        return []
    wanted = range(times[0], times[-1] + 1, interval_ms)
    have = set(times)
    return [t for t in wanted if t not in have]


def rows(writer: MemoryDataWriter, cid: int) -> int:
    return sum(1 for v in writer.snapshot() if v.context_id == cid)


def established_to(port: int) -> int:
    """TCP connections of this machine in state ESTABLISHED whose remote port is ``port``
    (the client side of connections to a server there)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            remote, state = fields[2], fields[3]
            if state == "01" and int(remote.rsplit(":", 1)[1], 16) == port:
                count += 1
    return count


def opcua_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("flowcollect-opcua")]


def new_threads(before: set[threading.Thread]) -> list[str]:
    return sorted(t.name for t in collector_threads() if t not in before)


def test_every_readers_client_runs_on_the_engines_loop_thread_and_reads_every_instant(
    sim: OpcUaSimulator, no_leftover_threads: None
) -> None:
    seen: dict[int, list[str]] = {}
    for n in (1, 4):
        # Readers of other endpoint paths of one server: a lane each (the lane is the endpoint).
        readers = [
            OpcUaDataReader(f"opc{k}", sim.endpoint + (f"/lane{k}" if k else ""), timeout_s=2.0)
            for k in range(n)
        ]
        writer = MemoryDataWriter()
        before = set(collector_threads())
        with DataCollector(readers=readers, writers=[writer]) as collector:
            for k in range(n):
                collector.start(counter(f"opc{k}", k + 1, interval_ms=200))
            assert wait_for(lambda w=writer, n=n: all(rows(w, k + 1) >= 10 for k in range(n)), 20)  # type: ignore[misc]
            seen[n] = new_threads(before)
            assert not opcua_threads(), opcua_threads()
            assert all(r.connected for r in readers)
            for k in range(n):
                collector.stop(k + 1)
            stats = collector.stats()
        # Threads do not grow with the readers: the loop, the timer and the writer's, for 1 or 4.
        assert not any(name.startswith("flowcollect-worker") for name in seen[n]), seen[n]
        values = writer.snapshot()
        # The first read awaited the connect: every instant from the first one has its value.
        assert all(v.error is None for v in values), {v.error for v in values}
        for k in range(n):
            assert grid_gaps(writer, k + 1, 200) == []
            assert stats.contexts[k + 1].missed_instants == 0
            assert stats.readers[f"opc{k}"].extra["connects"] == 1
    assert seen[1] == seen[4]


@pytest.mark.server
@pytest.mark.slow
def test_a_server_killed_and_restarted_mid_run_is_reconnected_on_the_loop(
    server_process: ServerProcess, no_leftover_threads: None
) -> None:
    server_process.start()
    reader = OpcUaDataReader("plc", server_process.endpoint, timeout_s=1.0)
    pushing = OpcUaDataReader("sub", server_process.endpoint + "/sub", mode="subscribe", timeout_s=1.0)
    writer = MemoryDataWriter()

    def good(cid: int, since: int = 0) -> int:
        return sum(v.context_id == cid and v.error is None for v in writer.snapshot()[since:])

    with DataCollector(readers=[reader, pushing], writers=[writer]) as collector:
        collector.start(counter("plc", 1, interval_ms=200))
        collector.start(counter("sub", 2, interval_ms=200))
        assert wait_for(lambda: good(1) >= 3 and good(2) >= 3, 20)
        server_process.stop()  # killed: no goodbye
        assert wait_for(
            lambda: {v.context_id for v in writer.snapshot() if v.error is not None} == {1, 2}, 10
        )
        assert not reader.connected and not pushing.connected
        server_process.start()
        mark = len(writer.snapshot())
        assert wait_for(lambda: good(1, mark) >= 3 and good(2, mark) >= 3, 30)
        assert not opcua_threads()
        collector.stop(1)
        collector.stop(2)
        stats = collector.stats()
    values = writer.snapshot()
    for cid, name in ((1, "plc"), (2, "sub")):
        rows_of = [v for v in values if v.context_id == cid]
        errors = [v for v in rows_of if v.error is not None]
        assert all(e.value is None for e in errors)
        assert any(f"not connected (opcua reader {name!r})" in (e.error or "") for e in errors)
        # Every instant has a row, a value or the reason there is none, and the counts agree.
        assert grid_gaps(writer, cid, 200) == []
        figures = stats.readers[name]
        assert figures.errors == len(errors)
        assert figures.values == len(rows_of)
        assert figures.extra["reconnects"] >= 1
        assert figures.extra["connects"] >= 2
    assert stats.readers["sub"].extra["subscriptions_created"] >= 2


def test_a_subscription_runs_on_the_loop_beside_polled_reads(
    sim: OpcUaSimulator, no_leftover_threads: None
) -> None:
    # A subscribing reader and a polling one of the same server: one lane, both on the loop.
    pushing = OpcUaDataReader("sub", sim.endpoint, mode="subscribe", timeout_s=2.0)
    polling = OpcUaDataReader("poll", sim.endpoint, timeout_s=2.0)
    writer = MemoryDataWriter()
    sim.set_value("Line1/Setpoint", 11.0)
    setpoint = sim.node_id("Line1/Setpoint")
    changes = DataCollectionContext(
        id=2,
        interval_ms=1000,
        duration_s=120,
        variables=[Variable(id=1, address=setpoint, value_type="float", reader="sub", report="change")],
    )
    with DataCollector(readers=[pushing, polling], writers=[writer]) as collector:
        collector.start(counter("sub", 1, interval_ms=200))
        collector.start(counter("poll", 3, interval_ms=200))
        collector.start(changes)
        assert wait_for(lambda: any(v.context_id == 2 and v.value == 11.0 for v in writer.snapshot()), 15)
        for value in (12.0, 13.0, 14.0):
            sim.set_value("Line1/Setpoint", value)
            time.sleep(0.3)
        assert wait_for(lambda: any(v.context_id == 2 and v.value == 14.0 for v in writer.snapshot()), 10)
        assert wait_for(
            lambda: sum(v.context_id == 1 and v.error is None for v in writer.snapshot()) >= 10, 15
        )
        assert not opcua_threads()
        assert pushing.stats()["monitored_items"] == 2
        assert collector.stats().readers["sub"].lane == collector.stats().readers["poll"].lane
        for cid in (1, 2, 3):
            collector.stop(cid)
    values = writer.snapshot()
    assert [v.value for v in values if v.context_id == 2 and v.value in (12.0, 13.0, 14.0)] == [
        12.0,
        13.0,
        14.0,
    ]
    sampled = [v.value for v in values if v.context_id == 1 and v.error is None]
    polled = [v.value for v in values if v.context_id == 3 and v.error is None]
    assert len(sampled) >= 10 and sampled == sorted(sampled)  # held and sampled, never backwards
    # The lane awaited the items and their first values (plan_changed's awaitable) before its
    # first tick: the first instant has its value, not "no value pushed yet" or "not connected".
    first = min((v for v in values if v.context_id == 1), key=lambda v: v.time or 0)  # type: ignore[arg-type,return-value]
    assert first.error is None, first.error
    assert len(polled) >= 10 and polled == sorted(polled)
    assert grid_gaps(writer, 1, 200) == [] and grid_gaps(writer, 3, 200) == []
    assert pushing.stats()["monitored_items"] == 0  # closed


@pytest.mark.server
def test_a_server_down_at_start_gives_errors_on_the_loop_then_values(
    server_process: ServerProcess, no_leftover_threads: None
) -> None:
    port = free_port()
    endpoint = f"opc.tcp://127.0.0.1:{port}/flowcollect"
    polling = OpcUaDataReader("poll", endpoint, timeout_s=1.0)
    pushing = OpcUaDataReader("sub", endpoint + "/sub", mode="subscribe", timeout_s=1.0)
    writer = MemoryDataWriter()
    with DataCollector(readers=[polling, pushing], writers=[writer]) as collector:
        collector.start(counter("poll", 1, interval_ms=200))
        collector.start(counter("sub", 2, interval_ms=200))

        def refused(cid: int) -> bool:
            return any(
                v.context_id == cid and v.error is not None and v.error.endswith("connection refused")
                for v in writer.snapshot()
            )

        assert wait_for(lambda: refused(1) and refused(2), 10)
        server_process.port = port
        server_process.start()
        assert wait_for(lambda: {v.context_id for v in writer.snapshot() if v.error is None} == {1, 2}, 20)
        assert not opcua_threads()
        for cid in (1, 2):
            collector.stop(cid)
    for cid in (1, 2):
        assert grid_gaps(writer, cid, 200) == []
        rows_of = [v for v in writer.snapshot() if v.context_id == cid]
        # Errors first, then values: never a value before the server was there.
        first_good = next(i for i, v in enumerate(rows_of) if v.error is None)
        assert all(v.error is not None for v in rows_of[:first_good])
    assert polling.stats()["connect_failures"] >= 1 and pushing.stats()["connect_failures"] >= 1


@pytest.mark.server
def test_close_with_a_hung_server_ends_within_its_bound_and_lets_go_of_the_sockets(
    server_process: ServerProcess, no_leftover_threads: None
) -> None:
    server_process.start()
    timeout_s = 0.5
    polling = OpcUaDataReader("poll", server_process.endpoint, timeout_s=timeout_s)
    pushing = OpcUaDataReader("sub", server_process.endpoint + "/sub", mode="subscribe", timeout_s=timeout_s)
    writer = MemoryDataWriter()
    pid = server_process.pid
    collector = DataCollector(readers=[polling, pushing], writers=[writer], close_timeout_s=10.0)
    try:
        collector.start(counter("poll", 1))
        collector.start(counter("sub", 2))
        assert wait_for(lambda: {v.context_id for v in writer.snapshot() if v.error is None} == {1, 2}, 20)
        assert established_to(server_process.port) == 2
        os.kill(pid, signal.SIGSTOP)  # the server answers nothing more; its sockets stay open
        time.sleep(0.2)
        started = time.monotonic()
        collector.close()
        elapsed = time.monotonic() - started
        # The readers' goodbyes are bounded by their own timeouts (2 x 0.5 s + 0.5 s), far
        # within the collector's 10 s, and the sockets are closed, not left to the server.
        assert elapsed < timeout_s * 2 + 0.5 + 1.5, elapsed
        assert established_to(server_process.port) == 0
        assert not polling.connected and not pushing.connected
    finally:
        os.kill(pid, signal.SIGCONT)
        collector.close()


def test_opened_on_an_event_loop_not_the_engines_the_reader_keeps_its_own_thread(
    sim: OpcUaSimulator, no_leftover_threads: None
) -> None:
    """A notebook or a user's asyncio program calls the reader on a loop of its own: the client
    then lives on the reader's loop thread, so the synchronous calls still work there (they
    would otherwise wait for the very loop they hold), and read_batch_async too."""

    async def main() -> None:
        reader = OpcUaDataReader("nb", sim.endpoint, timeout_s=2.0)
        reader.open()
        try:
            assert opcua_threads() == ["flowcollect-opcua-nb"]
            wanted = specs([sim.node_id("Types/Double")])
            assert read(reader, wanted).values == [2.25]
            batch = ValueBatch(0, list(wanted), reader="nb")
            await reader.read_batch_async(batch)
            assert (batch.values, batch.errors) == ([2.25], [None])
        finally:
            reader.close()
        assert not opcua_threads()

    asyncio.run(main())


@pytest.mark.server
def test_a_read_hung_past_the_close_deadline_is_abandoned_and_its_socket_closed(
    server_process: ServerProcess, no_leftover_threads: None
) -> None:
    """The collector's close deadline (0.5 s) is shorter than the read's own bound (2.5 s): the
    lane is abandoned with its read in flight, the read is cancelled on the loop and abort()
    closes the socket there, without a goodbye."""
    server_process.start()
    reader = OpcUaDataReader("plc", server_process.endpoint, timeout_s=2.0)
    writer = MemoryDataWriter()
    pid = server_process.pid
    collector = DataCollector(readers=[reader], writers=[writer], close_timeout_s=0.5)
    try:
        collector.start(counter("plc"))
        assert wait_for(lambda: sum(v.error is None for v in writer.snapshot()) >= 3, 20)
        assert established_to(server_process.port) == 1
        os.kill(pid, signal.SIGSTOP)
        time.sleep(0.3)  # a read is now waiting for the frozen server
        started = time.monotonic()
        collector.close()
        assert time.monotonic() - started < 0.5 + 1.0
        assert wait_for(lambda: established_to(server_process.port) == 0, 2)
        assert not reader.connected
    finally:
        os.kill(pid, signal.SIGCONT)
        collector.close()
