"""Onboarding benchmark: OPC UA browse of 20,000 nodes, and a pipeline of 100,000 variables
from a tag list. Prints JSON.

    .venv/bin/python bench/onboarding.py                 # 20,000 nodes, 100,000 variables
    .venv/bin/python bench/onboarding.py --nodes 2000 --variables 20000

``browse``: the OPC UA simulator in a process of its own, serving ``--nodes`` Bulk variables in
folders of 250. Timed, each from connecting to the last answer, best of ``--repeat``:
``flowcollect``: ``flowcollect.readers.opcua.browse`` of the whole address space, nothing
described (the walk: like for like with the limit); ``flowcollect_described``: the same with each
variable's data type, access level and value read (what ``flowcollect browse`` prints as a tree;
the csv and python formats and ``discover`` skip the value); ``limit``: a bare asyncua loop
walking the same tree breadth first with ``Node.get_children_descriptions()``, one node at a time,
describing nothing. The figure of issue 20: flowcollect's walk at least 80 % of the limit's nodes
per second.

``tag_list``: a CSV of ``--variables`` rows (id, name, address, value_type, interval_ms and two
tag columns) for ``RandomDataReader``; timed in steps, wall and CPU seconds:

1. ``read_csv``: the file into ``Variable``s, every row checked;
2. ``pipeline``: a ``Pipeline`` of one context holding them;
3. ``check``: ``pipeline.check()`` (the compiler, the reader's validation);
4. ``start``: ``DataCollector.start`` of the context (the compilation ``check`` made is reused,
   every variable still validated by its reader; lanes set up), until it returns; the collector
   is then closed (not timed).

The total of the four is the figure of issue 20 (at most 2 s on this machine). ``limit``, in the
same run: the bare loop of the libraries underneath, ``csv.DictReader`` rows into
``Variable(**row)`` with no checks of our own, so what ``read_csv`` adds shows. And ``profile``:
the same number of variables made by ``DeviceProfile.instantiate`` (100 variables x devices).
Interpreter defaults; no ``gc.freeze()``.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from flowcollect import DataCollectionContext, DataCollector, Pipeline, Variable
from flowcollect.readers import RandomDataReader
from flowcollect.tags import DeviceProfile, read_csv
from flowcollect.testing import MemoryDataWriter

T = TypeVar("T")


def timed(step: Callable[[], T]) -> tuple[T, dict[str, float]]:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = step()
    return result, {
        "wall_s": round(time.perf_counter() - wall0, 3),
        "cpu_s": round(time.process_time() - cpu0, 3),
    }


def write_tag_list(path: Path, n: int) -> None:
    with path.open("w", newline="", encoding="utf-8") as out:
        rows = csv.writer(out)
        rows.writerow(["id", "name", "address", "value_type", "interval_ms", "tag:line", "tag:unit"])
        for i in range(1, n + 1):
            rows.writerow([i, f"tag{i}", f"sensor{i}", "float", 1000, f"L{i % 20}", "degC"])


def bare_loop(path: Path) -> list[Variable]:
    with path.open(newline="", encoding="utf-8") as source:
        return [
            Variable(
                id=int(row["id"]),
                name=row["name"],
                address=row["address"],
                value_type=row["value_type"],  # type: ignore[arg-type]
                interval_ms=int(row["interval_ms"]),
                tags={"line": row["tag:line"], "unit": row["tag:unit"]},
                reader="random",
            )
            for row in csv.DictReader(source)
        ]


def tag_list(path: Path, n: int) -> dict[str, Any]:
    reader = RandomDataReader(seed=1)
    steps: dict[str, Any] = {}
    variables, steps["read_csv"] = timed(lambda: read_csv(path, reader=reader))
    context = DataCollectionContext(id=1, variables=variables, duration_s=60)
    pipeline, steps["pipeline"] = timed(
        lambda: Pipeline(name="bench", readers=[reader], writers=[MemoryDataWriter()], contexts=[context])
    )
    problems, steps["check"] = timed(pipeline.check)
    if problems:
        raise SystemExit(f"check found problems: {problems[:3]}")
    collector = DataCollector([reader], [MemoryDataWriter()])
    try:
        _, steps["start"] = timed(lambda: collector.start(context))
    finally:
        collector.close()
    total = {k: round(sum(s[k] for s in steps.values()), 3) for k in ("wall_s", "cpu_s")}
    return {"variables": len(variables), "steps": steps, "total": total, "target_total_wall_s": 2.0}


def profile(n: int) -> dict[str, Any]:
    per_device = 100
    template = DeviceProfile(
        name="device",
        variables=[
            Variable(id=i, name=f"v{i}", address=f"a{i}", reader="x", tags={"unit": "degC"})
            for i in range(1, per_device + 1)
        ],
    )
    devices = max(1, n // per_device)
    variables, figures = timed(
        lambda: [v for d in range(devices) for v in template.instantiate(f"dev-{d}", "random")]
    )
    return {"variables": len(variables), "devices": devices, **figures}


async def bare_browse(endpoint: str) -> int:
    """The limit: asyncua's own API, one Browse per node, breadth first, nothing described."""
    from asyncua import Client, ua

    async with Client(endpoint, timeout=30) as client:
        level = [client.nodes.objects]
        count = 0
        while level:
            following = []
            for node in level:
                for ref in await node.get_children_descriptions():
                    if node == client.nodes.objects and ref.NodeId.NamespaceIndex == 0:
                        continue  # the Server object, as flowcollect leaves it out
                    count += 1
                    if ref.NodeClass == ua.NodeClass.Object:
                        following.append(client.get_node(ref.NodeId))
            level = following
        return count


def browse_bench(nodes: int, repeat: int) -> dict[str, Any]:
    from flowcollect.readers.opcua import browse

    port = free_port()
    endpoint = f"opc.tcp://127.0.0.1:{port}/flowcollect"
    log = tempfile.NamedTemporaryFile("w+", prefix="bench-opcua-", suffix=".log")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [sys.executable, "-m", "flowcollect.simulator.opcua", "--port", str(port), "--bulk", str(nodes)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        started = time.monotonic()
        # It prints its endpoint once it serves; a large address space takes a while.
        while endpoint not in Path(log.name).read_text() and server.poll() is None:
            time.sleep(0.1)
        if server.poll() is not None:
            raise SystemExit(f"the OPC UA simulator exited: {Path(log.name).read_text()[-2000:]}")
        server_start_s = round(time.monotonic() - started, 1)
        ours, described, limit = [], [], []
        found = bare = 0
        for _ in range(repeat):
            nodes_found, figures = timed(
                lambda: browse(endpoint, timeout_s=30, max_time_s=600, describe=False)
            )
            ours.append(figures["wall_s"])
            found = len(nodes_found)
            _, figures = timed(lambda: browse(endpoint, timeout_s=30, max_time_s=600))
            described.append(figures["wall_s"])
            bare, figures = timed(lambda: asyncio.run(bare_browse(endpoint)))
            limit.append(figures["wall_s"])
    finally:
        server.terminate()
        server.wait(30)
        log.close()
    best, best_limit = min(ours), min(limit)
    return {
        "server_nodes": nodes,
        "server_start_s": server_start_s,
        "flowcollect": {"nodes": found, "wall_s": best, "nodes_per_s": round(found / best)},
        "flowcollect_described": {"wall_s": min(described), "nodes_per_s": round(found / min(described))},
        "limit_bare_asyncua": {"nodes": bare, "wall_s": best_limit, "nodes_per_s": round(bare / best_limit)},
        "speed_vs_limit_pct": round(100 * (found / best) / (bare / best_limit), 1),
        "target_pct": 80,
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variables", type=int, default=100_000)
    parser.add_argument("--nodes", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    report: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }
    report["browse"] = browse_bench(args.nodes, args.repeat)
    with tempfile.TemporaryDirectory(prefix="bench-onboarding-") as tmp:
        path = Path(tmp) / "tags.csv"
        write_tag_list(path, args.variables)
        report["tag_list"] = tag_list(path, args.variables)
        _, report["limit_bare_csv_to_variables"] = timed(lambda: bare_loop(path))
    report["profile"] = profile(args.variables)
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
