"""Shared fixtures. Server fixtures live beside the tests that need them (tests/support/)."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest


def collector_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("flowcollect-") and t.is_alive()]


@pytest.fixture
def no_leftover_threads() -> Iterator[None]:
    """Fail the test if it leaves a collector thread running."""
    before = set(collector_threads())
    yield
    left = [t.name for t in collector_threads() if t not in before]
    assert not left, f"threads left running: {left}"


@pytest.fixture
def gc_as_found() -> Iterator[None]:
    """The cyclic garbage collector enabled or not after the test as before it (tests of the
    bulk steps that pause it set it either way)."""
    enabled = gc.isenabled()
    yield
    set_gc(enabled)


def set_gc(enabled: bool) -> None:
    """Turn the cyclic garbage collector on or off."""
    if enabled:
        gc.enable()
    else:
        gc.disable()
