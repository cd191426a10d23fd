"""Simulated Modbus devices in one process, for group tests: each its own port (its own lane).

    python -m tests.group.sim_process COUNT LOG_FILE

Prints one JSON line with the ports once every device listens. On SIGUSR1 it writes every
device's request log to LOG_FILE as JSON (``{"dump": n, "ports": {port: [arrival epoch ns,
...]}}``, n counting the dumps) and goes on; on SIGTERM it writes it once more and exits.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path

from flowcollect.simulator import Simulator


def main() -> None:
    count, log_file = int(sys.argv[1]), Path(sys.argv[2])
    done, dump = threading.Event(), threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: (done.set(), dump.set()))
    signal.signal(signal.SIGUSR1, lambda *_: dump.set())
    devices = [Simulator().start() for _ in range(count)]
    print(json.dumps({"ports": [d.port for d in devices]}), flush=True)
    dumps = 0
    while not done.is_set():
        dump.wait()
        dump.clear()
        dumps += 1
        log = {"dump": dumps, "ports": {str(d.port): [r.t_ns for r in d.request_log] for d in devices}}
        partial = log_file.with_suffix(".part")
        partial.write_text(json.dumps(log))
        os.replace(partial, log_file)  # readers never see half a file
    for device in devices:
        device.stop()


if __name__ == "__main__":
    main()
