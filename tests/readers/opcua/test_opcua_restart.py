"""Self-healing against a simulator process that tests kill, freeze and restart on the same port."""

from __future__ import annotations

import os
import signal
import time

import pytest
from opcua_helpers import Pushed, ServerProcess, free_port, read, specs, wait_for

from flowcollect.readers import OpcUaDataReader
from flowcollect.simulator.opcua import NAMESPACE_URI, OpcUaSimulator
from flowcollect.values import VariableSpec

pytestmark = pytest.mark.server


def first_good_tick(
    reader: OpcUaDataReader, wanted: list[VariableSpec], interval_s: float, ticks: int
) -> int | None:
    """Read at ``interval_s`` for up to ``ticks`` ticks; the number of the first all-good one."""
    start = time.monotonic()
    for tick in range(1, ticks + 1):
        time.sleep(max(0.0, start + tick * interval_s - time.monotonic()))
        if read(reader, wanted).errors == [None] * len(wanted):
            return tick
    return None


def test_server_down_at_start_gives_errors_then_values(server_process: ServerProcess) -> None:
    port = free_port()
    reader = OpcUaDataReader("plc", f"opc.tcp://127.0.0.1:{port}/flowcollect", timeout_s=1.0)
    reader.open()
    try:
        wanted = specs([OpcUaSimulator.browse_path("Line1/Counter")], "int")
        batch = read(reader, wanted)
        assert batch.values == [None]
        assert batch.errors[0] is not None
        assert batch.errors[0].startswith("not connected (opcua reader 'plc'): ")
        server_process.port = port
        server_process.start(cli=True)  # `flowcollect simulate --opcua`, the command users run
        # Values within two 1-second ticks of the server's return, plus the handshake with a
        # server that has just started (a refused connection is retried every 0.5 s at most).
        assert first_good_tick(reader, wanted, 1.0, 8) in (1, 2, 3, 4)
        assert reader.stats()["connect_failures"] >= 1
        # The command ends cleanly on SIGTERM, without asyncua's start-up chatter in its log.
        code, log = server_process.terminate()
        assert code == 0, log
        assert "Traceback" not in log and len(log.splitlines()) < 20
    finally:
        reader.close()


@pytest.mark.slow  # 6-8 s of real processes: make test-slow (CI) runs it
def test_a_restart_that_renumbers_is_followed_by_browse_paths(server_process: ServerProcess) -> None:
    server_process.start()
    reader = OpcUaDataReader("plc", server_process.endpoint, timeout_s=1.0)
    pushing = OpcUaDataReader("plc", server_process.endpoint, timeout_s=1.0, mode="subscribe")
    pushed = Pushed()
    by_path = [
        OpcUaSimulator.browse_path("Line1/Counter"),
        f"nsu={NAMESPACE_URI};s=Types.Int16",
        f"/{{{NAMESPACE_URI}}}Plant/{{{NAMESPACE_URI}}}Types/{{{NAMESPACE_URI}}}Double",
    ]
    wanted = [*specs(by_path, "int"), VariableSpec(9, 1, "ns=2;i=1003", "int", "opc", 100)]
    wanted[2] = VariableSpec(3, 1, by_path[2], "float", "opc", 100)
    try:
        reader.open()
        pushing.open()
        assert reader.wait_connected(15) and pushing.wait_connected(15)
        pushing.start_pushing(pushed)
        pushing.plan_changed([VariableSpec(1, 1, by_path[0], "int", "opc", 100)])
        before = read(reader, wanted)
        assert before.errors == [None] * 4
        assert before.values[1:3] == [-1234, 2.25]
        assert wait_for(lambda: len(pushed.values(1)) >= 2, 10)

        server_process.stop()
        assert wait_for(lambda: not reader.connected, 10)
        down = read(reader, wanted)
        assert all(e is not None and e.startswith("not connected (opcua reader 'plc')") for e in down.errors)
        assert down.values == [None] * 4
        assert wait_for(lambda: any(e.startswith("not connected") for e in pushed.errors(1)), 10)

        # The same server comes back with one more namespace before ours and other numeric ids.
        server_process.start("--extra-namespaces", "1", "--id-offset", "100")
        assert wait_for(lambda: read(reader, wanted).errors[:3] == [None] * 3, 15)
        after = read(reader, wanted)
        assert after.values[1:3] == [-1234, 2.25]
        # The numeric id named a node of the old numbering: an error, not someone else's value.
        assert after.values[3] is None and after.errors[3] == "BadNodeIdUnknown"
        mark = len(pushed.batches)
        assert wait_for(lambda: any(cv.error is None for b in pushed.batches[mark:] for cv in b), 15)
        assert reader.stats()["reconnects"] >= 1
        assert pushing.stats()["subscriptions_created"] >= 2
    finally:
        reader.close()
        pushing.close()


@pytest.mark.slow  # 6-8 s of real processes: make test-slow (CI) runs it
def test_a_frozen_server_gives_timeouts_then_values_and_close_stays_bounded(
    server_process: ServerProcess,
) -> None:
    server_process.start()
    reader = OpcUaDataReader("plc", server_process.endpoint, timeout_s=0.5)
    pushing = OpcUaDataReader("plc-sub", server_process.endpoint, timeout_s=0.5, mode="subscribe")
    pushed = Pushed()
    wanted = specs([OpcUaSimulator.browse_path("Line1/Counter")], "int")
    pid = server_process.pid
    try:
        reader.open()
        pushing.open()
        assert reader.wait_connected(15) and pushing.wait_connected(15)
        pushing.start_pushing(pushed)
        pushing.plan_changed(wanted)
        assert read(reader, wanted).errors == [None]
        assert wait_for(lambda: len(pushed.values(1)) >= 1, 10)
        os.kill(pid, signal.SIGSTOP)  # a cut network: the socket stays, nothing answers
        started = time.monotonic()
        frozen = read(reader, wanted)
        assert time.monotonic() - started < 0.5 + 1.0
        assert frozen.values == [None] and frozen.errors[0] is not None
        assert wait_for(lambda: read(reader, wanted).errors[0].startswith("not connected"), 10)  # type: ignore[union-attr]
        # The subscriber hears nothing more, and says so (its session watchdog): errors, not silence.
        assert wait_for(
            lambda: any(e.startswith("not connected (opcua reader 'plc-sub')") for e in pushed.errors(1)), 15
        )
        os.kill(pid, signal.SIGCONT)
        assert wait_for(lambda: read(reader, wanted).errors == [None], 20)
        mark = len(pushed.batches)
        assert wait_for(lambda: any(cv.error is None for b in pushed.batches[mark:] for cv in b), 20)
        os.kill(pid, signal.SIGSTOP)
        time.sleep(0.2)
        for closing in (reader, pushing):
            started = time.monotonic()
            closing.close()
            assert time.monotonic() - started < 0.5 * 2 + 1.0 + 0.5 + 1.0
    finally:
        os.kill(pid, signal.SIGCONT)
        reader.close()
        pushing.close()
