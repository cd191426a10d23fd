"""InfluxDBDataWriter against a real InfluxDB 1.6 (``influxd``): what a strict server stores and refuses.

Every test reads the points back with InfluxQL, and counts the writer's receipts: each value of
each batch must be reported exactly once, as written, failed or dropped, and only what the server
stored counts as written.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from flowcollect import DataCollectionContext, DataCollector, Variable
from flowcollect.errors import ConfigError, PreflightError
from flowcollect.readers import RandomDataReader
from flowcollect.values import Receipt, ValueBatch, VariableSpec
from flowcollect.writers import InfluxDBDataWriter
from tests.support.influxdb1 import ADMIN, InfluxDB1, InfluxFactory
from tests.support.victoria import free_port
from tests.support.waiting import wait_until

LOGGER = "flowcollect.writers.influxdb"
DB = "plant"

pytestmark = pytest.mark.usefixtures("no_leftover_threads")


# -- helpers -----------------------------------------------------------------------------------------


def grid_ms() -> int:
    # A whole second a few minutes ago: inside the default retention policy's current shard.
    return (int(time.time()) - 300) * 1000


def specs(
    kinds: Sequence[str], *, context_id: int = 1, first_id: int = 1, **extra: Any
) -> list[VariableSpec]:
    return [
        VariableSpec(first_id + i, context_id, f"hr{first_id + i}", kind, "modbus", 1000, **extra)
        for i, kind in enumerate(kinds)
    ]


def sample(kind: str, var_id: int, tick: int) -> Any:
    return {
        "float": var_id * 1000 + tick + 0.5,
        "int": var_id * 1000 + tick,
        "bool": (var_id + tick) % 2 == 0,
        "str": f"v{var_id}-t{tick}",
    }[kind]


def batches(variables: list[VariableSpec], n_ticks: int, start_ms: int | None = None) -> list[ValueBatch]:
    start_ms = grid_ms() if start_ms is None else start_ms
    return [
        ValueBatch(
            start_ms + k * 1000,
            variables,
            [sample(v.value_type, v.id, k) for v in variables],
            context_id=variables[0].context_id,
            reader="modbus",
        )
        for k in range(n_ticks)
    ]


class Receipts:
    """Collects a writer's receipts; sums them per batch."""

    def __init__(self, writer: InfluxDBDataWriter) -> None:
        self._lock = threading.Lock()
        self.all: list[Receipt] = []
        writer.attach(self._take)

    def _take(self, receipt: Receipt) -> None:
        with self._lock:
            self.all.append(receipt)

    def totals(self) -> tuple[int, int, int]:
        with self._lock:
            return (
                sum(r.written for r in self.all),
                sum(r.failed for r in self.all),
                sum(r.dropped for r in self.all),
            )

    def exact(self) -> dict[int, tuple[int, int, int]]:
        """Per batch: (written, failed, dropped)."""
        with self._lock:
            out: dict[int, tuple[int, int, int]] = {}
            for r in self.all:
                w, f, d = out.get(id(r.batch), (0, 0, 0))
                out[id(r.batch)] = (w + r.written, f + r.failed, d + r.dropped)
            return out

    def per_batch(self) -> dict[int, int]:
        with self._lock:
            out: dict[int, int] = {}
            for r in self.all:
                out[id(r.batch)] = out.get(id(r.batch), 0) + r.written + r.failed + r.dropped
            return out


def v1_writer(server: InfluxDB1, measurement: str, **options: Any) -> InfluxDBDataWriter:
    settings: dict[str, Any] = {"api": "v1", "database": DB, "flush_interval_ms": 20}
    settings.update(options)
    return InfluxDBDataWriter(server.url, measurement=measurement, **settings)


def count(server: InfluxDB1, measurement: str, field: str = "value", database: str = DB) -> int:
    rows = server.select(f'SELECT count("{field}") FROM "{measurement}"', database)  # noqa: S608 - test names
    return int(rows[0]["count"]) if rows else 0


def rows_of(server: InfluxDB1, measurement: str, database: str = DB) -> list[dict[str, Any]]:
    return server.select(f'SELECT * FROM "{measurement}" GROUP BY *', database)  # noqa: S608 - test names


# -- the schema on a strict server ------------------------------------------------------------------


def test_mixed_value_types_are_all_stored_and_read_back(influxdb1_factory: InfluxFactory) -> None:
    server = influxdb1_factory()
    server.query(f"CREATE DATABASE {DB}")
    kinds = ["float", "int", "bool", "str"] * 3
    variables = specs(kinds, name="pump, 1", tags=(("line", "A"), ("site", "north=2")))
    sent = batches(variables, 5)
    w = v1_writer(server, "mixed")
    receipts = Receipts(w)
    try:
        for batch in sent:
            w.write_batch(batch)
        w.flush()
    finally:
        w.close()
    assert receipts.totals() == (60, 0, 0)
    assert receipts.per_batch() == {id(b): 12 for b in sent}, "each value reported once"
    assert w.stats()["written"] == 60 and w.stats()["failed"] == 0

    rows = rows_of(server, "mixed")
    assert len(rows) == 60
    got = {(r["variable"], r["time"]): r for r in rows}
    field_of = {"float": "value", "int": "value_int", "bool": "value_bool", "str": "value_str"}
    for batch in sent:
        for spec, value in zip(batch.variables, batch.values, strict=True):
            row = got[(str(spec.id), batch.t_ms * 1_000_000)]
            assert row[field_of[spec.value_type]] == value, (spec, row)
            others = set(field_of.values()) - {field_of[spec.value_type]}
            assert all(row.get(f) is None for f in others)
            assert (row["name"], row["line"], row["site"]) == ("pump, 1", "A", "north=2")
            assert (row["address"], row["context"], row["reader"]) == (spec.address, "1", "modbus")
    # The field types InfluxDB recorded: one type per key, as docs/influxdb.md promises.
    keys = server.query('SHOW FIELD KEYS FROM "mixed"', DB)[0]["series"][0]["values"]
    assert dict(map(tuple, keys)) == {
        "value": "float",
        "value_int": "integer",
        "value_bool": "boolean",
        "value_str": "string",
    }


def test_schema_fields_writes_telegrafs_points_one_field_per_variable(
    influxdb1_factory: InfluxFactory,
) -> None:
    """The shape Telegraf's Modbus input writes, so its dashboards keep working after an import:
    measurement from the ``measurement`` tag, a field named by each variable, its own tags only."""
    server = influxdb1_factory()
    server.query(f"CREATE DATABASE {DB}")
    device = (("measurement", "modbus"), ("name", "Device"), ("slave_id", "1"), ("type", "holding_register"))
    variables = [
        VariableSpec(1, 1, "holding:0", "float", "modbus", 1000, name="voltage", tags=device),
        VariableSpec(2, 1, "holding:1", "int", "modbus", 1000, name="energy total", tags=device),
        VariableSpec(3, 1, "coil:0", "bool", "modbus", 1000, name="start", tags=(("name", "Device"),)),
    ]
    t0 = grid_ms()
    sent = [
        ValueBatch(t0 + k * 1000, variables, [230.5 + k, 1000 + k, k % 2 == 0], context_id=1, reader="modbus")
        for k in range(3)
    ]
    w = v1_writer(server, "fallback", schema="fields")
    receipts = Receipts(w)
    try:
        for batch in sent:
            w.write_batch(batch)
        w.flush()
    finally:
        w.close()
    assert receipts.totals() == (9, 0, 0)
    rows = server.select('SELECT "voltage", "energy total" FROM "modbus" GROUP BY *', DB)
    assert [(r["time"], r["voltage"], r["energy total"]) for r in rows] == [
        ((t0 + k * 1000) * 1_000_000, 230.5 + k, 1000 + k) for k in range(3)
    ]
    assert all((r["name"], r["slave_id"], r["type"]) == ("Device", "1", "holding_register") for r in rows)
    # The variable without a measurement tag goes to the writer's measurement.
    bits = server.select('SELECT "start" FROM "fallback" GROUP BY *', DB)
    assert [(r["start"], r["name"]) for r in bits] == [(True, "Device"), (False, "Device"), (True, "Device")]
    # No built-in tags in this shape: the series are the device's own.
    tag_keys = server.query('SHOW TAG KEYS FROM "modbus"', DB)[0]["series"][0]["values"]
    assert sorted(k for [k] in tag_keys) == ["name", "slave_id", "type"]


def test_a_replayed_batch_overwrites_instead_of_duplicating(influxdb1_factory: InfluxFactory) -> None:
    server = influxdb1_factory()
    server.query(f"CREATE DATABASE {DB}")
    sent = batches(specs(["float", "int"] * 5), 4)
    w = v1_writer(server, "replayed")
    try:
        for batch in sent + sent:  # what a spool does after a crash: the same batches again
            w.write_batch(batch)
        w.flush()
    finally:
        w.close()
    assert w.stats()["written"] == 80
    assert count(server, "replayed") + count(server, "replayed", "value_int") == 40


def test_a_type_conflict_with_stored_data_is_counted_exactly(
    influxdb1_factory: InfluxFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = influxdb1_factory()
    server.query(f"CREATE DATABASE {DB}")
    caplog.set_level(logging.ERROR, logger=LOGGER)
    start = grid_ms()
    # Someone else made `value_int` a float field in this measurement (and shard) first.
    server.write_lines(f"conflict,variable=999 value_int=0.5 {start * 1_000_000}", DB)
    w = v1_writer(server, "conflict", schema="typed", batch_size=1000)
    receipts = Receipts(w)
    variables = specs(["float", "int", "int", "float", "int"])
    sent = batches(variables, 4, start)  # 20 points: 12 ints refused, 8 floats stored
    try:
        # One request holds all four batches, so the server answers once for all of them.
        for batch in sent:
            w.write_batch(batch)
        w.flush()
        stats = w.stats()
    finally:
        w.close()
    assert (stats["written"], stats["failed"], stats["partial_writes"], stats["requests"]) == (8, 12, 1, 1)
    assert stats["retries"] == 0, "a partial write is never retried"
    assert receipts.totals() == (8, 12, 0)
    # The server names the conflict (value_int of conflict as integer): exactly the int points,
    # so each batch's receipt is exact too, not only the request's total.
    assert receipts.exact() == {id(b): (2, 3, 0) for b in sent}
    assert count(server, "conflict") == 8
    assert count(server, "conflict", "value_int") == 1, "only the point written beforehand"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "partial write" in errors[0] and "12 of 20" in errors[0], errors


def test_one_field_of_two_types_in_a_batch_is_refused_whole_with_schema_single(
    influxdb1_factory: InfluxFactory,
) -> None:
    # The first design's schema, to show what the typed default avoids: InfluxDB 1.x refuses the
    # whole request (400 "field type conflict", no "partial write"): nothing stored, all failed.
    server = influxdb1_factory()
    server.query(f"CREATE DATABASE {DB}")
    w = v1_writer(server, "single", schema="single")
    receipts = Receipts(w)
    try:
        w.write_batch(batches(specs(["float", "int", "bool"]), 1)[0])
        w.flush()
    finally:
        w.close()
    assert receipts.totals() == (0, 3, 0)
    assert w.stats()["failed"] == 3 and w.last_error is not None and "field type conflict" in w.last_error
    assert rows_of(server, "single") == []


# -- operator problems: kept, retried, delivered once fixed -----------------------------------------


def test_wrong_password_keeps_the_points_until_the_user_is_fixed(
    influxdb1_factory: InfluxFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = influxdb1_factory(auth=True)
    server.query(f"CREATE DATABASE {DB}")
    server.query("CREATE USER collector WITH PASSWORD 'the-old-one'")
    server.query(f"GRANT WRITE ON {DB} TO collector")
    caplog.set_level(logging.WARNING, logger=LOGGER)
    secret = "writer-s3cret"
    w = v1_writer(server, "auth", username="collector", password=secret)
    receipts = Receipts(w)
    sent = batches(specs(["float", "int"] * 5), 6)
    try:
        for batch in sent:
            w.write_batch(batch)
        wait_until(lambda: w.stats()["held_retries"] >= 2, what="401 answers retried")
        stats = w.stats()
        assert (stats["written"], stats["failed"], stats["dropped"], stats["buffered"]) == (0, 0, 0, 60)
        assert stats["holding"] == 1 and receipts.totals() == (0, 0, 0)
        assert w.last_error is not None and "401" in w.last_error
        server.query(f"SET PASSWORD FOR collector = '{secret}'")
        w.flush()
        assert w.stats()["holding"] == 0
    finally:
        w.close()
    assert receipts.totals() == (60, 0, 0)
    assert count(server, "auth") + count(server, "auth", "value_int") == 60
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "401" in errors[0] and "kept and retried" in errors[0], errors
    assert secret not in caplog.text and secret not in repr(w) and secret not in str(w.last_error)


def test_missing_database_keeps_the_points_until_it_is_created(influxdb1_factory: InfluxFactory) -> None:
    server = influxdb1_factory()
    w = v1_writer(server, "late_db", database="created_later")
    receipts = Receipts(w)
    sent = batches(specs(["float"] * 10), 5)
    try:
        for batch in sent:
            w.write_batch(batch)
        wait_until(lambda: w.stats()["held_retries"] >= 2, what="404 answers retried")
        assert w.last_error is not None and "404" in w.last_error and "database not found" in w.last_error
        assert w.stats()["buffered"] == 50
        server.query("CREATE DATABASE created_later")
        w.flush()
    finally:
        w.close()
    assert receipts.totals() == (50, 0, 0)
    assert count(server, "late_db", database="created_later") == 50


# -- preflight ----------------------------------------------------------------------------------------


def test_preflight_names_each_problem(influxdb1_factory: InfluxFactory) -> None:
    server = influxdb1_factory(auth=True)
    server.query(f"CREATE DATABASE {DB}")
    server.query("CREATE USER reader WITH PASSWORD 'reader-pw'")
    server.query(f"GRANT READ ON {DB} TO reader")
    admin, password = ADMIN

    def preflight(**options: Any) -> str:
        settings: dict[str, Any] = {"api": "v1", "database": DB, "username": admin, "password": password}
        settings.update(options)
        url = settings.pop("url", server.url)
        w = InfluxDBDataWriter(url, **settings)
        try:
            w.preflight()
        except PreflightError as exc:
            return str(exc)
        finally:
            w.close()
        return "ok"

    assert preflight() == "ok"
    wrong = preflight(password="wrong-password")
    assert "refused the credentials" in wrong and "401" in wrong and "wrong-password" not in wrong
    forbidden = preflight(username="reader", password="reader-pw")  # a user with READ only
    assert "does not let these credentials write to database 'plant'" in forbidden and "403" in forbidden
    missing = preflight(database="nope")
    assert "has no database 'nope'" in missing and "404" in missing
    assert "cannot reach InfluxDB at http://127.0.0.1:" in preflight(url=f"http://127.0.0.1:{free_port()}")
    assert "\n" not in wrong
    # Nothing was written by the checks.
    assert server.query("SHOW MEASUREMENTS", DB)[0].get("series") is None


def test_a_preflight_404_tells_a_missing_database_from_a_missing_endpoint(
    influxdb1_factory: InfluxFactory,
) -> None:
    """InfluxDB 1.6 has no v2 endpoint (that came in 1.8): the first thing a user of the demo
    meets is a 404 for /api/v2/write, which must not read as a missing bucket."""
    server = influxdb1_factory()
    server.query(f"CREATE DATABASE {DB}")

    def preflight(**settings: Any) -> str:
        w = InfluxDBDataWriter(server.url, **settings)
        try:
            w.preflight()
        except PreflightError as exc:
            return str(exc)
        finally:
            w.close()
        return "ok"

    v2 = preflight(token="t", org="o", bucket="plant")
    assert "no bucket" not in v2
    assert "has no v2 write endpoint (/api/v2/write: HTTP 404 Not Found: 404 page not found)" in v2
    assert 'use api="v1" with database=' in v2 and "it says it is InfluxDB 1." in v2
    missing = preflight(api="v1", database="nope")
    assert "has no database 'nope': HTTP 404 Not Found: database not found" in missing
    assert preflight(api="v1", database=DB) == "ok"


def test_a_url_that_does_not_parse_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="InfluxDBDataWriter url"):
        InfluxDBDataWriter("http://127.0.0.1:99999", api="v1", database=DB)


# -- 413 and restarts ---------------------------------------------------------------------------------


def test_a_request_too_large_is_split_and_every_point_stored(influxdb1_factory: InfluxFactory) -> None:
    server = influxdb1_factory(max_body_size=6000)  # about 60 points of ~90 bytes
    server.query(f"CREATE DATABASE {DB}")
    w = v1_writer(server, "split", batch_size=1000)
    w.gzip = False
    receipts = Receipts(w)
    sent = batches(specs(["float"] * 100), 5)
    try:
        for batch in sent:
            w.write_batch(batch)
        w.flush()
        stats = w.stats()
    finally:
        w.close()
    assert stats["splits"] >= 3 and stats["failed"] == 0 and stats["written"] == 500
    assert receipts.totals() == (500, 0, 0) and receipts.per_batch() == {id(b): 100 for b in sent}
    assert count(server, "split") == 500


def test_server_killed_and_restarted_mid_run_loses_nothing(influxdb1_factory: InfluxFactory) -> None:
    server = influxdb1_factory()
    server.query(f"CREATE DATABASE {DB}")
    w = v1_writer(server, "restart", batch_size=200)
    receipts = Receipts(w)
    variables = specs(["float", "int", "bool", "str"] * 10)
    sent = batches(variables, 40)
    try:
        for k, batch in enumerate(sent):
            w.write_batch(batch)
            if k == 15:
                server.kill()  # SIGKILL: the WAL keeps what it acknowledged
            elif k == 30:
                wait_until(lambda: w.stats()["retries"] >= 1, what="the writer to notice the kill")
                server.start()
            time.sleep(0.005)
        w.flush()
        stats = w.stats()
    finally:
        w.close()
    assert (stats["written"], stats["failed"], stats["dropped"], stats["buffered"]) == (1600, 0, 0, 0)
    assert receipts.totals() == (1600, 0, 0)
    # A point is its series and time: a batch sent twice across the kill is stored once.
    stored = sum(count(server, "restart", f) for f in ("value", "value_int", "value_bool", "value_str"))
    assert stored == 1600


def test_grid_times_are_exact_to_the_nanosecond(influxdb1_factory: InfluxFactory) -> None:
    server = influxdb1_factory()
    server.query(f"CREATE DATABASE {DB}")
    start = grid_ms() + 7  # a millisecond grid off the second
    variables = specs(["float"])
    sent = [ValueBatch(start + k * 250, variables, [float(k)]) for k in range(4)]
    sent.append(ValueBatch(start + 1000, variables, [9.0], source_ns=[(start + 1000) * 1_000_000 + 123]))
    w = v1_writer(server, "times")
    try:
        for batch in sent:
            w.write_batch(batch)
        w.flush()
    finally:
        w.close()
    times = sorted(r["time"] for r in rows_of(server, "times"))
    expected = [(start + k * 250) * 1_000_000 for k in range(4)] + [(start + 1000) * 1_000_000 + 123]
    assert times == expected
    assert datetime.fromtimestamp(times[0] / 1e9, UTC) - datetime.fromtimestamp(
        start / 1000, UTC
    ) < timedelta(microseconds=1)


# -- through a collector -------------------------------------------------------------------------------


def test_a_collector_with_variables_of_every_type_has_every_value_stored(
    influxdb1_factory: InfluxFactory,
) -> None:
    server = influxdb1_factory()
    server.query(f"CREATE DATABASE {DB}")
    w = v1_writer(server, "collected", flush_interval_ms=50)
    kinds = ["float", "int", "bool", "str"]
    variables = [
        Variable(id=i, address=f"r{i}", reader="random", value_type=kinds[i % 4]) for i in range(1, 21)
    ]
    with DataCollector(readers=[RandomDataReader(seed=3)], writers=[w]) as collector:
        collector.start(DataCollectionContext(id=5, variables=variables, interval_ms=100))
        wait_until(lambda: w.stats()["written"] >= 200, what="ten ticks stored")
    stats = w.stats()
    assert stats["failed"] == stats["dropped"] == stats["buffered"] == 0
    rows = rows_of(server, "collected")
    assert len(rows) == stats["written"], "every point the writer counted is on the server"
    field_of = {"float": "value", "int": "value_int", "bool": "value_bool", "str": "value_str"}
    for row in rows:
        kind = kinds[int(row["variable"]) % 4]
        assert row[field_of[kind]] is not None, row
        assert row["time"] % 100_000_000 == 0, "on the 100 ms grid"


def test_a_collector_counts_as_written_only_what_the_server_acknowledged(
    influxdb1_factory: InfluxFactory,
) -> None:
    # The database does not exist at first: the writer holds the values (404), the collector counts
    # them in flight, never written; once it exists every value is stored and acknowledged.
    server = influxdb1_factory()
    w = v1_writer(server, "acked", database="later", flush_interval_ms=50)
    variables = [Variable(id=i, address=f"r{i}", reader="random", value_type="int") for i in range(1, 11)]
    with DataCollector(readers=[RandomDataReader(seed=5)], writers=[w]) as collector:
        collector.start(DataCollectionContext(id=2, variables=variables, interval_ms=100))
        wait_until(lambda: w.stats()["held_retries"] >= 2, what="404 answers retried")
        held = collector.stats().writers[w.name]
        assert held.written == 0 and held.in_flight > 0 and held.failed == held.dropped == 0
        server.query("CREATE DATABASE later")
        wait_until(lambda: collector.stats().writers[w.name].written >= 100, what="values acknowledged")
        collector.stop(2)
        collector.flush()
        final = collector.stats().writers[w.name]
    assert final.failed == final.dropped == final.in_flight == final.queued == 0
    assert final.written == final.received == count(server, "acked", "value_int", database="later")
