"""Sparkplug B addresses for ``MqttDataReader``: ``spBv1.0/<group>/DDATA/<edge>/<device>:<metric>``.

The reader subscribes to each watched edge node's messages; ``flowcollect.sparkplug._host``
learns names and aliases from the births, checks the node's ``seq`` and says when to ask for a
rebirth (a gap, an alias no birth named, data before any birth), which this source publishes as
an NCMD on the reader's connection. It also asks each watched node once the connection is (again)
up, since what was said while it was away is unknown. A metric's own timestamp is the value's
source time; a null with quality Bad, a DDEATH or an NDEATH is an error on the value.
Historical metrics (``is_historical``) are delivered to ``report="change"`` variables only: on
the grid they would overwrite the live value with an older one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence

from flowcollect.readers.mqtt._kinds import AddressKind, Delivery, Publish, Source, Watched
from flowcollect.readers.mqtt._plain import from_json
from flowcollect.sparkplug import NAMESPACE, SparkplugAddress, SparkplugHost, parse_address
from flowcollect.values import VariableSpec

__all__ = ["SparkplugKind", "SparkplugSource"]

logger = logging.getLogger("flowcollect.readers.mqtt")

_PREFIX = f"{NAMESPACE}/"


class SparkplugKind(AddressKind):
    name = "sparkplug"

    def claims(self, text: str) -> bool:
        return text.startswith(_PREFIX)

    def parse(self, text: str) -> SparkplugAddress:
        return parse_address(text)

    def source(self, qos: int) -> Source:
        return SparkplugSource(qos)


class SparkplugSource(Source):
    """The Sparkplug metrics one reader watches, and what the edge nodes said about them."""

    def __init__(self, qos: int) -> None:
        self._qos = qos
        # Guarded by _lock: the host's state, who watches what, the publish of the connection.
        self._lock = threading.Lock()
        self._host = SparkplugHost()
        self._specs: dict[SparkplugAddress, list[VariableSpec]] = {}
        self._publish: Publish | None = None
        self._counts = dict.fromkeys(("sparkplug_rebirths_asked", "sparkplug_historical_skipped"), 0)

    def watch(self, watched: Sequence[Watched]) -> Mapping[str, int]:
        specs: dict[SparkplugAddress, list[VariableSpec]] = {}
        for w in watched:
            specs.setdefault(w.address, []).append(w.spec)
        filters: dict[str, int] = {}
        for address in specs:
            for topic in address.subscriptions():
                filters[topic] = self._qos
        with self._lock:
            new = {a.node for a in specs} - {a.node for a in self._specs}
            self._specs = specs
            self._host.set_wanted(list(specs))
            publish = self._publish
            requests = self._host.rebirth_all(_now_ms(), new) if publish is not None and new else []
        # A node newly watched: its births tell the aliases (its data alone cannot be read).
        self._ask(publish, requests)
        return filters

    def _ask(self, publish: Publish | None, requests: list[tuple[str, bytes]]) -> None:
        if publish is None:
            return
        for topic, payload in requests:
            if publish(topic, payload, 0, False):
                with self._lock:
                    self._counts["sparkplug_rebirths_asked"] += 1

    def handle(self, topic: str, payload: bytes, arrived_ns: int) -> Sequence[Delivery] | None:
        if not topic.startswith(_PREFIX):
            return None
        now_ms = arrived_ns // 1_000_000
        with self._lock:
            if not self._specs:
                return None
            update = self._host.received(topic, payload, now_ms)
            publish = self._publish
            specs = self._specs
        for problem in update.problems:
            logger.warning("mqtt reader: %s", problem)
        if update.rebirth is not None:
            self._ask(publish, [update.rebirth])
        out: list[Delivery] = []
        skipped = 0
        for found in update.values:
            for spec in specs.get(found.address, ()):
                if found.historical and spec.report != "change":
                    skipped += 1
                    continue
                if found.error is not None:
                    out.append(Delivery(spec, None, found.error, found.t_ms * 1_000_000))
                    continue
                value, error = from_json(found.value, spec.value_type)
                out.append(Delivery(spec, value, error, found.t_ms * 1_000_000, found.quality))
        if skipped:
            with self._lock:
                self._counts["sparkplug_historical_skipped"] += skipped
        return out

    def connected(self, publish: Publish) -> None:
        with self._lock:
            self._publish = publish
            requests = self._host.rebirth_all(_now_ms())
        # What the nodes said while we were away is unknown: ask them for their births.
        self._ask(publish, requests)

    def disconnected(self) -> None:
        with self._lock:
            self._publish = None
            self._host.forget_sequences()

    def stats(self) -> Mapping[str, float]:
        with self._lock:
            return {k: float(v) for k, v in self._counts.items()}


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
