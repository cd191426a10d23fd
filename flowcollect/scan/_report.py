"""A scan's report as text for a person, or as a tag list (``flowcollect.tags.read_csv``'s columns)."""

from __future__ import annotations

import csv
import io

from flowcollect.scan._modbus import ScanReport, TableScan

__all__ = ["report_csv", "report_text"]

_EXCEPTIONS = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    6: "device busy",
    10: "gateway path unavailable",
    11: "gateway target failed to answer",
}


def _runs(runs: list[tuple[int, int]]) -> str:
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs) or "none"


def _table_lines(table: TableScan) -> list[str]:
    unit_word = "bits" if table.table in ("coil", "discrete") else "registers"
    lines = [f"  {table.table}: readable {_runs(table.readable)}"]
    by_code: dict[int, list[tuple[int, int]]] = {}
    for first, last, code in table.refused:
        by_code.setdefault(code, []).append((first, last))
    for code, runs in sorted(by_code.items()):
        lines.append(f"    exception {code} ({_EXCEPTIONS.get(code, 'other')}): {_runs(runs)}")
    if table.silent:
        lines.append(f"    no answer: {_runs(table.silent)}")
    if table.largest_request is not None:
        bound = "at least " if table.largest_is_lower_bound else ""
        lines.append(f"    largest request: {bound}{table.largest_request} {unit_word}")
    return lines


def _collapse(numbers: list[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for n in numbers:
        if runs and runs[-1][1] + 1 == n:
            runs[-1] = (runs[-1][0], n)
        else:
            runs.append((n, n))
    return runs


def report_text(target: str, report: ScanReport) -> str:
    lines = []
    for unit in report.units:
        if not unit.answers:
            continue
        lines.append(f"unit {unit.unit}: answers")
        for table in unit.tables:
            lines += _table_lines(table)
    silent = [u.unit for u in report.units if not u.answers]
    if silent:
        lines.append(f"no answer from unit(s) {_runs(_collapse(silent))}")
    status = "complete" if report.complete else f"stopped by --max-time at {report.stopped_at}"
    lines.append(
        f"scan of {target}: {len(report.answering)} unit(s) answer, {report.requests} requests in "
        f"{report.elapsed_s:.1f} s, {status}"
        + (f", resolution {report.resolution}" if report.resolution > 1 else "")
    )
    return "\n".join(lines) + "\n"


def report_csv(report: ScanReport) -> str:
    """One row per readable address: ``name,address,value_type,tag:unit`` (registers as uint16)."""
    out = io.StringIO()
    rows = csv.writer(out, lineterminator="\n")
    rows.writerow(["name", "address", "value_type", "tag:unit"])
    for unit in report.units:
        for table in unit.tables:
            value_type = "bool" if table.table in ("coil", "discrete") else "int"
            for first, last in table.readable:
                for address in range(first, last + 1):
                    rows.writerow(
                        [
                            f"u{unit.unit}_{table.table}_{address}",
                            f"{table.table}:{address}",
                            value_type,
                            unit.unit,
                        ]
                    )
    return out.getvalue()
