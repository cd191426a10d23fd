"""The spool on real files: segments, checksums, replay order, torn tails, corrupt segments,
the disk limit, a full disk, and acknowledgements deleting only what was acknowledged.

The writers behind the spool here are small ``DataWriter``s that hold batches until the test
acknowledges them (the acknowledgement contract of ``writers/base.py``), so a test decides
exactly what the destination has stored. The end-to-end path (a ``flowcollect run`` process,
the InfluxDB writer, VictoriaMetrics, SIGKILL) is in ``tests/reliability/test_spool_kill.py``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from flowcollect.errors import ConfigError, PreflightError
from flowcollect.values import Receipt, ValueBatch, VariableSpec
from flowcollect.writers import DataWriter, MemoryDataWriter, SpooledWriter, SpoolOptions
from flowcollect.writers.spool import _records as rec
from flowcollect.writers.spool._store import iter_records
from tests.support.waiting import wait_until

SPECS = (
    VariableSpec(1, 7, "a:float", "float", "random", 10, name="temperature", tags=(("line", "2"),)),
    VariableSpec(2, 7, "a:int", "int", "random", 10, scale=2.0, offset=-1.0),
    VariableSpec(3, 7, "a:big", "int", "random", 10, report="change", deadband=0.5, heartbeat_ms=60_000),
    VariableSpec(4, 7, "a:bool", "bool", "random", 10),
    VariableSpec(5, 7, "a:str", "str", "random", 10),
    VariableSpec(6, 7, "a:none", "float", "random", 10),
)


def make_batch(k: int, specs: tuple[VariableSpec, ...] = SPECS) -> ValueBatch:
    """Batch ``k``: every type, a big int, an error, source times and a quality on some."""
    values: list[Any] = [k + 0.1, k, 2**70 + k, k % 2 == 0, f"s{k}", None][: len(specs)]
    errors: list[str | None] = [None, None, None, None, None, "timeout"][: len(specs)]
    source = [None, 1_700_000_000_123_456_789 + k, None, None, None, None][: len(specs)]
    quality = [None, None, "UncertainLastUsableValue", None, None, None][: len(specs)]
    return ValueBatch(
        1_700_000_000_000 + 10 * k,
        specs,
        values,
        errors,
        source_ns=source if k % 2 else None,
        quality=quality if k % 3 == 0 else None,
        context_id=7,
        reader="random",
    )


def same(a: ValueBatch, b: ValueBatch) -> bool:
    return (
        a.t_ms == b.t_ms
        and tuple(a.variables) == tuple(b.variables)
        and a.values == b.values
        and [type(v) for v in a.values] == [type(v) for v in b.values]
        and a.errors == b.errors
        and a.source_ns == b.source_ns
        and (a.quality or [None] * len(a)) == (b.quality or [None] * len(b))
        and a.context_id == b.context_id
        and a.reader == b.reader
    )


class HoldingWriter(DataWriter):
    """Takes batches and stores them only when the test says so (``ack``)."""

    acknowledges = True

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: list[ValueBatch] = []
        self.unacked: list[ValueBatch] = []
        self.closed = False

    def write_batch(self, batch: ValueBatch) -> None:
        with self.lock:
            self.received.append(batch)
            self.unacked.append(batch)

    def ack(self, which: Callable[[int], bool] = lambda i: True, **counts: int) -> int:
        """Acknowledge the held batches whose index (in arrival order of the held ones) passes."""
        with self.lock:
            chosen = [b for i, b in enumerate(self.unacked) if which(i)]
            self.unacked = [b for b in self.unacked if all(b is not c for c in chosen)]
        for batch in chosen:
            if counts:
                self.acknowledge(batch, **counts)
            else:
                self.acknowledge(batch, len(batch))
        return len(chosen)

    def close(self) -> None:
        self.closed = True


class FlakyWriter(DataWriter):
    """A writer that stores when its write returns, and raises the first ``fail`` times."""

    def __init__(self, fail: int) -> None:
        self.fail = fail
        self.calls = 0
        self.stored: list[ValueBatch] = []

    def write_batch(self, batch: ValueBatch) -> None:
        self.calls += 1
        if self.calls <= self.fail:
            raise ConnectionError("destination down")
        self.stored.append(batch)


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


def spooled(inner: DataWriter, path: Path, **options: Any) -> tuple[SpooledWriter, list[Receipt]]:
    options.setdefault("max_bytes", 64 << 20)
    options.setdefault("sync_interval_s", 0.05)
    options.setdefault("close_timeout_s", 0.2)
    writer = SpooledWriter(inner, path, **options)
    receipts: list[Receipt] = []
    writer.attach(receipts.append)
    return writer, receipts


def segments(path: Path) -> list[Path]:
    return sorted(path.glob("*.seg"))


# -- the format and the round trip ---------------------------------------------------------------


@pytest.mark.parametrize("sync", ["always", "batch", "never"])
def test_batches_come_back_exactly_and_in_order_after_a_restart(spool_dir: Path, sync: str) -> None:
    holder = HoldingWriter()
    writer, receipts = spooled(holder, spool_dir, sync=sync, segment_bytes=4096, max_bytes=1 << 20)
    sent = [make_batch(k) for k in range(60)]
    for batch in sent:
        writer.write_batch(batch)
    wait_until(lambda: len(holder.received) == 60)
    # From memory, no copy: the writer behind gets an object of its own over the same lists.
    assert all(a.values is b.values and a is not b for a, b in zip(holder.received, sent, strict=True))
    assert receipts == []  # spooled is not written
    writer.close()
    assert len(segments(spool_dir)) > 1

    again = HoldingWriter()
    writer2, receipts2 = spooled(again, spool_dir, sync=sync, segment_bytes=4096, max_bytes=1 << 20)
    writer2.write_batch(make_batch(1000))
    wait_until(lambda: len(again.received) == 61)
    replayed = again.received[:60]
    assert all(same(a, b) for a, b in zip(replayed, sent, strict=True))
    assert again.received[60] is not None and again.received[60].t_ms == make_batch(1000).t_ms
    assert writer2.stats()["spool_values"] == 61 * len(SPECS)
    again.ack()
    wait_until(lambda: writer2.stats()["spool_values"] == 0)
    stats = writer2.stats()
    # Receipts reach the engine only for this run's batch; the replayed ones are counted apart.
    assert [r.written for r in receipts2] == [len(SPECS)]
    assert stats["spool_replayed_values"] == 60 * len(SPECS)
    assert stats["spool_written"] == 61 * len(SPECS)
    writer2.close()


def test_a_variable_table_is_written_once_per_segment_not_per_batch(spool_dir: Path) -> None:
    holder = HoldingWriter()
    writer, _ = spooled(holder, spool_dir)
    for k in range(200):
        writer.write_batch(make_batch(k))
    writer.close()
    (segment,) = segments(spool_dir)
    data = segment.read_bytes()
    kinds = [r.kind for r in iter_records(data, len(rec.MAGIC), len(data))]
    assert kinds.count(rec.KIND_SPECS) == 1
    assert kinds.count(rec.KIND_BATCH) == 200
    # Compact: a six-value batch record is well under 200 bytes with its header.
    assert len(data) / 200 < 200


def test_payloads_cannot_name_any_global(spool_dir: Path) -> None:
    # A pickle that would call os.system must be refused as a corrupt record, not run.
    evil = b"cos\nsystem\n(S'echo pwned'\ntR."
    with pytest.raises(rec.RecordError):
        rec.loads(evil)


# -- acknowledgements ------------------------------------------------------------------------------


def test_only_acknowledged_batches_are_deleted_and_receipts_carry_the_writers_word(spool_dir: Path) -> None:
    holder = HoldingWriter()
    writer, receipts = spooled(holder, spool_dir, segment_bytes=4096, max_bytes=1 << 20)
    sent = [make_batch(k) for k in range(40)]
    for batch in sent:
        writer.write_batch(batch)
    wait_until(lambda: len(holder.received) == 40)
    # Acknowledge batches 0-9 and 12 (out of order), with some values failed.
    holder.ack(lambda i: i < 10 or i == 12, written=4, failed=2)
    assert len(receipts) == 11
    assert all(r.written == 4 and r.failed == 2 for r in receipts)
    assert {id(r.batch) for r in receipts} == {id(b) for b in [*sent[:10], sent[12]]}
    stats = writer.stats()
    assert stats["spool_values"] == 29 * len(SPECS)
    assert stats["spool_written"] == 44 and stats["spool_failed"] == 22
    wait_until(lambda: Path(spool_dir / "position").exists())
    time.sleep(0.2)  # a few sync intervals: the position is saved, old segments deleted
    writer.close()

    again = HoldingWriter()
    writer2, _ = spooled(again, spool_dir, segment_bytes=4096, max_bytes=1 << 20)
    writer2.write_batch(make_batch(99))
    wait_until(lambda: len(again.received) == 31)
    # From the first unacknowledged batch (10) on; 12 comes again (harmless: same points).
    assert [b.t_ms for b in again.received[:30]] == [b.t_ms for b in sent[10:]]
    writer2.close()


def test_acknowledged_segments_are_deleted_from_disk(spool_dir: Path) -> None:
    holder = HoldingWriter()
    writer, _ = spooled(holder, spool_dir, segment_bytes=4096, max_bytes=1 << 20)
    for k in range(100):
        writer.write_batch(make_batch(k))
    wait_until(lambda: len(holder.received) == 100)
    before = len(segments(spool_dir))
    assert before >= 4
    holder.ack()
    wait_until(lambda: len(segments(spool_dir)) == 1)  # only the segment still being appended to
    assert writer.stats()["spool_segments"] == 1
    writer.close()


def test_a_writer_that_raises_gets_the_batch_again_later(spool_dir: Path) -> None:
    flaky = FlakyWriter(fail=2)
    writer, receipts = spooled(flaky, spool_dir)
    writer.write_batch(make_batch(1))
    writer.write_batch(make_batch(2))
    wait_until(lambda: len(flaky.stored) == 2, timeout_s=10)  # retries after 0.5 s, then 1 s
    assert [b.t_ms for b in flaky.stored] == [make_batch(1).t_ms, make_batch(2).t_ms]
    assert sum(r.written for r in receipts) == 2 * len(SPECS)
    assert writer.stats()["spool_write_errors"] == 2
    writer.close()


def test_values_the_writer_gives_up_while_closing_stay_for_the_next_run(spool_dir: Path) -> None:
    class GivesUpOnClose(HoldingWriter):
        def close(self) -> None:
            self.ack(written=0, dropped=len(SPECS))

    first = GivesUpOnClose()
    writer, receipts = spooled(first, spool_dir)
    for k in range(5):
        writer.write_batch(make_batch(k))
    wait_until(lambda: len(first.received) == 5)
    writer.close()
    assert receipts == []  # neither written nor dropped: still spooled
    again = HoldingWriter()
    writer2, _ = spooled(again, spool_dir)
    writer2.write_batch(make_batch(5))
    wait_until(lambda: len(again.received) == 6)
    writer2.close()


def test_the_sender_keeps_at_most_max_in_flight_values_at_the_writer(spool_dir: Path) -> None:
    holder = HoldingWriter()
    writer, _ = spooled(holder, spool_dir, max_in_flight_values=20)
    for k in range(50):
        writer.write_batch(make_batch(k))
    wait_until(lambda: len(holder.received) == 4)  # 4 x 6 values >= 20: the window is full
    time.sleep(0.2)
    assert len(holder.received) == 4
    assert writer.stats()["spool_in_flight"] == 24
    holder.ack()
    wait_until(lambda: len(holder.received) == 8)
    writer.close()


def test_a_plain_writer_is_fed_through_write_and_the_spool_counts(spool_dir: Path) -> None:
    memory = MemoryDataWriter()
    writer, receipts = spooled(memory, spool_dir)
    for k in range(10):
        writer.write_batch(make_batch(k))
    wait_until(lambda: len(memory.values) == 60)
    assert [v.value for v in memory.values[:5]] == [0.1, 0, 2**70, True, "s0"]
    assert sum(r.written for r in receipts) == 60
    writer.close()


# -- damage ----------------------------------------------------------------------------------------


def test_a_torn_record_at_the_tail_is_dropped_and_counted(spool_dir: Path) -> None:
    holder = HoldingWriter()
    writer, _ = spooled(holder, spool_dir)
    for k in range(10):
        writer.write_batch(make_batch(k))
    writer.close()
    (segment,) = segments(spool_dir)
    size = segment.stat().st_size
    os.truncate(segment, size - 7)  # the last record cut in the middle, as a crash mid-write leaves it

    again = HoldingWriter()
    writer2, _ = spooled(again, spool_dir)
    writer2.write_batch(make_batch(50))
    wait_until(lambda: len(again.received) == 10)
    assert [b.t_ms for b in again.received] == [make_batch(k).t_ms for k in (*range(9), 50)]
    assert writer2.stats()["spool_torn"] == 1
    writer2.close()


def test_a_corrupt_segment_is_moved_aside_its_good_records_kept_and_no_crash_loop(
    spool_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    holder = HoldingWriter()
    writer, _ = spooled(holder, spool_dir, segment_bytes=4096, max_bytes=1 << 20)
    sent = [make_batch(k) for k in range(60)]
    for batch in sent:
        writer.write_batch(batch)
    writer.close()
    first = segments(spool_dir)[0]
    data = bytearray(first.read_bytes())
    records = [r for r in iter_records(bytes(data), len(rec.MAGIC), len(data)) if r.kind == rec.KIND_BATCH]
    in_first = len(records)
    victim = records[3]
    data[victim.offset + rec.HEADER_SIZE + 5] ^= 0xFF  # one flipped byte inside record 3's payload
    first.write_bytes(bytes(data))

    # Every readable record is kept, before the damage and after it: only record 3 is lost.
    assert in_first > 4
    expected = [b.t_ms for b in sent[:3] + sent[4:]]
    again = HoldingWriter()
    with caplog.at_level(logging.ERROR, logger="flowcollect.writers.spool"):
        writer2, _ = spooled(again, spool_dir, segment_bytes=4096, max_bytes=1 << 20)
        writer2.write_batch(make_batch(100))
    wait_until(lambda: len(again.received) == len(expected) + 1)
    assert [b.t_ms for b in again.received[:-1]] == expected
    assert writer2.stats()["spool_corrupt"] == 1
    assert writer2.stats()["spool_corrupt_values"] == len(SPECS)
    assert first.with_name(first.name + ".corrupt").exists()
    assert "is damaged (checksum mismatch at byte" in caplog.text
    writer2.close()

    # The next start finds nothing wrong (the damage is aside): no crash loop, nothing counted.
    third = HoldingWriter()
    writer3, _ = spooled(third, spool_dir, segment_bytes=4096, max_bytes=1 << 20)
    writer3.write_batch(make_batch(101))
    wait_until(lambda: len(third.received) >= 1)
    assert writer3.stats()["spool_corrupt"] == 0
    writer3.close()


def test_damage_found_while_sending_moves_the_segment_aside_and_sending_goes_on(spool_dir: Path) -> None:
    first = HoldingWriter()
    writer, _ = spooled(first, spool_dir, segment_bytes=4096, max_bytes=1 << 20)
    sent = [make_batch(k) for k in range(60)]
    for batch in sent:
        writer.write_batch(batch)
    writer.close()
    # A new run opens the folder (every segment checks out), then the second segment rots
    # before the sender, held back by a one-batch window, reaches it.
    again = HoldingWriter()
    writer2, _ = spooled(again, spool_dir, segment_bytes=4096, max_bytes=1 << 20, max_in_flight_values=1)
    writer2.write_batch(make_batch(100))
    wait_until(lambda: len(again.received) == 1)
    head = segments(spool_dir)[0].read_bytes()
    in_first = sum(r.kind == rec.KIND_BATCH for r in iter_records(head, len(rec.MAGIC), len(head)))
    second = segments(spool_dir)[1]
    data = bytearray(second.read_bytes())
    victims = [r for r in iter_records(bytes(data), len(rec.MAGIC), len(data)) if r.kind == rec.KIND_BATCH]
    in_second = len(victims)
    data[victims[0].offset + rec.HEADER_SIZE + 3] ^= 0xFF
    second.write_bytes(bytes(data))
    deadline = time.monotonic() + 10
    while len(again.received) < 61 - in_second and time.monotonic() < deadline:
        again.ack()
        time.sleep(0.005)
    received = [b.t_ms for b in again.received]
    # Everything but the rotten segment's batches arrives, in order, and the loss is counted.
    assert received == [b.t_ms for b in sent[:in_first] + sent[in_first + in_second :]] + [
        make_batch(100).t_ms
    ]
    stats = writer2.stats()
    assert stats["spool_corrupt"] == 1
    assert stats["spool_dropped_by_policy"] == in_second * len(SPECS)
    assert second.with_name(second.name + ".corrupt").exists()
    writer2.close()


def test_an_unreadable_position_file_replays_everything_instead_of_failing(
    spool_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    holder = HoldingWriter()
    writer, _ = spooled(holder, spool_dir)
    for k in range(5):
        writer.write_batch(make_batch(k))
    wait_until(lambda: len(holder.received) == 5)
    holder.ack(lambda i: i < 3)
    writer.close()
    (spool_dir / "position").write_text("{not json")
    again = HoldingWriter()
    with caplog.at_level(logging.WARNING, logger="flowcollect.writers.spool"):
        writer2, _ = spooled(again, spool_dir)
        writer2.write_batch(make_batch(9))
    wait_until(lambda: len(again.received) == 6)  # all five again (harmless), then the new one
    assert "unreadable position file" in caplog.text
    writer2.close()


# -- disk limits -----------------------------------------------------------------------------------


def test_max_bytes_drops_the_oldest_segment_counted_logged_once_and_reported(
    spool_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    holder = HoldingWriter()  # never acknowledges: the destination is down
    writer, receipts = spooled(
        holder, spool_dir, segment_bytes=4096, max_bytes=16384, max_in_flight_values=12
    )
    with caplog.at_level(logging.WARNING, logger="flowcollect.writers.spool"):
        for k in range(400):
            writer.write_batch(make_batch(k))
            assert writer.stats()["spool_bytes"] <= 16384 + 4096
    stats = writer.stats()
    assert stats["spool_dropped_by_policy"] > 0
    assert stats["spool_dropped_segments"] >= 1
    # Every value is accounted for: still spooled (incl. in flight) or dropped by the policy.
    assert stats["spool_appended_values"] == stats["spool_values"] + stats["spool_dropped_by_policy"]
    dropped = stats["spool_dropped_by_policy"] + stats["spool_not_spooled"]
    assert sum(r.dropped for r in receipts) == dropped == stats["dropped"]
    assert all(r.written == 0 and "max_bytes" in (r.error or "") for r in receipts)
    assert caplog.text.count("dropping the oldest values") == 1
    # The newest values are the ones kept: once the destination is back, the last batch arrives.
    deadline = time.monotonic() + 10
    while holder.received[-1].t_ms != make_batch(399).t_ms and time.monotonic() < deadline:
        holder.ack()
        time.sleep(0.005)
    assert holder.received[-1].t_ms == make_batch(399).t_ms
    writer.close()


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs, really full when full. Mounting needs root (CI and this machine run as root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_drops_the_oldest_and_collection_goes_on(
    tiny_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    holder = HoldingWriter()
    writer, receipts = spooled(
        holder, tiny_disk / "spool", segment_bytes=16384, max_bytes=100 << 20, max_in_flight_values=600
    )
    with caplog.at_level(logging.WARNING, logger="flowcollect.writers.spool"):
        for k in range(3000):  # ~500 KB of records into 256 KiB
            writer.write_batch(make_batch(k))
    stats = writer.stats()
    assert stats["spool_disk_full"] >= 1
    assert stats["spool_dropped_by_policy"] > 0
    assert stats["spool_appended_values"] == stats["spool_values"] + stats["spool_dropped_by_policy"]
    dropped = stats["spool_dropped_by_policy"] + stats["spool_not_spooled"]
    assert sum(r.dropped for r in receipts) == dropped == stats["dropped"]
    assert caplog.text.count("dropping the oldest values") == 1
    # The newest batch is spooled and reaches the writer once it comes back.
    deadline = time.monotonic() + 20
    while holder.received[-1].t_ms != make_batch(2999).t_ms and time.monotonic() < deadline:
        holder.ack()
        time.sleep(0.005)
    assert holder.received[-1].t_ms == make_batch(2999).t_ms
    writer.close()


# -- checks ----------------------------------------------------------------------------------------


def test_preflight_names_an_unwritable_folder(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    writer = SpooledWriter(MemoryDataWriter(), tmp_path / "file" / "spool", max_bytes=1 << 20)
    with pytest.raises(PreflightError, match=r"spool folder .* cannot be written"):
        writer.preflight()


def test_preflight_refuses_a_folder_another_spool_holds(spool_dir: Path) -> None:
    first, _ = spooled(HoldingWriter(), spool_dir)
    first.write_batch(make_batch(0))  # opens the spool: it holds the folder's lock
    second = SpooledWriter(HoldingWriter(), spool_dir, max_bytes=1 << 20)
    with pytest.raises(PreflightError, match="in use"):
        second.preflight()
    first.close()
    second.preflight()


class DownWriter(HoldingWriter):
    def preflight(self) -> None:
        raise PreflightError("server http://127.0.0.1:9 is not reachable")


def test_a_destination_down_at_start_is_logged_not_fatal_unless_asked(
    spool_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="flowcollect.writers.spool"):
        SpooledWriter(DownWriter(), spool_dir, max_bytes=1 << 20).preflight()
    assert "destination not ready" in caplog.text and "not reachable" in caplog.text
    strict = SpooledWriter(DownWriter(), spool_dir, max_bytes=1 << 20, destination_preflight="fail")
    with pytest.raises(PreflightError, match="not reachable"):
        strict.preflight()


def test_bad_options_are_named(spool_dir: Path) -> None:
    with pytest.raises(ConfigError) as info:
        SpooledWriter(MemoryDataWriter(), spool_dir, max_bytes=0, sync="sometimes")  # type: ignore[arg-type]
    text = str(info.value)
    assert "max_bytes" in text and "sync" in text
    with pytest.raises(ConfigError, match="segment_bytes"):
        SpooledWriter(MemoryDataWriter(), spool_dir, max_bytes=1 << 20, segment_bytes=1 << 19)


def test_options_model_forbids_unknown_fields_and_builds_the_writer(spool_dir: Path) -> None:
    with pytest.raises(ValidationError, match="max_byte"):
        SpoolOptions.model_validate({"path": str(spool_dir), "max_byte": 10})
    options = SpoolOptions(path=spool_dir, max_bytes=1 << 20, sync="always")
    writer = SpooledWriter.from_options(MemoryDataWriter(), options)
    assert writer.sync == "always" and writer.max_bytes == 1 << 20 and writer.path == spool_dir
    assert writer.name == MemoryDataWriter().name


def test_stats_show_backlog_age_and_counters(spool_dir: Path) -> None:
    now = [1_700_000_100.0]
    holder = HoldingWriter()
    writer, _ = spooled(holder, spool_dir, clock=lambda: now[0])
    for k in range(3):
        writer.write_batch(make_batch(k))
    wait_until(lambda: len(holder.received) == 3)
    stats: Mapping[str, float] = writer.stats()
    assert stats["spool_values"] == 18 and stats["spool_records"] == 3
    assert stats["spool_bytes"] > 0 and stats["spool_segments"] == 1
    assert stats["spool_oldest_age_s"] == pytest.approx(100.0)  # batch 0 is at 1_700_000_000.000
    # The writer-wide words (status, summary) see the spool: its backlog is what is buffered.
    assert stats["buffered"] == 18 and stats["oldest_buffered_age_s"] == stats["spool_oldest_age_s"]
    assert stats["dropped"] == 0
    holder.ack(lambda i: i == 0)
    assert writer.stats()["spool_oldest_age_s"] == pytest.approx(99.99)
    writer.close()


# -- in the engine ---------------------------------------------------------------------------------


def test_a_collector_writes_through_the_spool_and_its_stats_and_metrics_show_it(spool_dir: Path) -> None:
    from prometheus_client import generate_latest

    from flowcollect import DataCollectionContext, DataCollector, Variable
    from flowcollect.metrics import registry_for
    from flowcollect.readers import RandomDataReader

    memory = MemoryDataWriter()
    writer = SpooledWriter(memory, spool_dir, max_bytes=1 << 20, sync_interval_s=0.05)
    context = DataCollectionContext(
        id=1,
        interval_ms=100,
        variables=[Variable(id=n, address=f"v{n}", reader="random") for n in range(1, 4)],
    )
    with DataCollector([RandomDataReader()], [writer]) as collector:
        collector.start(context)
        wait_until(lambda: len(memory.values) >= 9)
        stats = collector.stats().writers[writer.name]
        assert stats.extra["spool_appended_values"] >= 9
        assert stats.extra["spool_bytes"] > 0
        text = generate_latest(registry_for(collector, process=False)).decode()
    assert 'flowcollect_writer_stat{stat="spool_bytes",writer="MemoryDataWriter"}' in text
    assert 'flowcollect_writer_stat{stat="spool_oldest_age_s",writer="MemoryDataWriter"}' in text
    # Closed: everything read went through the spool to the writer, nothing is left in it, and
    # the engine counted as written exactly what the writer acknowledged through the spool.
    assert writer.stats()["spool_values"] == 0
    assert len(memory.values) == writer.stats()["spool_appended_values"]
    final = collector.stats().writers[writer.name]
    assert final.written == len(memory.values) == final.received
    assert final.in_flight == final.dropped == 0


def test_values_spooled_when_the_engine_closes_are_kept_not_counted_dropped(spool_dir: Path) -> None:
    from flowcollect import DataCollectionContext, DataCollector, Variable
    from flowcollect.readers import RandomDataReader

    down = HoldingWriter()  # the destination never acknowledges
    writer = SpooledWriter(down, spool_dir, max_bytes=1 << 20, sync_interval_s=0.05, close_timeout_s=0.1)
    context = DataCollectionContext(
        id=1,
        interval_ms=100,
        variables=[Variable(id=n, address=f"v{n}", reader="random") for n in range(1, 4)],
    )
    with DataCollector([RandomDataReader()], [writer]) as collector:
        collector.start(context)
        wait_until(lambda: len(down.received) >= 3)
    final = collector.stats().writers[writer.name]
    assert final.written == 0 and final.dropped == 0
    assert final.in_flight == final.received == writer.stats()["spool_values"] > 0
    # And the next run sends them.
    again = HoldingWriter()
    writer2, _ = spooled(again, spool_dir)
    writer2.write_batch(make_batch(1))
    wait_until(lambda: sum(len(b) for b in again.received) == final.received + len(SPECS))
    writer2.close()


def test_spool_writers_wraps_the_named_writers_and_names_mistakes(tmp_path: Path) -> None:
    from flowcollect.writers.spool import spool_writers

    memory, held = MemoryDataWriter(), HoldingWriter()
    out = spool_writers(
        [memory, held], {"HoldingWriter": SpoolOptions(path=tmp_path / "a", max_bytes=1 << 20)}
    )
    assert out[0] is memory
    assert isinstance(out[1], SpooledWriter) and out[1].writer is held
    again = spool_writers(out, {"HoldingWriter": SpoolOptions(path=tmp_path / "a", max_bytes=1 << 20)})
    assert again[1] is out[1]  # applied twice: nothing changes
    with pytest.raises(ConfigError) as info:
        spool_writers(
            [memory],
            {
                "influxdb:nowhere": SpoolOptions(path=tmp_path / "b", max_bytes=1 << 20),
                "MemoryDataWriter": SpoolOptions(path=tmp_path / "b", max_bytes=1 << 20),
            },
        )
    assert "spools.influxdb:nowhere: no writer is named" in str(info.value)
    assert "spools.MemoryDataWriter: path" in str(info.value)


def test_datetimes_come_back_and_other_types_are_stored_as_text(
    spool_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from datetime import UTC, datetime
    from decimal import Decimal

    when = datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=UTC)
    specs = SPECS[:4]
    odd = ValueBatch(1, specs, [when, Decimal("1.5"), [1.0, 2.0], b"\x00\x01"], context_id=7, reader="opcua")
    holder = HoldingWriter()
    writer, _ = spooled(holder, spool_dir)
    with caplog.at_level(logging.WARNING, logger="flowcollect.writers.spool"):
        writer.write_batch(odd)
    writer.close()
    again = HoldingWriter()
    writer2, _ = spooled(again, spool_dir)
    writer2.write_batch(make_batch(1))
    wait_until(lambda: len(again.received) == 2)
    assert again.received[0].values == [when, "1.5", [1.0, 2.0], b"\x00\x01"]
    assert "values of type Decimal from reader 'opcua' are stored as their text" in caplog.text
    writer2.close()


@pytest.mark.parametrize("sync", ["always", "batch", "never"])
def test_what_a_power_cut_could_take_is_in_the_stats_per_sync_mode(spool_dir: Path, sync: str) -> None:
    writer, _ = spooled(HoldingWriter(), spool_dir, sync=sync, sync_interval_s=0.05)
    for k in range(10):
        writer.write_batch(make_batch(k))
    stats = writer.stats()
    if sync == "always":  # fsynced before write_batch returned
        assert stats["spool_unsynced_values"] == 0 and stats["spool_unsynced_age_s"] == 0
    elif sync == "batch":  # the group commit comes within sync_interval_s
        wait_until(lambda: writer.stats()["spool_unsynced_values"] == 0, timeout_s=5)
    else:  # nothing fsyncs but flush(): the exposure grows
        time.sleep(0.2)
        stats = writer.stats()
        assert stats["spool_unsynced_values"] == 60 and stats["spool_unsynced_age_s"] >= 0.2
        writer.flush()
        assert writer.stats()["spool_unsynced_values"] == 0
    writer.close()


def test_without_receipts_wanted_a_long_backlog_is_read_back_from_disk(
    spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flowcollect.writers.spool import _backlog

    monkeypatch.setattr(_backlog, "MEMORY_VALUES", 12)  # two batches kept in memory, no more
    holder = HoldingWriter()
    writer = SpooledWriter(
        holder,
        spool_dir,
        max_bytes=1 << 20,
        sync_interval_s=0.05,
        max_in_flight_values=6,
        close_timeout_s=0.2,
    )
    sent = [make_batch(k) for k in range(30)]
    for batch in sent:
        writer.write_batch(batch)
    deadline = time.monotonic() + 10
    while len(holder.received) < 30 and time.monotonic() < deadline:
        holder.ack()
        time.sleep(0.002)
    assert all(same(a, b) for a, b in zip(holder.received, sent, strict=True))
    # From memory a batch shares the caller's lists (the writer gets its own object over them).
    from_memory = sum(a.values is b.values for a, b in zip(holder.received, sent, strict=True))
    assert 1 <= from_memory <= 3  # the rest came from disk
    writer.close()


def test_beyond_the_memory_budget_a_batch_keeps_only_its_counts_and_its_receipt_still_comes(
    spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flowcollect.writers.spool import _backlog

    monkeypatch.setattr(_backlog, "MEMORY_VALUES", 12)  # two batches keep their columns
    holder = HoldingWriter()
    writer, receipts = spooled(holder, spool_dir, max_in_flight_values=6)
    sent = [make_batch(k) for k in range(20)]
    handles = [b.handle() for b in sent]  # what the engine gives an acknowledging writer
    for handle in handles:
        writer.write_batch(handle)
    # Released once appended: the columns are gone, the counts and the instant stay.
    released = [h for h in handles if h.released]
    assert len(released) >= len(handles) - 3
    assert all(len(h) == len(SPECS) and h.values == [] and h.source_ns is None for h in released)
    # The lists are the engine's, shared with other writers: never changed, only let go.
    assert all(same(b, make_batch(k)) for k, b in enumerate(sent))
    deadline = time.monotonic() + 10
    while len(holder.received) < 20 and time.monotonic() < deadline:
        holder.ack(written=4, failed=2)
        time.sleep(0.002)
    holder.ack(written=4, failed=2)
    # The released ones were read back from disk, exactly; each receipt names the batch given.
    assert all(same(a, b) for a, b in zip(holder.received, sent, strict=True))
    assert sum(a.values is b.values for a, b in zip(holder.received, sent, strict=True)) <= 3
    wait_until(lambda: len(receipts) == 20)
    assert [id(r.batch) for r in receipts] == [id(h) for h in handles]
    assert all((r.written, r.failed, r.dropped) == (4, 2, 0) for r in receipts)
    assert writer.stats()["spool_values"] == 0
    writer.close()


def test_through_a_sink_the_spool_releases_its_own_objects_and_the_figures_add_up(
    spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flowcollect._sink import WriterSink
    from flowcollect.writers.spool import _backlog

    monkeypatch.setattr(_backlog, "MEMORY_VALUES", 12)
    holder = HoldingWriter()
    writer = SpooledWriter(
        holder,
        spool_dir,
        max_bytes=1 << 20,
        sync_interval_s=0.05,
        max_in_flight_values=6,
        close_timeout_s=0.2,
    )
    sink = WriterSink(writer, logging.getLogger("test.spool.sink"))
    sent = [make_batch(k) for k in range(20)]
    for batch in sent:
        sink.put(batch)  # the engine's batch, shared with any other writer
    wait_until(lambda: writer.stats()["spool_appended_records"] == 20)
    assert all(same(b, make_batch(k)) for k, b in enumerate(sent))  # the shared ones are whole
    snap = sink.snapshot()
    assert (snap.received, snap.written, snap.in_flight) == (120, 0, 120)
    deadline = time.monotonic() + 10
    while len(holder.received) < 20 and time.monotonic() < deadline:
        holder.ack()
        time.sleep(0.002)
    holder.ack()
    assert all(same(a, b) for a, b in zip(holder.received, sent, strict=True))
    assert sum(a.values is b.values for a, b in zip(holder.received, sent, strict=True)) <= 3
    wait_until(lambda: sink.snapshot().written == 120)
    assert sink.close(time.monotonic() + 5)
    snap = sink.snapshot()
    assert (snap.written, snap.failed, snap.dropped, snap.in_flight, snap.queued) == (120, 0, 0, 0, 0)


FSIZE_SCRIPT = """
import json, resource, signal, sys
sys.path.insert(0, {root!r})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (12_000, 12_000))
from tests.writers.test_spool import HoldingWriter, make_batch
from flowcollect.writers import SpooledWriter
holder = HoldingWriter()
writer = SpooledWriter(holder, {path!r}, max_bytes=100 << 20, segment_bytes=16384, close_timeout_s=0)
receipts = []
writer.attach(receipts.append)
for k in range(1000):
    writer.write_batch(make_batch(k))
# After close: a dropped segment whose batches the writer still had is counted once they are
# known lost (the writer closed without storing them), not while they may still be stored.
writer.close()
stats = dict(writer.stats())
stats["receipts_dropped"] = sum(r.dropped for r in receipts)
print(json.dumps(stats))
"""


def test_a_file_size_limit_is_handled_like_a_full_disk(tmp_path: Path) -> None:
    # Without root (no tmpfs to fill), RLIMIT_FSIZE in a child process makes writes fail for real.
    import json
    import sys

    root = str(Path(__file__).resolve().parents[2])
    script = FSIZE_SCRIPT.format(root=root, path=str(tmp_path / "spool"))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    stats = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert stats["spool_disk_full"] >= 1
    assert stats["spool_dropped_by_policy"] > 0
    assert stats["spool_appended_values"] == stats["spool_values"] + stats["spool_dropped_by_policy"]
    assert stats["receipts_dropped"] == stats["spool_dropped_by_policy"] + stats["spool_not_spooled"]
    assert stats["spool_not_spooled"] == 0  # every batch found room, the newest included


def test_a_pipeline_spools_the_writers_it_names_and_refuses_unknown_names(tmp_path: Path) -> None:
    from flowcollect import DataCollectionContext, Pipeline, Variable
    from flowcollect.readers import RandomDataReader

    def pipeline(spools: Mapping[str, Any]) -> Pipeline:
        return Pipeline(
            name="spooled",
            readers=[RandomDataReader()],
            writers=[MemoryDataWriter()],
            contexts=[DataCollectionContext(id=1, variables=[Variable(id=1, address="a", reader="random")])],
            spools=dict(spools),
        )

    built = pipeline({"MemoryDataWriter": SpoolOptions(path=tmp_path / "spool", max_bytes=1 << 20)})
    assert isinstance(built.writers[0], SpooledWriter)
    assert built.writers[0].name == "MemoryDataWriter"  # the spool keeps its writer's name
    with pytest.raises(ValidationError, match=r"spools\.nope: no writer is named 'nope'"):
        pipeline({"nope": {"path": str(tmp_path / "other"), "max_bytes": 1 << 20}})
    with pytest.raises(ValidationError, match=r"spools\.MemoryDataWriter\.max_bytes"):
        pipeline({"MemoryDataWriter": {"path": str(tmp_path / "other"), "max_bytes": 0}})
