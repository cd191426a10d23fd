"""Kinds of MQTT address, and the seam a new kind (Sparkplug B) plugs into.

An address is parsed by the first kind in ``KINDS`` that ``claims`` it. A kind gives the reader
a ``Source`` per reader instance, which

- ``watch``es the variables whose addresses it parsed (``plan_changed``) and says which topic
  filters it needs subscribed (filter -> QoS),
- ``handle``s each message on one of its filters, giving back the values it carries, and
- hears when the broker connection comes and goes (``connected``: it may publish, e.g. a
  Sparkplug rebirth request; ``disconnected``).

The reader owns the connection, the subscriptions (the union of every source's filters,
restored after each reconnect), the engine's ``emit`` and the errors when the broker is lost.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flowcollect.models import ValueType
from flowcollect.values import VariableSpec

__all__ = ["AddressKind", "Delivery", "Publish", "Source", "Watched"]

Publish = Callable[[str, bytes, int, bool], bool]
"""``publish(topic, payload, qos, retain)`` on the reader's connection (``MqttReceiver``: QoS 0
only, queued and sent by its thread within a quarter of a second); False when not taken."""


@dataclass(frozen=True, slots=True)
class Watched:
    """A variable the reader serves, with its address as its kind parsed it."""

    spec: VariableSpec
    address: Any


@dataclass(slots=True)
class Delivery:
    """What one message says about one variable: a value or an error, and the source's time
    (epoch ns; None: the message's arrival counts) and quality when it gives them."""

    spec: VariableSpec
    value: Any
    error: str | None = None
    source_ns: int | None = None
    quality: str | None = None


class Source(ABC):
    """One kind's state for one reader (the variables it watches, what it learned from the
    broker). Called on the reader's threads: ``watch`` on the lane's, ``handle``, ``connected``
    and ``disconnected`` on the connection's; a source guards what both touch."""

    @abstractmethod
    def watch(self, watched: Sequence[Watched]) -> Mapping[str, int]:
        """The variables to serve from now on; returns the topic filters (with QoS) it needs."""

    @abstractmethod
    def handle(self, topic: str, payload: bytes, arrived_ns: int) -> Sequence[Delivery] | None:
        """The values a message carries; None when the topic is not this source's."""

    def connected(self, publish: Publish) -> None:
        """The connection is (again) up and subscribed; ``publish`` may be kept and used."""

    def disconnected(self) -> None:
        """The connection was lost (the reader emits the errors)."""

    def stats(self) -> Mapping[str, float]:
        return {}


class AddressKind(ABC):
    """A grammar of addresses and the ``Source`` that serves them."""

    name: str

    @abstractmethod
    def claims(self, text: str) -> bool:
        """True when ``text`` is an address of this kind (by its shape only)."""

    @abstractmethod
    def parse(self, text: str) -> Any:
        """The parsed address (hashable); ``ValueError`` with the reason when it is malformed."""

    def natural_value_type(self, address: Any) -> ValueType | None:
        return None

    @abstractmethod
    def source(self, qos: int) -> Source:
        """A new source for one reader (``qos``: the reader's subscription QoS)."""
