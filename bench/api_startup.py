"""What ``--http`` adds to ``flowcollect run``'s start-up: the time from spawning the process to
its first context started, with and without the API, runs interleaved; and with the API, to its
first answer. Prints JSON. The limit: the same run without ``--http``.

    PYTHONPATH=. python bench/api_startup.py --runs 7
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.service.conftest import PIPELINE  # the tests' Modbus simulator pipeline


def one(folder: Path, http: bool) -> dict[str, float]:
    log = folder / "run.log"
    args = [sys.executable, "-m", "flowcollect", "run", "pipe.py", "--status-every", "0", "--duration", "3"]
    if http:
        args += ["--http", "127.0.0.1:0"]
    began = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen(args, cwd=folder, stdout=out, stderr=subprocess.STDOUT)
        started = answered = None
        while proc.poll() is None and (started is None or (http and answered is None)):
            text = log.read_text(errors="replace")
            if started is None and "context 1 started" in text:
                started = time.perf_counter() - began
            found = re.search(r"HTTP API at (\S+)/api/v1/", text)
            if http and found and answered is None:
                with urllib.request.urlopen(found.group(1) + "/api/v1/status", timeout=5) as r:  # noqa: S310
                    r.read()
                answered = time.perf_counter() - began
            time.sleep(0.002)
        proc.wait(30)
    result = {"first_context_s": started or float("nan")}
    if http:
        result["api_answers_s"] = answered or float("nan")
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "pipe.py").write_text(textwrap.dedent(PIPELINE))
        plain, api = [], []
        for _ in range(runs):
            plain.append(one(folder, False))
            api.append(one(folder, True))
    med = statistics.median
    base = med(r["first_context_s"] for r in plain)
    with_api = med(r["first_context_s"] for r in api)
    print(
        json.dumps(
            {
                "runs": runs,
                "load": os.getloadavg(),
                "first_context_s_without_http": round(base, 3),
                "first_context_s_with_http": round(with_api, 3),
                "added_s": round(with_api - base, 3),
                "api_answers_s": round(med(r["api_answers_s"] for r in api), 3),
            }
        )
    )


if __name__ == "__main__":
    main()
