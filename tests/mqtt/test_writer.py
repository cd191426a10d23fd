"""MqttDataWriter: configuration and topics checked before a run, the two layouts' payloads,
receipts from a real Mosquitto, outages, TLS and passwords."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any

import pytest

from flowcollect import DataCollectionContext, DataCollector, Secret, Variable
from flowcollect.errors import ConfigError, PreflightError
from flowcollect.mqtt import TopicTemplate
from flowcollect.pipeline import Pipeline
from flowcollect.readers import RandomDataReader
from flowcollect.values import Receipt, ValueBatch, VariableSpec
from flowcollect.writers import MqttDataWriter
from flowcollect.writers.mqtt._payload import Encoder, iso_ms
from tests.support.certs import Pki
from tests.support.mosquitto import broker_tls
from tests.support.mqtt_peer import Peer
from tests.support.victoria import free_port
from tests.support.waiting import wait_until

SECRET = "pw-Zq81"
FAST: dict[str, Any] = {"interval_ms": 50, "min_interval_ms": 10}


def spec(
    i: int,
    *,
    name: str | None = None,
    tags: tuple[tuple[str, str], ...] = (),
    reader: str = "random",
    value_type: str = "float",
    context: int = 1,
) -> VariableSpec:
    return VariableSpec(i, context, f"r{i}", value_type, reader, 100, name, tags)


class Receipts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.got: list[Receipt] = []

    def __call__(self, receipt: Receipt) -> None:
        with self.lock:
            self.got.append(receipt)

    def total(self, field: str) -> int:
        with self.lock:
            return sum(getattr(r, field) for r in self.got)


# -- configuration and topics, before anything starts ----------------------------------------------


def test_bad_configuration_is_one_error_naming_each_field() -> None:
    with pytest.raises(ConfigError) as caught:
        MqttDataWriter(
            "http://broker:1883",
            topic="a/{nope}/b",
            layout="rows",  # type: ignore[arg-type]
            qos=3,
            password=SECRET,
            protocol="4",  # type: ignore[arg-type]
        )
    text = str(caught.value)
    for words in (
        "MqttDataWriter url: must start with mqtt:// or mqtts://",
        "MqttDataWriter topic: unknown placeholder {nope}",
        "MqttDataWriter layout: must be 'value' or 'instant'",
        "MqttDataWriter qos: must be 0, 1 or 2",
        "MqttDataWriter protocol",
    ):
        assert words in text
    assert SECRET not in text
    for template, words in (("a//{name}", "empty level"), ("/{name}", "empty level"), ("a/#/x", "wildcard")):
        with pytest.raises(
            ConfigError, match=f"MqttDataWriter topic: the topic '{template}' has an? {words}"
        ):
            MqttDataWriter("mqtt://b", topic=template)


def test_password_never_in_repr_name_or_stats() -> None:
    w = MqttDataWriter("mqtt://broker:1883", username="u", password=SECRET)
    assert SECRET not in repr(w) and "password='<set>'" not in repr(w) and "password=<set>" in repr(w)
    assert SECRET not in w.name and SECRET not in str(w.stats())
    assert w.name == "mqtt:broker:1883/flowcollect/{context}/{name}"


@pytest.mark.parametrize(
    ("template", "variable", "words"),
    [
        ("plant/{tag:line}/{name}", Variable(id=3, address="r3", reader="random"), "names the tag 'line'"),
        ("plant/{name}", Variable(id=3, address="r3", name="temp/#", reader="random"), "wildcard"),
        ("plant/{name}", Variable(id=3, address="r3", name="a+b", reader="random"), "wildcard"),
        (
            "plant/{tag:line}/x",
            Variable(id=3, address="r3", tags={"line": ""}, reader="random"),
            "empty level",
        ),
    ],
)
def test_topics_are_checked_before_start_naming_writer_and_variable(
    template: str, variable: Variable, words: str
) -> None:
    w = MqttDataWriter("mqtt://127.0.0.1:1", topic=template)
    good = Variable(id=1, address="r1", name="ok", tags={"line": "l1"}, reader="random")
    context = DataCollectionContext(id=5, interval_ms=100, variables=[good, variable])
    with DataCollector([RandomDataReader()], [w]) as collector:
        with pytest.raises(ConfigError, match=words) as caught:
            collector.check(context)
        assert f"writer {w.name}: context 5, variable 3" in str(caught.value)
        with pytest.raises(ConfigError, match=words):
            collector.start(context)
        assert collector.stats().contexts == {} or 5 not in collector.stats().contexts
    pipeline = Pipeline(name="p", readers=[RandomDataReader()], writers=[w], contexts=[context])
    problems = pipeline.check()
    assert (
        len(problems) == 1
        and f"writer {w.name}: context 5, variable 3" in problems[0]
        and words in problems[0]
    )


def test_a_routed_writer_checks_only_what_it_receives() -> None:
    w = MqttDataWriter("mqtt://127.0.0.1:1", topic="plant/{tag:line}").receive(variables=[1])
    w.layout = "value"
    context = DataCollectionContext(
        id=5,
        interval_ms=100,
        variables=[
            Variable(id=1, address="r1", tags={"line": "l1"}, reader="random"),
            Variable(id=2, address="r2", reader="random"),
        ],
    )
    assert Pipeline(name="p", readers=[RandomDataReader()], writers=[w], contexts=[context]).check() == []


def test_instant_layout_refuses_two_readers_or_two_keys_in_one_topic() -> None:
    w = MqttDataWriter("mqtt://127.0.0.1:1", topic="plant/{context}", layout="instant")
    problems = w.check_variables([spec(1, reader="a"), spec(2, reader="b")])
    assert len(problems) == 1 and "add {reader} to the topic template" in problems[0]
    problems = w.check_variables([spec(1, name="t"), spec(2, name="t")])
    assert len(problems) == 1 and "same key 't'" in problems[0]
    assert (
        MqttDataWriter("mqtt://h", topic="p/{context}/{reader}", layout="instant").check_variables(
            [spec(1, reader="a"), spec(2, reader="b")]
        )
        == []
    )


# -- payloads (pure) -------------------------------------------------------------------------------


T = 1_796_638_500_100  # 2026-12-07T10:15:00.100Z


def test_iso_times_are_exact_milliseconds() -> None:
    assert iso_ms(T) == "2026-12-07T10:15:00.100Z"
    assert iso_ms(0) == "1970-01-01T00:00:00.000Z"
    assert iso_ms(T + 899) == "2026-12-07T10:15:00.999Z"


def test_value_layout_payloads() -> None:
    specs = (
        spec(1, name="temp"),
        spec(2),
        spec(3, value_type="int"),
        spec(4, value_type="bool"),
        spec(5, value_type="str"),
        spec(6),
        spec(7),
    )
    batch = ValueBatch(
        T,
        specs,
        [21.5, None, 7, True, 'a "quoted" é', math.nan, 1e300],
        [None, "timeout", None, None, None, None, None],
        source_ns=[None, None, (T + 5) * 1_000_000 + 123, None, None, None, None],
        quality=[None, None, None, "uncertain", None, None, None],
        context_id=1,
    )
    out = Encoder(TopicTemplate("f/{context}/{name}"), "value").encode(batch)
    assert out.unwritable == [(5, "JSON cannot carry nan")]
    got = {topic: (json.loads(payload), n) for topic, payload, n in out.messages}
    assert got == {
        "f/1/temp": ({"value": 21.5, "time": "2026-12-07T10:15:00.100Z"}, 1),
        "f/1/r2": ({"value": None, "error": "timeout", "time": "2026-12-07T10:15:00.100Z"}, 1),
        "f/1/r3": ({"value": 7, "time": "2026-12-07T10:15:00.105Z"}, 1),
        "f/1/r4": ({"value": True, "quality": "uncertain", "time": "2026-12-07T10:15:00.100Z"}, 1),
        "f/1/r5": ({"value": 'a "quoted" é', "time": "2026-12-07T10:15:00.100Z"}, 1),
        "f/1/r7": ({"value": 1e300, "time": "2026-12-07T10:15:00.100Z"}, 1),
    }


def test_instant_layout_payloads() -> None:
    specs = (spec(1, name="temp"), spec(2, name="flow"), spec(3, name="run", value_type="bool", reader="b"))
    enc = Encoder(TopicTemplate("f/{context}/{reader}"), "instant")
    clean = enc.encode(ValueBatch(T, specs, [21.5, 3, True], context_id=1))
    assert [(t, json.loads(p), n) for t, p, n in clean.messages] == [
        (
            "f/1/random",
            {"time": "2026-12-07T10:15:00.100Z", "values": {"temp": 21.5, "flow": 3}, "errors": {}},
            2,
        ),
        ("f/1/b", {"time": "2026-12-07T10:15:00.100Z", "values": {"run": True}, "errors": {}}, 1),
    ]
    texts = enc.encode(ValueBatch(T, specs, ['a,"b"', 1e16, False], context_id=1))
    assert [json.loads(p)["values"] for _t, p, _n in texts.messages] == [
        {"temp": 'a,"b"', "flow": 1e16},
        {"run": False},
    ]
    nan = enc.encode(ValueBatch(T, specs, [math.nan, 2.5, True], context_id=1))
    assert nan.unwritable == [(0, "JSON cannot carry nan")]
    assert [(t, json.loads(p), n) for t, p, n in nan.messages[:1]] == [
        ("f/1/random", {"time": "2026-12-07T10:15:00.100Z", "values": {"flow": 2.5}, "errors": {}}, 1)
    ]
    mixed = enc.encode(
        ValueBatch(
            T,
            specs,
            [math.inf, None, False],
            [None, "bad crc", None],
            quality=[None, None, "stale"],
            context_id=1,
        )
    )
    assert mixed.unwritable == [(0, "JSON cannot carry inf")]
    assert [(t, json.loads(p), n) for t, p, n in mixed.messages] == [
        ("f/1/random", {"time": "2026-12-07T10:15:00.100Z", "values": {}, "errors": {"flow": "bad crc"}}, 1),
        (
            "f/1/b",
            {
                "time": "2026-12-07T10:15:00.100Z",
                "values": {"run": False},
                "errors": {},
                "quality": {"run": "stale"},
            },
            1,
        ),
    ]


# -- against a broker ------------------------------------------------------------------------------


def variables(n: int) -> list[Variable]:
    return [Variable(id=i, address=f"r{i}", reader="random") for i in range(1, n + 1)]


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_a_collector_publishes_every_value_and_the_figures_agree(mosquitto_factory: Any, qos: int) -> None:
    broker = mosquitto_factory()
    with Peer(broker.url) as peer:
        peer.subscribe("flowcollect/#", qos=1)
        w = MqttDataWriter(broker.url, qos=qos)
        with DataCollector([RandomDataReader(seed=1)], [w]) as collector:
            collector.start(DataCollectionContext(id=7, variables=variables(20), **FAST))
            wait_until(lambda: w.stats()["written"] >= 400, what="twenty instants written")
        stats = collector.stats().writers[w.name]
        assert stats.written == stats.received and stats.failed == stats.dropped == stats.in_flight == 0
        wait_until(lambda: peer.count() >= stats.written, what="every message at the subscriber")
        got = peer.taken()
        assert len(got) == stats.written == w.stats()["messages"]
        assert {t for t, _p, _d in got} == {f"flowcollect/7/r{i}" for i in range(1, 21)}
        times = [json.loads(p)["time"] for _t, p, _d in got]
        assert all(t.endswith("0Z") and int(t[-4:-1]) % 50 == 0 for t in times), "on the 50 ms grid"
        assert len(set(zip([t for t, _p, _d in got], times, strict=True))) == len(got), "no duplicate"


def test_instant_layout_one_message_per_instant(mosquitto_factory: Any) -> None:
    broker = mosquitto_factory()
    with Peer(broker.url) as peer:
        peer.subscribe("plant/#")
        w = MqttDataWriter(broker.url, topic="plant/{context}", layout="instant", qos=0)
        with DataCollector([RandomDataReader(seed=1)], [w]) as collector:
            collector.start(DataCollectionContext(id=3, variables=variables(100), **FAST))
            wait_until(lambda: w.stats()["written"] >= 1000, what="ten instants written")
        stats = collector.stats().writers[w.name]
        assert stats.written == stats.received == w.stats()["messages"] * 100
        wait_until(lambda: peer.count() * 100 >= stats.written, what="every message at the subscriber")
        bodies = [json.loads(p) for _t, p, _d in peer.taken()]
        assert sum(len(b["values"]) for b in bodies) == stats.written
        assert all(set(b["values"]) == {f"r{i}" for i in range(1, 101)} and b["errors"] == {} for b in bodies)


def test_broker_down_at_start_then_up_loses_nothing(mosquitto_factory: Any) -> None:
    broker = mosquitto_factory(start=False)
    receipts = Receipts()
    w = MqttDataWriter(broker.url, qos=1)
    w.reconnect_max_s = 0.5
    w.attach(receipts)
    specs = tuple(spec(i) for i in range(1, 11))
    try:
        for k in range(20):
            w.write_batch(ValueBatch(T + k * 100, specs, [float(k)] * 10, context_id=1))
        wait_until(lambda: w.stats()["connects"] == 0 and w.last_error is not None, what="a failed attempt")
        assert receipts.total("written") == 0
        broker.start()
        with Peer(broker.url) as peer:
            peer.subscribe("flowcollect/#")
            wait_until(lambda: receipts.total("written") == 200, what="all 200 values acknowledged")
    finally:
        w.close()
    assert (receipts.total("failed"), receipts.total("dropped")) == (0, 0)
    assert len(receipts.got) == 20


def test_qos0_messages_lost_in_a_drop_are_sent_again_and_close_drops_the_rest(mosquitto_factory: Any) -> None:
    broker = mosquitto_factory()
    receipts = Receipts()
    w = MqttDataWriter(broker.url, qos=0)
    w.timeout_s = 1.0
    w.attach(receipts)
    specs = tuple(spec(i) for i in range(1, 6))
    w.write_batch(ValueBatch(T, specs, [1.0] * 5, context_id=1))
    wait_until(lambda: receipts.total("written") == 5, what="five handed to the socket")
    broker.kill()
    wait_until(lambda: w.stats()["connected"] == 0, what="the drop noticed")
    w.write_batch(ValueBatch(T + 100, specs, [2.0] * 5, context_id=1))
    assert w.stats()["buffered"] == 5
    w.close()
    assert (receipts.total("written"), receipts.total("dropped")) == (5, 5)
    assert receipts.got[-1].error == "closed before the broker acknowledged it"


def test_buffer_limit_drops_the_oldest_and_says_so(mosquitto_factory: Any) -> None:
    broker = mosquitto_factory(start=False)
    receipts = Receipts()
    w = MqttDataWriter(broker.url, qos=0)
    w.buffer_limit = 25
    w.timeout_s = 0.5
    w.attach(receipts)
    specs = tuple(spec(i) for i in range(1, 11))
    for k in range(4):
        w.write_batch(ValueBatch(T + k * 100, specs, [1.0] * 10, context_id=1))
    assert w.stats()["buffered"] == 25
    # A batch's receipt comes once all of it settled: the first whole, the second's half later.
    assert receipts.total("dropped") == 10 and len(receipts.got) == 1
    w.close()
    assert receipts.total("dropped") == 40


def test_preflight_names_the_cause(mosquitto_factory: Any, tmp_path: Path) -> None:
    broker = mosquitto_factory(users={"c": SECRET})
    MqttDataWriter(broker.url, username="c", password=SECRET).preflight()
    secret = MqttDataWriter(broker.url, username="c", password=Secret(SECRET))
    secret.preflight()
    assert SECRET not in repr(secret)
    bad = MqttDataWriter(broker.url, username="c", password="nope")
    with pytest.raises(PreflightError, match="refused the connection"):
        bad.preflight()
    pipeline = Pipeline(
        name="p",
        readers=[RandomDataReader()],
        writers=[bad],
        contexts=[DataCollectionContext(id=1, variables=variables(1))],
    )
    problems = pipeline.preflight()
    assert len(problems) == 1
    assert problems[0].startswith(
        f"writer {bad.name}: the MQTT broker at {broker.url} refused the connection"
    )
    assert SECRET not in problems[0] and "nope" not in problems[0]
    nowhere = MqttDataWriter(f"mqtt://127.0.0.1:{free_port()}")
    with pytest.raises(PreflightError, match="connection refused"):
        nowhere.preflight()


def test_tls_broker(mosquitto_factory: Any, tmp_path: Path) -> None:
    certs = Pki(tmp_path / "certs")
    broker = mosquitto_factory(tls=broker_tls(certs), users={"c": SECRET})
    w = MqttDataWriter(broker.url, username="c", password=SECRET, tls={"ca_file": certs.ca})
    w.preflight()
    with pytest.raises(PreflightError, match="certificate that was refused"):
        MqttDataWriter(broker.url, username="c", password=SECRET, tls={"ca_file": certs.other_ca}).preflight()
    receipts = Receipts()
    w.attach(receipts)
    try:
        w.write_batch(ValueBatch(T, (spec(1),), [1.0], context_id=1))
        wait_until(lambda: receipts.total("written") == 1, what="the PUBACK over TLS")
    finally:
        w.close()


@pytest.mark.realtime
def test_qos2_messages_held_through_an_outage_all_arrive(mosquitto_factory: Any) -> None:
    """paho sends every message it holds at once after a reconnect; Mosquitto drops QoS 2
    messages beyond its receive maximum (20) while completing their flow, so the writer hands
    paho no more than its window: 200 values held through an outage all arrive, once.

    The writer retries every 2 s, so the test's subscriber is back before it (a killed broker
    forgets subscriptions it had not saved)."""
    broker = mosquitto_factory()
    receipts = Receipts()
    w = MqttDataWriter(broker.url, qos=2)
    w.reconnect_min_s = w.reconnect_max_s = 2.0
    w.attach(receipts)
    specs = tuple(spec(i) for i in range(1, 11))
    try:
        w.write_batch(ValueBatch(T, specs, [0.0] * 10, context_id=1))
        wait_until(lambda: receipts.total("written") == 10, what="the first batch")
        broker.kill()
        wait_until(lambda: w.stats()["connected"] == 0, what="the outage noticed")
        for k in range(1, 21):
            w.write_batch(ValueBatch(T + k * 100, specs, [float(k)] * 10, context_id=1))
        broker.start()
        with Peer(broker.url) as peer:
            peer.subscribe("flowcollect/#", qos=2)
            assert w.stats()["connects"] == 1, "the subscriber is back first"
            wait_until(lambda: receipts.total("written") == 210, what="all 210 acknowledged", timeout_s=20)
            keys = lambda: {(t, json.loads(p)["time"]) for t, p, _d in peer.taken()}  # noqa: E731
            wait_until(lambda: len(keys()) == 200, what="the 200 held values at the subscriber", timeout_s=20)
            assert len(peer.taken()) == 200, "QoS 2: once each"
    finally:
        w.close()
