"""Sparkplug tests: the session in virtual time, and the writer against real Mosquitto brokers."""

from __future__ import annotations

import pytest

from tests.support.mosquitto import mosquitto_factory

__all__ = ["mosquitto_factory"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every test that starts a broker carries the `server` marker (`-m "not server"` leaves them out).
    for item in items:
        if "mosquitto_factory" in getattr(item, "fixturenames", ()) and "tests/sparkplug" in str(item.path):
            item.add_marker(pytest.mark.server)
