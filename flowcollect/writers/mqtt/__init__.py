"""The MQTT writer: values as JSON messages, acknowledged by the broker (docs/mqtt.md).

``_writer`` is the ``DataWriter`` (configuration, the topic check, the outbox, receipts);
``_payload`` the two layouts' JSON; the connection is ``flowcollect.mqtt``'s.
"""

from __future__ import annotations

from flowcollect.writers.mqtt._writer import MqttDataWriter

__all__ = ["MqttDataWriter"]
