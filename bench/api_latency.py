"""The HTTP API's latency and its cost to the lanes (issue 19), against real processes.

``flowcollect run`` of 10,000 random variables at 100 ms (one lane, a writer that discards)
runs four times for ``--seconds`` (plus 2) each, its tick lateness p99 and overruns read from
its ``--json`` summary:

- without_http: the limit, the same collection without the API;
- quiet: with ``--http``, nobody calling (what keeping the latest values costs);
- polled: a client calls ``GET /api/v1/status`` ten times a second, timing each call;
- values: a client asks for a page of all 10,000 values (``GET /api/v1/values?limit=10000``)
  once a second, timing each call.

Prints JSON. ``PYTHONPATH=. python bench/api_latency.py --seconds 20``
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

PIPELINE = """\
from flowcollect import DataCollectionContext, DataWriter, Pipeline, Variable
from flowcollect.readers import RandomDataReader


class Discard(DataWriter):
    def write_batch(self, batch):
        pass


pipeline = Pipeline(
    name="api-bench",
    readers=[RandomDataReader(seed=1)],
    writers=[Discard()],
    contexts=[
        DataCollectionContext(
            id=1,
            interval_ms=100,
            duration_s=None,
            variables=[
                Variable(id=i, address=f"v{i}", reader="random", name=f"v{i}") for i in range(1, 10_001)
            ],
        )
    ],
)
"""


def get(url: str) -> tuple[float, bytes]:
    began = time.perf_counter()
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 -- loopback
        body = response.read()
    return (time.perf_counter() - began) * 1000, body


def pct(samples: list[float], q: float) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


def phase(folder: Path, seconds: float, mode: str) -> dict[str, object]:
    """``off``: no --http; ``quiet``: --http, nobody calls; ``polled``: the client polls."""
    log = folder / f"run-{mode}.log"
    args = ["run", "pipe.py", "--status-every", "0", "--json", "--duration", str(seconds + 2)]
    if mode != "off":
        args += ["--http", "127.0.0.1:0"]
    status_ms: list[float] = []
    values_ms: list[float] = []
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "flowcollect", *args], cwd=folder, stdout=subprocess.PIPE, stderr=err
        )
        if mode in ("polled", "values"):
            deadline = time.monotonic() + 30
            found = None
            while found is None and time.monotonic() < deadline and proc.poll() is None:
                found = re.search(r"HTTP API at (\S+)/api/v1/", log.read_text(errors="replace"))
                time.sleep(0.05)
            if found is None:
                raise SystemExit(f"the run did not start:\n{log.read_text()}")
            base = found.group(1)
            time.sleep(1.5)  # the first ticks and the first values kept
            end = time.monotonic() + seconds - 0.5
            next_values = time.monotonic()
            while time.monotonic() < end:
                if mode == "polled":
                    status_ms.append(get(base + "/api/v1/status")[0])
                elif time.monotonic() >= next_values:
                    next_values += 1.0
                    took, body = get(base + "/api/v1/values?limit=10000")
                    values_ms.append(took)
                    if len(json.loads(body)["values"]) != 10_000:
                        raise SystemExit("the values page is not 10,000 long")
                time.sleep(0.1)
        out_text, _ = proc.communicate(timeout=60)
    summary = json.loads(out_text)
    reader = summary["readers"]["random"]
    out: dict[str, object] = {
        "lateness_ms_p99": round(reader["lateness_ms_p99"], 2),
        "overruns": reader["overruns"],
        "ticks": reader["ticks"],
    }
    if mode == "polled":
        out |= {
            "status_ms_p50": pct(status_ms, 0.5),
            "status_ms_p99": pct(status_ms, 0.99),
            "status_calls": len(status_ms),
        }
    if mode == "values":
        out |= {
            "values_10000_ms_p50": pct(values_ms, 0.5),
            "values_10000_ms_p99": pct(values_ms, 0.99),
            "values_calls": len(values_ms),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20.0)
    seconds = parser.parse_args().seconds
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "pipe.py").write_text(PIPELINE)
        load_before = os.getloadavg()
        off = phase(folder, seconds, "off")
        quiet = phase(folder, seconds, "quiet")
        polled = phase(folder, seconds, "polled")
        values = phase(folder, seconds, "values")
    print(
        json.dumps(
            {
                "variables": 10_000,
                "interval_ms": 100,
                "seconds": seconds,
                "load_before": [round(x, 2) for x in load_before],
                "load_after": [round(x, 2) for x in os.getloadavg()],
                "without_http": off,
                "quiet": quiet,
                "polled": polled,
                "values": values,
            }
        )
    )


if __name__ == "__main__":
    main()
