"""The spool's defects of issue 21, each on real files (damaged ones written by the test), each a
test that failed before its fix: drops of handed-out segments (1), a non-file entry in the
folder (5), a position naming a later segment (6), a damaged length field (7), and the
accounting of values the spool keeps when the engine closes (10). A full disk at start (4) is in
``test_spool_full_disk.py``; the forwarder (2) in ``test_spool_forwarder.py``.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
from pathlib import Path

import pytest

from flowcollect.values import ValueBatch
from flowcollect.writers import DataWriter, SpooledWriter
from flowcollect.writers.spool import _records as rec
from flowcollect.writers.spool._store import iter_records
from tests.support.waiting import wait_until
from tests.writers.test_spool import SPECS, HoldingWriter, make_batch, same, segments, spooled


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


def values_of(batches: list[ValueBatch]) -> int:
    return sum(len(b) for b in batches)


def replayed(path: Path, expect: int) -> list[ValueBatch]:
    """Open the spool again and take everything it sends until a new batch comes after it (the
    replay is handed out first, in order); ``expect`` values are expected before it."""
    again = HoldingWriter()
    writer, _ = spooled(again, path)
    marker = make_batch(10_000)
    writer.write_batch(marker)  # opens the folder; the replay comes before it
    wait_until(lambda: any(b.t_ms == marker.t_ms for b in again.received), timeout_s=20 + expect / 1000)
    again.ack()
    writer.close()
    return [b for b in again.received if b.t_ms != make_batch(10_000).t_ms]


# -- 1: drops of segments whose batches are with the writer ---------------------------------------


def test_a_dropped_segment_whose_batches_are_with_the_writer_is_counted_once_and_never_reported_kept(
    spool_dir: Path,
) -> None:
    holder = HoldingWriter()  # takes everything, acknowledges nothing: the destination is down
    writer, receipts = spooled(
        holder, spool_dir, segment_bytes=4096, max_bytes=16384, max_in_flight_values=1_000_000
    )
    for k in range(400):
        writer.write_batch(make_batch(k))
    wait_until(lambda: writer.stats()["spool_in_flight"] == writer.stats()["spool_values"])
    writer.close()  # the writer behind still holds them all, unacknowledged
    stats = writer.stats()
    assert stats["spool_dropped_segments"] >= 2
    kept = stats["spool_values"]
    dropped = stats["spool_dropped_by_policy"] + stats["spool_not_spooled"]
    # Every value appended is dropped or kept, once: handed out or not when its segment went.
    assert stats["spool_appended_values"] == kept + stats["spool_dropped_by_policy"]
    assert sum(r.dropped for r in receipts) == dropped == stats["dropped"] > 0
    # What it reports kept is what the next run sends: not a value more, not one less.
    assert values_of(replayed(spool_dir, int(kept))) == kept


def test_through_the_engine_dropped_and_kept_add_up_with_what_the_next_run_sends(spool_dir: Path) -> None:
    from flowcollect import DataCollectionContext, DataCollector, Variable
    from flowcollect.readers import RandomDataReader

    down = HoldingWriter()
    writer = SpooledWriter(
        down,
        spool_dir,
        max_bytes=16384,
        segment_bytes=4096,
        sync_interval_s=0.05,
        close_timeout_s=0.1,
        max_in_flight_values=1_000_000,
    )
    context = DataCollectionContext(
        id=1,
        interval_ms=10,
        min_interval_ms=1,
        variables=[Variable(id=n, address=f"v{n}", reader="random") for n in range(1, 21)],
    )
    with DataCollector([RandomDataReader()], [writer]) as collector:
        collector.start(context)
        wait_until(lambda: writer.stats()["spool_dropped_segments"] >= 2, timeout_s=30)
    final = collector.stats().writers[writer.name]
    stats = writer.stats()
    assert final.written == 0
    assert final.received == final.dropped + final.in_flight
    assert final.dropped == stats["spool_dropped_by_policy"] + stats["spool_not_spooled"] > 0
    assert final.in_flight == stats["spool_values"]
    assert values_of(replayed(spool_dir, final.in_flight)) == final.in_flight


class StuckThenFailing(DataWriter):
    """A plain writer whose first write waits until the test lets it go, then raises; the rest
    store at once."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.entered = threading.Event()
        self.calls = 0
        self.stored: list[ValueBatch] = []

    def write_batch(self, batch: ValueBatch) -> None:
        self.calls += 1
        if self.calls == 1:
            self.entered.set()
            self.go.wait(20)
            raise ConnectionError("the destination went away mid-write")
        self.stored.append(batch)


def test_a_batch_whose_segment_was_dropped_during_its_failed_write_is_counted_dropped_once(
    spool_dir: Path,
) -> None:
    inner = StuckThenFailing()
    writer, receipts = spooled(inner, spool_dir, segment_bytes=4096, max_bytes=16384)
    writer.write_batch(make_batch(0))
    assert inner.entered.wait(10)  # batch 0 is with the writer, in its first segment
    for k in range(1, 400):  # the first segment goes to the disk limit meanwhile
        writer.write_batch(make_batch(k))
    assert writer.stats()["spool_dropped_segments"] >= 1
    inner.go.set()  # the write fails: no copy of batch 0 is left to hand again
    wait_until(lambda: writer.stats()["spool_values"] == 0)
    writer.close()
    stats = writer.stats()
    assert stats["spool_appended_values"] == stats["spool_written"] + stats["spool_dropped_by_policy"]
    assert stats["spool_written"] == values_of(inner.stored)
    assert sum(r.dropped for r in receipts) == stats["spool_dropped_by_policy"] == stats["dropped"]
    assert [r.dropped for r in receipts if r.batch.t_ms == make_batch(0).t_ms] == [len(SPECS)]


# -- 5: a non-file entry in the folder ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_a_non_file_entry_in_the_folder_is_skipped_and_does_not_wedge_the_spool(
    spool_dir: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    holder = HoldingWriter()
    writer, _ = spooled(holder, spool_dir)
    for k in range(3):
        writer.write_batch(make_batch(k))
    writer.close()
    odd = spool_dir / "000000000099.seg"
    if kind == "directory":
        odd.mkdir()
    else:
        os.mkfifo(odd)  # reading it would block for ever
    again = HoldingWriter()
    with caplog.at_level(logging.WARNING, logger="flowcollect.writers.spool"):
        writer2, _ = spooled(again, spool_dir)
        writer2.write_batch(make_batch(3))
        writer2.write_batch(make_batch(4))
        wait_until(lambda: len(again.received) == 5)
    assert [b.t_ms for b in again.received] == [make_batch(k).t_ms for k in range(5)]
    assert "000000000099.seg is not a regular file" in caplog.text
    writer2.close()
    assert odd.exists()  # left alone: not the spool's to delete


def test_a_folder_that_cannot_be_opened_releases_its_lock(
    spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An open that fails half-way (an injected I/O error while checking a segment) must not keep
    # the lock, or every later batch, and every other process, finds the folder "in use".
    from flowcollect.writers.spool._store import Store

    holder = HoldingWriter()
    writer, _ = spooled(holder, spool_dir)
    writer.write_batch(make_batch(0))
    writer.close()
    real = Store._recover
    faults = [1]

    def recover(self: Store, *args: object) -> object:
        if faults[0]:
            faults[0] -= 1
            raise OSError(5, "Input/output error")
        return real(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Store, "_recover", recover)
    again = HoldingWriter()
    writer2, receipts = spooled(again, spool_dir)
    writer2.write_batch(make_batch(1))  # cannot be kept: counted, reported dropped; no exception
    assert writer2.stats()["spool_not_spooled"] == len(SPECS)
    assert [(r.dropped, "cannot be opened" in (r.error or "")) for r in receipts] == [(len(SPECS), True)]
    writer2.write_batch(make_batch(2))  # the next batch opens it: not "in use by another writer"
    wait_until(lambda: len(again.received) == 2)
    assert [b.t_ms for b in again.received] == [make_batch(0).t_ms, make_batch(2).t_ms]
    writer2.close()


# -- 6: a position naming a later segment ---------------------------------------------------------


@pytest.mark.parametrize("named", ["missing", "existing"])
def test_a_position_naming_a_later_segment_is_distrusted_and_the_backlog_kept(
    spool_dir: Path, named: str, caplog: pytest.LogCaptureFixture
) -> None:
    holder = HoldingWriter()
    writer, _ = spooled(holder, spool_dir, segment_bytes=4096, max_bytes=1 << 20)
    for k in range(150):
        writer.write_batch(make_batch(k))
    writer.close()
    before = segments(spool_dir)
    assert len(before) >= 3
    # Nothing was acknowledged; a damaged position names a segment far ahead, or the third one.
    seq = 10_000 if named == "missing" else int(before[2].name[:-4])
    (spool_dir / "position").write_text(json.dumps({"segment": seq, "offset": 8}))
    with caplog.at_level(logging.WARNING, logger="flowcollect.writers.spool"):
        got = replayed(spool_dir, 150 * len(SPECS))
    assert [b.t_ms for b in got] == [make_batch(k).t_ms for k in range(150)]  # nothing deleted
    assert f"names segment {seq}" in caplog.text and "older segments are still there" in caplog.text


def test_a_position_past_the_end_of_its_segment_is_distrusted(
    spool_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    holder = HoldingWriter()
    writer, _ = spooled(holder, spool_dir)
    for k in range(5):
        writer.write_batch(make_batch(k))
    writer.close()
    first = segments(spool_dir)[0]
    seq = int(first.name[:-4])
    (spool_dir / "position").write_text(json.dumps({"segment": seq, "offset": first.stat().st_size + 999}))
    with caplog.at_level(logging.WARNING, logger="flowcollect.writers.spool"):
        got = replayed(spool_dir, 5 * len(SPECS))
    assert [b.t_ms for b in got] == [make_batch(k).t_ms for k in range(5)]
    assert "past the end" in caplog.text


# -- 7: a damaged length field --------------------------------------------------------------------


def _record_offsets(path: Path) -> list[rec.Record]:
    data = path.read_bytes()
    return [r for r in iter_records(data, len(rec.MAGIC), len(data))]


@pytest.mark.parametrize("length", [0xFFFF_FFF0, 5_000_000, 3])
def test_a_damaged_length_field_is_damage_not_a_torn_tail(
    spool_dir: Path, length: int, caplog: pytest.LogCaptureFixture
) -> None:
    holder = HoldingWriter()
    writer, _ = spooled(holder, spool_dir)
    for k in range(10):
        writer.write_batch(make_batch(k))
    writer.close()
    (segment,) = segments(spool_dir)
    records = _record_offsets(segment)
    batches = [r for r in records if r.kind == rec.KIND_BATCH]
    damaged = batches[4]  # the fifth batch: its length field is overwritten
    data = bytearray(segment.read_bytes())
    struct.pack_into("<I", data, damaged.offset, length)
    segment.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="flowcollect.writers.spool"):
        again = HoldingWriter()
        writer2, _ = spooled(again, spool_dir)
        writer2.write_batch(make_batch(100))
        wait_until(lambda: len(again.received) == 10)
        stats = writer2.stats()
        writer2.close()
    # The records after the damage are kept and sent, in order; only the damaged one is lost.
    expected = [make_batch(k) for k in range(10) if k != 4] + [make_batch(100)]
    assert len(again.received) == len(expected)
    assert all(same(a, b) for a, b in zip(again.received, expected, strict=True))
    assert stats["spool_corrupt"] == 1 and stats["spool_torn"] == 0
    assert stats["spool_corrupt_values"] == len(SPECS)  # counted in values
    assert (spool_dir / (segment.name + ".corrupt")).read_bytes() == bytes(data)  # a copy as found
    assert "corrupt" in caplog.text


def test_a_real_torn_tail_is_still_a_torn_tail(spool_dir: Path) -> None:
    holder = HoldingWriter()
    writer, _ = spooled(holder, spool_dir)
    for k in range(4):
        writer.write_batch(make_batch(k))
    writer.close()
    (segment,) = segments(spool_dir)
    size = segment.stat().st_size
    os.truncate(segment, size - 7)  # the last append cut short by a crash
    again = HoldingWriter()
    writer2, _ = spooled(again, spool_dir)
    writer2.write_batch(make_batch(9))
    wait_until(lambda: len(again.received) == 4)
    stats = writer2.stats()
    writer2.close()
    assert [b.t_ms for b in again.received] == [make_batch(k).t_ms for k in (0, 1, 2, 9)]
    assert stats["spool_torn"] == 1 and stats["spool_corrupt"] == 0
    assert not list(spool_dir.glob("*.corrupt"))


# -- 10: what the spool keeps is neither "lost" in the logs nor dropped at the engine's close -----


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_behind_a_spool_the_influxdb_writer_does_not_call_what_the_spool_keeps_lost(
    spool_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from flowcollect.writers import InfluxDBDataWriter

    # Nothing listens there: every request fails, so the writer gives everything up at close.
    influx = InfluxDBDataWriter(
        f"http://127.0.0.1:{_closed_port()}", token="t", org="o", bucket="b", timeout_s=0.3
    )
    writer, receipts = spooled(influx, spool_dir, close_timeout_s=0.2)
    for k in range(5):
        writer.write_batch(make_batch(k))
    wait_until(lambda: writer.stats()["spool_in_flight"] == 5 * len(SPECS))
    with caplog.at_level(logging.INFO):
        writer.close()
    assert "they are lost" not in caplog.text
    assert f"the spool {spool_dir} keeps them for the next run" in caplog.text
    stats = writer.stats()
    assert stats["spool_values"] == 5 * len(SPECS)
    assert stats["dropped"] == 0 and sum(r.dropped for r in receipts) == 0
    assert values_of(replayed(spool_dir, 5 * len(SPECS))) == 5 * len(SPECS)


def test_values_in_the_spool_are_not_dropped_close_when_the_engine_gives_up_on_its_close_first(
    spool_dir: Path,
) -> None:
    from flowcollect import DataCollectionContext, DataCollector, Variable
    from flowcollect.errors import PreflightError
    from flowcollect.readers import RandomDataReader

    down = HoldingWriter()  # never acknowledges: the spool's close drains for its whole timeout
    writer = SpooledWriter(down, spool_dir, max_bytes=1 << 20, sync_interval_s=0.05, close_timeout_s=3)
    context = DataCollectionContext(
        id=1,
        interval_ms=50,
        min_interval_ms=50,
        variables=[Variable(id=n, address=f"v{n}", reader="random") for n in range(1, 4)],
    )
    collector = DataCollector([RandomDataReader()], [writer], close_timeout_s=1)  # < the spool's 3
    collector.start(context)
    wait_until(lambda: len(down.received) >= 5)
    collector.close()
    final = collector.stats().writers[writer.name]
    assert final.dropped_close == 0 and final.dropped == 0
    assert final.in_flight == final.received > 0

    def released() -> bool:
        try:
            SpooledWriter(HoldingWriter(), spool_dir, max_bytes=1 << 20).preflight()
        except PreflightError:
            return False
        return True

    wait_until(released, timeout_s=15)  # the spool's own close ends on the thread left behind
    assert values_of(replayed(spool_dir, final.in_flight)) == final.in_flight


# -- every value once, under a random mix of drops, partial receipts and closes -------------------


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_every_value_is_counted_once_under_random_drops_and_receipts(spool_dir: Path, seed: int) -> None:
    import random

    rng = random.Random(seed)
    holder = HoldingWriter()
    writer, receipts = spooled(
        holder,
        spool_dir,
        segment_bytes=4096,
        max_bytes=16384,
        max_in_flight_values=rng.choice([12, 120, 1_000_000]),
    )
    outcomes = [
        {},
        {"written": 3, "failed": 2, "dropped": 1},
        {"written": 0, "failed": 6},
        {"written": 0, "dropped": 6},
        {"written": 6},
    ]
    for k in range(300):
        writer.write_batch(make_batch(k))
        if rng.random() < 0.3:
            holder.ack(lambda _i: rng.random() < 0.5, **rng.choice(outcomes))
    writer.close()  # whatever the writer still holds stays unacknowledged
    stats = writer.stats()
    settled = (
        stats["spool_written"]
        + stats["spool_failed"]
        + stats["spool_dropped_by_writer"]
        + stats["spool_dropped_by_policy"]
    )
    assert stats["spool_appended_values"] == settled + stats["spool_values"]
    assert sum(r.written for r in receipts) == stats["spool_written"]
    assert sum(r.failed for r in receipts) == stats["spool_failed"]
    assert sum(r.dropped for r in receipts) == stats["dropped"]
    # What no receipt settled is exactly what the spool keeps, and the next run sends all of it
    # (with, harmlessly, batches acknowledged out of order after the first one kept).
    reported: dict[int, int] = {}
    for r in receipts:
        reported[r.batch.t_ms] = reported.get(r.batch.t_ms, 0) + r.written + r.failed + r.dropped
    assert all(n <= len(SPECS) for n in reported.values())
    unsettled = {make_batch(k).t_ms for k in range(300)} - {t for t, n in reported.items() if n == len(SPECS)}
    assert len(unsettled) * len(SPECS) == stats["spool_values"]
    again = {b.t_ms for b in replayed(spool_dir, int(stats["spool_values"]))}
    assert unsettled <= again
