"""Group tests talk to real etcd processes (tests/support/etcd.py): all carry the `server` marker."""

from __future__ import annotations

import pytest

from tests.support.etcd import ETCD_FIXTURES, etcd, etcd_factory

__all__ = ["etcd", "etcd_factory"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if ETCD_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.server)
