"""Variables without writing them by hand: tag lists (CSV, Kepware exports) and device profiles.

    from flowcollect.tags import DeviceProfile, read_csv

    variables = read_csv("tags.csv", reader="plc", interval_ms=1000)
    pump = DeviceProfile.from_csv("pump.csv")
    pump3 = pump.instantiate(device="pump-3", reader="pump3", tags={"line": "A"})

See docs/tags.md.
"""

from __future__ import annotations

from flowcollect._ids import stable_id
from flowcollect.tags._csv import read_csv
from flowcollect.tags._profile import DeviceProfile

__all__ = ["DeviceProfile", "read_csv", "stable_id"]
