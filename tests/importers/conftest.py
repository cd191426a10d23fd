"""The importer's tests: configurations written as Telegraf's documentation shows each option."""

from __future__ import annotations

import pytest

from tests.support.influxdb1 import influxdb1_factory

__all__ = ["influxdb1_factory"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "influxdb1_factory" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.server)
