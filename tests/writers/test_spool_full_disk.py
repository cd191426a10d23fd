"""A full spool disk at start (issue 21 item 4): ``flowcollect run`` starts and collects.

A real 256 KiB tmpfs (mounting needs root; this machine and CI run as root), really full: a
spool left by an earlier run whose destination was down, and a filler file taking the rest.
Then a real ``flowcollect run`` process with two CSV writers, one behind that spool. Before the
fix, the spool's preflight probe got ENOSPC and the run exited 1: the CSV writer beside it got
nothing, exactly when a service restarts after an outage filled the disk.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowcollect.writers import SpooledWriter
from tests.writers.test_spool import HoldingWriter, make_batch

PIPELINE = """\
from flowcollect import DataCollectionContext, Pipeline, Variable
from flowcollect.readers import RandomDataReader
from flowcollect.writers import CsvFileDataWriter, SpooledWriter

pipeline = Pipeline(
    name="full-disk",
    readers=[RandomDataReader()],
    writers=[
        CsvFileDataWriter({beside!r}, flush_interval_s=0.1),
        SpooledWriter(
            CsvFileDataWriter({behind!r}, flush_interval_s=0.1),
            {spool!r},
            max_bytes=100 << 20,
            segment_bytes=16384,
            sync_interval_s=0.1,
        ),
    ],
    contexts=[
        DataCollectionContext(
            id=1,
            interval_ms=20,
            min_interval_ms=20,
            variables=[Variable(id=n, address=f"v{{n}}", reader="random") for n in range(1, 11)],
        )
    ],
)
"""


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.fail("this test needs root to mount a tmpfs (CI and this machine run as root)")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True, check=False
    )
    assert done.returncode == 0, f"cannot mount a tmpfs here: {done.stderr.decode().strip()}"
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path) -> None:
    """Write ``path`` until the disk has no room left."""
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                f.write(b"\0" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
        while True:  # the last few bytes too
            try:
                f.write(b"\0" * 64)
            except OSError:
                return


@pytest.mark.slow  # a real browser or process for 8-15 s: make test-slow (CI) runs it
def test_flowcollect_run_starts_and_collects_on_a_full_spool_disk(full_disk: Path, tmp_path: Path) -> None:
    spool = full_disk / "spool"
    # An earlier run: its destination was down, the spool grew until the disk was full.
    earlier = SpooledWriter(
        HoldingWriter(), spool, max_bytes=100 << 20, segment_bytes=16384, close_timeout_s=0
    )
    for k in range(3000):
        earlier.write_batch(make_batch(k))
    assert earlier.stats()["spool_disk_full"] >= 1
    earlier.close()
    fill(full_disk / "filler")
    with pytest.raises(OSError) as raised:
        (full_disk / "probe").write_bytes(b"x" * 4096)
    assert raised.value.errno == errno.ENOSPC
    (full_disk / "probe").unlink(missing_ok=True)

    beside, behind = tmp_path / "beside.csv", tmp_path / "behind.csv"
    pipeline = tmp_path / "pipeline.py"
    pipeline.write_text(PIPELINE.format(beside=str(beside), behind=str(behind), spool=str(spool)))
    done = subprocess.run(
        [sys.executable, "-m", "flowcollect", "run", str(pipeline), "--duration", "2", "--status-every", "0"],
        capture_output=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    output = (done.stdout + done.stderr).decode()
    assert done.returncode == 0, output[-3000:]
    assert "the disk is full" in output
    # The writer beside the spool got its values; the one behind it got the old backlog and new ones.
    assert len(beside.read_text().splitlines()) > 10 * 20
    assert len(behind.read_text().splitlines()) > 10 * 20
    left = sorted(p.name for p in spool.iterdir())
    assert not [name for name in left if name.startswith(".preflight-") or name.endswith(".tmp")], left


def _damaged_spool(full_disk: Path) -> Path:
    """A spool of one segment of ten batches, the fifth's length field damaged (while there is
    still room: the caller fills the disk after)."""
    import struct

    from flowcollect.writers.spool import _records as rec
    from flowcollect.writers.spool._store import iter_records
    from tests.writers.test_spool import spooled

    spool = full_disk / "spool"
    writer, _ = spooled(HoldingWriter(), spool)
    for k in range(10):
        writer.write_batch(make_batch(k))
    writer.close()
    (segment,) = sorted(spool.glob("*.seg"))
    data = bytearray(segment.read_bytes())
    batches = [r for r in iter_records(bytes(data), len(rec.MAGIC), len(data)) if r.kind == rec.KIND_BATCH]
    struct.pack_into("<I", data, batches[4].offset, 5_000_000)  # a damaged length field
    segment.write_bytes(bytes(data))
    return spool


def test_a_damaged_segment_on_a_full_disk_is_read_up_to_the_damage_and_the_rest_counted_lost(
    full_disk: Path,
) -> None:
    from tests.writers.test_spool import SPECS, spooled

    spool = _damaged_spool(full_disk)
    fill(full_disk / "filler")  # no room for a repaired copy

    again = HoldingWriter()
    writer2, _ = spooled(again, spool)
    writer2.write_batch(make_batch(100))  # opens the folder: no exception, whatever the disk says
    stats = writer2.stats()
    writer2.close()
    # Read up to the damage (what follows it counted lost); then, the disk being full, the new
    # batch made room by the drop policy: the four readable batches, counted once.
    assert stats["spool_corrupt"] == 1
    assert stats["spool_corrupt_values"] == 6 * len(SPECS)  # the damaged batch and the five after it
    assert stats["spool_dropped_by_policy"] == 4 * len(SPECS)
    assert stats["spool_appended_values"] + stats["spool_not_spooled"] == len(SPECS)
    assert not list(spool.glob("*.tmp"))


def test_preflight_on_a_full_disk_warns_leaves_nothing_and_appends_go_on(
    full_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from tests.writers.test_spool import SPECS

    fill(full_disk / "filler")
    spool = full_disk / "spool"
    writer = SpooledWriter(HoldingWriter(), spool, max_bytes=1 << 20, close_timeout_s=0)
    receipts: list[object] = []
    writer.attach(receipts.append)
    with caplog.at_level(logging.WARNING, logger="flowcollect.writers.spool"):
        writer.preflight()  # no PreflightError: a full disk is collected through
    assert "the disk is full" in caplog.text
    assert not [p for p in full_disk.rglob("*") if p.name.startswith(".preflight-") or p.suffix == ".tmp"]
    writer.write_batch(make_batch(0))  # nothing to drop: this batch is counted, not raised
    stats = writer.stats()
    assert stats["spool_appended_values"] + stats["spool_not_spooled"] == len(SPECS)
    assert stats["dropped"] == stats["spool_not_spooled"]
    writer.close()


def test_values_counted_lost_for_want_of_room_do_not_come_back_once_there_is_room(
    full_disk: Path,
) -> None:
    """Read up to the damage on a full disk, what follows it is counted lost: it must then be
    gone, or a later open with room would repair it back and send values already counted lost
    (counted twice: lost, then written)."""
    from flowcollect.writers.spool._store import Store
    from tests.writers.test_spool import SPECS

    spool = _damaged_spool(full_disk)
    fill(full_disk / "filler")

    store = Store(spool, 1 << 20, "none")
    first = store.open()
    store.close()
    assert (first.corrupt, first.corrupt_values, first.replay_values) == (1, 6 * len(SPECS), 4 * len(SPECS))

    (full_disk / "filler").unlink()  # room again: nothing left to repair, nothing comes back
    store = Store(spool, 1 << 20, "none")
    again = store.open()
    store.close()
    assert (again.corrupt, again.corrupt_values, again.replay_values) == (0, 0, 4 * len(SPECS))
