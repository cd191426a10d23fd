"""OPC UA polled through the engine: the client on the engine's loop against a loop thread each.

Prints one JSON object. A few readers (``--readers``, each one lane: an endpoint path of its own
on one simulator process) poll ``--nodes`` Double nodes each every ``--interval-ms`` through a
``DataCollector`` into a writer that only counts, for ``--seconds`` per run, in two ways,
alternated ``--rounds`` times (a neighbour's burst then hits both alike):

- ``loop``: ``OpcUaDataReader`` as the engine drives it now: its asyncua client on the
  collector's event loop, ``read_batch_async`` awaited there, no thread of the reader's.
- ``thread``: the same reader behind a synchronous wrapper (``read_batch`` on a pool worker,
  which hops to the reader's own loop thread and back): the path before issue 23.

``--only subscribe``: the same readers subscribed instead (``mode="subscribe"``; the server
changes every node every ``--interval-ms``), each change delivered to the counting writer
(``report="change"``): ``changes_per_s`` against what the server makes, ``cpu_s_per_million``
changes, ``threads``; ``loop`` against ``thread`` (the wrapper pushes through the reader's own
loop thread, as before).

And for polling ``bare``, the limit: the same number of bare asyncua clients on one asyncio loop, each
reading its nodes at the same grid instants (``Client.read_values``), nothing else.

Per run: ``delivered`` (values counted / values due over the window), request lateness and
delivery p50/p99 (``ReaderStats``, worst reader), ``cpu_s_per_million`` (this process's CPU per
million values; the server is another process), ``threads`` (alive during the run). ``uptime``
before and after: the load the figures were taken under.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowcollect import DataCollectionContext, DataCollector, DataReader, DataWriter, Variable
from flowcollect.readers import OpcUaDataReader
from flowcollect.stats import ReaderStats
from flowcollect.values import CollectedVariable, ValueBatch, VariableSpec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.opcua import node, percentile, start_simulator, stop_simulator


class CountingWriter(DataWriter):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values = 0
        self.errors = 0

    def write(self, values: Sequence[CollectedVariable]) -> None:  # pragma: no cover - batches only
        raise NotImplementedError

    def write_batch(self, batch: ValueBatch) -> None:
        errors = batch.error_count()
        with self.lock:
            self.values += len(batch)
            self.errors += errors


class Threaded(DataReader):
    """The reader as the engine drove it before: synchronous, so its calls run on a worker, and
    the OPC UA reader inside opens its own loop thread (opened off any event loop)."""

    def __init__(self, inner: OpcUaDataReader) -> None:
        self.inner = inner

    @property
    def type(self) -> str:
        return self.inner.type

    @property
    def lane(self) -> str:
        return self.inner.lane

    def open(self) -> None:
        self.inner.open()

    @property
    def pushes(self) -> bool:
        return self.inner.pushes

    @property
    def stale_after_ms(self) -> int | None:
        return self.inner.stale_after_ms

    def start_pushing(self, emit: Callable[[ValueBatch], None]) -> None:
        self.inner.start_pushing(emit)

    def plan_changed(self, variables: Sequence[VariableSpec]) -> None:
        self.inner.plan_changed(variables)

    def read_batch(self, batch: ValueBatch) -> None:
        self.inner.read_batch(batch)

    def close(self) -> None:
        self.inner.close()

    def stats(self) -> dict[str, float]:
        return dict(self.inner.stats())


def endpoints(base: str, readers: int) -> list[str]:
    return [base + (f"/lane{k}" if k else "") for k in range(readers)]


@dataclass(frozen=True)
class Window:
    """What a collector delivered over the measured window, and what it cost."""

    values: int
    errors: int
    cpu_s: float
    began: float  # wall clock, s
    ended: float
    elapsed_s: float  # monotonic
    threads: int
    figures: list[ReaderStats]


def measured(
    built: list[DataReader], nodes: int, interval_ms: int, settle_s: float, seconds: float, **fields: Any
) -> Window:
    """One context a reader (``nodes`` variables each, ``fields`` added to every one), ``settle_s``
    to connect and plan, then ``seconds`` measured."""
    writer = CountingWriter()
    with DataCollector(readers=built, writers=[writer]) as collector:
        for k in range(len(built)):
            variables = [
                Variable(
                    id=j + 1, address=node(k * nodes + j), value_type="float", reader=f"opc{k}", **fields
                )
                for j in range(nodes)
            ]
            collector.start(
                DataCollectionContext(id=k + 1, variables=variables, interval_ms=interval_ms, duration_s=3600)
            )
        time.sleep(settle_s)
        with writer.lock:
            values0, errors0 = writer.values, writer.errors
        cpu0, began, mono0 = time.process_time(), time.time(), time.perf_counter()
        time.sleep(seconds)
        with writer.lock:
            values, errors = writer.values - values0, writer.errors - errors0
        cpu, ended, elapsed = time.process_time() - cpu0, time.time(), time.perf_counter() - mono0
        threads = threading.active_count()
        stats = collector.stats().readers
        figures = [stats[f"opc{k}"] for k in range(len(built))]
        for k in range(len(built)):
            collector.stop(k + 1)
    return Window(values, errors, cpu, began, ended, elapsed, threads, figures)


def engine(
    mode: str, base: str, readers: int, nodes: int, interval_ms: int, seconds: float
) -> dict[str, Any]:
    built: list[DataReader] = []
    for k, endpoint in enumerate(endpoints(base, readers)):
        reader = OpcUaDataReader(f"opc{k}", endpoint, timeout_s=2.0, max_nodes_per_read=nodes)
        built.append(reader if mode == "loop" else Threaded(reader))
    run = measured(built, nodes, interval_ms, 2.0, seconds)  # connect, resolve, plan
    figures, values = run.figures, run.values
    # Instants due in the window, per reader: the grid's, whole.
    due = (
        (math.floor(run.ended * 1000 / interval_ms) - math.floor(run.began * 1000 / interval_ms))
        * readers
        * nodes
    )
    return {
        "delivered": round(values / due, 4) if due else 0.0,
        "errors": run.errors,
        "overruns": sum(f.overruns for f in figures),
        "lateness_ms_p50": round(max(f.lateness_ms_p50 or 0.0 for f in figures), 2),
        "lateness_ms_p99": round(max(f.lateness_ms_p99 or 0.0 for f in figures), 2),
        "delivery_ms_p50": round(max(f.delivery_ms_p50 or 0.0 for f in figures), 2),
        "delivery_ms_p99": round(max(f.delivery_ms_p99 or 0.0 for f in figures), 2),
        "cpu_s_per_million": round(run.cpu_s / values * 1e6, 2) if values else None,
        "threads": run.threads,
    }


def subscribed(
    mode: str, base: str, readers: int, nodes: int, interval_ms: int, seconds: float
) -> dict[str, Any]:
    built: list[DataReader] = []
    for k, endpoint in enumerate(endpoints(base, readers)):
        reader = OpcUaDataReader(f"opc{k}", endpoint, mode="subscribe", timeout_s=5.0)
        built.append(reader if mode == "loop" else Threaded(reader))
    # Settle: connect, create the items, first values.
    run = measured(built, nodes, interval_ms, 3.0, seconds, report="change")
    values = run.values
    return {
        "changes_per_s": round(values / run.elapsed_s),
        "server_changes_per_s": round(readers * nodes * 1000 / interval_ms),
        "errors": run.errors,
        "cpu_s_per_million": round(run.cpu_s / values * 1e6, 2) if values else None,
        "threads": run.threads,
    }


def bare(base: str, readers: int, nodes: int, interval_ms: int, seconds: float) -> dict[str, Any]:
    from asyncua import Client, ua

    from flowcollect.readers.opcua.reader import quiet_asyncua
    from flowcollect.simulator.opcua import NAMESPACE_URI

    quiet_asyncua()

    async def run() -> dict[str, Any]:
        clients = [Client(endpoint, timeout=2) for endpoint in endpoints(base, readers)]
        for client in clients:
            await client.connect()
        try:
            ns = await clients[0].get_namespace_index(NAMESPACE_URI)
            wanted = [
                [clients[k].get_node(ua.NodeId(100000 + k * nodes + j, ns)) for j in range(nodes)]
                for k in range(readers)
            ]
            lateness: list[float] = []
            values = 0
            loop = asyncio.get_running_loop()
            cpu0, began = time.process_time(), time.time()
            due = (math.floor(began * 1000 / interval_ms) + 1) * interval_ms
            end = began + seconds
            while due / 1000 < end:
                await asyncio.sleep(max(0.0, due / 1000 - time.time()))

                async def one(client: Any, chunk: list[Any], due: int = due) -> int:
                    lateness.append(time.time() * 1000 - due)
                    return len(await client.read_values(chunk))

                tasks = [loop.create_task(one(c, w)) for c, w in zip(clients, wanted, strict=True)]
                values += sum(await asyncio.gather(*tasks))
                due += interval_ms
            cpu = time.process_time() - cpu0
        finally:
            for client in clients:
                await client.disconnect()
        return {
            "values": values,
            "lateness_ms_p50": round(percentile(lateness, 0.5), 2),
            "lateness_ms_p99": round(percentile(lateness, 0.99), 2),
            "cpu_s_per_million": round(cpu / values * 1e6, 2) if values else None,
        }

    return asyncio.run(run())


def uptime() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readers", type=int, default=4)
    parser.add_argument("--nodes", type=int, default=50, help="nodes per reader")
    parser.add_argument("--interval-ms", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each measured run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--only", choices=("poll", "subscribe"), default="poll")
    args = parser.parse_args()
    simulator = ["--bulk", str(args.readers * args.nodes), "--max-nodes-per-read", "0"]
    if args.only == "subscribe":
        simulator += ["--bulk-period", str(args.interval_ms / 1000)]
    process, base = start_simulator(*simulator)
    result: dict[str, Any] = {"settings": vars(args), "load_before": uptime(), "runs": []}
    shape = (base, args.readers, args.nodes, args.interval_ms, args.seconds)
    try:
        for _ in range(args.rounds):
            for mode in ("loop", "thread"):
                run = engine(mode, *shape) if args.only == "poll" else subscribed(mode, *shape)
                result["runs"].append({"mode": mode, **run})
            if args.only == "poll":
                result["runs"].append({"mode": "bare", **bare(*shape)})
    finally:
        stop_simulator(process)
    result["load_after"] = uptime()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
