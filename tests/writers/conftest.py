"""Writer tests run against real servers; the fixtures come from tests/support."""

from __future__ import annotations

from tests.support.victoria import victoria, victoria_factory

__all__ = ["victoria", "victoria_factory"]
