"""A Sparkplug B 3.0 edge node's session as a state machine: no I/O, no clock, no threads.

The driver (``SparkplugDataWriter``) tells the ``EdgeNode`` what happened (about to connect,
connected, a message arrived, values to publish, connection lost, stop) with the time in epoch
milliseconds, and carries out the actions it gets back, in order: publish a message, subscribe,
reconnect, report values dropped, log. The tests drive it the same way with made-up times and
check every message by decoding it with the protobuf library.

What the specification asks and where it is done here:

- NDEATH is the MQTT will, with the ``bdSeq`` of the connection it belongs to (``will``); each
  new connection gets the next ``bdSeq`` (0-255), and the NBIRTH carries the same one.
- NBIRTH (``bdSeq``, ``Node Control/Rebirth``, the node's own metrics) then a DBIRTH per device
  with every metric's name, alias, datatype and newest value; DATA messages carry aliases only.
- ``seq`` counts every NBIRTH, DBIRTH, DDATA and DDEATH of the node from 0 to 255 and round
  again; an NBIRTH starts it at 0. NDEATH carries none.
- An NCMD ``Node Control/Rebirth`` (true) sends the births again.
- With a primary host: births only once ``spBv1.0/STATE/{host}`` says online (3.0 JSON
  ``{"online": bool, "timestamp": ms}``; an older timestamp than the last one seen is ignored).
  When it goes offline the node ends its session (NDEATH, reconnect) as the specification
  demands, and holds the values that come meanwhile; once the host is back they go out after
  the births, oldest first, each metric ``is_historical``.
- A clean stop publishes a DDEATH per device and the NDEATH before disconnecting.

A value is *historical* when its grid instant is older than the session's NBIRTH: what was held
through an outage, and what a spool hands over after a restart.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from flowcollect.sparkplug._payload import (
    Current,
    DataEncoder,
    MetricDef,
    ValueDoesNotFitError,
    birth_payload,
    datatype_of,
    decode,
)
from flowcollect.sparkplug._schema import DataType
from flowcollect.values import ValueBatch, VariableSpec

__all__ = [
    "NAMESPACE",
    "REBIRTH",
    "Carried",
    "EdgeNode",
    "Note",
    "Publish",
    "Reconnect",
    "Settle",
    "Subscribe",
    "check_id",
    "ndeath_payload",
]

NAMESPACE: Final = "spBv1.0"
REBIRTH: Final = "Node Control/Rebirth"
BDSEQ: Final = "bdSeq"

_NODE_INFO: Final = "Node Info/Software"
HISTORICAL_GRACE_MS: Final = 1_000
"""A value reaching a live session this much older than its births is historical (a spool's
backlog after a restart); younger, it is one the births just overtook."""


def check_id(kind: str, value: str) -> str | None:
    """Why ``value`` cannot be a Sparkplug group, edge node, device or host id (None: it can)."""
    if not isinstance(value, str) or not value:
        return f"{kind} must be a non-empty string"
    bad = sorted({c for c in value if c in "/+#"})
    if bad:
        return f"{kind} {value!r} must not contain {' '.join(bad)} (MQTT topic characters)"
    return None


def ndeath_payload(bdseq: int, now_ms: int) -> bytes:
    """An NDEATH: the ``bdSeq`` metric (Int64) and no ``seq``."""
    return birth_payload(None, now_ms, [(MetricDef.make(BDSEQ, 0, DataType.Int64), Current(now_ms, bdseq))])


# -- actions --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Carried:
    """Values of ``batch`` a message carries: ``count`` of them, ``failed`` of which did not fit
    their metric's datatype (sent as null, quality Bad). ``part`` says which device's values."""

    batch: ValueBatch
    part: int
    count: int
    failed: int = 0
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Publish:
    kind: str
    """NBIRTH, DBIRTH, NDATA, DDATA, DDEATH or NDEATH."""
    topic: str
    payload: bytes
    qos: int
    carries: tuple[Carried, ...] = ()
    """The collected values whose fate is this message's: written once it is, else dropped."""
    retain: bool = False


@dataclass(frozen=True, slots=True)
class Subscribe:
    topics: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class Reconnect:
    """End this MQTT session cleanly (after the publishes before it) and connect again."""

    reason: str


@dataclass(frozen=True, slots=True)
class Settle:
    """Values of ``batch`` that will never go out: ``failed`` (no valid device for them) or
    ``dropped`` (over the hold limit). Report them so."""

    batch: ValueBatch
    failed: int
    dropped: int
    reason: str


@dataclass(frozen=True, slots=True)
class Note:
    """Something to log (``level``: ``info``, ``warning``)."""

    level: str
    text: str


Action = Publish | Subscribe | Reconnect | Settle | Note


# -- what the node knows ---------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _Part:
    """One device's share of a batch layout: which values, as which metrics."""

    device: str
    indices: list[int]
    names: list[str]
    datatypes: list[int]
    encoder: DataEncoder | None = None
    """Made once every metric of the part has its alias (never changes after)."""
    key: tuple[str, ...] = ()
    """Its metric names: what identifies the part across layouts."""


@dataclass(slots=True, eq=False)
class _Layout:
    variables: Sequence[VariableSpec]  # kept so its id is not reused while cached
    parts: list[_Part]
    failed: list[tuple[int, str]] = field(default_factory=list)
    """Values with no device (the template gave an invalid name): failed, with the reason."""


@dataclass(slots=True, eq=False)
class _Device:
    name: str
    metrics: dict[str, MetricDef] = field(default_factory=dict)
    newest: dict[tuple[str, ...], tuple[_Part, ValueBatch]] = field(default_factory=dict)
    """Per set of metrics (a part's names: the same for every layout of a plan, also those a
    spool rebuilds), the newest batch seen: where a birth takes current values."""
    born: bool = False


_LAYOUT_CACHE: Final = 1024


class EdgeNode:
    """The session logic of one Sparkplug edge node (see the module's docstring).

    ``device_of`` names a variable's device (the writer's ``device`` template); it may raise
    ``ValueError``, and then that variable's values fail with the message. ``hold_limit``: values
    held while no session is up, at most; beyond it the oldest batches are dropped.
    """

    def __init__(
        self,
        group_id: str,
        edge_node_id: str,
        *,
        device_of: Callable[[VariableSpec], str],
        primary_host_id: str | None = None,
        qos: int = 0,
        bdseq: int = 0,
        hold_limit: int = 1_000_000,
        software: str = "flowcollect",
    ) -> None:
        self.group_id = group_id
        self.edge_node_id = edge_node_id
        self.primary_host_id = primary_host_id
        self.qos = qos
        self.hold_limit = hold_limit
        self.software = software
        self._device_of = device_of
        self._bdseq = bdseq % 256
        self._seq = 0
        self._connected = False
        self._live = False
        self._host_online = primary_host_id is None
        self._host_stamp = -1
        self._born_ms = 0
        self._next_alias = 1
        self._devices: dict[str, _Device] = {}
        self._layouts: dict[int, _Layout] = {}
        self._held: deque[tuple[ValueBatch, tuple[int, ...] | None]] = deque()
        self._held_values = 0
        node = f"{NAMESPACE}/{group_id}"
        self.topic_ncmd = f"{node}/NCMD/{edge_node_id}"
        self.topic_dcmd = f"{node}/DCMD/{edge_node_id}/+"
        self.topic_state = None if primary_host_id is None else f"{NAMESPACE}/STATE/{primary_host_id}"
        self._topic_nbirth = f"{node}/NBIRTH/{edge_node_id}"
        self._topic_ndeath = f"{node}/NDEATH/{edge_node_id}"
        self._device_topic = f"{node}/{{kind}}/{edge_node_id}/{{device}}"

    # -- what the driver asks ----------------------------------------------------------------

    @property
    def bdseq(self) -> int:
        """The ``bdSeq`` of the current (or next) connection."""
        return self._bdseq

    @property
    def live(self) -> bool:
        """True once the births of the current connection are out: data goes straight out."""
        return self._live

    @property
    def host_online(self) -> bool:
        return self._host_online

    @property
    def held_values(self) -> int:
        """Values waiting for a session (the primary host offline, no connection)."""
        return self._held_values

    def will(self, now_ms: int) -> Publish:
        """The NDEATH to register as the will of the connection about to be made."""
        return self._ndeath(now_ms)

    def set_bdseq(self, bdseq: int) -> None:
        """The ``bdSeq`` of the connection about to come up, when the driver keeps the count
        itself (it registers each will before the node hears of the connection)."""
        self._bdseq = bdseq % 256

    def connected(self, now_ms: int) -> list[Action]:
        """The MQTT session is up (CONNACK): subscribe, then the births unless a primary host
        must say it is online first."""
        self._connected = True
        self._live = False
        self._seq = 0
        topics = [(self.topic_ncmd, 1), (self.topic_dcmd, 1)]
        if self.topic_state is not None:
            topics.append((self.topic_state, 1))
            # The retained STATE arrives after the subscription: until then the host is offline.
            self._host_online = False
        actions: list[Action] = [Subscribe(tuple(topics))]
        if self._host_online:
            actions += self._births(now_ms, replay=True)
        return actions

    def connection_lost(self) -> None:
        """The MQTT session ended (lost, or ended on purpose): the next one gets a new bdSeq;
        nothing is born until it is up."""
        if self._connected:
            self._bdseq = (self._bdseq + 1) % 256
        self._connected = False
        self._live = False
        for device in self._devices.values():
            device.born = False

    def received(self, topic: str, payload: bytes, now_ms: int) -> list[Action]:
        """A message on a subscribed topic (STATE, NCMD, DCMD)."""
        if topic == self.topic_state:
            return self._on_state(payload, now_ms)
        if topic == self.topic_ncmd:
            return self._on_ncmd(payload, now_ms)
        if topic.startswith(self.topic_dcmd[:-1]):
            return [Note("info", f"DCMD on {topic} ignored: this edge node publishes, it does not write")]
        return []

    def data(self, batch: ValueBatch, now_ms: int) -> list[Action]:
        """Values to publish: out now while the session is live, else held."""
        layout = self._layout(batch.variables)
        actions: list[Action] = []
        for count, reason in _group_reasons(layout.failed):
            actions.append(Settle(batch, count, 0, reason))
        if not layout.parts:
            return actions
        if not self._live:
            self._note_newest(batch, layout, None)
            self._hold(batch, None, actions)
            return actions
        actions += self._send(batch, layout, None, now_ms)
        return actions

    def requeue(self, carried: Iterable[Carried]) -> None:
        """Values a message carried that the broker never got (the connection dropped first):
        hold them again, to go out (in instant order with the rest) once a session is up."""
        for c in carried:
            self._held.append((c.batch, (c.part,)))
            self._held_values += c.count

    def stop(self, now_ms: int) -> list[Action]:
        """A clean end: DDEATH for every device born in this session, then NDEATH."""
        actions: list[Action] = []
        if self._live:
            for device in self._devices.values():
                if device.born:
                    actions.append(self._ddeath(device.name, now_ms))
        if self._connected:
            actions.append(self._ndeath(now_ms))
        self._live = False
        return actions

    def take_held(self) -> list[tuple[ValueBatch, int]]:
        """Everything held, out of the node (at close: the writer reports it)."""
        out: list[tuple[ValueBatch, int]] = []
        for batch, parts in self._held:
            out.append((batch, self._count(batch, parts)))
        self._held.clear()
        self._held_values = 0
        return out

    # -- incoming -------------------------------------------------------------------------------

    def _on_state(self, payload: bytes, now_ms: int) -> list[Action]:
        online, stamp = _parse_state(payload)
        if online is None:
            return [Note("warning", f"STATE of {self.primary_host_id} not understood: {payload[:100]!r}")]
        if stamp is not None:
            if stamp < self._host_stamp:
                return []  # an older message than one already seen (specification: ignore it)
            self._host_stamp = stamp
        was = self._host_online
        self._host_online = online
        if online and not was and self._connected and not self._live:
            return [
                Note("info", f"primary host {self.primary_host_id} online: births"),
                *self._births(now_ms, replay=True),
            ]
        if not online and was and self._connected:
            # The specification: end this session; the next one waits for the host.
            actions: list[Action] = [
                Note("warning", f"primary host {self.primary_host_id} offline: session ended, data held"),
            ]
            if self._live:
                actions.append(self._ndeath(now_ms))
            self._live = False
            actions.append(Reconnect(f"primary host {self.primary_host_id} offline"))
            return actions
        return []

    def _on_ncmd(self, payload: bytes, now_ms: int) -> list[Action]:
        try:
            message = decode(payload)
        except Exception as exc:  # protobuf's DecodeError, or anything a bad payload raises
            return [Note("warning", f"NCMD not a Sparkplug B payload ({type(exc).__name__}): ignored")]
        for metric in message.metrics:
            if (
                metric.name == REBIRTH
                and metric.WhichOneof("value") == "boolean_value"
                and metric.boolean_value
            ):
                if not (self._connected and self._host_online):
                    return [
                        Note("info", "rebirth asked while the primary host is offline: births wait for it")
                    ]
                return [Note("info", "rebirth asked (NCMD)"), *self._births(now_ms, replay=not self._live)]
        return []

    # -- outgoing -------------------------------------------------------------------------------

    def _next_seq(self) -> int:
        seq = self._seq
        self._seq = (seq + 1) % 256
        return seq

    def _ndeath(self, now_ms: int) -> Publish:
        return Publish("NDEATH", self._topic_ndeath, ndeath_payload(self._bdseq, now_ms), 1)

    def _ddeath(self, device: str, now_ms: int) -> Publish:
        payload = birth_payload(self._next_seq(), now_ms, [])
        return Publish("DDEATH", self._device_topic.format(kind="DDEATH", device=device), payload, self.qos)

    def _nbirth(self, now_ms: int) -> Publish:
        self._seq = 0
        metrics = [
            (MetricDef.make(BDSEQ, 0, DataType.Int64), Current(now_ms, self._bdseq)),
            (MetricDef.make(REBIRTH, 0, DataType.Boolean), Current(now_ms, False)),
            (MetricDef.make(_NODE_INFO, 0, DataType.String), Current(now_ms, self.software)),
        ]
        payload = birth_payload(self._next_seq(), now_ms, metrics)
        return Publish("NBIRTH", self._topic_nbirth, payload, self.qos)

    def _dbirth(self, device: _Device, now_ms: int, carries: tuple[Carried, ...] = ()) -> Publish:
        current: dict[str, Current] = {}
        for part, batch in device.newest.values():
            for name, i in zip(part.names, part.indices, strict=True):
                seen = current.get(name)
                if seen is None or seen.t_ms <= batch.t_ms:
                    quality = batch.quality
                    current[name] = Current(
                        batch.t_ms, batch.values[i], batch.errors[i], None if quality is None else quality[i]
                    )
        metrics = [(m, current.get(name)) for name, m in device.metrics.items()]
        payload = birth_payload(self._next_seq(), now_ms, metrics)
        device.born = True
        topic = self._device_topic.format(kind="DBIRTH", device=device.name)
        return Publish("DBIRTH", topic, payload, self.qos, carries)

    def _births(self, now_ms: int, *, replay: bool) -> list[Action]:
        """NBIRTH, a DBIRTH per known device, then (``replay``) what was held, oldest first.

        A held value that is still its metric's newest goes out in the DBIRTH, as the current
        value (the birth carries it); the older ones follow as historical DDATA.
        """
        # Oldest first (values a dropped connection gave back join the end of the queue).
        held = sorted(self._held, key=lambda entry: entry[0].t_ms) if replay else []
        carried: dict[str, list[Carried]] = {}
        in_birth: set[tuple[int, int]] = set()
        if replay:
            # Devices and metrics first seen in held data are born now too, with the rest.
            newest: dict[tuple[str, ...], tuple[ValueBatch, int, _Part]] = {}
            for batch, parts in held:
                layout = self._layout(batch.variables)
                self._register(layout)
                for k in range(len(layout.parts)) if parts is None else parts:
                    part = layout.parts[k]
                    seen = newest.get(part.key)
                    if seen is None or seen[0].t_ms <= batch.t_ms:
                        newest[part.key] = (batch, k, part)
            for batch, k, part in newest.values():
                device = self._devices[part.device]
                current = device.newest.get(part.key)
                if current is not None and current[1] is batch:
                    unfit = _unfit(device, batch, part)
                    carried.setdefault(part.device, []).append(self._carried(batch, k, part, unfit))
                    in_birth.add((id(batch), k))
        self._live = True
        self._born_ms = now_ms
        actions: list[Action] = [self._nbirth(now_ms)]
        for device in self._devices.values():
            if device.metrics:
                actions.append(self._dbirth(device, now_ms, tuple(carried.get(device.name, ()))))
        if replay:
            self._held.clear()
            self._held_values = 0
            for batch, parts in held:
                layout = self._layout(batch.variables)
                chosen = range(len(layout.parts)) if parts is None else parts
                rest = tuple(k for k in chosen if (id(batch), k) not in in_birth)
                if rest:
                    actions += self._send(batch, layout, rest, now_ms, historical=True)
        return actions

    def _send(
        self,
        batch: ValueBatch,
        layout: _Layout,
        parts: tuple[int, ...] | None,
        now_ms: int,
        *,
        historical: bool | None = None,
    ) -> list[Action]:
        """Publish a batch (or some of its device parts) in the live session.

        Historical (``is_historical``): what was held, a value older than one already sent for
        its metric, and a value from well before the session's births (a spool's backlog after
        a restart).
        """
        if historical is None:
            historical = batch.t_ms + HISTORICAL_GRACE_MS < self._born_ms or self._superseded(
                batch, layout, parts
            )
        self._note_newest(batch, layout, parts)
        grown = self._register(layout, parts)
        actions: list[Action] = []
        if grown:
            # A metric new to a device already born: the specification's way is a rebirth.
            actions += self._births(now_ms, replay=False)
        chosen = range(len(layout.parts)) if parts is None else parts
        for k in chosen:
            part = layout.parts[k]
            device = self._devices[part.device]
            if not device.born and not historical:
                # Born with this batch's values as its current ones: the birth carries them.
                unfit = _unfit(device, batch, part)
                actions.append(self._dbirth(device, now_ms, (self._carried(batch, k, part, unfit),)))
                continue
            if not device.born:
                # A historical value goes out flagged as such, after a birth that carries none.
                actions.append(self._dbirth(device, now_ms))
            encoder = part.encoder
            if encoder is None:
                metrics = device.metrics
                encoder = part.encoder = DataEncoder([metrics[name] for name in part.names])
            values, errors, quality = _columns(batch, part.indices)
            payload, unfit = encoder.encode(
                batch.t_ms, self._next_seq(), values, errors, quality, now_ms=now_ms, historical=historical
            )
            topic = self._device_topic.format(kind="DDATA", device=part.device)
            actions.append(
                Publish("DDATA", topic, payload, self.qos, (self._carried(batch, k, part, unfit),))
            )
        return actions

    def _superseded(self, batch: ValueBatch, layout: _Layout, parts: tuple[int, ...] | None) -> bool:
        """True when a newer value than this batch's was already taken for one of its parts."""
        for k in range(len(layout.parts)) if parts is None else parts:
            part = layout.parts[k]
            device = self._devices.get(part.device)
            seen = None if device is None else device.newest.get(part.key)
            if seen is not None and seen[1].t_ms > batch.t_ms:
                return True
        return False

    def _carried(self, batch: ValueBatch, k: int, part: _Part, unfit: list[int]) -> Carried:
        if not unfit:
            return Carried(batch, k, len(part.indices))
        names = ", ".join(part.names[i] for i in unfit[:3])
        error = f"value does not fit its Sparkplug datatype ({names}); sent as null, quality Bad"
        return Carried(batch, k, len(part.indices), len(unfit), error)

    def _hold(self, batch: ValueBatch, parts: tuple[int, ...] | None, actions: list[Action]) -> None:
        self._held.append((batch, parts))
        self._held_values += self._count(batch, parts)
        while self._held_values > self.hold_limit and len(self._held) > 1:
            old, old_parts = self._held.popleft()
            n = self._count(old, old_parts)
            self._held_values -= n
            actions.append(
                Settle(old, 0, n, f"held values over hold_limit={self.hold_limit}: the oldest were dropped")
            )

    def _count(self, batch: ValueBatch, parts: tuple[int, ...] | None) -> int:
        layout = self._layout(batch.variables)
        if parts is None:
            return sum(len(p.indices) for p in layout.parts)
        return sum(len(layout.parts[k].indices) for k in parts)

    # -- layouts and metrics --------------------------------------------------------------------

    def _layout(self, variables: Sequence[VariableSpec]) -> _Layout:
        hit = self._layouts.get(id(variables))
        if hit is not None and hit.variables is variables:
            return hit
        by_device: dict[str, _Part] = {}
        failed: list[tuple[int, str]] = []
        for i, spec in enumerate(variables):
            try:
                device = self._device_of(spec)
            except ValueError as exc:
                failed.append((i, str(exc)))
                continue
            part = by_device.get(device)
            if part is None:
                part = by_device[device] = _Part(device, [], [], [])
            part.indices.append(i)
            part.names.append(spec.name or spec.address)
            part.datatypes.append(datatype_of(spec))
        for part in by_device.values():
            part.key = (part.device, *part.names)
        layout = _Layout(variables, list(by_device.values()), failed)
        if len(self._layouts) >= _LAYOUT_CACHE:
            self._layouts.clear()
        self._layouts[id(variables)] = layout
        return layout

    def _register(self, layout: _Layout, parts: tuple[int, ...] | None = None) -> bool:
        """Give every metric of the layout an alias; True when a device already born got a new
        metric (it must be born again)."""
        grown = False
        chosen = layout.parts if parts is None else [layout.parts[k] for k in parts]
        for part in chosen:
            device = self._devices.get(part.device)
            if device is None:
                device = self._devices[part.device] = _Device(part.device)
            for name, datatype in zip(part.names, part.datatypes, strict=True):
                if name not in device.metrics:
                    device.metrics[name] = MetricDef.make(name, self._next_alias, datatype)
                    self._next_alias += 1
                    grown = grown or device.born
        return grown

    def _note_newest(self, batch: ValueBatch, layout: _Layout, parts: tuple[int, ...] | None) -> None:
        chosen = range(len(layout.parts)) if parts is None else parts
        for k in chosen:
            part = layout.parts[k]
            device = self._devices.get(part.device)
            if device is None:
                device = self._devices[part.device] = _Device(part.device)
            seen = device.newest.get(part.key)
            if seen is None or seen[1].t_ms <= batch.t_ms:
                device.newest[part.key] = (part, batch)


def _unfit(device: _Device, batch: ValueBatch, part: _Part) -> list[int]:
    """Positions (in the part) of values a birth sends as null because they do not fit."""
    out: list[int] = []
    for j, (name, i) in enumerate(zip(part.names, part.indices, strict=True)):
        if batch.errors[i] is None:
            try:
                device.metrics[name].encode(batch.values[i])
            except ValueDoesNotFitError:
                out.append(j)
    return out


def _columns(
    batch: ValueBatch, indices: list[int]
) -> tuple[list[Any], list[str | None], list[str | None] | None]:
    n = len(batch.variables)
    if len(indices) == n:
        return batch.values, batch.errors, batch.quality
    values, errors, quality = batch.values, batch.errors, batch.quality
    return (
        [values[i] for i in indices],
        [errors[i] for i in indices],
        None if quality is None else [quality[i] for i in indices],
    )


def _group_reasons(failed: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """(count, reason) per distinct reason."""
    seen: dict[str, int] = {}
    for _, reason in failed:
        seen[reason] = seen.get(reason, 0) + 1
    return [(n, reason) for reason, n in seen.items()]


def _parse_state(payload: bytes) -> tuple[bool | None, int | None]:
    """(online, timestamp) of a STATE payload: 3.0 JSON, or the older ``ONLINE``/``OFFLINE``."""
    text = payload.strip()
    if text in (b"ONLINE", b"OFFLINE"):
        return text == b"ONLINE", None
    try:
        document = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return None, None
    if not isinstance(document, dict) or not isinstance(document.get("online"), bool):
        return None, None
    stamp = document.get("timestamp")
    return document["online"], stamp if isinstance(stamp, int) and not isinstance(stamp, bool) else None
