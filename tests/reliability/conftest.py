"""The reliability suite's server fixture (a real VictoriaMetrics, one per module that asks)."""

from __future__ import annotations

from tests.support.victoria import victoria

__all__ = ["victoria"]
