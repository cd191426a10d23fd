"""``SparkplugDataWriter`` against real Mosquitto brokers, watched by the tests' own subscriber
(plain paho); every payload decoded by the protobuf library."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from flowcollect.errors import ConfigError
from flowcollect.sparkplug._schema import DataType, Payload
from flowcollect.values import Receipt, ValueBatch, VariableSpec
from flowcollect.writers import SparkplugDataWriter
from tests.support.mqtt_peer import Peer
from tests.support.waiting import wait_until

VARS = (
    VariableSpec(1, 1, "temp", "float", "plc1", 100, name="Temp"),
    VariableSpec(2, 1, "holding:1:int16", "int", "plc1", 100, name="Level"),
    VariableSpec(3, 1, "coil:0", "bool", "plc2", 100, name="Run"),
)
ROOT = Path(__file__).resolve().parents[2]


class Receipts:
    """Every receipt the writer gives, summed per batch."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.per_batch: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0])

    def __call__(self, receipt: Receipt) -> None:
        with self._lock:
            counts = self.per_batch[id(receipt.batch)]
            counts[0] += receipt.written
            counts[1] += receipt.failed
            counts[2] += receipt.dropped

    def totals(self) -> tuple[int, int, int]:
        with self._lock:
            return (
                sum(c[0] for c in self.per_batch.values()),
                sum(c[1] for c in self.per_batch.values()),
                sum(c[2] for c in self.per_batch.values()),
            )


def now_ms() -> int:
    """A grid instant of now: the writer tells live values from old ones by the clock."""
    return time.time_ns() // 100_000_000 * 100


def batch(t0: int, k: int) -> ValueBatch:
    return ValueBatch(t0 + 100 * k, VARS, [20.0 + k, -k, k % 2 == 0], context_id=1)


def make(url: str, **kw: Any) -> tuple[SparkplugDataWriter, Receipts]:
    writer = SparkplugDataWriter(url, group_id="Plant", edge_node_id="edge1", **kw)
    receipts = Receipts()
    writer.attach(receipts)
    return writer, receipts


def watch(url: str) -> Peer:
    peer = Peer(url)
    peer.subscribe("spBv1.0/#", qos=1)
    return peer


def messages(peer: Peer, kind: str | None = None) -> list[tuple[str, Any]]:
    out = []
    for topic, payload, _dup in peer.taken():
        if "/STATE/" in topic or "/NCMD/" in topic:
            continue
        if kind is None or topic.split("/")[2] == kind:
            out.append((topic, Payload.FromString(payload)))
    return out


def kinds(peer: Peer) -> list[str]:
    return [topic.split("/")[2] for topic, _ in messages(peer)]


def bdseq(payload: Any) -> int:
    return next(int(m.long_value) for m in payload.metrics if m.name == "bdSeq")


def node_seqs(peer: Peer) -> list[int]:
    return [p.seq for t, p in messages(peer) if t.split("/")[2] != "NDEATH"]


def test_births_before_data_aliases_and_seq(mosquitto_factory: Any) -> None:
    broker = mosquitto_factory()
    with watch(broker.url) as peer:
        writer, receipts = make(broker.url)
        t0 = now_ms()
        try:
            writer.write_batch(batch(t0, 0))  # connects; the births carry these values
            wait_until(lambda: kinds(peer).count("DBIRTH") == 2, what="the births")
            for k in range(1, 5):
                writer.write_batch(batch(t0, k))
            wait_until(lambda: receipts.totals() == (15, 0, 0), what="all 15 values written")
        finally:
            writer.close()
        wait_until(lambda: "NDEATH" in kinds(peer), what="the NDEATH of a clean close")
    seen = kinds(peer)
    assert seen[:3] == ["NBIRTH", "DBIRTH", "DBIRTH"]
    assert seen[3:11] == ["DDATA"] * 8
    assert seen[11:] == ["DDEATH", "DDEATH", "NDEATH"]
    assert node_seqs(peer) == list(range(13))
    (nbirth,) = messages(peer, "NBIRTH")
    (ndeath,) = messages(peer, "NDEATH")
    assert bdseq(nbirth[1]) == bdseq(ndeath[1]) == 0
    births = {t.rsplit("/", 1)[1]: p for t, p in messages(peer, "DBIRTH")}
    names = {m.name: (m.alias, m.datatype) for p in births.values() for m in p.metrics}
    assert names == {
        "Temp": (names["Temp"][0], DataType.Double),
        "Level": (names["Level"][0], DataType.Int16),
        "Run": (names["Run"][0], DataType.Boolean),
    }
    aliases = {alias: name for name, (alias, _) in names.items()}
    for topic, payload in messages(peer, "DDATA"):
        for metric in payload.metrics:
            assert not metric.name and metric.alias in aliases
        assert topic.rsplit("/", 1)[1] in ("plc1", "plc2")
    last = [p for t, p in messages(peer, "DDATA") if t.endswith("/plc1")][-1]
    by_name = {aliases[m.alias]: m for m in last.metrics}
    assert by_name["Temp"].double_value == 24.0 and by_name["Temp"].timestamp == t0 + 400
    assert not any(m.is_historical for _, p in messages(peer, "DDATA") for m in p.metrics)
    assert by_name["Level"].int_value == (-4) & 0xFFFFFFFF
    stats = writer.stats()
    assert stats["written"] == 15 and stats["births"] == 1


def test_seq_wraps_at_255(mosquitto_factory: Any) -> None:
    broker = mosquitto_factory()
    with watch(broker.url) as peer:
        writer, receipts = make(broker.url)
        t0 = now_ms()
        try:
            for k in range(140):  # two messages per batch (births or data): 280, and the NBIRTH
                writer.write_batch(batch(t0, k))
            wait_until(lambda: receipts.totals()[0] == 420, what="all values written")
        finally:
            writer.close()
        wait_until(lambda: len(messages(peer)) >= 284, what="every message at the subscriber")
    seqs = node_seqs(peer)
    assert seqs[:283] == [k % 256 for k in range(283)]


def test_rebirth_on_ncmd(mosquitto_factory: Any) -> None:
    broker = mosquitto_factory()
    with watch(broker.url) as peer:
        writer, receipts = make(broker.url)
        t0 = now_ms()
        try:
            writer.write_batch(batch(t0, 0))
            wait_until(lambda: kinds(peer).count("DBIRTH") == 2, what="the births")
            for k in range(1, 3):
                writer.write_batch(batch(t0, k))
            wait_until(lambda: receipts.totals()[0] == 9, what="values written")
            command = Payload(timestamp=t0)
            command.metrics.add(name="Node Control/Rebirth", datatype=DataType.Boolean, boolean_value=True)
            peer.publish("spBv1.0/Plant/NCMD/edge1", command.SerializeToString(), qos=0)
            wait_until(lambda: kinds(peer).count("NBIRTH") == 2, what="a second NBIRTH")
            wait_until(lambda: kinds(peer).count("DBIRTH") == 4, what="the DBIRTHs again")
            writer.write_batch(batch(t0, 3))
            wait_until(lambda: receipts.totals()[0] == 12, what="values after the rebirth")
        finally:
            writer.close()
    seen = kinds(peer)
    second = [i for i, k in enumerate(seen) if k == "NBIRTH"][1]
    assert seen[second : second + 3] == ["NBIRTH", "DBIRTH", "DBIRTH"]
    seqs = node_seqs(peer)
    assert seqs[second : second + 5] == [0, 1, 2, 3, 4]  # NBIRTH restarts seq; data goes on from it
    nbirths = messages(peer, "NBIRTH")
    assert bdseq(nbirths[0][1]) == bdseq(nbirths[1][1]) == 0  # same connection, same bdSeq
    reborn = {m.name: m for _, p in messages(peer, "DBIRTH")[2:] for m in p.metrics}
    assert reborn["Temp"].double_value == 22.0 and reborn["Temp"].timestamp == t0 + 200


def state(online: bool, stamp: int) -> bytes:
    return json.dumps({"online": online, "timestamp": stamp}).encode()


def test_primary_host_offline_holds_then_historical_in_order(mosquitto_factory: Any) -> None:
    broker = mosquitto_factory()
    with watch(broker.url) as peer:
        peer.publish("spBv1.0/STATE/scada", state(False, 1), retain=True)
        writer, receipts = make(broker.url, primary_host_id="scada")
        t0 = now_ms()
        try:
            for k in range(4):
                writer.write_batch(batch(t0, k))
            wait_until(lambda: writer.stats()["held"] == 12, what="12 values held")
            assert kinds(peer) == [] and receipts.totals() == (0, 0, 0)
            peer.publish("spBv1.0/STATE/scada", state(True, 2), retain=True)
            wait_until(lambda: receipts.totals() == (12, 0, 0), what="the held values written")
            writer.write_batch(batch(t0, 4))
            wait_until(lambda: receipts.totals() == (15, 0, 0), what="live values written")
            # The host goes away: the node ends its session (NDEATH) and holds again.
            peer.publish("spBv1.0/STATE/scada", state(False, 3), retain=True)
            wait_until(lambda: "NDEATH" in kinds(peer), what="the NDEATH when the host goes offline")
            writer.write_batch(batch(t0, 5))
            writer.write_batch(batch(t0, 6))
            wait_until(lambda: writer.stats()["held"] == 6, what="held again")
            peer.publish("spBv1.0/STATE/scada", state(True, 4), retain=True)
            wait_until(lambda: receipts.totals() == (21, 0, 0), what="held again, then written")
        finally:
            writer.close()
        # At QoS 0 written means handed to the socket: the last DDATA may still be on its way to
        # the watcher. Wait for the clean stop's NDEATH, published after everything else.
        wait_until(lambda: kinds(peer).count("NDEATH") == 2, what="the watcher to see the clean stop")
    seen = kinds(peer)
    assert seen[:5] == ["NBIRTH", "DBIRTH", "DBIRTH", "DDATA", "DDATA"]
    ddata = messages(peer, "DDATA")
    historical = [
        (t.rsplit("/", 1)[1], p.metrics[0].timestamp)
        for t, p in ddata
        if all(m.is_historical for m in p.metrics)
    ]
    live = [p for _, p in ddata if not any(m.is_historical for m in p.metrics)]
    # Held values oldest first, per device; the newest held ones went out in the births.
    assert historical == [(device, t0 + 100 * k) for k in (0, 1, 2, 5) for device in ("plc1", "plc2")]
    assert [p.metrics[0].timestamp for p in live] == [t0 + 400, t0 + 400]
    births = [p for _, p in messages(peer, "DBIRTH")]
    assert {m.timestamp for p in births[:2] for m in p.metrics} == {t0 + 300}
    assert {m.timestamp for p in births[2:4] for m in p.metrics} == {t0 + 600}
    nbirths = [bdseq(p) for _, p in messages(peer, "NBIRTH")]
    ndeaths = [bdseq(p) for _, p in messages(peer, "NDEATH")]
    assert nbirths == [0, 1] and ndeaths[0] == 0


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_ndeath_will_with_the_birth_bdseq_on_kill_9(
    mosquitto_factory: Any, tmp_path: Path, protocol: str
) -> None:
    broker = mosquitto_factory()
    script = tmp_path / "edge.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, time
            from flowcollect.values import ValueBatch, VariableSpec
            from flowcollect.writers.sparkplug import SparkplugDataWriter
            spec = VariableSpec(1, 1, "temp", "float", "plc1", 100, name="Temp")
            writer = SparkplugDataWriter(
                {broker.url!r}, group_id="Plant", edge_node_id="edge9", protocol={protocol!r}
            )
            writer.attach(lambda r: print("written", r.written, flush=True))
            writer.write_batch(ValueBatch({now_ms()}, (spec,), [1.5], context_id=1))
            time.sleep(60)
            """
        )
    )
    with watch(broker.url) as peer:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        process = subprocess.Popen(
            [sys.executable, str(script)], stdout=subprocess.PIPE, env=env, cwd=str(ROOT), text=True
        )
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert line.strip() == "written 1", line
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
            if process.stdout is not None:
                process.stdout.close()
        wait_until(lambda: "NDEATH" in kinds(peer), what="the broker publishing the will")
    (nbirth,) = messages(peer, "NBIRTH")
    (ndeath,) = messages(peer, "NDEATH")
    assert ndeath[0] == "spBv1.0/Plant/NDEATH/edge9"
    assert bdseq(ndeath[1]) == bdseq(nbirth[1])
    assert not ndeath[1].HasField("seq")


def test_broker_restart_new_bdseq_and_every_value_accounted(mosquitto_factory: Any) -> None:
    broker = mosquitto_factory()
    writer, receipts = make(broker.url)
    t0 = now_ms()
    try:
        for k in range(3):
            writer.write_batch(batch(t0, k))
        wait_until(lambda: receipts.totals()[0] == 9, what="values written")
        broker.kill()
        for k in range(3, 6):
            writer.write_batch(batch(t0, k))
        broker.start()
        with watch(broker.url) as peer:
            wait_until(lambda: "NBIRTH" in kinds(peer), timeout_s=30, what="births after the restart")
            for k in range(6, 8):
                writer.write_batch(batch(t0, k))
            wait_until(lambda: sum(receipts.totals()) == 24, timeout_s=30, what="every value accounted")
            (nbirth,) = messages(peer, "NBIRTH")
            assert bdseq(nbirth[1]) == 1
    finally:
        writer.close()
    written, failed, dropped = receipts.totals()
    assert failed == 0 and written + dropped == 24
    assert writer.stats()["written"] == written


def test_qos1_written_means_acknowledged(mosquitto_factory: Any) -> None:
    broker = mosquitto_factory()
    with watch(broker.url) as peer:
        writer, receipts = make(broker.url, qos=1)
        t0 = now_ms()
        try:
            for k in range(5):
                writer.write_batch(batch(t0, k))
            wait_until(lambda: receipts.totals() == (15, 0, 0), what="acknowledged")
        finally:
            writer.close()
        wait_until(lambda: "NDEATH" in kinds(peer), what="the deaths")
    # Every value at the subscriber, once: in a birth or in a DDATA.
    stamps = [
        (t.rsplit("/", 1)[1], m.timestamp)
        for t, p in messages(peer)
        if t.split("/")[2] in ("DBIRTH", "DDATA")
        for m in p.metrics
    ]
    assert set(stamps) == {(d, t0 + 100 * k) for k in range(5) for d in ("plc1", "plc2")}


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"group_id": "a/b", "edge_node_id": "e"}, "group_id 'a/b' must not contain /"),
        ({"group_id": "g", "edge_node_id": ""}, "edge_node_id must be a non-empty string"),
        ({"group_id": "g", "edge_node_id": "e", "qos": 2}, "qos: must be 0 or 1"),
        ({"group_id": "g", "edge_node_id": "e", "device": "{nope}"}, "device: unknown placeholder"),
        ({"group_id": "g", "edge_node_id": "e", "primary_host_id": "h#"}, "primary_host_id 'h#'"),
    ],
)
def test_bad_options_are_config_errors(options: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        SparkplugDataWriter("mqtt://127.0.0.1:1883", **options)


def test_password_never_in_repr() -> None:
    writer = SparkplugDataWriter(
        "mqtt://127.0.0.1:1883", group_id="g", edge_node_id="e", username="u", password="s3cret"
    )
    assert "s3cret" not in repr(writer) and "s3cret" not in str(writer.stats())
    writer.close()


def test_check_variables_names_the_variable_and_the_cause() -> None:
    writer = SparkplugDataWriter("mqtt://127.0.0.1:1883", group_id="g", edge_node_id="e", device="{tag:line}")
    variables = [
        VariableSpec(1, 7, "a", "float", "plc1", 100, name="A", tags=(("line", "L1"),)),
        VariableSpec(2, 7, "b", "float", "plc1", 100, name="B"),
        VariableSpec(3, 7, "c", "float", "plc1", 100, name="C", tags=(("line", "L1/x"),)),
        VariableSpec(4, 7, "d", "int", "plc1", 100, name="A", tags=(("line", "L1"),)),
    ]
    problems = writer.check_variables(variables)
    assert len(problems) == 3
    assert "context 7, variable 2" in problems[0] and "tag 'line'" in problems[0]
    assert "variable 3" in problems[1] and "must not contain /" in problems[1]
    assert "variable 4" in problems[2] and "Int64 here and Double for variable 1" in problems[2]
    writer.close()


def test_held_values_stay_in_the_spool_and_go_out_historical_next_run(
    mosquitto_factory: Any, tmp_path: Path
) -> None:
    from flowcollect.writers import SpooledWriter

    broker = mosquitto_factory()
    spool_dir = tmp_path / "spool"
    t0 = now_ms() - 60_000  # collected during a minute the primary host was away
    with watch(broker.url) as peer:
        peer.publish("spBv1.0/STATE/scada", state(False, 1), retain=True)
        inner = SparkplugDataWriter(
            broker.url, group_id="Plant", edge_node_id="edge1", primary_host_id="scada"
        )
        first = SpooledWriter(inner, spool_dir, max_bytes=1 << 20, close_timeout_s=1.0)
        receipts = Receipts()
        first.attach(receipts)
        for k in range(4):
            first.write_batch(batch(t0, k))
        wait_until(lambda: inner.stats()["held"] == 12, what="the writer holding what the spool handed")
        first.close()
        assert receipts.totals() == (0, 0, 0)  # nothing written, nothing lost: kept in the spool
        wait_until(lambda: kinds(peer) == ["NDEATH"], what="only the NDEATH of a clean stop")

        # The next run, the host back: the spool's values go out, flagged historical.
        peer.publish("spBv1.0/STATE/scada", state(True, 2), retain=True)
        inner = SparkplugDataWriter(
            broker.url, group_id="Plant", edge_node_id="edge1", primary_host_id="scada"
        )
        second = SpooledWriter(inner, spool_dir, max_bytes=1 << 20, close_timeout_s=5.0)
        receipts = Receipts()
        second.attach(receipts)
        live = now_ms()
        second.write_batch(batch(live, 0))
        try:
            wait_until(lambda: inner.stats()["written"] == 15, what="the spool's 12 values and 3 new written")
        finally:
            second.close()
    stamps = {
        (t.rsplit("/", 1)[1], m.timestamp, m.is_historical)
        for t, p in messages(peer)
        if t.split("/")[2] == "DDATA"
        for m in p.metrics
    }
    assert {(d, t0 + 100 * k, True) for k in range(4) for d in ("plc1", "plc2")} <= stamps
    assert not {(d, ts) for d, ts, historical in stamps if not historical} & {
        (d, t0 + 100 * k) for k in range(4) for d in ("plc1", "plc2")
    }


@pytest.mark.parametrize("qos", [0, 1])
def test_a_collector_publishes_every_value_and_the_figures_agree(mosquitto_factory: Any, qos: int) -> None:
    from flowcollect import DataCollectionContext, DataCollector, Variable
    from flowcollect.readers import RandomDataReader

    broker = mosquitto_factory()
    variables = [Variable(id=i, address=f"r{i}", reader="random", name=f"Line/R{i}") for i in range(1, 21)]
    with watch(broker.url) as peer:
        w = SparkplugDataWriter(broker.url, group_id="Plant", edge_node_id="edge1", qos=qos)
        with DataCollector([RandomDataReader(seed=1)], [w]) as collector:
            collector.start(
                DataCollectionContext(id=7, variables=variables, interval_ms=50, min_interval_ms=10)
            )
            wait_until(lambda: w.stats()["written"] >= 400, what="twenty instants written")
        stats = collector.stats().writers[w.name]
        assert stats.written == stats.received and stats.failed == stats.dropped == stats.in_flight == 0
        assert w.stats()["written"] == stats.written
        wait_until(lambda: "NDEATH" in kinds(peer), what="the deaths of the clean close")
    # Every value the collector counts written is at the subscriber once, by (metric, instant):
    # in a DDATA, or as the current value of the DBIRTH that carried it.
    births = messages(peer, "DBIRTH")
    assert len(births) == 1 and births[0][0] == "spBv1.0/Plant/DBIRTH/edge1/random"
    names = {m.alias: m.name for m in births[0][1].metrics}
    assert set(names.values()) == {f"Line/R{i}" for i in range(1, 21)}
    seen = {(m.name, m.timestamp) for m in births[0][1].metrics}
    for _topic, payload in messages(peer, "DDATA"):
        seen |= {(names[m.alias], m.timestamp) for m in payload.metrics}
    assert len(seen) == stats.written
    assert all(t % 50 == 0 for _n, t in seen), "on the 50 ms grid"
    assert node_seqs(peer) == [k % 256 for k in range(len(node_seqs(peer)))]


def test_preflight_and_a_password_protected_broker(mosquitto_factory: Any) -> None:
    from flowcollect.errors import PreflightError

    broker = mosquitto_factory(users={"edge": "pw-1"})
    good = SparkplugDataWriter(broker.url, group_id="G", edge_node_id="E", username="edge", password="pw-1")
    good.preflight()
    bad = SparkplugDataWriter(broker.url, group_id="G", edge_node_id="E", username="edge", password="nope")
    with pytest.raises(PreflightError, match="refused the connection") as caught:
        bad.preflight()
    assert "nope" not in str(caught.value)
    with Peer(broker.url, username="edge", password="pw-1") as peer:
        peer.subscribe("spBv1.0/#")
        receipts = Receipts()
        good.attach(receipts)
        good.write_batch(batch(now_ms(), 0))
        wait_until(lambda: receipts.totals() == (3, 0, 0), what="written with credentials")
        good.close()
        wait_until(lambda: peer.count() >= 5, what="births and deaths at the subscriber")
    bad.close()


def test_tls_broker(mosquitto_factory: Any, tmp_path: Path) -> None:
    from tests.support.certs import Pki
    from tests.support.mosquitto import broker_tls

    certs = Pki(tmp_path / "certs")
    broker = mosquitto_factory(tls=broker_tls(certs))
    writer, receipts = make(broker.url, tls={"ca_file": certs.ca})
    writer.preflight()
    try:
        writer.write_batch(batch(now_ms(), 0))
        wait_until(lambda: receipts.totals() == (3, 0, 0), what="the births over TLS")
        assert writer.stats()["births"] == 1
    finally:
        writer.close()


def test_close_is_bounded_with_a_stalled_broker_and_accounts_for_every_value(mosquitto_factory: Any) -> None:
    broker = mosquitto_factory()
    writer, receipts = make(broker.url, qos=1, max_pending=2, close_timeout_s=2.0)
    t0 = now_ms()
    writer.write_batch(batch(t0, 0))
    wait_until(lambda: receipts.totals()[0] == 3, what="the births acknowledged")
    broker.pause()  # the connection stays up; nothing is acknowledged any more
    try:
        for k in range(1, 20):
            writer.write_batch(batch(t0, k))
        began = time.monotonic()
        writer.close()
        assert time.monotonic() - began < 2.0 + 3.0
    finally:
        broker.resume()
    written, failed, dropped = receipts.totals()
    assert failed == 0 and written + dropped == 60 and dropped > 0


def test_no_broker_at_all_close_is_bounded_and_every_value_dropped() -> None:
    from tests.support.victoria import free_port

    writer, receipts = make(f"mqtt://127.0.0.1:{free_port()}", close_timeout_s=1.0)
    t0 = now_ms()
    for k in range(3):
        writer.write_batch(batch(t0, k))
    wait_until(lambda: writer.stats()["held"] == 9, what="held for want of a session")
    began = time.monotonic()
    writer.close()
    assert time.monotonic() - began < 1.0 + 3.0
    assert receipts.totals() == (0, 0, 9)
    assert writer.stats()["dropped"] == 9 and writer.stats()["held"] == 0


def test_qos1_after_a_broker_restart_no_message_of_the_old_session(mosquitto_factory: Any) -> None:
    broker = mosquitto_factory()
    writer, receipts = make(broker.url, qos=1)
    t0 = now_ms()
    try:
        writer.write_batch(batch(t0, 0))
        wait_until(lambda: receipts.totals()[0] == 3, what="the births acknowledged")
        broker.pause()  # messages go out and stay unacknowledged
        for k in range(1, 4):
            writer.write_batch(batch(t0, k))
        wait_until(lambda: writer.stats()["pending"] >= 1, what="messages awaiting their PUBACK")
        broker.kill()  # still paused: those messages are never acknowledged
        wait_until(lambda: writer.stats()["requeued"] >= 1, what="the unacknowledged ones held again")
        broker.start()
        with watch(broker.url) as peer:
            wait_until(lambda: receipts.totals()[0] == 12, timeout_s=30, what="the held values written")
            live = now_ms() + 100
            writer.write_batch(batch(live, 0))
            wait_until(lambda: receipts.totals()[0] == 15, what="the live values")
    finally:
        writer.close()
    assert receipts.totals() == (15, 0, 0)
    seen = kinds(peer)
    # The subscriber (there since the restart) sees the new session only: births first, then
    # the old session's values, historical, numbered in the new one.
    assert seen[0] == "NBIRTH"
    seqs = node_seqs(peer)
    assert seqs == list(range(len(seqs)))
    (nbirth,) = messages(peer, "NBIRTH")
    assert bdseq(nbirth[1]) == 1
    historical = {m.timestamp for _t, p in messages(peer, "DDATA") for m in p.metrics if m.is_historical}
    assert historical <= {t0 + 100 * k for k in range(1, 4)} and historical
    live_metrics = [m for _t, p in messages(peer, "DDATA") for m in p.metrics if m.timestamp == live]
    assert len(live_metrics) == 3 and not any(m.is_historical for m in live_metrics)


def test_a_secret_password_is_taken_and_never_shown() -> None:
    from flowcollect import Secret

    writer = SparkplugDataWriter(
        "mqtt://127.0.0.1:1883", group_id="g", edge_node_id="e", username="u", password=Secret("s3cret")
    )
    assert "s3cret" not in repr(writer) and "s3cret" not in str(writer.stats())
    writer.close()
