"""Simulated Modbus devices in one process, for group tests: each its own port (its own lane).

    python -m tests.group.sim_process COUNT LOG_FILE

Prints one JSON line with the ports once every device listens; on SIGTERM writes every
device's request log to LOG_FILE as JSON ({port: [arrival epoch ns, ...]}) and exits.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path

from flowcollect.simulator import Simulator


def main() -> None:
    count, log_file = int(sys.argv[1]), Path(sys.argv[2])
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    devices = [Simulator().start() for _ in range(count)]
    print(json.dumps({"ports": [d.port for d in devices]}), flush=True)
    done.wait()
    log = {str(d.port): [r.t_ns for r in d.request_log] for d in devices}
    for device in devices:
        device.stop()
    log_file.write_text(json.dumps(log))


if __name__ == "__main__":
    main()
