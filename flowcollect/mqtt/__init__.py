"""The MQTT client layer shared by the MQTT writers and reader (paho-mqtt 2.x underneath).

The interface, all exported here (the modules are private)::

    endpoint, options, problems = options_problems("MqttDataWriter", url, client_id=..., username=...,
                                                   password=..., tls=..., protocol="5", keepalive_s=30)
        # every problem one line naming `where` and the field; passwords never shown
    endpoint = parse_url("mqtts://host:8883")      # MqttEndpoint(host, port, tls); ValueError
    options = MqttOptions(username=..., password="...", tls=TlsOptions(ca_file=..., cert_file=...,
                          key_file=..., insecure=False), protocol="5" | "3.1.1", keepalive_s=30)
        # pydantic, extra="forbid"; `password` is a SecretStr (a str, a SecretStr or any object
        # with get_secret_value() is accepted)

    preflight(endpoint, options, timeout_s=10)     # connect + CONNACK once; PreflightError(cause)

    conn = MqttConnection(endpoint, options, name="mqtt:broker",
                          on_done=lambda token, outcome, detail: ...,   # one receipt per message
                          on_message=lambda topic, payload, qos: ...,   # subscriptions
                          on_connect=lambda session_present: ...,       # paho's thread
                          on_disconnect=lambda reason: ...,             # paho's thread
                          max_pending=10_000, max_inflight=20, reconnect_min_s=0.5, reconnect_max_s=30)
        # max_inflight: QoS 1/2 messages on the wire (the broker's receive maximum; Mosquitto's
        # is 20). paho resends everything it holds at once after a reconnect: keep max_pending
        # at max_inflight for QoS 1/2 (the MQTT writer does) and queue the rest yourself.
    conn.set_will(topic, payload, qos, retain)     # before start(), or from on_disconnect
    conn.start()                                   # connects in the background; reconnects
    conn.wait_for_room(timeout_s)                  # fewer than max_pending receipts awaited
    conn.publish(topic, payload, qos, retain, token) -> bool
        # False: not taken (QoS 0 while disconnected, or closed); no receipt will come
        # True: exactly one on_done(token, Outcome, detail) will come:
        #   Outcome.DONE      QoS 1 PUBACK / QoS 2 PUBCOMP / QoS 0 written to the socket
        #   Outcome.REFUSED   the broker's failure reason code (MQTT 5)
        #   Outcome.NOT_SENT  QoS 0 queued when the connection dropped: safe to publish again
        #   Outcome.GIVEN_UP  close() with the receipt still awaited
        # QoS 1/2 messages survive a reconnect inside paho and are sent again (duplicates at QoS 1)
    conn.set_subscriptions({"a/+/b": 1})           # wanted filters; restored after each reconnect
    conn.connected, conn.wait_connected(t), conn.pending, conn.stats(), conn.last_error
    conn.close(timeout_s)                          # bounded; returns how many were GIVEN_UP

    template = TopicTemplate("flowcollect/{context}/{name}")   # ValueError: unknown placeholder
    template.render(spec) -> str; template.problem(spec) -> str | None; topic_problem(topic)
        # {context} {id} {name} {address} {reader} {tag:KEY}; no wildcard, no empty level

    rx = MqttReceiver(endpoint, options, name=..., on_message=..., on_connect=..., on_disconnect=...)
        # the subscribing side only, reading the socket in blocks (~5x paho's messages/s): the
        # MQTT reader's. start, close(timeout_s), set_subscriptions, subscriptions (acknowledged),
        # connected, wait_connected, last_error, stats, publish_qos0(topic, payload) -> bool

Receipts and messages arrive on paho's network thread: keep the callbacks short, never block in
them. ``publish`` may be called from any thread (also from the callbacks).
"""

from __future__ import annotations

from flowcollect.mqtt._connection import MqttConnection, OnDone, OnMessage, Outcome
from flowcollect.mqtt._options import (
    MqttEndpoint,
    MqttOptions,
    Protocol,
    TlsOptions,
    options_problems,
    parse_url,
)
from flowcollect.mqtt._preflight import preflight
from flowcollect.mqtt._receiver import MqttReceiver
from flowcollect.mqtt._topics import PLACEHOLDERS, TopicTemplate, topic_problem

__all__ = [
    "MqttConnection",
    "MqttEndpoint",
    "MqttOptions",
    "MqttReceiver",
    "OnDone",
    "OnMessage",
    "PLACEHOLDERS",
    "Outcome",
    "Protocol",
    "TlsOptions",
    "TopicTemplate",
    "options_problems",
    "parse_url",
    "preflight",
    "topic_problem",
]
