"""``Samples``: a reader's recent timings, the last ``SAMPLES`` of them, in bounded memory."""

from __future__ import annotations

import tracemalloc

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
    # 8 bytes a sample (a deque of floats held 32: 128 KiB here, not 32).
    assert held <= 4 * 8 * SAMPLES * 1.2, held
    assert counters.snapshot("r", 1000, {}).lateness_ms_max == (10 * SAMPLES - 1) / 7
