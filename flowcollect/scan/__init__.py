"""Find what a device offers before collecting from it: ``scan_modbus`` (``flowcollect scan``).

See docs/scan.md.
"""

from __future__ import annotations

from collections.abc import Sequence

from flowcollect.scan._cli import scan_command
from flowcollect.scan._client import ModbusTarget, parse_target, pymodbus_probe
from flowcollect.scan._modbus import MAX_COUNT, ScanReport, Table, TableScan, UnitScan, scan_units
from flowcollect.scan._report import report_csv, report_text

__all__ = [
    "MAX_COUNT",
    "ModbusTarget",
    "ScanReport",
    "TableScan",
    "UnitScan",
    "parse_target",
    "report_csv",
    "report_text",
    "scan_command",
    "scan_modbus",
]


def scan_modbus(
    url: str,
    *,
    units: Sequence[int] = range(1, 248),
    tables: Sequence[Table] = ("holding",),
    first: int = 0,
    last: int = 9999,
    pause_s: float = 0.02,
    timeout_s: float = 0.5,
    max_time_s: float = 300.0,
    resolution: int = 1,
) -> ScanReport:
    """Scan a Modbus TCP device, an RTU-over-TCP gateway or a serial line (see ``ModbusTarget``).

    Reads only. One request at a time, ``pause_s`` after each, ``timeout_s`` per request, the
    whole scan bounded by ``max_time_s`` (the report says where it stopped). ``resolution``
    trades exactness for requests (see ``scan_units``).
    """
    target = parse_target(url)
    with pymodbus_probe(target, timeout_s) as probe:
        return scan_units(
            probe, units, tables, first, last, pause_s=pause_s, max_time_s=max_time_s, resolution=resolution
        )
