"""The shared MQTT client layer (flowcollect.mqtt) against real Mosquitto brokers."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from flowcollect.errors import PreflightError
from flowcollect.mqtt import (
    MqttConnection,
    MqttOptions,
    Outcome,
    TlsOptions,
    options_problems,
    parse_url,
    preflight,
)
from tests.support.certs import Pki
from tests.support.mosquitto import broker_tls
from tests.support.mqtt_peer import Peer
from tests.support.victoria import free_port
from tests.support.waiting import wait_until

SECRET = "s3cret-Pa55"


class Receipts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.got: list[tuple[object, Outcome, str | None]] = []

    def __call__(self, token: object, outcome: Outcome, detail: str | None) -> None:
        with self.lock:
            self.got.append((token, outcome, detail))

    def tokens(self, outcome: Outcome) -> list[object]:
        with self.lock:
            return [t for t, o, _d in self.got if o is outcome]


# -- url and options (pure) ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "host", "port", "tls"),
    [
        ("mqtt://broker", "broker", 1883, False),
        ("mqtts://broker", "broker", 8883, True),
        ("mqtt://10.0.0.1:1884", "10.0.0.1", 1884, False),
        ("mqtts://[::1]:8884/", "::1", 8884, True),
    ],
)
def test_urls(url: str, host: str, port: int, tls: bool) -> None:
    endpoint = parse_url(url)
    assert (endpoint.host, endpoint.port, endpoint.tls) == (host, port, tls)


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://broker:1883", "mqtt:// or mqtts://"),
        ("mqtt://user:pw@broker", "credentials"),
        ("mqtt://broker:99999", "port"),
        ("mqtt://broker/topic", "only scheme://host:port"),
        ("mqtt://", "no host"),
    ],
)
def test_bad_urls(url: str, words: str) -> None:
    with pytest.raises(ValueError, match=words) as caught:
        parse_url(url)
    assert "pw" not in str(caught.value) or "pw@" not in str(caught.value)


def test_options_problems_name_the_field_and_never_the_password() -> None:
    _e, _o, problems = options_problems(
        "MqttDataWriter", "mqtt://b", password=SECRET, protocol="4", keepalive_s=1, colour="red"
    )
    text = "\n".join(problems)
    assert SECRET not in text
    assert "MqttDataWriter protocol" in text
    assert "MqttDataWriter keepalive_s" in text
    assert "MqttDataWriter colour" in text
    _e, _o, problems = options_problems("W", "mqtt://b", password=SECRET)
    assert problems == ["W password: given without a username"]
    _e, _o, problems = options_problems("W", "mqtt://b", tls={"insecure": True})
    assert problems == ["W tls: given with a mqtt:// url; use mqtts:// for TLS"]


def test_password_never_in_repr_or_dump() -> None:
    options = MqttOptions(username="u", password=SECRET)
    assert SECRET not in repr(options)
    assert SECRET not in str(options.model_dump())
    assert SECRET not in options.model_dump_json()
    assert options.password_text() == SECRET

    from flowcollect import Secret

    assert MqttOptions(username="u", password=Secret(SECRET)).password_text() == SECRET  # type: ignore[arg-type]
    assert SECRET not in repr(MqttOptions(username="u", password=Secret(SECRET)))
    assert TlsOptions().insecure is False


# -- publishing and receipts -----------------------------------------------------------------------


@pytest.mark.parametrize("qos", [0, 1, 2])
@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_every_message_gets_one_receipt(mosquitto_factory: Any, qos: int, protocol: str) -> None:
    broker = mosquitto_factory()
    receipts = Receipts()
    with Peer(broker.url) as peer:
        peer.subscribe("t/#", qos=2)
        conn = MqttConnection(
            parse_url(broker.url),
            MqttOptions(protocol=protocol),
            name="test",
            on_done=receipts,  # type: ignore[arg-type]
        )
        conn.start()
        try:
            assert conn.wait_connected(10)
            for i in range(500):
                assert conn.wait_for_room(10)
                assert conn.publish(f"t/{i % 7}", b"%d" % i, qos, False, i)
            wait_until(lambda: len(receipts.got) == 500, what="500 receipts")
            assert sorted(receipts.tokens(Outcome.DONE)) == list(range(500))  # type: ignore[type-var]
            wait_until(lambda: peer.count() == 500, what="500 messages at the subscriber")
            assert conn.pending == 0
        finally:
            assert conn.close(5) == 0


def test_qos1_survives_a_broker_restart(mosquitto_factory: Any) -> None:
    """Messages published while the broker is down are taken (QoS 1), sent after the reconnect,
    and every one is acknowledged exactly once."""
    broker = mosquitto_factory()
    receipts = Receipts()
    conn = MqttConnection(
        parse_url(broker.url),
        MqttOptions(),
        name="test",
        on_done=receipts,
        reconnect_min_s=0.1,
        reconnect_max_s=0.5,
    )
    conn.start()
    try:
        assert conn.wait_connected(10)
        broker.kill()
        wait_until(lambda: not conn.connected, what="the connection to notice the kill")
        for i in range(100):
            assert conn.publish("t/x", b"%d" % i, 1, False, i)
        assert conn.pending == 100
        broker.start()
        wait_until(lambda: len(receipts.got) == 100, what="100 receipts after the restart")
        assert sorted(receipts.tokens(Outcome.DONE)) == list(range(100))  # type: ignore[type-var]
        assert conn.stats()["disconnects"] == 1
        assert conn.stats()["connects"] == 2
    finally:
        conn.close(5)


def test_qos0_is_not_taken_while_disconnected_and_pending_ones_are_given_up_at_close(
    mosquitto_factory: Any,
) -> None:
    broker = mosquitto_factory()
    receipts = Receipts()
    conn = MqttConnection(parse_url(broker.url), MqttOptions(), name="test", on_done=receipts)
    conn.start()
    try:
        assert conn.wait_connected(10)
        broker.kill()
        wait_until(lambda: not conn.connected, what="the connection to notice the kill")
        assert conn.publish("t/x", b"0", 0, False, "q0") is False
        assert conn.publish("t/x", b"1", 1, False, "q1") is True
    finally:
        assert conn.close(5) == 1
    assert receipts.got == [("q1", Outcome.GIVEN_UP, "closed before the broker acknowledged it")]
    assert conn.publish("t/x", b"1", 1, False, "late") is False


def test_subscriptions_follow_the_wanted_set_and_come_back_after_a_restart(mosquitto_factory: Any) -> None:
    broker = mosquitto_factory()
    got: list[tuple[str, bytes]] = []
    lock = threading.Lock()

    def on_message(topic: str, payload: bytes, _qos: int) -> None:
        with lock:
            got.append((topic, payload))

    conn = MqttConnection(
        parse_url(broker.url),
        MqttOptions(),
        name="test",
        on_message=on_message,
        reconnect_min_s=0.1,
        reconnect_max_s=0.5,
    )
    conn.set_subscriptions({"a/#": 1})
    conn.start()
    try:
        assert conn.wait_connected(10)
        wait_until(lambda: conn.subscriptions == {"a/#": 1}, what="the subscription")
        with Peer(broker.url) as peer:
            peer.publish("a/1", b"1")
            wait_until(lambda: ("a/1", b"1") in got, what="a/1")
            conn.set_subscriptions({"b/+": 1})
            wait_until(lambda: conn.subscriptions == {"b/+": 1}, what="the new subscription")
        broker.kill()
        wait_until(lambda: not conn.connected, what="the connection to notice the kill")
        broker.start()
        assert conn.wait_connected(10)
        wait_until(lambda: conn.subscriptions == {"b/+": 1}, what="the subscription restored")
        with Peer(broker.url) as peer:
            # A SUBACK may still be on its way: publish until one arrives (bounded).
            wait_until(lambda: (peer.publish("b/2", b"2"), ("b/2", b"2") in got)[1], what="b/2", poll_s=0.1)
            peer.publish("a/3", b"3")
            peer.publish("b/4", b"4")
            wait_until(lambda: ("b/4", b"4") in got, what="b/4")
        assert ("a/3", b"3") not in got
    finally:
        conn.close(5)


def test_close_is_bounded_while_the_broker_is_unreachable(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    conn = MqttConnection(parse_url(f"mqtt://127.0.0.1:{port}"), MqttOptions(), name="nobody")
    conn.start()
    caplog.set_level(logging.WARNING, "flowcollect.mqtt")
    wait_until(lambda: conn.last_error is not None, what="a failed attempt")
    conn.close(3)
    assert "nobody: cannot connect to mqtt://127.0.0.1" in caplog.text


# -- preflight -------------------------------------------------------------------------------------


def test_preflight_accepts_and_refuses_credentials(
    mosquitto_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    broker = mosquitto_factory(users={"collector": SECRET})
    endpoint = parse_url(broker.url)
    preflight(endpoint, MqttOptions(username="collector", password=SECRET), 5)
    for options in (
        MqttOptions(username="collector", password="wrong"),
        MqttOptions(),
        MqttOptions(protocol="3.1.1", username="collector", password="x"),
    ):
        with pytest.raises(
            PreflightError, match=r"refused the connection: (Bad user name or password|Not authorized)"
        ):
            preflight(endpoint, options, 5)
    assert SECRET not in caplog.text


def test_preflight_names_an_unknown_host_and_a_closed_port() -> None:
    with pytest.raises(PreflightError, match=r"unknown host 'no-such-host.invalid'"):
        preflight(parse_url("mqtt://no-such-host.invalid:1883"), MqttOptions(), 5)
    with pytest.raises(PreflightError, match="connection refused"):
        preflight(parse_url(f"mqtt://127.0.0.1:{free_port()}"), MqttOptions(), 5)


def test_tls(mosquitto_factory: Any, tmp_path: Path) -> None:
    certs = Pki(tmp_path / "certs")
    broker = mosquitto_factory(tls=broker_tls(certs))
    endpoint = parse_url(broker.url)
    assert endpoint.tls
    preflight(endpoint, MqttOptions(tls=TlsOptions(ca_file=certs.ca)), 5)
    preflight(endpoint, MqttOptions(tls=TlsOptions(insecure=True)), 5)
    with pytest.raises(PreflightError, match="certificate that was refused"):
        preflight(endpoint, MqttOptions(tls=TlsOptions(ca_file=certs.other_ca)), 5)
    with pytest.raises(PreflightError, match="certificate that was refused"):
        preflight(endpoint, MqttOptions(tls=TlsOptions()), 5)  # the system's CAs do not know ours
    with pytest.raises(PreflightError, match="cannot load the TLS files"):
        preflight(endpoint, MqttOptions(tls=TlsOptions(ca_file=tmp_path / "missing.pem")), 5)
    plain = parse_url(broker.url.replace("mqtts://", "mqtt://"))
    with pytest.raises(PreflightError, match=r"closed the connection|did not answer"):
        preflight(plain, MqttOptions(), 3)
    # and a connection that publishes over TLS
    receipts = Receipts()
    conn = MqttConnection(
        endpoint, MqttOptions(tls=TlsOptions(ca_file=certs.ca)), name="tls", on_done=receipts
    )
    conn.start()
    try:
        assert conn.wait_connected(10)
        assert conn.publish("t/tls", b"1", 1, False, "m")
        wait_until(lambda: receipts.got == [("m", Outcome.DONE, None)], what="the PUBACK over TLS")
    finally:
        conn.close(5)


def test_tls_client_certificate(mosquitto_factory: Any, tmp_path: Path) -> None:
    certs = Pki(tmp_path / "certs")
    broker = mosquitto_factory(tls=broker_tls(certs, require_client_cert=True))
    endpoint = parse_url(broker.url)
    preflight(
        endpoint,
        MqttOptions(tls=TlsOptions(ca_file=certs.ca, cert_file=certs.client_cert, key_file=certs.client_key)),
        5,
    )
    with pytest.raises(PreflightError, match=r"TLS|certificate|closed the connection"):
        preflight(endpoint, MqttOptions(tls=TlsOptions(ca_file=certs.ca)), 5)
