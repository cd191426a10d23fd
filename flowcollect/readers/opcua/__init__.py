"""OPC UA: the address grammar, the reader (polled or subscribed), browse and discovery, on asyncua."""

from __future__ import annotations

from flowcollect.readers.opcua._browse import BrowsedNode, browse, discover
from flowcollect.readers.opcua._browse_report import browse_csv, browse_python, browse_tree
from flowcollect.readers.opcua.address import OpcUaAddress, PathSegment, parse_address
from flowcollect.readers.opcua.reader import OpcUaDataReader

__all__ = [
    "BrowsedNode",
    "OpcUaAddress",
    "OpcUaDataReader",
    "PathSegment",
    "browse",
    "browse_csv",
    "browse_python",
    "browse_tree",
    "discover",
    "parse_address",
]
