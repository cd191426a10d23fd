"""Writer tests run against real servers; the fixtures come from tests/support."""

from __future__ import annotations

import pytest

from tests.support.influxdb1 import influxdb1_factory
from tests.support.victoria import SERVER_FIXTURES, victoria, victoria_factory

__all__ = ["influxdb1_factory", "victoria", "victoria_factory"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every test that starts a server carries the `server` marker, so `-m "not server"` leaves them out.
    for item in items:
        if (SERVER_FIXTURES | {"influxdb1_factory"}) & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.server)
