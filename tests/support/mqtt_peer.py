"""The tests' own MQTT client (plain paho, not the code under test): a subscriber that counts
every message it gets, and a publisher for the reader's tests."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

__all__ = ["Peer"]


class Peer:
    """Connected at construction (anonymous, or ``username``/``password``); ``subscribe`` waits for
    the SUBACK; every message is kept in ``messages`` as ``(topic, payload, dup)``."""

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        timeout_s: float = 10.0,
        clean: bool = True,
        client_id: str | None = None,
    ) -> None:
        parts = urlsplit(url)
        self._lock = threading.Lock()
        self.messages: list[tuple[str, bytes, bool]] = []
        self._subacks: set[int] = set()
        self._connected = threading.Event()
        self.client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id or f"peer-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv311,
            clean_session=clean,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_connect = lambda *_a: self._connected.set()
        self.client.on_disconnect = lambda *_a: self._connected.clear()
        self.client.reconnect_delay_set(0.1, 0.2)  # type: ignore[arg-type]
        self.client.connect(parts.hostname or "127.0.0.1", parts.port or 1883, keepalive=30)
        self.client.loop_start()
        if not self._connected.wait(timeout_s):
            self.close()
            raise AssertionError(f"the test's MQTT peer did not connect to {url} within {timeout_s} s")

    def _on_message(self, _c: Any, _u: Any, message: paho.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((message.topic, bytes(message.payload), bool(message.dup)))

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, _codes: Any, _props: Any) -> None:
        with self._lock:
            self._subacks.add(mid)

    def subscribe(self, topic: str, qos: int = 1, timeout_s: float = 10.0) -> None:
        _rc, mid = self.client.subscribe(topic, qos)
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                if mid in self._subacks:
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"no SUBACK for {topic!r} within {timeout_s} s")
            time.sleep(0.01)

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos, retain)
        info.wait_for_publish(10.0)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def count(self) -> int:
        with self._lock:
            return len(self.messages)

    def taken(self) -> list[tuple[str, bytes, bool]]:
        with self._lock:
            return list(self.messages)

    def by_topic(self) -> Counter[str]:
        with self._lock:
            return Counter(topic for topic, _p, _d in self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Peer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
