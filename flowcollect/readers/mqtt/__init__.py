"""The MQTT reader: values from a broker's messages into the engine (docs/mqtt.md).

``reader`` is the ``DataReader``; ``_kinds`` the seam for kinds of address (a grammar and a
``Source`` that serves it); ``_plain`` plain topics and JSON paths. The connection is
``flowcollect.mqtt``'s.
"""

from __future__ import annotations

from flowcollect.readers.mqtt.reader import MqttDataReader

__all__ = ["MqttDataReader"]
