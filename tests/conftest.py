"""Shared fixtures. Server fixtures live beside the tests that need them (tests/support/)."""

from __future__ import annotations

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
