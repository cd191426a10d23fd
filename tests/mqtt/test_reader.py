"""MqttDataReader: addresses, payloads as values, and a real broker's messages on the grid."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from flowcollect import CollectedVariable, DataCollectionContext, DataCollector, Variable
from flowcollect.errors import ConfigError
from flowcollect.readers import MqttDataReader
from flowcollect.readers.mqtt._plain import PlainKind, decode_text, from_json
from flowcollect.values import ValueBatch, VariableSpec
from flowcollect.writers import MemoryDataWriter, MqttDataWriter
from tests.support.mqtt_peer import Peer
from tests.support.waiting import wait_until

FAST: dict[str, Any] = {"interval_ms": 50, "min_interval_ms": 10}

# -- addresses and payloads (pure) -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "topic", "path"),
    [
        ("plant/line1/temp", "plant/line1/temp", None),
        ("plant/line1/status#$.temperature", "plant/line1/status", ("temperature",)),
        ("a/b#$.pumps[1].speed", "a/b", ("pumps", 1, "speed")),
        ("a/b#$['with space'][\"and.dot\"]", "a/b", ("with space", "and.dot")),
        ("a/b#$", "a/b", ()),
        ("/leading/and//empty", "/leading/and//empty", None),
    ],
)
def test_addresses(text: str, topic: str, path: tuple[Any, ...] | None) -> None:
    parsed = PlainKind().parse(text)
    assert (parsed.topic, parsed.path) == (topic, path)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("plant/+/temp", "wildcard"),
        ("plant/#", "wildcard"),
        ("#$.x", "names no topic"),
        ("a/b#$.x[", "not understood"),
        ("a/b#$x", "not understood"),
    ],
)
def test_bad_addresses_are_refused_before_start_naming_the_variable(text: str, words: str) -> None:
    reader = MqttDataReader("mqtt://127.0.0.1:1")
    context = DataCollectionContext(id=4, variables=[Variable(id=9, address=text, reader="mqtt")])
    with DataCollector([reader], [MemoryDataWriter()]) as collector, pytest.raises(ConfigError) as caught:
        collector.check(context)
    assert "context 4" in str(caught.value) and "variable 9" in str(caught.value)
    assert words in str(caught.value)


@pytest.mark.parametrize(
    ("payload", "value_type", "value", "error"),
    [
        (b"21.5", "float", 21.5, None),
        (b" 7 \n", "int", 7, None),
        (b"7.5", "int", None, "payload '7.5' is not an int"),
        (b"ON", "bool", True, None),
        (b"0", "bool", False, None),
        (b"maybe", "bool", None, "payload 'maybe' is not a bool (true/false, 1/0, on/off)"),
        (b"hello", "str", "hello", None),
        (b"\xff\xfe", "float", None, "payload is not UTF-8 text"),
        (b"", "float", None, "payload '' is not a float"),
    ],
)
def test_plain_payloads(payload: bytes, value_type: str, value: Any, error: str | None) -> None:
    assert decode_text(payload, value_type) == (value, error)


@pytest.mark.parametrize(
    ("doc", "value_type", "value", "error"),
    [
        (3, "float", 3.0, None),
        (True, "float", None, "'true' is not a float"),
        (4.0, "int", 4, None),
        (4.5, "int", None, "'4.5' is not an int"),
        (1, "bool", True, None),
        ("x", "bool", None, "'\"x\"' is not a bool"),
        (12, "str", "12", None),
        ({"a": 1}, "str", None, "'{\"a\": 1}' is not a str"),
    ],
)
def test_json_values(doc: Any, value_type: str, value: Any, error: str | None) -> None:
    assert from_json(doc, value_type) == (value, error)


# -- against a broker ------------------------------------------------------------------------------


class Collected(MemoryDataWriter):
    """Keeps each value with its context; thread-safe for a test's reads."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()

    def last(self, variable_id: int) -> CollectedVariable | None:
        got = [v for v in self.snapshot() if v.id == variable_id]
        return got[-1] if got else None


def test_values_on_the_grid_as_they_come_and_bad_payloads_as_errors(mosquitto_factory: Any) -> None:
    broker = mosquitto_factory()
    reader = MqttDataReader(broker.url)
    memory = Collected()
    variables = [
        Variable(id=1, address="plant/temp", reader="mqtt"),
        Variable(id=2, address="plant/status#$.pump.speed", reader="mqtt", value_type="int"),
        Variable(id=3, address="plant/status#$.running", reader="mqtt", value_type="bool"),
        Variable(id=4, address="plant/name", reader="mqtt", value_type="str", report="change"),
    ]
    with Peer(broker.url) as peer, DataCollector([reader], [memory]) as collector:
        collector.start(DataCollectionContext(id=1, variables=variables, **FAST))
        wait_until(lambda: memory.last(1) is not None, what="a first instant")
        assert memory.last(1).error == "no value pushed yet"  # type: ignore[union-attr]
        wait_until(lambda: reader.stats().get("subscriptions") == 3, what="three subscriptions")
        peer.publish("plant/temp", b"21.5")
        peer.publish(
            "plant/status", json.dumps({"pump": {"speed": 1200}, "running": True, "time": 1_796_638_500_100})
        )
        peer.publish("plant/name", b"line 1")
        wait_until(lambda: (v := memory.last(3)) is not None and v.value is True, what="the JSON values")
        wait_until(lambda: (v := memory.last(1)) is not None and v.value == 21.5, what="the plain value")
        speed = memory.last(2)
        assert speed is not None and speed.value == 1200 and speed.error is None
        assert speed.time is not None and speed.time.isoformat() == "2026-12-07T10:15:00.100000+00:00"
        names = [v for v in memory.snapshot() if v.id == 4 and v.error is None]
        assert [v.value for v in names] == ["line 1"], "report=change: delivered once, as it came"
        # held on the grid: the plain value is delivered at each instant with its own arrival
        held = [v for v in memory.snapshot() if v.id == 1 and v.value == 21.5]
        wait_until(
            lambda: len([v for v in memory.snapshot() if v.id == 1 and v.value == 21.5]) > len(held) + 2,
            what="held values",
        )
        # a bad payload is an error on that value only
        peer.publish("plant/status", json.dumps({"pump": {"speed": "fast"}, "running": False}))
        wait_until(lambda: (v := memory.last(3)) is not None and v.value is False, what="the second status")
        assert memory.last(2).error == "'\"fast\"' is not an int"  # type: ignore[union-attr]
        peer.publish("plant/status", b"{not json")
        wait_until(
            lambda: (v := memory.last(3)) is not None and (v.error or "").startswith("payload is not JSON"),
            what="not JSON",
        )
        assert memory.last(1).value == 21.5  # type: ignore[union-attr]
    stats = reader.stats()
    assert stats["messages"] == 5 and stats["bad_values"] == 3


def test_reads_back_what_the_writer_published(mosquitto_factory: Any) -> None:
    """The writer's "value" layout, read back with its time and its errors."""
    from flowcollect.readers import RandomDataReader

    broker = mosquitto_factory()
    reader = MqttDataReader(broker.url)
    memory = Collected()
    with DataCollector([reader], [memory]) as back:
        back.start(
            DataCollectionContext(
                id=2,
                variables=[
                    Variable(id=1, address="flowcollect/1/r1#$.value", reader="mqtt", report="change")
                ],
                **FAST,
            )
        )
        wait_until(lambda: reader.stats().get("subscriptions") == 1, what="the subscription")
        writer = MqttDataWriter(broker.url)
        with DataCollector([RandomDataReader(seed=3)], [writer]) as forth:
            forth.start(
                DataCollectionContext(id=1, variables=[Variable(id=1, address="r1", reader="random")], **FAST)
            )
            wait_until(lambda: writer.stats()["written"] >= 10, what="ten values published")
        written = int(writer.stats()["written"])
        wait_until(
            lambda: len([v for v in memory.snapshot() if v.error is None]) >= written, what="all read back"
        )
    got = [v for v in memory.snapshot() if v.error is None]
    assert len(got) == written
    assert all(v.time is not None and v.time.microsecond % 50_000 == 0 for v in got), (
        "the writer's grid times"
    )


def test_subscriptions_follow_the_contexts_and_come_back_after_a_restart(mosquitto_factory: Any) -> None:
    broker = mosquitto_factory()
    reader = MqttDataReader(broker.url)
    memory = Collected()
    one = DataCollectionContext(id=1, variables=[Variable(id=1, address="a/1", reader="mqtt")], **FAST)
    two = DataCollectionContext(id=2, variables=[Variable(id=2, address="a/2", reader="mqtt")], **FAST)
    with DataCollector([reader], [memory]) as collector:
        collector.start(one)
        wait_until(lambda: reader.stats().get("subscriptions") == 1, what="one subscription")
        collector.start(two)
        wait_until(lambda: reader.stats().get("subscriptions") == 2, what="two subscriptions")
        collector.pause(1)
        wait_until(lambda: reader.stats().get("subscriptions") == 1, what="one again while 1 is paused")
        collector.resume(1)
        wait_until(lambda: reader.stats().get("subscriptions") == 2, what="two again")
        broker.kill()
        wait_until(
            lambda: (v := memory.last(2)) is not None and (v.error or "").startswith("lost the MQTT broker"),
            what="errors while the broker is away",
        )
        broker.start()
        wait_until(
            lambda: reader.stats().get("connects") == 2 and reader.stats().get("subscriptions") == 2,
            what="resubscribed",
        )
        with Peer(broker.url) as peer:
            wait_until(
                lambda: (peer.publish("a/2", b"2"), (v := memory.last(2)) is not None and v.value == 2.0)[1],
                what="a value after the restart",
                poll_s=0.2,
            )


def test_stale_after_silence(mosquitto_factory: Any) -> None:
    broker = mosquitto_factory()
    reader = MqttDataReader(broker.url, stale_after_ms=300)
    memory = Collected()
    with Peer(broker.url) as peer, DataCollector([reader], [memory]) as collector:
        collector.start(
            DataCollectionContext(id=1, variables=[Variable(id=1, address="s/1", reader="mqtt")], **FAST)
        )
        wait_until(lambda: reader.stats().get("subscriptions") == 1, what="the subscription")
        peer.publish("s/1", b"5")
        wait_until(lambda: (v := memory.last(1)) is not None and v.value == 5.0, what="the value")
        wait_until(
            lambda: (v := memory.last(1)) is not None and (v.error or "").startswith("stale"), what="stale"
        )
        peer.publish("s/1", b"6")
        wait_until(lambda: (v := memory.last(1)) is not None and v.value == 6.0, what="fresh again")


def test_a_tls_broker_with_a_password(mosquitto_factory: Any, tmp_path: Any) -> None:
    from tests.support.certs import Pki
    from tests.support.mosquitto import broker_tls

    certs = Pki(tmp_path / "certs")
    broker = mosquitto_factory(tls=broker_tls(certs), users={"r": "Reader-pw-1"})
    reader = MqttDataReader(broker.url, username="r", password="Reader-pw-1", tls={"ca_file": certs.ca})
    assert "Reader-pw-1" not in repr(reader)
    memory = Collected()
    with DataCollector([reader], [memory]) as collector:
        collector.start(
            DataCollectionContext(
                id=1, variables=[Variable(id=1, address="t/1#$.value", reader="mqtt")], **FAST
            )
        )
        wait_until(lambda: reader.stats().get("subscriptions") == 1, what="subscribed over TLS")
        publisher = MqttDataWriter(
            broker.url, topic="t/{id}", username="r", password="Reader-pw-1", tls={"ca_file": certs.ca}
        )
        publisher.write_batch(
            ValueBatch(1_796_638_500_100, (VariableSpec(1, 9, "x", "float", "x", 100),), [4.5], context_id=9)
        )
        wait_until(lambda: (v := memory.last(1)) is not None and v.value == 4.5, what="the value over TLS")
        publisher.close()
    wrong = MqttDataReader(broker.url, username="r", password="nope", tls={"ca_file": certs.ca})
    memory = Collected()
    with DataCollector([wrong], [memory]) as collector:
        collector.start(
            DataCollectionContext(id=1, variables=[Variable(id=1, address="t/1", reader="mqtt")], **FAST)
        )
        wait_until(
            lambda: (v := memory.last(1)) is not None and "refused the connection" in (v.error or ""),
            what="the refusal as the value's error",
        )
        assert "nope" not in (memory.last(1).error or "")  # type: ignore[union-attr]


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_every_message_once_at_each_qos_and_protocol(mosquitto_factory: Any, protocol: str, qos: int) -> None:
    """The reader's own receive path: QoS 1 acknowledged, QoS 2 handed over once, both protocols."""
    broker = mosquitto_factory()
    reader = MqttDataReader(broker.url, qos=qos, protocol=protocol)  # type: ignore[arg-type]
    memory = Collected()
    variables = [Variable(id=1, address="q/v", reader="mqtt", value_type="int", report="change")]
    with Peer(broker.url) as peer, DataCollector([reader], [memory]) as collector:
        collector.start(DataCollectionContext(id=1, variables=variables, **FAST))
        wait_until(lambda: reader.stats().get("subscriptions") == 1, what="the subscription")
        for i in range(200):
            peer.client.publish("q/v", b"%d" % i, 2)
        wait_until(lambda: reader.stats().get("messages") == 200, what="200 messages")
        wait_until(lambda: (v := memory.last(1)) is not None and v.value == 199, what="the last value")
        time.sleep(0.2)
        assert reader.stats()["messages"] == 200, "each message handed over once"
        assert reader.stats()["connects"] == 1
    got = {v.value for v in memory.snapshot() if v.error is None}
    assert got <= set(range(200)) and 199 in got


@pytest.mark.slow
@pytest.mark.realtime
def test_keepalive_pings_hold_a_quiet_connection(mosquitto_factory: Any) -> None:
    """Nothing published for longer than the keep-alive: the reader pings, the broker keeps it."""
    broker = mosquitto_factory()
    reader = MqttDataReader(broker.url, keepalive_s=5, stale_after_ms=None)
    memory = Collected()
    with DataCollector([reader], [memory]) as collector:
        collector.start(
            DataCollectionContext(id=1, variables=[Variable(id=1, address="k/v", reader="mqtt")], **FAST)
        )
        wait_until(lambda: reader.stats().get("subscriptions") == 1, what="the subscription")
        time.sleep(8.5)  # beyond 1.5 keep-alives: the broker would have dropped a silent client
        assert reader.stats()["connects"] == 1 and reader.stats()["disconnects"] == 0
        with Peer(broker.url) as peer:
            peer.publish("k/v", b"1.5")
            wait_until(
                lambda: (v := memory.last(1)) is not None and v.value == 1.5, what="a value after the quiet"
            )


@pytest.mark.slow
@pytest.mark.realtime
def test_a_frozen_broker_is_noticed_and_close_stays_bounded(mosquitto_factory: Any) -> None:
    """A broker that keeps the connection open and answers nothing (SIGSTOP): after one and a
    half keep-alives every value is an error; the values come back once it answers again; and
    closing while it is frozen ends within the close bound."""
    broker = mosquitto_factory()
    reader = MqttDataReader(broker.url, keepalive_s=5, stale_after_ms=None)
    memory = Collected()
    variables = [Variable(id=1, address="f/v", reader="mqtt")]
    with DataCollector([reader], [memory]) as collector:
        collector.start(DataCollectionContext(id=1, variables=variables, **FAST))
        wait_until(lambda: reader.stats().get("subscriptions") == 1, what="the subscription")
        with Peer(broker.url) as peer:
            peer.publish("f/v", b"1", retain=True)
        wait_until(lambda: (v := memory.last(1)) is not None and v.value == 1.0, what="a value")
        broker.pause()
        try:
            wait_until(
                lambda: "no word from the broker" in (((v := memory.last(1)) and v.error) or ""),
                what="the silence noticed",
                timeout_s=15,
            )
        finally:
            broker.resume()
        wait_until(
            lambda: (v := memory.last(1)) is not None and v.value == 1.0,
            what="back (the retained value)",
            timeout_s=15,
        )
        broker.pause()
        began = time.monotonic()
    took = time.monotonic() - began
    broker.resume()
    assert took < 10, f"close took {took:.1f} s with the broker frozen"
