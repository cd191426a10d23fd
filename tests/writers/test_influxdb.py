"""InfluxDBDataWriter against a real VictoriaMetrics process: stored points, batching, outages, errors."""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from flowcollect import ConfigError, DataCollectionContext, DataCollector, Variable
from flowcollect.errors import PreflightError
from flowcollect.readers import RandomDataReader
from flowcollect.values import CollectedVariable, Receipt, ValueBatch, VariableSpec
from flowcollect.writers import InfluxDBDataWriter
from tests.support.victoria import Factory, Series, VictoriaMetrics, sample_count
from tests.support.waiting import wait_until

TOKEN = "s3cr3t-t0ken-for-tests"
LOGGER = "flowcollect.writers.influxdb"

pytestmark = pytest.mark.usefixtures("no_leftover_threads")


def grid_start() -> datetime:
    # A whole second some minutes ago: inside the retention, and exact in milliseconds,
    # which is the server's resolution (the collector's ticks are on that grid too).
    return datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)


def ticks(
    n_vars: int,
    n_ticks: int,
    start: datetime | None = None,
    *,
    context_id: int = 1,
    step_ms: int = 100,
    first_tick: int = 0,
) -> Iterator[list[CollectedVariable]]:
    """One batch per tick of ``n_vars`` float variables whose value encodes (variable, tick)."""
    start = start or grid_start()
    for k in range(first_tick, first_tick + n_ticks):
        at = start + timedelta(milliseconds=k * step_ms)
        yield [
            CollectedVariable(
                id=i,
                context_id=context_id,
                address=f"hr{i}",
                value_type="float",
                reader="random",
                interval_ms=step_ms,
                value=i * 100_000 + k + 0.25,
                time=at,
            )
            for i in range(1, n_vars + 1)
        ]


def by_key(series: list[Series]) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """(context, variable) -> sorted (timestamp ms, value) samples."""
    out: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for s in series:
        key = (s.labels["context"], s.labels["variable"])
        out.setdefault(key, []).extend(zip(s.timestamps_ms, s.values, strict=True))
    return {key: sorted(samples) for key, samples in out.items()}


def expected_of(batches: list[list[CollectedVariable]]) -> dict[tuple[str, str], list[tuple[int, float]]]:
    out: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for batch in batches:
        for v in batch:
            assert v.time is not None
            ms = int(v.time.timestamp() * 1000)
            out.setdefault((str(v.context_id), str(v.id)), []).append((ms, float(v.value)))
    return {key: sorted(samples) for key, samples in out.items()}


def writer(server_url: str, measurement: str, **options: object) -> InfluxDBDataWriter:
    settings: dict[str, object] = {"token": TOKEN, "org": "plant", "bucket": "line1"}
    settings.update(options)
    return InfluxDBDataWriter(server_url, measurement=measurement, **settings)  # type: ignore[arg-type]


def without_duplicates_lost(
    stored: dict[tuple[str, str], list[tuple[int, float]]],
) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """The samples with repeats removed, after checking every repeat carries the same value.

    Across an outage a batch whose answer was lost is sent again: InfluxDB overwrites such a
    point with itself, VictoriaMetrics keeps both copies.
    """
    out = {}
    for key, samples in stored.items():
        seen: dict[int, float] = {}
        for ms, value in samples:
            assert seen.setdefault(ms, value) == value, f"{key} at {ms}: two different values"
        out[key] = sorted(seen.items())
    return out


# -- the points on the server ---------------------------------------------------------------------


def test_every_value_stored_once_with_its_timestamp_type_and_tags(victoria: VictoriaMetrics) -> None:
    start = grid_start()
    # Tag values that need escaping, and every value type.
    kinds = [
        ("float", lambda k: 17.125 + k, lambda k: 17.125 + k),
        ("float", lambda k: -1.5e-7 * (k + 1), lambda k: -1.5e-7 * (k + 1)),
        ("int", lambda k: 2**40 + k, lambda k: float(2**40 + k)),
        ("int", lambda k: -k, lambda k: float(-k)),
        ("bool", lambda k: k % 2 == 0, lambda k: 1.0 if k % 2 == 0 else 0.0),
        # VictoriaMetrics stores a string field as the number it spells (0 when none).
        ("str", lambda k: f"{k}.5", lambda k: k + 0.5),
        ("str", lambda k: 'said "hi", ok\\', lambda k: 0.0),
    ]
    # (Tabs, newlines and a trailing backslash do not survive influxdb-client's escaping on any
    # server; the writer matches it byte for byte, see the property test and docs/influxdb.md.)
    addresses = ["holding 40001,float32=be", "coil=7", "a, b", "plain"]
    batches: list[list[CollectedVariable]] = []
    expected: dict[tuple[str, str, str, str], list[tuple[int, float]]] = {}
    field_of = {"float": "value", "int": "value_int", "bool": "value_bool", "str": "value_str"}
    for k in range(12):
        at = start + timedelta(milliseconds=250 * k + 7)
        batch = []
        for context_id in (1, 2):
            for index, (value_type, make, stored) in enumerate(kinds):
                for a, address in enumerate(addresses):
                    var_id = index * 10 + a + 1
                    batch.append(
                        CollectedVariable(
                            id=var_id,
                            context_id=context_id,
                            address=address,
                            value_type=value_type,
                            reader="modbus tcp,1",
                            interval_ms=250,
                            value=make(k),
                            time=at,
                        )
                    )
                    # schema="typed": the field key carries the type, so no field has two types.
                    key = (f"exact_{field_of[value_type]}", str(context_id), str(var_id), address)
                    expected.setdefault(key, []).append((int(at.timestamp() * 1000), stored(k)))
        # Values that must not become points.
        batch.append(CollectedVariable(99, 1, "hr99", "float", "modbus tcp,1", 250, None, at, "timeout"))
        batch.append(CollectedVariable(98, 1, "hr98", "float", "modbus tcp,1", 250, math.nan, at))
        batch.append(CollectedVariable(97, 1, "hr97", "int", "modbus tcp,1", 250, "12", at))
        batches.append(batch)

    w = writer(victoria.url, "exact", batch_size=100)
    for batch in batches:
        w.write(batch)
    w.close()
    stats = w.stats()
    n_points = sum(len(samples) for samples in expected.values())
    assert stats["written"] == n_points
    assert (stats["errors_skipped"], stats["unwritable"]) == (12, 24)
    assert stats["failed"] == stats["dropped"] == stats["buffered"] == 0

    series = victoria.wait_for_samples('{__name__=~"exact_value.*"}', n_points)
    assert sample_count(series) == n_points, "each value stored exactly once"
    stored: dict[tuple[str, str, str, str], list[tuple[int, float]]] = {}
    for s in series:
        assert set(s.labels) == {"__name__", "address", "context", "reader", "variable"}
        assert s.labels["reader"] == "modbus tcp,1"
        key = (s.name, s.labels["context"], s.labels["variable"], s.labels["address"])
        stored.setdefault(key, []).extend(zip(s.timestamps_ms, s.values, strict=True))
    stored = {key: sorted(samples) for key, samples in stored.items()}
    assert stored.keys() == expected.keys()
    for key, samples in expected.items():
        assert [ms for ms, _ in stored[key]] == [ms for ms, _ in samples], f"{key}: timestamps"
        for (_, got), (_, want) in zip(stored[key], samples, strict=True):
            # VictoriaMetrics keeps about 12 significant digits of a float (exact text: the property test).
            assert math.isclose(got, want, rel_tol=1e-11), f"{key}: {got!r} != {want!r}"


def test_batches_by_size_without_waiting_for_the_interval(victoria: VictoriaMetrics) -> None:
    w = writer(victoria.url, "by_size", batch_size=100, flush_interval_ms=600_000)
    try:
        for batch in ticks(50, 20):
            w.write(batch)
        wait_until(lambda: w.stats()["written"] == 1000, what="10 full batches")
        assert w.stats()["requests"] == 10
        w.write(next(ticks(30, 1)))
        # A part batch waits for the interval (ten minutes here) or a flush.
        assert w.stats()["buffered"] == 30
        w.flush()
        assert (w.stats()["written"], w.stats()["requests"], w.stats()["buffered"]) == (1030, 11, 0)
    finally:
        w.close()
    assert sample_count(victoria.wait_for_samples('{__name__="by_size_value"}', 1030)) == 1030


def test_batches_by_time(victoria: VictoriaMetrics) -> None:
    w = writer(victoria.url, "by_time", batch_size=5000, flush_interval_ms=300)
    try:
        handed = time.monotonic()
        w.write(next(ticks(10, 1)))
        wait_until(lambda: w.stats()["written"] == 10, what="the interval to send a part batch")
        assert time.monotonic() - handed >= 0.3
        assert w.stats()["requests"] == 1
    finally:
        w.close()


@pytest.mark.parametrize("gzip", [True, False])
def test_flush_writes_everything_buffered(victoria: VictoriaMetrics, gzip: bool) -> None:
    measurement = f"flushed_{gzip}"
    w = writer(victoria.url, measurement, batch_size=5000, flush_interval_ms=600_000)
    w.gzip = gzip
    try:
        batches = list(ticks(40, 5))
        for batch in batches:
            w.write(batch)
        w.flush()
        assert (w.stats()["written"], w.stats()["buffered"]) == (200, 0)
        series = victoria.wait_for_samples(f'{{__name__="{measurement}_value"}}', 200)
        assert by_key(series) == expected_of(batches)
    finally:
        w.close()


def test_a_collector_writes_every_value_it_reads(victoria: VictoriaMetrics) -> None:
    w = writer(victoria.url, "engine", flush_interval_ms=100)
    variables = [Variable(id=i, address=f"r{i}", reader="random") for i in range(1, 51)]
    with DataCollector(readers=[RandomDataReader(seed=4)], writers=[w]) as collector:
        collector.start(DataCollectionContext(id=7, variables=variables, interval_ms=100))
        wait_until(lambda: w.stats()["written"] >= 500, what="ten ticks to be written")
    stats = w.stats()
    assert stats["buffered"] == stats["failed"] == stats["dropped"] == 0
    series = victoria.wait_for_samples('{__name__="engine_value"}', int(stats["written"]))
    assert sample_count(series) == stats["written"]
    assert all(ms % 100 == 0 for s in series for ms in s.timestamps_ms), "ticks on the 100 ms grid"


# -- outages ------------------------------------------------------------------------------------------


def test_server_down_at_start_then_up_loses_nothing(victoria_factory: Factory) -> None:
    server = victoria_factory(start=False)
    w = writer(server.url, "late", batch_size=200, flush_interval_ms=50)
    try:
        batches = list(ticks(100, 20))
        for batch in batches[:10]:
            w.write(batch)
        wait_until(lambda: w.stats()["retries"] >= 2, what="failed attempts while the server is down")
        assert w.stats()["written"] == 0
        for batch in batches[10:]:
            w.write(batch)
        server.start()
        w.flush()
        stats = w.stats()
        assert (stats["written"], stats["buffered"], stats["dropped"], stats["failed"]) == (2000, 0, 0, 0)
    finally:
        w.close()
    series = server.wait_for_samples('{__name__="late_value"}', 2000)
    assert without_duplicates_lost(by_key(series)) == expected_of(batches)


def test_server_stopped_and_restarted_mid_run_loses_nothing(victoria_factory: Factory) -> None:
    server = victoria_factory()
    w = writer(server.url, "restart", batch_size=100, flush_interval_ms=20)
    batches = list(ticks(50, 60))
    try:
        for k, batch in enumerate(batches):
            w.write(batch)
            if k == 20:
                retries_before = w.stats()["retries"]
                server.stop()
            elif k == 40:
                wait_until(
                    lambda before=retries_before: w.stats()["retries"] > before,
                    what="the writer to notice the outage",
                )
                server.start()
            time.sleep(0.005)  # a collector's pace, so batches are in flight when the server goes
        w.flush()
        assert (w.stats()["written"], w.stats()["buffered"], w.stats()["dropped"]) == (3000, 0, 0)
    finally:
        w.close()
    series = server.wait_for_samples('{__name__="restart_value"}', 3000)
    assert without_duplicates_lost(by_key(series)) == expected_of(batches)


def test_server_killed_mid_run_loses_nothing_it_had_not_acknowledged(victoria_factory: Factory) -> None:
    """SIGKILL: VictoriaMetrics loses the samples it held in memory, acknowledged or not.

    The writer can only answer for what the server had not acknowledged when it died; those
    points (every point after the ``written`` count at the kill, since sending is in order)
    must all arrive once the server is back.
    """
    server = victoria_factory()
    w = writer(server.url, "killed", batch_size=100, flush_interval_ms=20)
    # One request at a time, so what the server acknowledged is exactly the first `written` points.
    w.max_in_flight = 1
    batches = list(ticks(50, 60))
    acknowledged = 0
    try:
        for k, batch in enumerate(batches):
            w.write(batch)
            if k == 20:
                retries_before = w.stats()["retries"]
                server.kill()
                # Once a failure is counted and nothing is in flight, no answer from before the
                # kill is still pending.
                wait_until(
                    lambda before=retries_before: (
                        w.stats()["retries"] > before and w.stats()["in_flight"] == 0
                    ),
                    what="the writer to notice the kill",
                )
                acknowledged = int(w.stats()["written"])
            elif k == 40:
                server.start()
            time.sleep(0.005)
        w.flush()
        assert (w.stats()["buffered"], w.stats()["dropped"], w.stats()["failed"]) == (0, 0, 0)
    finally:
        w.close()
    unacknowledged = [v for batch in batches for v in batch][acknowledged:]
    assert len(unacknowledged) >= 3000 - 21 * 50
    series = server.wait_for_samples('{__name__="killed_value"}', len(unacknowledged))
    stored = without_duplicates_lost(by_key(series))
    for key, samples in expected_of([unacknowledged]).items():
        assert set(samples) <= set(stored.get(key, [])), f"variable {key}: points lost"


def test_5xx_is_retried_until_the_server_takes_the_points(victoria_factory: Factory) -> None:
    # A storage without enough free disk is read-only: VictoriaMetrics answers 503 to writes.
    server = victoria_factory(args=["-storage.minFreeDiskSpaceBytes=1000000GB"])
    w = writer(server.url, "readonly", batch_size=100, flush_interval_ms=20)
    try:
        batches = list(ticks(50, 6))
        for batch in batches:
            w.write(batch)
        wait_until(lambda: w.stats()["retries"] >= 2, what="503 answers to be retried")
        assert w.last_error is not None and "503" in w.last_error and "read-only" in w.last_error
        assert (w.stats()["written"], w.stats()["failed"], w.stats()["buffered"]) == (0, 0, 300)
        server.restart(args=[])
        w.flush()
        assert (w.stats()["written"], w.stats()["buffered"]) == (300, 0)
    finally:
        w.close()
    series = server.wait_for_samples('{__name__="readonly_value"}', 300)
    assert by_key(series) == expected_of(batches)


def test_wrong_token_is_logged_as_an_error_and_the_points_kept_until_it_is_fixed(
    victoria_factory: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    # VictoriaMetrics ignores tokens unless it demands credentials: with -httpAuth.* it answers 401
    # to a request that carries the wrong ones, as InfluxDB does to a wrong token.
    server = victoria_factory(
        args=["-httpAuth.username=flowcollect", "-httpAuth.password=right"], auth=("flowcollect", "right")
    )
    caplog.set_level(logging.WARNING, logger=LOGGER)
    w = writer(server.url, "denied", batch_size=50, flush_interval_ms=20)
    batches = list(ticks(50, 3))
    try:
        for batch in batches:
            w.write(batch)
        wait_until(lambda: w.stats()["held_retries"] >= 2, what="401 answers retried with backoff")
        stats = w.stats()
        assert (stats["failed"], stats["written"], stats["dropped"], stats["buffered"]) == (0, 0, 0, 150)
        assert stats["holding"] == 1
        # The operator fixes it (here: the server stops demanding credentials): all delivered.
        server.restart(args=[])
        w.flush()
        stats = w.stats()
        assert (stats["written"], stats["failed"], stats["buffered"], stats["holding"]) == (150, 0, 0, 0)
    finally:
        w.close()
    errors = [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "401" in errors[0] and "kept and retried" in errors[0]
    assert TOKEN not in caplog.text
    series = server.wait_for_samples('{__name__="denied_value"}', 150)
    assert by_key(series) == expected_of(batches)


def test_buffer_limit_drops_the_oldest_and_counts_them(
    victoria_factory: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    server = victoria_factory(start=False)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    w = writer(server.url, "overflow", batch_size=500, flush_interval_ms=20, buffer_limit=1000)
    try:
        batches = list(ticks(500, 6))
        for batch in batches:
            w.write(batch)
        # Once the batch in flight has failed and gone back, only the newest 1000 remain.
        wait_until(lambda: w.stats()["dropped"] == 2000 and w.stats()["retries"] >= 1, what="2000 dropped")
        assert w.stats()["buffered"] == 1000
        server.start()
        w.flush()
        assert (w.stats()["written"], w.stats()["dropped"], w.stats()["buffered"]) == (1000, 2000, 0)
    finally:
        w.close()
    warnings = [r.getMessage() for r in caplog.records if "buffer full" in r.getMessage()]
    assert warnings and "buffer_limit=1000" in warnings[0] and "dropped the" in warnings[0]
    series = server.wait_for_samples('{__name__="overflow_value"}', 1000)
    assert by_key(series) == expected_of(batches[4:]), "the newest 1000 points, all of them"


def test_close_is_bounded_by_timeout_against_a_hung_server(victoria_factory: Factory) -> None:
    server = victoria_factory()
    server.pause()
    try:
        w = writer(server.url, "hung", batch_size=100, flush_interval_ms=10, timeout_s=1.0)
        w.write(next(ticks(150, 1)))  # returns at once: sending is the sender thread's business
        assert w.stats()["buffered"] == 150
        started = time.monotonic()
        w.close()
        assert time.monotonic() - started < 1.0 + 1.0
        assert w.stats()["dropped"] == 150 and w.stats()["written"] == 0
    finally:
        server.resume()


# -- configuration and secrets -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"url": "localhost:8086"}, "url"),
        ({"url": "ftp://host"}, "url"),
        ({"bucket": ""}, "bucket"),
        ({"bucket": None}, "bucket"),
        ({"org": " "}, "org"),
        ({"measurement": ""}, "measurement"),
        ({"measurement": "#comment"}, "measurement"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 10.5}, "batch_size"),
        ({"flush_interval_ms": -1}, "flush_interval_ms"),
        ({"buffer_limit": True}, "buffer_limit"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"timeout_s": math.inf}, "timeout_s"),
        ({"token": ""}, "token"),
    ],
)
def test_bad_settings_raise_config_error_naming_the_field(options: dict[str, object], field: str) -> None:
    settings: dict[str, object] = {"url": "http://127.0.0.1:1", "token": TOKEN, "org": "o", "bucket": "b"}
    settings.update(options)
    with pytest.raises(ConfigError) as raised:
        InfluxDBDataWriter(**settings)  # type: ignore[arg-type]
    assert f"InfluxDBDataWriter {field}:" in str(raised.value)
    assert TOKEN not in str(raised.value)


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(ConfigError) as raised:
        InfluxDBDataWriter("nope", token=TOKEN, org="", bucket="", batch_size=0)
    assert len(raised.value.problems) == 4


def test_token_never_shows(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("INFLUX_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)
    w = InfluxDBDataWriter(
        "http://user:pw@127.0.0.1:9/", org="o", bucket="b", timeout_s=0.5, flush_interval_ms=10
    )
    try:
        assert "token=<set>" in repr(w)
        for text in (repr(w), str(w), w.name):
            assert TOKEN not in text and "pw" not in text
        w.write(next(ticks(3, 1)))
        wait_until(lambda: w.stats()["retries"] >= 1, what="a refused connection")
        assert w.last_error is not None and TOKEN not in w.last_error
    finally:
        w.close()
    assert TOKEN not in caplog.text


def test_without_token_or_env_the_writer_sends_no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INFLUX_TOKEN", raising=False)
    w = InfluxDBDataWriter("http://127.0.0.1:9", org="o", bucket="b")
    assert "token=None" in repr(w)
    w.close()


def test_no_thread_before_the_first_point_and_none_after_close() -> None:
    w = InfluxDBDataWriter("http://127.0.0.1:9", token=TOKEN, org="o", bucket="b", timeout_s=0.2)
    w.write([CollectedVariable(1, 1, "a", "float", "r", 100, None, grid_start(), "bad")])
    assert w.stats()["errors_skipped"] == 1 and w.stats()["buffered"] == 0
    w.close()
    w.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        w.write(next(ticks(1, 1)))


def test_errors_are_logged_once_per_variable_and_text(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    w = InfluxDBDataWriter("http://127.0.0.1:9", token=TOKEN, org="o", bucket="b", timeout_s=0.2)
    try:
        at = grid_start()
        for k in range(20):
            w.write(
                [
                    CollectedVariable(1, 1, "a", "float", "r", 100, None, at, "timeout"),
                    CollectedVariable(2, 1, "b", "float", "r", 100, None, at, "timeout"),
                    CollectedVariable(
                        1, 1, "a", "float", "r", 100, None, at, "crc error" if k > 9 else "timeout"
                    ),
                ]
            )
    finally:
        w.close()
    assert w.stats()["errors_skipped"] == 60
    lines = Counter(r.getMessage() for r in caplog.records if "not writing" in r.getMessage())
    assert len(lines) == 3 and set(lines.values()) == {1}


# -- the columnar path, receipts, the v1 API and preflight (VictoriaMetrics) ---------------------------


def spec_batches(n_vars: int, n_ticks: int, **spec_options: object) -> list[ValueBatch]:
    start_ms = int(grid_start().timestamp() * 1000)
    variables = [
        VariableSpec(i, 3, f"hr{i}", "float", "modbus", 1000, **spec_options)  # type: ignore[arg-type]
        for i in range(1, n_vars + 1)
    ]
    return [
        ValueBatch(
            start_ms + k * 1000, variables, [i * 1000 + k + 0.5 for i in range(1, n_vars + 1)], context_id=3
        )
        for k in range(n_ticks)
    ]


def test_write_batch_acknowledges_every_value_once_across_merged_and_split_requests(
    victoria: VictoriaMetrics,
) -> None:
    w = writer(victoria.url, "receipts", batch_size=70, flush_interval_ms=20)
    receipts: list[Receipt] = []
    w.attach(receipts.append)
    sent = spec_batches(50, 6, name="flow", tags=(("line", "A"),))
    # One value with an error and one that cannot be a float: acknowledged at once, as failed.
    sent[0].values[3], sent[0].errors[3] = None, "timeout"
    sent[1].values[4] = "not a number"
    try:
        for batch in sent:
            w.write_batch(batch)
        w.flush()
    finally:
        w.close()
    per_batch: dict[int, list[int]] = {}
    for r in receipts:
        totals = per_batch.setdefault(id(r.batch), [0, 0, 0])
        totals[0] += r.written
        totals[1] += r.failed
        totals[2] += r.dropped
    assert per_batch[id(sent[0])] == [49, 1, 0] and per_batch[id(sent[1])] == [49, 1, 0]
    assert all(per_batch[id(b)] == [50, 0, 0] for b in sent[2:])
    assert len(receipts) > len(sent), "batches of 50 in requests of 70: some acknowledged in parts"
    stats = w.stats()
    assert (stats["written"], stats["errors_skipped"], stats["unwritable"]) == (298, 1, 1)
    series = victoria.wait_for_samples('{__name__="receipts_value"}', 298)
    assert sample_count(series) == 298
    assert {s.labels["name"] for s in series} == {"flow"} and {s.labels["line"] for s in series} == {"A"}


def test_the_v1_api_writes_to_victoria_metrics_too(victoria: VictoriaMetrics) -> None:
    w = InfluxDBDataWriter(
        victoria.url, measurement="v1api", api="v1", database="plant", flush_interval_ms=20
    )
    try:
        w.preflight()
        for batch in spec_batches(20, 3):
            w.write_batch(batch)
        w.flush()
    finally:
        w.close()
    series = victoria.wait_for_samples('{__name__="v1api_value"}', 60)
    assert sample_count(series) == 60 and {s.labels["db"] for s in series} == {"plant"}


def test_preflight_v2(victoria_factory: Factory) -> None:
    server = victoria_factory(
        args=["-httpAuth.username=flowcollect", "-httpAuth.password=right"], auth=("flowcollect", "right")
    )
    w = writer(server.url, "preflight")
    with pytest.raises(PreflightError) as raised:
        w.preflight()
    w.close()
    assert "refused the credentials for bucket 'line1' (org 'plant')" in str(raised.value)
    assert "401" in str(raised.value) and TOKEN not in str(raised.value)
    server.restart(args=[])
    w = writer(server.url, "preflight")
    w.preflight()
    w.close()
    assert sample_count(server.export('{__name__=~"preflight.*"}')) == 0, "a preflight stores nothing"
    server.stop()
    w = writer(server.url, "preflight")
    with pytest.raises(PreflightError, match=r"cannot reach InfluxDB at http://127\.0\.0\.1:"):
        w.preflight()
    w.close()


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"api": "v4"}, "api"),
        ({"api": "v1", "org": None, "bucket": None}, "database"),
        ({"api": "v1", "org": None, "bucket": None, "database": "d", "token": "x"}, "token"),
        ({"api": "v1", "org": None, "bucket": None, "database": "d", "password": "x"}, "password"),
        ({"api": "v1", "org": None, "bucket": None, "database": "d", "username": "u"}, "password"),
        ({"api": "v3", "database": "d"}, "org"),
        ({"api": "v2", "database": "d"}, "database"),
        ({"schema": "wide"}, "schema"),
        ({"url": "http://127.0.0.1:99999"}, "url"),
    ],
)
def test_api_settings_are_checked(
    options: dict[str, object], field: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("INFLUX_PASSWORD", raising=False)
    settings: dict[str, object] = {"url": "http://127.0.0.1:1", "token": TOKEN, "org": "o", "bucket": "b"}
    settings.update(options)
    with pytest.raises(ConfigError) as raised:
        InfluxDBDataWriter(**settings)  # type: ignore[arg-type]
    assert f"InfluxDBDataWriter {field}:" in str(raised.value)
    assert TOKEN not in str(raised.value)


def test_secrets_never_show_in_repr_for_any_api() -> None:
    v3 = InfluxDBDataWriter("http://127.0.0.1:9", TOKEN, api="v3", database="d")
    v1 = InfluxDBDataWriter("http://127.0.0.1:9", api="v1", database="d", username="u", password=TOKEN)
    try:
        assert "token=<set>" in repr(v3) and "password=<set>" in repr(v1) and "username='u'" in repr(v1)
        for w in (v1, v3):
            assert TOKEN not in repr(w) and TOKEN not in str(w)
        assert v3.name == "influxdb:d"
    finally:
        v1.close()
        v3.close()


def test_a_connection_the_server_closed_while_idle_costs_no_retry(victoria_factory: Factory) -> None:
    # The server drops idle kept-alive connections after 200 ms; the writer's next request finds
    # its connection closed and goes again at once on a fresh one, without a backoff.
    server = victoria_factory(args=["-http.idleConnTimeout=200ms"])
    w = writer(server.url, "idle", batch_size=10, flush_interval_ms=10)
    w.max_in_flight = 1
    try:
        for k, batch in enumerate(ticks(10, 4)):
            w.write(batch)
            w.flush()
            if k < 3:
                time.sleep(0.6)
        stats = w.stats()
    finally:
        w.close()
    assert (stats["written"], stats["retries"], stats["requests"]) == (40, 0, 4)
    assert sample_count(server.wait_for_samples('{__name__="idle_value"}', 40)) == 40
