"""What ``discover`` found while a pipeline file was loaded, for ``flowcollect plan`` to show.

``discover`` runs inside the pipeline file, so the command that loaded it learns the counts only
through here (its log line is at INFO, below ``plan``'s default level). Kept per process; the
command takes them after loading. Below every package, so the command need not import asyncua.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

__all__ = ["Discovery", "note", "taken"]


@dataclass(frozen=True)
class Discovery:
    url: str
    pattern: str
    variables: int

    def __str__(self) -> str:
        if not self.variables:
            return f"discover({self.url}, {self.pattern!r}): no variable matched the pattern"
        noun = "variable" if self.variables == 1 else "variables"
        return f"discover({self.url}, {self.pattern!r}): {self.variables} {noun} matched"


_lock = threading.Lock()
_found: list[Discovery] = []


def note(url: str, pattern: str, variables: int) -> None:
    with _lock:
        _found.append(Discovery(url, pattern, variables))


def taken() -> list[Discovery]:
    """Every discovery noted since the last call, in order; the list is then emptied."""
    with _lock:
        out = list(_found)
        _found.clear()
    return out
