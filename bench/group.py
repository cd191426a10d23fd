"""Group benchmark: 1, 2 and 3 `flowcollect run --group` members polling 30 simulated devices.

Prints one JSON object. Everything runs on this machine: a real etcd, the simulated devices in
three processes (ten devices each, each its own port and so its own lane), and the members as
`flowcollect run` processes writing CSV. Run from the repository root:

    .venv/bin/python bench/group.py [--devices 30] [--variables 10] [--interval-ms 100]
                                    [--seconds 10] [--kills 10] [--ttl 2]

- ``members[n]``: with n members, over a steady window of ``--seconds``: values written per
  second (CSV rows with instants inside the window) in total and per member, and each member's
  CPU (user + system, % of one core, from /proc).
- ``takeover``: ``--kills`` times, three members run, one is killed with SIGKILL (in turn), the
  time until each of its lanes has a value from its new owner is measured from the CSVs (the
  takeover gap; the contract bounds it by TTL + two intervals), and the member is restarted.
  p50 and max over every killed lane, beside the contract's TTL + two intervals and the bound
  etcd allows (it revokes expired leases on a 500 ms round, so add up to 0.5 s).
- ``handover``: ``--handovers`` times, one of three members gets SIGTERM (in turn), as in a
  rolling restart, and is started again; the gap between its last value of each of its lanes
  and the new owner's first (the contract bounds it by two intervals). p50 and max.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the test helpers: a real etcd and simulator processes

from flowcollect.group import group_status, owner  # noqa: E402
from tests.support.etcd import Etcd, find_binary  # noqa: E402

PIPELINE = ROOT / "tests" / "group" / "group_pipeline.py"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class Bench:
    def __init__(self, args: argparse.Namespace, folder: Path, etcd: Etcd) -> None:
        self.args = args
        self.folder = folder
        self.etcd = etcd
        self.sims: list[subprocess.Popen[str]] = []
        self.ports: list[int] = []
        per = args.devices // 3
        for i in range(3):
            count = per if i < 2 else args.devices - 2 * per
            sim = subprocess.Popen(
                [sys.executable, "-m", "tests.group.sim_process", str(count), str(folder / f"sim{i}.json")],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                text=True,
            )
            self.sims.append(sim)
        for sim in self.sims:
            assert sim.stdout is not None
            self.ports.extend(json.loads(sim.stdout.readline())["ports"])
        self.lanes: list[str] = []
        self.members: dict[str, subprocess.Popen[bytes]] = {}
        self.csvs: list[Path] = []
        self.current: dict[str, Path] = {}
        """Member -> the CSV of its running incarnation."""
        self.runs = 0

    def url(self, name: str) -> str:
        return f"etcd://{self.etcd.endpoint}/{name}"

    def start(self, name: str, member: str) -> Path:
        self.runs += 1
        csv_path = self.folder / f"{name}-{member}-{self.runs}.csv"
        env = {
            **os.environ,
            "GROUP_TEST_PORTS": ",".join(map(str, self.ports)),
            "GROUP_TEST_CSV": str(csv_path),
            "GROUP_TEST_INTERVAL_MS": str(self.args.interval_ms),
            "GROUP_TEST_VARIABLES": str(self.args.variables),
        }
        command = [sys.executable, "-m", "flowcollect", "run", str(PIPELINE), "--group", self.url(name),
                   "--member", member, "--group-ttl", str(self.args.ttl), "--status-every", "0",
                   "--log-level", "warning"]  # fmt: skip
        log = open(self.folder / f"{name}-{member}.log", "ab")  # noqa: SIM115 - the child holds it
        self.members[member] = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        self.csvs.append(csv_path)
        self.current[member] = csv_path
        return csv_path

    def expected(self, live: list[str]) -> dict[str, str | None]:
        return {lane: owner(lane, {m: frozenset() for m in live}) for lane in self.lanes}

    def device_of(self, lane: str) -> int:
        """The device a lane key names: ``modbus+tcp://127.0.0.1:PORT``, or ``reader:unitN``."""
        for index, port in enumerate(self.ports):
            if lane.endswith(f":{port}") or lane == f"reader:unit{index}":
                return index
        raise RuntimeError(f"lane {lane!r} names none of the simulated devices")

    def wait_owned(self, name: str, live: list[str], timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = group_status(self.url(name))
            got = {s.lane: s.owner for s in status.lanes}
            if not self.lanes and len(got) == len(self.ports):  # the plan, as members publish it
                self.lanes = sorted(got, key=self.device_of)
            want = self.expected(live)
            if self.lanes and all(got.get(lane) == want[lane] for lane in self.lanes):
                return
            time.sleep(0.05)
        raise RuntimeError(f"group {name}: lanes not owned as expected within {timeout_s} s")

    def stop_members(self) -> None:
        for process in self.members.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.members.values():
            process.wait(30)
        self.members.clear()

    def close(self) -> None:
        self.stop_members()
        for sim in self.sims:
            sim.send_signal(signal.SIGTERM)
        for sim in self.sims:
            sim.wait(10)
            if sim.stdout is not None:
                sim.stdout.close()


def rows(path: Path) -> list[tuple[int, int]]:
    """(variable id, instant epoch ms) of every good value in a member's CSV."""
    out = []
    if not path.exists():
        return out
    with open(path, newline="", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            if row.get("time") and row.get("id") and not row.get("error"):
                try:
                    out.append(
                        (int(row["id"]), round(datetime.fromisoformat(row["time"]).timestamp() * 1000))
                    )
                except ValueError:
                    continue
    return out


def throughput(bench: Bench, count: int) -> dict[str, Any]:
    name = f"throughput{count}"
    ids = [f"m{i + 1}" for i in range(count)]
    paths = {member: bench.start(name, member) for member in ids}
    bench.wait_owned(name, ids)
    time.sleep(1)  # every lane past its first ticks
    before = {member: cpu_s(bench.members[member].pid) for member in ids}
    began_ms = time.time() * 1000
    time.sleep(bench.args.seconds)
    ended_ms = time.time() * 1000
    after = {member: cpu_s(bench.members[member].pid) for member in ids}
    seconds = (ended_ms - began_ms) / 1000
    bench.stop_members()
    per_member = {}
    for member in ids:
        inside = sum(1 for _, t in rows(paths[member]) if began_ms <= t < ended_ms)
        per_member[member] = {
            "values_per_s": round(inside / seconds),
            "cpu_percent": round(100 * (after[member] - before[member]) / seconds, 1),
            "lanes": sum(1 for m in bench.expected(ids).values() if m == member),
        }
    return {
        "values_per_s": sum(m["values_per_s"] for m in per_member.values()),
        "per_member": per_member,
    }


def takeover(bench: Bench) -> dict[str, Any]:
    name = "takeover"
    ids = ["m1", "m2", "m3"]
    for member in ids:
        bench.start(name, member)
    bench.wait_owned(name, ids)
    kills: list[tuple[float, str, list[str]]] = []
    for k in range(bench.args.kills):
        victim = ids[k % len(ids)]
        time.sleep(1)
        lanes = [lane for lane, m in bench.expected(ids).items() if m == victim]
        killed_ms = time.time() * 1000
        bench.members[victim].kill()
        bench.members[victim].wait()
        kills.append((killed_ms, victim, lanes))
        survivors = [m for m in ids if m != victim]
        bench.wait_owned(name, survivors, bench.args.ttl + 10)
        time.sleep(2 * bench.args.interval_ms / 1000 + 0.5)  # the new owners' first values
        bench.start(name, victim)
        bench.wait_owned(name, ids)
    bench.stop_members()
    written = [rows(path) for path in bench.csvs if path.name.startswith(name)]
    gaps = []
    for killed_ms, _victim, lanes in kills:
        for lane in lanes:
            variable = 100 * (bench.device_of(lane) + 1)
            after = [t for found in written for vid, t in found if vid == variable and t > killed_ms]
            if after:
                gaps.append(min(after) - killed_ms)
    return {
        "kills": len(kills),
        "lanes_taken_over": len(gaps),
        "gap_ms_p50": round(statistics.median(gaps)) if gaps else None,
        "gap_ms_max": round(max(gaps)) if gaps else None,
        "contract_ms": bench.args.ttl * 1000 + 2 * bench.args.interval_ms,
        # etcd revokes expired leases on a 500 ms round: the bound a client can promise.
        "bound_ms": bench.args.ttl * 1000 + 500 + 2 * bench.args.interval_ms,
    }


def handover(bench: Bench) -> dict[str, Any]:
    """SIGTERM one member in turn (a rolling restart): the gap between the leaver's last value of
    each of its lanes and the new owner's first."""
    name = "handover"
    ids = ["m1", "m2", "m3"]
    for member in ids:
        bench.start(name, member)
    bench.wait_owned(name, ids)
    stops: list[tuple[Path, list[str]]] = []
    for k in range(bench.args.handovers):
        leaver = ids[k % len(ids)]
        time.sleep(1)
        lanes = [lane for lane, m in bench.expected(ids).items() if m == leaver]
        stops.append((bench.current[leaver], lanes))
        bench.members[leaver].send_signal(signal.SIGTERM)
        bench.members[leaver].wait(30)
        bench.wait_owned(name, [m for m in ids if m != leaver], 10)
        time.sleep(2 * bench.args.interval_ms / 1000 + 0.5)
        bench.start(name, leaver)
        bench.wait_owned(name, ids)
    bench.stop_members()
    by_path = {path: rows(path) for path in bench.csvs if path.name.startswith(name)}
    gaps = []
    for leaving, lanes in stops:
        for lane in lanes:
            variable = 100 * (bench.device_of(lane) + 1)
            last = max((t for vid, t in by_path[leaving] if vid == variable), default=None)
            if last is None:
                continue
            later = [t for path, found in by_path.items() if path != leaving for vid, t in found
                     if vid == variable and t > last]  # fmt: skip
            if later:
                gaps.append(min(later) - last)
    return {
        "sigterms": len(stops),
        "lanes_handed_over": len(gaps),
        "gap_ms_p50": round(statistics.median(gaps)) if gaps else None,
        "gap_ms_max": round(max(gaps)) if gaps else None,
        "contract_ms": 2 * bench.args.interval_ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=30)
    parser.add_argument("--variables", type=int, default=10, help="per device")
    parser.add_argument("--interval-ms", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--handovers", type=int, default=5, help="SIGTERMs (a rolling restart)")
    parser.add_argument("--ttl", type=int, default=2)
    args = parser.parse_args()
    binary = find_binary()
    if binary is None:
        raise SystemExit("etcd is not installed (make servers)")
    result: dict[str, Any] = {
        "devices": args.devices,
        "variables_per_device": args.variables,
        "interval_ms": args.interval_ms,
        "ttl_s": args.ttl,
        "cpus": os.cpu_count(),
        "members": {},
    }
    with tempfile.TemporaryDirectory(prefix="flowcollect-group-bench-") as tmp:
        folder = Path(tmp)
        with Etcd(binary, folder / "etcd") as etcd:
            bench = Bench(args, folder, etcd)
            try:
                for count in (1, 2, 3):
                    result["members"][str(count)] = throughput(bench, count)
                if args.kills:
                    result["takeover"] = takeover(bench)
                if args.handovers:
                    result["handover"] = handover(bench)
            finally:
                bench.close()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
