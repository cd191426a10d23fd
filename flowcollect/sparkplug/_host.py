"""The reading side of Sparkplug B: addresses, and what the messages of edge nodes say.

Pure, like the edge node's session: ``SparkplugHost.received(topic, payload, now_ms)`` learns
names and aliases from NBIRTH and DBIRTH, checks each node's ``seq``, turns DATA messages into
values by metric name, and says when a node must be asked for a rebirth (an NCMD
``Node Control/Rebirth``): a gap in ``seq``, an alias no birth named, data before any birth.
``MqttDataReader`` drives it with the messages of its subscriptions.

Address grammar (a variable's ``address`` for a Sparkplug metric)::

    spBv1.0/<group>/DDATA/<edge node>/<device>:<metric name>
    spBv1.0/<group>/NDATA/<edge node>:<metric name>

The metric name is everything after the first ``:`` (it may hold ``/`` and ``:``); the ids
before it may not hold ``:``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from flowcollect.sparkplug._payload import QUALITY_BAD, QUALITY_PROPERTY, metric_value
from flowcollect.sparkplug._schema import DataType, Payload
from flowcollect.sparkplug._session import NAMESPACE, REBIRTH, check_id

__all__ = [
    "HostUpdate",
    "SparkplugAddress",
    "SparkplugHost",
    "SparkplugValue",
    "parse_address",
    "rebirth_request",
]

_REBIRTH_EVERY_MS: Final = 5_000
"""At most one rebirth request per edge node this often (a host must not flood a node)."""


@dataclass(frozen=True, slots=True)
class SparkplugAddress:
    group: str
    edge_node: str
    device: str | None
    metric: str

    @property
    def node(self) -> tuple[str, str]:
        return self.group, self.edge_node

    @property
    def key(self) -> tuple[str, str, str | None, str]:
        return self.group, self.edge_node, self.device, self.metric

    def subscriptions(self) -> list[str]:
        """The topic filters this metric needs: every message of its edge node and the node's
        devices, since they all carry the node's one ``seq`` (a gap shows only when all are
        seen), and births name the aliases."""
        base = f"{NAMESPACE}/{self.group}"
        return [f"{base}/+/{self.edge_node}", f"{base}/+/{self.edge_node}/+"]

    def __str__(self) -> str:
        where = f"{NAMESPACE}/{self.group}"
        if self.device is None:
            return f"{where}/NDATA/{self.edge_node}:{self.metric}"
        return f"{where}/DDATA/{self.edge_node}/{self.device}:{self.metric}"


def parse_address(text: str) -> SparkplugAddress:
    """Parse a Sparkplug metric address; ``ValueError`` saying what is wrong."""
    if not isinstance(text, str) or ":" not in text:
        raise ValueError(
            f"Sparkplug address {text!r} must look like spBv1.0/<group>/DDATA/<edge node>/<device>:<metric>"
        )
    topic, metric = text.split(":", 1)
    levels = topic.split("/")
    if not metric:
        raise ValueError(f"Sparkplug address {text!r} names no metric after ':'")
    if levels[0] != NAMESPACE:
        raise ValueError(f"Sparkplug address {text!r} must start with {NAMESPACE}/")
    if len(levels) == 5 and levels[2] == "DDATA":
        group, edge, device = levels[1], levels[3], levels[4]
    elif len(levels) == 4 and levels[2] == "NDATA":
        group, edge, device = levels[1], levels[3], None
    else:
        raise ValueError(
            f"Sparkplug address {text!r}: the topic must be {NAMESPACE}/<group>/DDATA/<edge node>/<device> "
            f"or {NAMESPACE}/<group>/NDATA/<edge node>"
        )
    for kind, value in (("group", group), ("edge node", edge), ("device", device)):
        if value is not None:
            problem = check_id(kind, value)
            if problem is not None:
                raise ValueError(f"Sparkplug address {text!r}: {problem}")
    return SparkplugAddress(group, edge, device, metric)


def rebirth_request(group: str, edge_node: str, now_ms: int) -> tuple[str, bytes]:
    """The NCMD (topic, payload) asking an edge node for its births again."""
    payload = Payload(timestamp=now_ms)
    payload.metrics.add(name=REBIRTH, timestamp=now_ms, datatype=DataType.Boolean, boolean_value=True)
    return f"{NAMESPACE}/{group}/NCMD/{edge_node}", payload.SerializeToString()


@dataclass(slots=True)  # not frozen: made per value, and a frozen dataclass's __init__ costs more
class SparkplugValue:
    """A metric's value from a message: ``error`` set (and ``value`` None) for a null with a Bad
    quality, a device or node death, or a value of no known metric."""

    address: SparkplugAddress
    value: Any
    t_ms: int
    error: str | None = None
    quality: str | None = None
    historical: bool = False


@dataclass(slots=True)
class HostUpdate:
    values: list[SparkplugValue] = field(default_factory=list)
    rebirth: tuple[str, bytes] | None = None
    """An NCMD to publish: (topic, payload)."""
    problems: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Metric:
    name: str
    datatype: int
    address: SparkplugAddress | None = None
    """The watched address of this metric, as of ``version`` of what is watched."""
    version: int = -1


@dataclass(slots=True)
class _Node:
    bdseq: int | None = None
    seq: int | None = None  # the last seq seen; None: no birth yet (or lost track)
    aliases: dict[tuple[str | None, int], _Metric] = field(default_factory=dict)
    datatypes: dict[tuple[str | None, str], int] = field(default_factory=dict)
    last_rebirth_ms: int | None = None


class SparkplugHost:
    """What the edge nodes' messages mean, for the metrics in ``wanted`` (``set_wanted``)."""

    def __init__(self) -> None:
        self._nodes: dict[tuple[str, str], _Node] = {}
        self._wanted: dict[tuple[str, str, str | None, str], SparkplugAddress] = {}
        self._version = 0

    def set_wanted(self, addresses: list[SparkplugAddress]) -> None:
        self._wanted = {a.key: a for a in addresses}
        self._version += 1

    def rebirth_all(self, now_ms: int, nodes: set[tuple[str, str]] | None = None) -> list[tuple[str, bytes]]:
        """Rebirth requests for every watched edge node (or those of ``nodes``), sent as the
        reader connects or starts watching. They do not count towards the interval between
        requests: the subscriptions may not be in place yet, so the births can be missed, and
        the first message seen without them must be able to ask again."""
        wanted = {a.node for a in self._wanted.values()}
        return [rebirth_request(g, e, now_ms) for g, e in sorted(wanted if nodes is None else wanted & nodes)]

    def forget_sequences(self) -> None:
        """The connection was lost: messages were missed, so no node's ``seq`` is known."""
        for node in self._nodes.values():
            node.seq = None

    def received(self, topic: str, payload: bytes, now_ms: int) -> HostUpdate:
        update = HostUpdate()
        levels = topic.split("/")
        if len(levels) not in (4, 5) or levels[0] != NAMESPACE:
            return update
        group, kind, edge = levels[1], levels[2], levels[3]
        device = levels[4] if len(levels) == 5 else None
        node = self._nodes.setdefault((group, edge), _Node())
        try:
            message = Payload.FromString(payload)
        except Exception as exc:  # protobuf's DecodeError; a payload that is no Sparkplug B
            update.problems.append(f"{topic}: not a Sparkplug B payload ({type(exc).__name__})")
            return update
        if kind == "NDEATH":
            self._on_ndeath(group, edge, node, message, now_ms, update)
            return update
        if kind not in ("NBIRTH", "DBIRTH", "NDATA", "DDATA", "DDEATH"):
            return update
        if kind == "NBIRTH":
            node.aliases.clear()
            node.datatypes.clear()
            node.seq = None
            for metric in message.metrics:
                if metric.name == "bdSeq":
                    node.bdseq = metric_value(metric, DataType.Int64)
        elif not self._in_sequence(node, message, kind):
            self._ask_rebirth(group, edge, node, now_ms, update, f"seq gap on {topic}")
        node.seq = message.seq if message.HasField("seq") else None
        if kind == "DDEATH":
            self._dead(group, edge, device, message.timestamp or now_ms, "device offline (DDEATH)", update)
            return update
        if kind in ("NBIRTH", "DBIRTH"):
            self._birth(group, edge, device, node, message, update)
        else:
            self._data(group, edge, device, node, message, topic, now_ms, update)
        return update

    def _birth(
        self, group: str, edge: str, device: str | None, node: _Node, message: Any, update: HostUpdate
    ) -> None:
        """A birth: names, aliases and datatypes learned; the current values delivered."""
        for metric in message.metrics:
            name, datatype = self._identify(node, device, metric, True)
            if name is None:
                continue  # a birth names its metrics; one without a name says nothing
            address = self._wanted.get((group, edge, device, name))
            if address is None:
                continue
            t_ms = metric.timestamp if metric.HasField("timestamp") else message.timestamp
            update.values.append(_value(address, metric, datatype, t_ms))

    def _data(
        self,
        group: str,
        edge: str,
        device: str | None,
        node: _Node,
        message: Any,
        topic: str,
        now_ms: int,
        update: HostUpdate,
    ) -> None:
        """A DATA message: by alias (a lookup per metric, the watched address cached with it),
        a plain value without a property read straight from its field."""
        aliases = node.aliases
        version = self._version
        default_t = message.timestamp
        out = update.values
        for metric in message.metrics:
            found = None if metric.name else aliases.get((device, metric.alias))
            if found is None:
                name, datatype = self._identify(node, device, metric, False)
                if name is None:
                    why = f"unknown alias {metric.alias} on {topic}"
                    self._ask_rebirth(group, edge, node, now_ms, update, why)
                    continue
                address = self._wanted.get((group, edge, device, name))
            else:
                if found.version != version:
                    found.address = self._wanted.get((group, edge, device, found.name))
                    found.version = version
                address, datatype = found.address, found.datatype
            if address is None:
                continue
            t_ms = metric.timestamp or default_t
            if metric.is_null or metric.HasField("properties"):
                out.append(_value(address, metric, datatype, t_ms))
                continue
            which = metric.WhichOneof("value")
            if which is None:
                out.append(SparkplugValue(address, None, t_ms, "null value", None, metric.is_historical))
                continue
            value = getattr(metric, which)
            if which in ("int_value", "long_value"):
                value = metric_value(metric, datatype)
            out.append(SparkplugValue(address, value, t_ms, None, None, metric.is_historical))

    @staticmethod
    def _in_sequence(node: _Node, message: Any, kind: str) -> bool:
        if node.seq is None or not message.HasField("seq"):
            return node.seq is not None or kind == "NBIRTH"
        return bool(message.seq == (node.seq + 1) % 256)

    @staticmethod
    def _identify(node: _Node, device: str | None, metric: Any, birth: bool) -> tuple[str | None, int]:
        if metric.HasField("name") and metric.name:
            datatype = metric.datatype if metric.HasField("datatype") else None
            if birth and datatype is not None:
                node.datatypes[(device, metric.name)] = datatype
                if metric.HasField("alias"):
                    node.aliases[(device, metric.alias)] = _Metric(metric.name, datatype)
            known = node.datatypes.get((device, metric.name), DataType.Unknown)
            return metric.name, datatype if datatype is not None else known
        if metric.HasField("alias"):
            found = node.aliases.get((device, metric.alias))
            if found is not None:
                return found.name, found.datatype
        return None, DataType.Unknown

    def _ask_rebirth(
        self, group: str, edge: str, node: _Node, now_ms: int, update: HostUpdate, why: str
    ) -> None:
        if update.rebirth is not None:
            return
        if node.last_rebirth_ms is not None and now_ms - node.last_rebirth_ms < _REBIRTH_EVERY_MS:
            return
        node.last_rebirth_ms = now_ms
        update.rebirth = rebirth_request(group, edge, now_ms)
        update.problems.append(f"asked {group}/{edge} for a rebirth: {why}")

    def _on_ndeath(
        self, group: str, edge: str, node: _Node, message: Any, now_ms: int, update: HostUpdate
    ) -> None:
        bdseq = next((metric_value(m, DataType.Int64) for m in message.metrics if m.name == "bdSeq"), None)
        if bdseq is not None and node.bdseq is not None and bdseq != node.bdseq:
            return  # the death of an earlier session (a will delivered late): not this one's
        node.seq = None
        self._dead(group, edge, None, now_ms, "edge node offline (NDEATH)", update, whole_node=True)

    def _dead(
        self,
        group: str,
        edge: str,
        device: str | None,
        t_ms: int,
        reason: str,
        update: HostUpdate,
        *,
        whole_node: bool = False,
    ) -> None:
        for (g, e, d, _), address in self._wanted.items():
            if g == group and e == edge and (whole_node or d == device):
                update.values.append(SparkplugValue(address, None, t_ms, reason))


def _value(address: SparkplugAddress, metric: Any, datatype: int, t_ms: int) -> SparkplugValue:
    quality: str | None = None
    error: str | None = None
    props = metric.properties if metric.HasField("properties") else None
    if props is not None and QUALITY_PROPERTY in props.keys:
        raw = props.values[list(props.keys).index(QUALITY_PROPERTY)]
        code = raw.int_value - (1 << 32) if raw.int_value >= 1 << 31 else raw.int_value
        level = (code >> 30) & 0b11
        if level in (0b10, 0b11) or code == QUALITY_BAD:  # Bad, Error
            error = f"quality Bad ({code})"
        elif level == 0b01:
            quality = "Uncertain"
    value = metric_value(metric, datatype)
    if value is None and error is None:
        error = "null value"
    return SparkplugValue(address, None if error else value, t_ms, error, quality, bool(metric.is_historical))
