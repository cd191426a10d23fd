"""``MqttDataReader``: values from MQTT messages, on the engine's pushed path."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from flowcollect._secret import SecretLike
from flowcollect.errors import ConfigError
from flowcollect.models import ValueType, Variable
from flowcollect.mqtt import MqttReceiver, Protocol, TlsOptions, options_problems
from flowcollect.readers.base import DataReader, Emit
from flowcollect.readers.mqtt._kinds import AddressKind, Delivery, Source, Watched
from flowcollect.readers.mqtt._plain import PlainKind
from flowcollect.readers.mqtt._sparkplug import SparkplugKind
from flowcollect.values import ValueBatch, VariableSpec

__all__ = ["KINDS", "MqttDataReader"]

logger = logging.getLogger("flowcollect.readers.mqtt")
_VALUE_TYPES = ("float", "int", "bool", "str")

KINDS: list[AddressKind] = [SparkplugKind(), PlainKind()]
"""The address kinds, tried in order; the plain topic (last) takes whatever no other claims.
A kind with its own prefix (Sparkplug B: ``spBv1.0/``) is inserted before it."""


class MqttDataReader(DataReader):
    """Subscribes to the topics its variables name and pushes their values to the engine.

    An address is a topic whose payload is the value (``plant/line1/temp``), or a topic and a
    JSON path into the payload (``plant/line1/status#$.temperature``). Values are held and
    sampled on the grid (``report="every"``) or delivered as they come (``report="change"``).
    A payload that does not parse or does not fit the variable's type is an error on that
    value only. Subscriptions follow the running contexts and come back after a reconnect;
    while the broker is away every value is an error saying so.

    ``stale_after_ms``: a value is stale when no message came on any of the reader's topics for
    this long (None: never). ``qos``: the subscriptions' QoS. Connection options as for
    ``MqttDataWriter``; see docs/mqtt.md.
    """

    def __init__(
        self,
        url: str,
        *,
        type: str = "mqtt",  # noqa: A002 - the contract's name for a reader's type
        qos: int = 1,
        stale_after_ms: int | None = 60_000,
        client_id: str | None = None,
        username: str | None = None,
        password: SecretLike | None = None,
        tls: TlsOptions | Mapping[str, Any] | bool | None = None,
        protocol: Protocol = "5",
        keepalive_s: int = 30,
    ) -> None:
        where = "MqttDataReader"
        endpoint, options, problems = options_problems(
            where,
            url,
            client_id=client_id,
            username=username,
            password=password,
            tls=tls,
            protocol=protocol,
            keepalive_s=keepalive_s,
        )
        if not isinstance(type, str) or not type:
            problems.append(f"{where} type: must be a non-empty str, got {type!r}")
        if isinstance(qos, bool) or qos not in (0, 1, 2):
            problems.append(f"{where} qos: must be 0, 1 or 2, got {qos!r}")
        stale: object = stale_after_ms
        if stale is not None and (isinstance(stale, bool) or not isinstance(stale, int) or stale <= 0):
            problems.append(f"{where} stale_after_ms: must be a positive int or None, got {stale!r}")
        if problems or endpoint is None or options is None:
            raise ConfigError(problems)
        self._type = type
        self.url = endpoint.url
        self.qos = qos
        self._stale_after_ms = stale_after_ms
        self.options = options
        self._endpoint = endpoint
        self._parsed: dict[str, tuple[AddressKind, Any]] = {}
        self._sources: dict[str, Source] = {}
        self._source_list: tuple[Source, ...] = ()  # the same, for the connection's thread
        self._emit: Emit | None = None
        # Guarded by _lock: what is watched (for the errors when the broker is lost). The counters
        # are written by the connection's thread only.
        self._lock = threading.Lock()
        self._watched: list[VariableSpec] = []
        self._counts = dict.fromkeys(("messages", "values", "bad_values", "unknown_topic"), 0)
        self._conn: MqttReceiver | None = None
        self._closed_stats: dict[str, float] = {}

    # -- the DataReader contract -------------------------------------------------------------------

    @property
    def type(self) -> str:
        return self._type

    @property
    def lane(self) -> str:
        return self.url

    @property
    def pushes(self) -> bool:
        return True

    @property
    def stale_after_ms(self) -> int | None:
        return self._stale_after_ms

    def natural_value_type(self, address: str) -> ValueType | None:
        try:
            kind, parsed = self._parse(address)
        except ValueError:
            return None
        return kind.natural_value_type(parsed)

    def validate(self, variable: Variable) -> None:
        self._parse(variable.address)
        if variable.value_type is not None and variable.value_type not in _VALUE_TYPES:
            raise ValueError(f"value_type {variable.value_type!r} is not one of {', '.join(_VALUE_TYPES)}")

    def _parse(self, text: str) -> tuple[AddressKind, Any]:
        hit = self._parsed.get(text)
        if hit is None:
            kind = next(k for k in KINDS if k.claims(text))
            hit = (kind, kind.parse(text))
            self._parsed[text] = hit
        return hit

    def open(self) -> None:
        if self._conn is not None:
            return
        # Its own receive path (blocks read from the socket, not paho's byte-by-byte headers):
        # ~5x paho's messages per second here; see flowcollect/mqtt/_receiver.py.
        conn = MqttReceiver(
            self._endpoint,
            self.options,
            name=f"reader {self._type}",
            on_message=self._on_message,
            on_connect=self._on_connect,
            on_disconnect=self._on_disconnect,
        )
        self._conn = conn
        conn.start()
        # The first tick should find the subscriptions when the broker is up; a broker that is
        # down costs open() at most this, and the values are errors until it is back.
        conn.wait_connected(2.0)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close(3.0)
            self._closed_stats = {**conn.stats(), "subscriptions": 0.0}  # the figures stay readable

    def start_pushing(self, emit: Emit) -> None:
        self._emit = emit

    def plan_changed(self, variables: Sequence[VariableSpec]) -> None:
        by_kind: dict[str, list[Watched]] = {}
        kinds: dict[str, AddressKind] = {}
        watched: list[VariableSpec] = []
        for spec in variables:
            try:
                kind, parsed = self._parse(spec.address)
            except ValueError:
                continue  # validate() refused it before any context started
            by_kind.setdefault(kind.name, []).append(Watched(spec, parsed))
            kinds[kind.name] = kind
            watched.append(spec)
        filters: dict[str, int] = {}
        for name, source in list(self._sources.items()):
            if name not in by_kind:
                source.watch(())
        for name, items in by_kind.items():
            if name not in self._sources:
                self._sources[name] = kinds[name].source(self.qos)
                conn = self._conn
                if conn is not None and conn.connected:
                    # A source made after the connection came up hears of it too (Sparkplug
                    # asks the nodes it now watches for their births).
                    self._sources[name].connected(conn.publish_qos0)
            source = self._sources[name]
            for topic, qos in source.watch(items).items():
                filters[topic] = max(qos, filters.get(topic, 0))
        self._source_list = tuple(self._sources.values())
        with self._lock:
            self._watched = watched
        conn = self._conn
        if conn is not None:
            conn.set_subscriptions(filters)
            if watched and not conn.connected:
                # Say why at once, rather than "no value pushed yet" until the broker is back.
                text = f"not connected to the MQTT broker at {self.url}: {conn.last_error or 'connecting'}"
                now = time.time_ns() // 1_000_000
                self._send(ValueBatch(now, watched, None, [text] * len(watched), reader=self._type))

    def describe_requests(self, variables: Sequence[VariableSpec]) -> Sequence[str]:
        topics = set()
        for spec in variables:
            try:
                _kind, parsed = self._parse(spec.address)
            except ValueError:
                continue
            topics.add(getattr(parsed, "topic", spec.address))
        if not topics:
            return ()
        return [
            f"subscriptions: {len(topics)} topic(s) at QoS {self.qos}, pushed by the broker, "
            "no request per tick"
        ]

    def stats(self) -> Mapping[str, float]:
        out = {k: float(v) for k, v in self._counts.items()}
        conn = self._conn
        if conn is not None:
            stats = {**conn.stats(), "subscriptions": float(len(conn.subscriptions))}
        else:
            stats = self._closed_stats
        for key in ("connected", "connects", "disconnects", "subscriptions"):
            if key in stats:
                out[key] = stats[key]
        for source in list(self._sources.values()):
            out.update(source.stats())
        return out

    def __repr__(self) -> str:
        user = f", username={self.options.username!r}" if self.options.username else ""
        return f"MqttDataReader(type={self._type!r}, {self.url}{user})"

    # -- the connection's callbacks (its thread) -----------------------------------------------------

    def _on_message(self, topic: str, payload: bytes, _qos: int) -> None:
        # Hot: one call per message on the connection's thread, the only writer of the counters
        # (read without a lock, as stats() may).
        arrived_ns = time.time_ns()
        deliveries: Sequence[Delivery] | None = None
        for source in self._source_list:
            got = source.handle(topic, payload, arrived_ns)
            if got:
                deliveries = got if deliveries is None else [*deliveries, *got]
        counts = self._counts
        counts["messages"] += 1
        if deliveries is None:
            counts["unknown_topic"] += 1
            return
        n = len(deliveries)
        counts["values"] += n
        if n == 1:
            d = deliveries[0]
            specs: list[VariableSpec] = [d.spec]
            values: list[Any] = [d.value]
            errors: list[str | None] = [d.error]
            source_ns: list[int | None] | None = None if d.source_ns is None else [d.source_ns]
            quality: list[str | None] | None = None if d.quality is None else [d.quality]
        else:
            specs = [d.spec for d in deliveries]
            values = [d.value for d in deliveries]
            errors = [d.error for d in deliveries]
            stamps = [d.source_ns for d in deliveries]
            words = [d.quality for d in deliveries]
            source_ns = stamps if stamps.count(None) != n else None
            quality = words if words.count(None) != n else None
        bad = n - errors.count(None)
        if bad:
            counts["bad_values"] += bad
        self._send(
            ValueBatch(
                arrived_ns // 1_000_000,
                specs,
                values,
                errors,
                source_ns=source_ns,
                quality=quality,
                reader=self._type,
            )
        )

    def _on_connect(self, _session_present: bool) -> None:
        conn = self._conn
        if conn is None:
            return
        for source in list(self._sources.values()):
            source.connected(conn.publish_qos0)

    def _on_disconnect(self, reason: str) -> None:
        for source in list(self._sources.values()):
            source.disconnected()
        with self._lock:
            specs = list(self._watched)
        if specs:
            text = f"lost the MQTT broker at {self.url}: {reason}"
            self._send(
                ValueBatch(time.time_ns() // 1_000_000, specs, None, [text] * len(specs), reader=self._type)
            )

    def _send(self, batch: ValueBatch) -> None:
        emit = self._emit
        if emit is None:
            return
        try:
            emit(batch)
        except Exception:
            logger.exception("mqtt reader %r: the engine's emit raised", self._type)
