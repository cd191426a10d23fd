"""OPC UA: the address grammar and the reader (polled or subscribed), on asyncua."""

from __future__ import annotations

from flowcollect.readers.opcua.address import OpcUaAddress, PathSegment, parse_address
from flowcollect.readers.opcua.reader import OpcUaDataReader

__all__ = ["OpcUaAddress", "OpcUaDataReader", "PathSegment", "parse_address"]
