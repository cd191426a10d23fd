"""What the test servers (VictoriaMetrics, InfluxDB 1.x, etcd) share: a child process writing to
a log file, signalled by the tests, and ended in bounded time.

A subclass starts ``self._process`` with its output in ``self._log`` (opened on ``log_path``),
and says what it is in ``describe()`` for errors.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import IO

__all__ = ["ServerProcess"]


class ServerProcess:
    log_path: Path
    _process: subprocess.Popen[bytes] | None
    _log: IO[bytes] | None
    error: type[Exception] = RuntimeError
    """Raised for a signal to a server that is not running."""

    def describe(self) -> str:
        return type(self).__name__

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM: the server ends gracefully (what it stored reaches the disk)."""
        self._end(signal.SIGTERM, timeout_s)

    def kill(self) -> None:
        """SIGKILL: the server ends at once, losing what it held in memory."""
        self._end(signal.SIGKILL, 10.0)

    def pause(self) -> None:
        """SIGSTOP: connections stay open, nothing answers."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _signal(self, sig: signal.Signals) -> None:
        if self._process is None or self._process.poll() is not None:
            raise self.error(f"{self.describe()} is not running")
        self._process.send_signal(sig)

    def _end(self, sig: signal.Signals, timeout_s: float) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._process = None
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
