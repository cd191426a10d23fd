"""One broker connection on paho's threaded loop: reconnects, publish receipts, subscriptions.

paho runs the network on its own thread (``loop_start``) and reconnects with a doubling delay.
What paho does not do, and this class adds:

- a receipt per message (``on_done(token, outcome, detail)``), matched by message id: QoS 1 at
  PUBACK, QoS 2 at PUBCOMP, QoS 0 once paho has written it to the socket; a QoS 0 message that
  was queued when the connection dropped is reported ``NOT_SENT`` (paho forgets it), so the
  caller may publish it again. QoS 1 and 2 messages stay with paho across a reconnect and are
  sent again (the DUP flag set): at QoS 1 a subscriber may see one twice.
- a bound on the messages awaiting their receipt (``max_pending``; ``wait_for_room``);
- the subscriptions wanted (``set_subscriptions``), restored after every reconnect;
- a close that ends within its timeout whatever the network does;
- logs that never carry the password (paho's own logger is not enabled).
"""

from __future__ import annotations

import enum
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from flowcollect.mqtt._options import MqttEndpoint, MqttOptions

__all__ = ["MqttConnection", "OnDone", "OnMessage", "Outcome", "make_client"]

logger = logging.getLogger("flowcollect.mqtt")


class Outcome(enum.Enum):
    """What became of a published message."""

    DONE = "done"
    """QoS 1/2: the broker acknowledged it; QoS 0: written to the socket."""
    REFUSED = "refused"
    """The broker answered with a failure reason code (MQTT 5: not authorized, quota...)."""
    NOT_SENT = "not sent"
    """QoS 0 only: the connection dropped before it was written; publishing again is safe."""
    GIVEN_UP = "given up"
    """The connection was closed with the message still awaiting its receipt."""


OnDone = Callable[[object, Outcome, str | None], None]
"""``on_done(token, outcome, detail)``: called once per published message, from paho's thread
(or the closing thread), never while a lock of the connection is held."""
OnMessage = Callable[[str, bytes, int], None]
"""``on_message(topic, payload, qos)`` for each message of a subscription, from paho's thread."""


def make_client(endpoint: MqttEndpoint, options: MqttOptions, client_id: str) -> paho.Client:
    """A paho client configured from the options (protocol, credentials, TLS); not connected.

    Raises ``OSError`` or ``ssl.SSLError`` when the TLS files do not load.
    """
    v5 = options.protocol == "5"
    client = paho.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
        clean_session=None if v5 else True,
        reconnect_on_failure=True,
    )
    if options.username is not None:
        client.username_pw_set(options.username, options.password_text())
    if endpoint.tls:
        tls = options.tls
        if tls is None:
            from flowcollect.mqtt._options import TlsOptions

            tls = TlsOptions()
        client.tls_set_context(tls.context())
    # Exceptions in our callbacks are caught by the callbacks themselves; a paho thread that
    # died on one would stop the connection silently. A callback exception paho caught anyway
    # reaches our log; its other lines (socket errors we report ourselves) stay quiet.
    client.suppress_exceptions = True
    client.on_log = _paho_errors
    return client


def _paho_errors(_client: paho.Client, _userdata: Any, level: int, text: str) -> None:
    if level == paho.MQTT_LOG_ERR and text.startswith("Caught exception"):
        logger.error("paho: %s", text)


class MqttConnection:
    """A connection kept up in the background; thread-safe ``publish`` with receipts.

    ``name`` labels logs (the writer's or reader's name). ``on_done`` receives each message's
    receipt; ``on_message`` each subscribed message; ``on_connect(session_present)`` and
    ``on_disconnect(reason)`` run on paho's thread after this class's own bookkeeping (publishing
    from them is allowed: a Sparkplug birth from ``on_connect``, ``set_will`` from
    ``on_disconnect`` before the next attempt).

    Nothing connects before ``start()``; ``close(timeout_s)`` returns within its timeout.
    """

    def __init__(
        self,
        endpoint: MqttEndpoint,
        options: MqttOptions,
        *,
        name: str,
        on_done: OnDone | None = None,
        on_message: OnMessage | None = None,
        on_connect: Callable[[bool], None] | None = None,
        on_disconnect: Callable[[str], None] | None = None,
        max_pending: int = 10_000,
        max_inflight: int = 20,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self.endpoint = endpoint
        self.options = options
        self.name = name
        self.max_pending = max(1, min(int(max_pending), 60_000))  # below paho's 65,535 message ids
        # QoS 1/2 messages on the wire at once (paho's window; the rest wait in paho's queue). 20
        # is paho's and Mosquitto's default: Mosquitto 2.0 silently drops QoS 2 messages beyond
        # its receive maximum while the client still gets its PUBCOMP (measured), so a larger
        # window is only for brokers that allow it (MQTT 5 brokers say so in CONNACK).
        self.max_inflight = max(1, int(max_inflight))
        self._on_done = on_done
        self._on_message = on_message
        self._on_connect_hook = on_connect
        self._on_disconnect_hook = on_disconnect
        self._reconnect = (reconnect_min_s, reconnect_max_s)
        self._connect_timeout_s = connect_timeout_s
        self.client_id = options.client_id or f"flowcollect-{uuid.uuid4().hex[:12]}"
        # Guarded by _lock: the receipts awaited (mid -> (token, qos, epoch)), receipts that came
        # before publish() returned their mid, the subscriptions wanted and held, counters.
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._pending: dict[int, tuple[object, int]] = {}
        self._early: dict[int, tuple[Outcome, str | None]] = {}
        self._epoch = 0  # +1 at each disconnect: a QoS 0 publish of an older epoch was lost
        self._wanted: dict[str, int] = {}
        self._subscribed: dict[str, int] = {}
        self._connected = threading.Event()
        self._closed = False
        self._client: paho.Client | None = None
        self._will: tuple[str, bytes, int, bool] | None = None
        self.connects = 0
        self.disconnects = 0
        self.published = 0
        self.acknowledged = 0
        self.refused = 0
        self.not_sent = 0
        self.messages_in = 0
        self.last_error: str | None = None
        self._failing_since: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Build the client and connect in the background (paho's thread); returns at once.

        Raises ``OSError``/``ssl.SSLError`` only for TLS files that do not load.
        """
        if self._client is not None:
            return
        client = make_client(self.endpoint, self.options, self.client_id)
        client.connect_timeout = self._connect_timeout_s
        client.reconnect_delay_set(self._reconnect[0], self._reconnect[1])  # type: ignore[arg-type]
        client.max_inflight_messages_set(self.max_inflight)
        client.on_connect = self._handle_connect
        client.on_connect_fail = self._handle_connect_fail
        client.on_disconnect = self._handle_disconnect
        client.on_publish = self._handle_publish
        client.on_message = self._handle_message
        if self._will is not None:
            client.will_set(*self._will)
        self._client = client
        client.connect_async(self.endpoint.host, self.endpoint.port, keepalive=self.options.keepalive_s)
        client.loop_start()

    def close(self, timeout_s: float = 5.0) -> int:
        """Disconnect and stop paho's thread within ``timeout_s``; every message still awaiting its
        receipt is reported ``GIVEN_UP``. Returns how many were."""
        with self._lock:
            if self._closed:
                return 0
            self._closed = True
            self._room.notify_all()
        client = self._client
        if client is not None:
            client.disconnect()
            # loop_stop joins paho's thread without a bound; a thread of ours bounds it.
            stopper = threading.Thread(
                target=client.loop_stop, name=f"flowcollect-mqtt-stop-{self.name}", daemon=True
            )
            stopper.start()
            stopper.join(max(0.0, timeout_s))
            if stopper.is_alive():
                logger.warning(
                    "%s: the MQTT network thread did not stop within %s s; left behind", self.name, timeout_s
                )
        self._connected.clear()
        with self._lock:
            left = list(self._pending.values())
            self._pending.clear()
            self._early.clear()
        for token, _qos in left:
            self._done(token, Outcome.GIVEN_UP, "closed before the broker acknowledged it")
        return len(left)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def closed(self) -> bool:
        return self._closed

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(max(0.0, timeout_s))

    # -- publishing --------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Messages published and still awaiting their receipt."""
        return len(self._pending)

    def wait_for_room(self, timeout_s: float, room: int = 1) -> bool:
        """Wait until fewer than ``max_pending - room + 1`` receipts are awaited (or close)."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        limit = max(0, self.max_pending - room)
        with self._room:
            while len(self._pending) > limit and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._room.wait(left)
            return not self._closed

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool, token: object) -> bool:
        """Hand one message to paho; its receipt comes through ``on_done(token, ...)``.

        False (and no receipt) when the message was not taken: QoS 0 while disconnected, or the
        connection closed. QoS 1/2 messages are taken while disconnected and sent on reconnect.
        Raises ``ValueError`` for a topic or payload MQTT cannot carry.
        """
        client = self._client
        if client is None or self._closed:
            return False
        epoch = self._epoch
        info = client.publish(topic, payload, qos, retain)
        rc = info.rc
        if qos == 0 and rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return False
        if qos > 0 and rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            # MQTT_ERR_QUEUE_SIZE: a paho limit we do not set; say so rather than wait forever.
            raise RuntimeError(f"paho refused the message: {paho.error_string(rc)}")
        mid = info.mid
        early: tuple[Outcome, str | None] | None
        with self._lock:
            self.published += 1
            early = self._early.pop(mid, None)
            if early is None:
                if qos == 0 and epoch != self._epoch:
                    early = (Outcome.NOT_SENT, "the connection dropped before it was written")
                    self.not_sent += 1
                else:
                    self._pending[mid] = (token, qos)
        if early is not None:
            self._done(token, early[0], early[1])
        return True

    # -- subscriptions -----------------------------------------------------------------------------

    def set_subscriptions(self, topics: Mapping[str, int]) -> None:
        """The topic filters (with their QoS) wanted from now on: new ones are subscribed, the ones
        no longer wanted unsubscribed, now if connected, else at the next connect."""
        with self._lock:
            self._wanted = dict(topics)
            connected = self._connected.is_set()
        if connected:
            self._sync_subscriptions()

    @property
    def subscriptions(self) -> dict[str, int]:
        """The filters the broker was asked for on the current connection."""
        with self._lock:
            return dict(self._subscribed)

    def _sync_subscriptions(self) -> None:
        client = self._client
        if client is None:
            return
        with self._lock:
            wanted = dict(self._wanted)
            held = dict(self._subscribed)
        gone = [t for t in held if t not in wanted]
        new = [(t, q) for t, q in wanted.items() if held.get(t) != q]
        if gone:
            client.unsubscribe(gone)
        if new:
            client.subscribe(new)
        with self._lock:
            for t in gone:
                self._subscribed.pop(t, None)
            self._subscribed.update(new)

    def set_will(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """The message the broker publishes when this client vanishes; used from the next connect
        on (call it before ``start`` or from ``on_disconnect``)."""
        client = self._client
        if client is None:
            self._will = (topic, payload, qos, retain)
            return
        client.will_set(topic, payload, qos, retain)

    # -- paho's callbacks (paho's thread) ------------------------------------------------------------

    def _handle_connect(
        self, client: paho.Client, _userdata: Any, flags: Any, reason: ReasonCode, props: Any
    ) -> None:
        try:
            if reason.is_failure:
                self._failed(f"the broker refused the connection: {reason}")
                return
            receive_maximum = getattr(props, "ReceiveMaximum", None)
            if (
                isinstance(receive_maximum, int)
                and receive_maximum < self.max_inflight
                and self.connects == 0
            ):
                logger.warning(
                    "%s: the broker takes at most %d messages in flight (Receive Maximum) but max_inflight "
                    "is %d; lower it, or QoS 2 messages may be lost at the broker",
                    self.name,
                    receive_maximum,
                    self.max_inflight,
                )
            with self._lock:
                self.connects += 1
                self._subscribed = {}
            self._connected.set()
            if self._failing_since is not None or self.connects > 1:
                logger.info("%s: connected to %s again", self.name, self.endpoint)
            self._failing_since = None
            self._sync_subscriptions()
            if self._on_connect_hook is not None:
                self._on_connect_hook(bool(getattr(flags, "session_present", False)))
        except Exception:
            logger.exception("%s: error after connecting", self.name)

    def _handle_connect_fail(self, _client: paho.Client, _userdata: Any) -> None:
        self._failed(f"cannot connect to {self.endpoint}")

    def _handle_disconnect(
        self, _client: paho.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        try:
            lost: list[object] = []
            with self._lock:
                was = self._connected.is_set()
                self._connected.clear()
                self._epoch += 1
                self._subscribed = {}
                if was:
                    self.disconnects += 1
                # paho forgets QoS 0 packets not yet written; QoS 1/2 ones it sends again.
                for mid in [m for m, (_t, q) in self._pending.items() if q == 0]:
                    lost.append(self._pending.pop(mid)[0])
                self.not_sent += len(lost)
                if lost:
                    self._room.notify_all()
            for token in lost:
                self._done(token, Outcome.NOT_SENT, "the connection dropped before it was written")
            if was and not self._closed:
                text = str(reason) if reason.is_failure else "connection lost"
                self._failed(f"disconnected from {self.endpoint}: {text}")
            if self._on_disconnect_hook is not None and not self._closed:
                self._on_disconnect_hook(str(reason))
        except Exception:
            logger.exception("%s: error after disconnecting", self.name)

    def _handle_publish(
        self, _client: paho.Client, _userdata: Any, mid: int, reason: ReasonCode, _props: Any
    ) -> None:
        try:
            outcome, detail = (
                (Outcome.REFUSED, f"the broker refused it: {reason}")
                if reason.is_failure
                else (Outcome.DONE, None)
            )
            with self._lock:
                entry = self._pending.pop(mid, None)
                if entry is None:
                    self._early[mid] = (outcome, detail)
                    return
                if outcome is Outcome.DONE:
                    self.acknowledged += 1
                else:
                    self.refused += 1
                self._room.notify_all()
            self._done(entry[0], outcome, detail)
        except Exception:
            logger.exception("%s: error handling a receipt", self.name)

    def _handle_message(self, _client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
        self.messages_in += 1
        handler = self._on_message
        if handler is None:
            return
        try:
            topic = message.topic
        except UnicodeDecodeError:
            logger.warning("%s: a message whose topic is not UTF-8 was ignored", self.name)
            return
        try:
            handler(topic, bytes(message.payload), message.qos)
        except Exception:
            logger.exception("%s: error handling a message on %r", self.name, topic)

    def _done(self, token: object, outcome: Outcome, detail: str | None) -> None:
        if self._on_done is None:
            return
        try:
            self._on_done(token, outcome, detail)
        except Exception:
            logger.exception("%s: error in a receipt callback", self.name)

    def _failed(self, text: str) -> None:
        self.last_error = text
        if self._failing_since != text and not self._closed:
            # Once per episode (a new cause logs again); paho retries with its doubling delay.
            logger.warning("%s: %s; retrying in the background", self.name, text)
            self._failing_since = text

    def stats(self) -> dict[str, float]:
        return {
            "connected": 1.0 if self._connected.is_set() else 0.0,
            "connects": float(self.connects),
            "disconnects": float(self.disconnects),
            "published": float(self.published),
            "acknowledged": float(self.acknowledged),
            "refused": float(self.refused),
            "not_sent": float(self.not_sent),
            "pending": float(len(self._pending)),
            "messages_in": float(self.messages_in),
        }

    def __repr__(self) -> str:
        return f"MqttConnection({self.endpoint}, client_id={self.client_id!r}, connected={self.connected})"
