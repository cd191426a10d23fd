"""Sparkplug B 3.0: the payload schema, the encoder and decoder, the edge node's session and the
reading side's view of edge nodes. Pure (no I/O, no clock, no threads).

The users are ``SparkplugDataWriter`` (flowcollect.writers), which drives an ``EdgeNode`` over an
MQTT connection, and ``MqttDataReader``, whose Sparkplug source drives a ``SparkplugHost``. The
modules are private; this is what they share. See docs/sparkplug.md.
"""

from __future__ import annotations

from flowcollect.sparkplug._host import (
    HostUpdate,
    SparkplugAddress,
    SparkplugHost,
    SparkplugValue,
    parse_address,
    rebirth_request,
)
from flowcollect.sparkplug._payload import DataEncoder, MetricDef, datatype_of, metric_value
from flowcollect.sparkplug._schema import DataType, Payload
from flowcollect.sparkplug._session import (
    NAMESPACE,
    Carried,
    EdgeNode,
    Note,
    Publish,
    Reconnect,
    Settle,
    Subscribe,
    check_id,
    ndeath_payload,
)

__all__ = [
    "NAMESPACE",
    # the payload
    "DataEncoder",
    "DataType",
    "MetricDef",
    "Payload",
    "datatype_of",
    "metric_value",
    # the edge node
    "Carried",
    "EdgeNode",
    "Note",
    "Publish",
    "Reconnect",
    "Settle",
    "Subscribe",
    "check_id",
    "ndeath_payload",
    # the reading side
    "HostUpdate",
    "SparkplugAddress",
    "SparkplugHost",
    "SparkplugValue",
    "parse_address",
    "rebirth_request",
]
