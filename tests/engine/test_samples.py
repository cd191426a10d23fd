"""``Samples``: a reader's recent timings, the last ``SAMPLES`` of them, in bounded memory."""

from __future__ import annotations

import tracemalloc

import pytest

from flowcollect.stats import SAMPLES, ReaderCounters, Samples, percentile


def test_samples_keep_the_last_ones_once_full() -> None:
    samples = Samples()
    for value in range(SAMPLES):
        samples.append(float(value))
    assert sorted(samples) == [float(v) for v in range(SAMPLES)]
    for value in range(SAMPLES, SAMPLES + 10):
        samples.append(float(value))
    assert len(samples) == SAMPLES
    assert sorted(samples) == [float(v) for v in range(10, SAMPLES + 10)]
    # Around the ring more than once: still exactly the newest.
    for value in range(SAMPLES + 10, 3 * SAMPLES + 7):
        samples.append(float(value))
    assert sorted(samples) == [float(v) for v in range(2 * SAMPLES + 7, 3 * SAMPLES + 7)]
    assert percentile(samples, 100) == 3 * SAMPLES + 6


def test_a_readers_timings_stay_small_however_long_it_runs() -> None:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        counters = ReaderCounters()
        for each in (counters.lateness, counters.read_ms, counters.tick_ms, counters.delivery_ms):
            for value in range(10 * SAMPLES):
                each.append(value / 7)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # 8 KiB a reader once full: 512 samples of 4 bytes, four timings (1,024 doubles held 32 KiB;
    # a deque of 4,096 floats half a MiB).
    assert held <= 4 * 4 * 512 * 1.2, held
    assert counters.snapshot("r", 1000, {}).lateness_ms_max == pytest.approx((10 * SAMPLES - 1) / 7, abs=1e-3)


def test_percentiles_are_of_the_recent_samples_to_the_microsecond() -> None:
    counters = ReaderCounters()
    for _ in range(10 * SAMPLES):  # an old bad patch, long gone from the window
        counters.lateness.append(5000.0)
    for n in range(SAMPLES):  # then 0.0, 0.25, ... ms: p50 and p99 by nearest rank
        counters.lateness.append(n / 4)
        counters.read_ms.append(1.2 + n % 2)
    stats = counters.snapshot("r", 1000, {})
    assert stats.lateness_ms_max == (SAMPLES - 1) / 4
    assert stats.lateness_ms_p50 == (SAMPLES // 2 - 1) / 4
    assert stats.lateness_ms_p99 == (-(-99 * SAMPLES // 100) - 1) / 4
    # Kept single-precision, told as written: 1.2, not 1.2000000476837158.
    assert (stats.read_ms_p50, stats.read_ms_p99) == (1.2, 2.2)
    assert stats.tick_ms_p50 is None and stats.delivery_ms_p99 is None
