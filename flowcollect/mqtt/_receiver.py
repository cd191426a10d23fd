"""A subscribing MQTT client that reads the socket in blocks: the reader's receive path.

paho reads each packet's fixed header from the socket byte by byte (several system calls per
message); measured here, a paho subscriber that only counts reaches ~10,000 messages/s, while a
loop reading 64 KiB at a time and splitting packets in memory reaches ~48,000 (the publisher's
limit) at 6.7 CPU µs per message. The reader needs only a subscriber's part of MQTT: CONNECT,
SUBSCRIBE/UNSUBSCRIBE, PUBLISH received at QoS 0, 1 and 2 (acknowledged, a QoS 2 message handed
over once), PINGREQ, and a QoS 0 publish (a Sparkplug rebirth request). Connection options, TLS,
and the interface the reader uses are the same as ``MqttConnection``'s.

One thread of its own per connection (``flowcollect-mqtt-rx-NAME``) connects, reads, writes and
reconnects with a doubling delay: every byte goes through that thread (an SSL socket must not
be read and written from two threads at once), so a subscription change or a publish from
another thread is queued and sent within a quarter of a second. Every socket call is bounded by
its timeout; ``close`` ends within its own.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import struct
import threading
import time
import uuid
from collections.abc import Callable, Mapping

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from flowcollect.mqtt._connection import OnMessage
from flowcollect.mqtt._options import MqttEndpoint, MqttOptions, TlsOptions

__all__ = ["MqttReceiver"]

logger = logging.getLogger("flowcollect.mqtt")

_CONNACK_V3 = {
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "Bad user name or password",
    5: "Not authorized",
}
_MAX_PACKET = 16 << 20  # a packet larger than this ends the connection (a size limit per read)


class ProtocolError(Exception):
    """The broker sent something this client does not accept; the connection is dropped."""


def _s16(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


def _read_varint(buf: bytes | bytearray, pos: int, end: int) -> tuple[int, int] | None:
    """(value, position after it), or None when the buffer ends first."""
    value, shift = 0, 0
    while pos < end:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 21:
            raise ProtocolError("a variable length integer longer than four bytes")
    return None


class MqttReceiver:
    """Subscriptions kept on a broker, messages handed to ``on_message(topic, payload, qos)``.

    The same interface as ``MqttConnection``'s subscribing side: ``start``, ``close``,
    ``set_subscriptions``, ``subscriptions`` (acknowledged by the broker), ``connected``,
    ``wait_connected``, ``last_error``, ``stats`` and the ``on_connect(session_present)`` /
    ``on_disconnect(reason)`` hooks (called on its thread), plus ``publish_qos0``.
    """

    def __init__(
        self,
        endpoint: MqttEndpoint,
        options: MqttOptions,
        *,
        name: str,
        on_message: OnMessage,
        on_connect: Callable[[bool], None] | None = None,
        on_disconnect: Callable[[str], None] | None = None,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self.endpoint = endpoint
        self.options = options
        self.name = name
        self._on_message = on_message
        self._on_connect_hook = on_connect
        self._on_disconnect_hook = on_disconnect
        self._reconnect = (reconnect_min_s, reconnect_max_s)
        self._timeout_s = connect_timeout_s
        self._v5 = options.protocol == "5"
        self.client_id = options.client_id or f"flowcollect-{uuid.uuid4().hex[:12]}"
        # Guarded by _lock: the subscriptions wanted, asked for and acknowledged on the current
        # connection, the packet ids awaited, and the socket writes (one writer at a time).
        self._lock = threading.Lock()
        self._wanted: dict[str, int] = {}
        self._asked: dict[str, int] = {}
        self._subscribed: dict[str, int] = {}
        self._awaiting: dict[int, tuple[str, list[tuple[str, int]]]] = {}
        self._next_id = 0
        self._outgoing: list[bytes] = []  # packets other threads want sent; the thread sends them
        self._resync = False
        self._sock: socket.socket | None = None
        self._last_sent = 0.0
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._qos2: set[int] = set()  # QoS 2 packet ids handed over, awaiting their PUBREL
        self.connects = 0
        self.disconnects = 0
        self.messages_in = 0
        self.last_error: str | None = None
        self._failing: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        if self.endpoint.tls:
            (self.options.tls or TlsOptions()).context()  # files that do not load: raise here
        thread = threading.Thread(target=self._run, name=f"flowcollect-mqtt-rx-{self.name}", daemon=True)
        self._thread = thread
        thread.start()

    def close(self, timeout_s: float = 5.0) -> int:
        """Send DISCONNECT (from the thread, if it is connected) and stop, within ``timeout_s``."""
        with self._lock:
            if self._sock is not None:
                self._outgoing.append(b"\xe0\x00")
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, timeout_s))
            if thread.is_alive():
                with self._lock:
                    sock = self._sock
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)  # a thread stuck in a socket call
                thread.join(1.0)
                if thread.is_alive():
                    logger.warning(
                        "%s: the MQTT receive thread did not stop within %s s; left behind",
                        self.name,
                        timeout_s,
                    )
        self._connected.clear()
        return 0

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float) -> bool:
        return self._connected.wait(max(0.0, timeout_s))

    @property
    def subscriptions(self) -> dict[str, int]:
        with self._lock:
            return dict(self._subscribed)

    def stats(self) -> dict[str, float]:
        return {
            "connected": 1.0 if self._connected.is_set() else 0.0,
            "connects": float(self.connects),
            "disconnects": float(self.disconnects),
            "messages_in": float(self.messages_in),
        }

    # -- subscriptions and publishing (any thread) ---------------------------------------------------

    def set_subscriptions(self, topics: Mapping[str, int]) -> None:
        with self._lock:
            self._wanted = dict(topics)
            self._resync = True  # the thread sends the difference

    def publish_qos0(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> bool:
        """A QoS 0 message (a rebirth request); False when not connected. ``qos`` must be 0."""
        if qos != 0 or not self._connected.is_set():
            return False
        body = _s16(topic.encode()) + (b"\x00" if self._v5 else b"") + payload
        with self._lock:
            if self._sock is None:
                return False
            self._outgoing.append(_packet(0x31 if retain else 0x30, body))
        return True

    def _sync(self) -> None:
        """Ask the broker for what is wanted and not asked, drop what is asked and not wanted."""
        with self._lock:
            wanted, asked = self._wanted, self._asked
            gone = [t for t in asked if t not in wanted]
            new = [(t, q) for t, q in wanted.items() if asked.get(t) != q]
            packets = []
            if gone:
                pid = self._packet_id()
                body = struct.pack("!H", pid) + (b"\x00" if self._v5 else b"")
                body += b"".join(_s16(t.encode()) for t in gone)
                packets.append(_packet(0xA2, body))
                self._awaiting[pid] = ("unsubscribe", [(t, 0) for t in gone])
                for t in gone:
                    del asked[t]
            if new:
                pid = self._packet_id()
                body = struct.pack("!H", pid) + (b"\x00" if self._v5 else b"")
                body += b"".join(_s16(t.encode()) + bytes([q]) for t, q in new)
                packets.append(_packet(0x82, body))
                self._awaiting[pid] = ("subscribe", new)
                asked.update(new)
            self._outgoing.extend(packets)
            self._resync = False

    def _packet_id(self) -> int:
        self._next_id = self._next_id % 65535 + 1
        return self._next_id

    def _flush(self, sock: socket.socket, extra: bytes = b"") -> None:
        """On the thread: send ``extra`` and everything queued by other threads."""
        with self._lock:
            queued, self._outgoing = self._outgoing, []
            resync = self._resync
        if resync:
            self._sync()
            with self._lock:
                queued += self._outgoing
                self._outgoing = []
        data = extra + b"".join(queued)
        if data:
            sock.sendall(data)
            self._last_sent = time.monotonic()

    # -- the thread ----------------------------------------------------------------------------------

    def _run(self) -> None:
        delay = self._reconnect[0]
        while not self._stop.is_set():
            try:
                sock, session_present = self._open()
            except (OSError, ProtocolError) as exc:
                self._failed(self._cause(exc))
                self._stop.wait(delay)
                delay = min(delay * 2, self._reconnect[1])
                continue
            except Exception as exc:  # a bug must not end the thread silently
                logger.exception("%s: connecting failed", self.name)
                self._failed(f"{type(exc).__name__}: {exc}")
                self._stop.wait(delay)
                delay = min(delay * 2, self._reconnect[1])
                continue
            delay = self._reconnect[0]
            reason = "connection lost"
            try:
                with self._lock:
                    self._resync = True
                self._flush(sock)
                if self._on_connect_hook is not None:
                    try:
                        self._on_connect_hook(session_present)
                    except Exception:
                        logger.exception("%s: error after connecting", self.name)
                self._serve(sock)
            except (OSError, ProtocolError) as exc:
                reason = self._cause(exc)
            except Exception as exc:  # a bug must not end the thread silently
                logger.exception("%s: the MQTT receive loop failed", self.name)
                reason = f"{type(exc).__name__}: {exc}"
            self._lost(sock, reason)
            if not self._stop.is_set():
                self._stop.wait(delay)

    def _open(self) -> tuple[socket.socket, bool]:
        timeout = self._timeout_s
        raw = socket.create_connection((self.endpoint.host, self.endpoint.port), timeout=timeout)
        sock: socket.socket = raw
        try:
            if self.endpoint.tls:
                context = (self.options.tls or TlsOptions()).context()
                sock = context.wrap_socket(raw, server_hostname=self.endpoint.host)
            sock.settimeout(timeout)
            sock.sendall(self._connect_packet())
            first, body = self._read_one(sock, time.monotonic() + timeout)
            if first >> 4 != 2 or len(body) < 2:
                raise ProtocolError("the broker did not answer CONNECT with CONNACK")
            code = body[1]
            if code:
                text = (
                    str(ReasonCode(PacketTypes.CONNACK, identifier=code))
                    if self._v5
                    else _CONNACK_V3.get(code, f"code {code}")
                )
                raise ProtocolError(f"the broker refused the connection: {text}")
        except BaseException:
            sock.close()
            raise
        with self._lock:
            self._sock = sock
            self._asked = {}
            self._subscribed = {}
            self._awaiting = {}
            self._outgoing = [p for p in self._outgoing if p != b"\xe0\x00"]
            self._qos2 = set()
            self._last_sent = time.monotonic()
        self.connects += 1
        self._connected.set()
        if self._failing is not None or self.connects > 1:
            logger.info("%s: connected to %s again", self.name, self.endpoint)
        self._failing = None
        self.last_error = None
        return sock, bool(body[0] & 1)

    def _connect_packet(self) -> bytes:
        o = self.options
        flags = 0x02  # clean session / clean start: subscriptions are made again each time
        payload = _s16(self.client_id.encode())
        if o.username is not None:
            flags |= 0x80
            payload += _s16(o.username.encode())
            password = o.password_text()
            if password is not None:
                flags |= 0x40
                payload += _s16(password.encode())
        header = _s16(b"MQTT") + bytes([5 if self._v5 else 4, flags]) + struct.pack("!H", o.keepalive_s)
        if self._v5:
            header += b"\x00"  # no properties
        return _packet(0x10, header + payload)

    def _read_one(self, sock: socket.socket, deadline: float) -> tuple[int, bytes]:
        """One whole packet (for CONNACK), within ``deadline``."""
        buf = bytearray()
        while True:
            if len(buf) >= 2:
                got = _read_varint(buf, 1, len(buf))
                if got is not None and len(buf) >= got[1] + got[0]:
                    return buf[0], bytes(buf[got[1] : got[1] + got[0]])
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no CONNACK")
            sock.settimeout(left)
            data = sock.recv(4096)
            if not data:
                raise ProtocolError("the broker closed the connection before accepting it")
            buf += data

    def _serve(self, sock: socket.socket) -> None:
        keepalive = self.options.keepalive_s
        sock.settimeout(0.25)  # queued writes wait at most this long
        buf = b""
        heard = time.monotonic()
        while True:
            if self._stop.is_set():
                self._flush(sock)  # DISCONNECT, when close() queued it
                return
            try:
                data = sock.recv(1 << 16)
            except TimeoutError:
                data = None
            now = time.monotonic()
            acks = b""
            if data is None:
                if now - heard > keepalive * 1.5:
                    raise ProtocolError(f"no word from the broker for {keepalive * 1.5:g} s")
            elif not data:
                raise ProtocolError("the broker closed the connection")
            else:
                heard = now
                buf, acks = self._handle(buf + data if buf else data)
            if now - self._last_sent >= keepalive / 2:
                acks += b"\xc0\x00"  # PINGREQ
            self._flush(sock, acks)

    def _handle(self, buf: bytes) -> tuple[bytes, bytes]:
        """Every whole packet of ``buf``: the incomplete rest, and the acknowledgements to send."""
        pos, end = 0, len(buf)
        acks: list[bytes] = []
        while end - pos >= 2:
            got = _read_varint(buf, pos + 1, end)
            if got is None:
                break
            length, start = got
            if length > _MAX_PACKET:
                raise ProtocolError(f"a packet of {length} bytes is larger than {_MAX_PACKET}")
            stop = start + length
            if stop > end:
                break
            first = buf[pos]
            kind = first >> 4
            if kind == 3:  # PUBLISH
                self._publish_in(buf, first, start, stop, acks)
            elif kind == 6:  # PUBREL
                pid = (buf[start] << 8) | buf[start + 1]
                self._qos2.discard(pid)
                acks.append(b"\x70\x02" + struct.pack("!H", pid))
            elif kind in (9, 11):  # SUBACK, UNSUBACK
                self._acked(buf[start:stop], kind == 9)
            elif kind == 14:  # DISCONNECT from the broker (MQTT 5)
                code = buf[start] if length else 0
                raise ProtocolError(
                    f"the broker disconnected: {ReasonCode(PacketTypes.DISCONNECT, identifier=code)}"
                )
            # PINGRESP (13) and anything else: nothing to do
            pos = stop
        return buf[pos:], b"".join(acks)

    def _publish_in(self, buf: bytes, first: int, start: int, stop: int, acks: list[bytes]) -> None:
        qos = (first >> 1) & 3
        tlen = (buf[start] << 8) | buf[start + 1]
        at = start + 2 + tlen
        topic_bytes = buf[start + 2 : at]
        pid = 0
        if qos:
            pid = (buf[at] << 8) | buf[at + 1]
            at += 2
        if self._v5:
            plen, at = _read_varint(buf, at, stop) or (0, stop)
            at += plen
        if qos == 1:
            acks.append(b"\x40\x02" + struct.pack("!H", pid))
        elif qos == 2:
            acks.append(b"\x50\x02" + struct.pack("!H", pid))
            if pid in self._qos2:
                return  # sent again before our PUBREC arrived: handed over once already
            self._qos2.add(pid)
        self.messages_in += 1
        try:
            topic = topic_bytes.decode("utf-8")
        except UnicodeDecodeError:
            logger.warning("%s: a message whose topic is not UTF-8 was ignored", self.name)
            return
        try:
            self._on_message(topic, buf[at:stop], qos)
        except Exception:
            logger.exception("%s: error handling a message on %r", self.name, topic)

    def _acked(self, body: bytes, subscribe: bool) -> None:
        pid = (body[0] << 8) | body[1]
        at = 2
        if self._v5:
            plen, at = _read_varint(body, at, len(body)) or (0, len(body))
            at += plen
        codes = body[at:]
        with self._lock:
            entry = self._awaiting.pop(pid, None)
            if entry is None:
                return
            _what, topics = entry
            for k, (topic, qos) in enumerate(topics):
                code = codes[k] if k < len(codes) else 0
                if not subscribe:
                    self._subscribed.pop(topic, None)
                elif code < 0x80 and self._asked.get(topic) == qos:
                    self._subscribed[topic] = qos
                elif code >= 0x80:
                    self._asked.pop(topic, None)
                    logger.warning(
                        "%s: the broker refused the subscription to %r (code %d)", self.name, topic, code
                    )

    # -- failures ------------------------------------------------------------------------------------

    def _lost(self, sock: socket.socket, reason: str) -> None:
        with self._lock:
            self._sock = None
            self._subscribed = {}
            self._asked = {}
            self._awaiting = {}
            self._outgoing = []
        with contextlib.suppress(OSError):
            sock.close()
        was = self._connected.is_set()
        self._connected.clear()
        if was:
            self.disconnects += 1
        if self._stop.is_set():
            return
        self._failed(f"disconnected from {self.endpoint}: {reason}")
        if self._on_disconnect_hook is not None:
            try:
                self._on_disconnect_hook(reason)
            except Exception:
                logger.exception("%s: error after disconnecting", self.name)

    def _cause(self, exc: BaseException) -> str:  # noqa: PLR0911 - a line per cause
        if isinstance(exc, ProtocolError):
            return str(exc)
        if isinstance(exc, ssl.SSLCertVerificationError):
            return f"the broker's certificate was refused: {exc.verify_message or exc}"
        if isinstance(exc, ssl.SSLError):
            return f"TLS failed: {exc.reason or exc}"
        if isinstance(exc, socket.gaierror):
            return f"unknown host {self.endpoint.host!r}"
        if isinstance(exc, ConnectionRefusedError):
            return f"cannot connect to {self.endpoint} (connection refused)"
        if isinstance(exc, TimeoutError):
            return f"no answer from {self.endpoint} within {self._timeout_s:g} s"
        if isinstance(exc, OSError):
            return f"{exc.strerror or exc}"
        return str(exc)

    def _failed(self, text: str) -> None:
        self.last_error = text
        if self._failing != text and not self._stop.is_set():
            logger.warning("%s: %s; retrying in the background", self.name, text)
            self._failing = text

    def __repr__(self) -> str:
        return f"MqttReceiver({self.endpoint}, client_id={self.client_id!r}, connected={self.connected})"
