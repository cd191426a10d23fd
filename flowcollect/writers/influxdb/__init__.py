"""The InfluxDB writer: line protocol over HTTP to InfluxDB 1.x, 2.x or 3.x (docs/influxdb.md).

``_writer`` is the ``DataWriter`` (configuration, the schema, receipts, preflight); ``_http`` the
transport (one HTTP request per batch, and what the server's answer means for each API); the
batching, retries and backoff are ``flowcollect.writers.sender``'s.
"""

from __future__ import annotations

from flowcollect.writers.influxdb._writer import InfluxDBDataWriter

__all__ = ["InfluxDBDataWriter"]
