"""The OPC UA address grammar: node ids and browse paths from the Objects folder.

Pure: parsing only, no I/O and no asyncua. See ``docs/opcua.md``.

- A node id in the standard text form: ``ns=2;i=1003``, ``ns=2;s=Line1.Temp``,
  ``ns=2;g=72962b91-fa75-4ae6-8d28-b404dc7daf63``, ``ns=2;b=M/RbKBsRVkePCePcx24oRA==``, or
  with the namespace's URI instead of its index: ``nsu=urn:example:plant;s=Line1.Temp``.
  Without ``ns=`` the node is in namespace 0.
- A browse path from the Objects folder: ``/2:Plant/2:Line1/2:Temp``. A segment is
  ``[<index>:]<name>`` or ``{<uri>}<name>``; a leading ``nsu=<uri>;`` gives the namespace of
  segments that name none (``nsu=urn:example:plant;/Plant/Line1/Temp``), else it is 0. ``&``
  escapes the next character (``/``, ``&``, ``{``, ``:`` in a name).

Node ids with an index are used as they are; ``nsu=`` forms and browse paths are resolved on
the server each time the reader connects, so a server that renumbers its namespaces or ids
across a restart is followed.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["IdType", "OpcUaAddress", "PathSegment", "parse_address"]

IdType = Literal["i", "s", "g", "b"]

_UINT32: Final = 2**32 - 1
_MAX_NAMESPACE: Final = 65535
_NS_INDEX = re.compile(r"ns=(\d+);")
_NSU = re.compile(r"nsu=([^;]+);")


@dataclass(frozen=True, slots=True)
class PathSegment:
    """One step of a browse path: a browse name in a namespace given by index or URI."""

    name: str
    namespace: int | None = None
    namespace_uri: str | None = None


@dataclass(frozen=True, slots=True)
class OpcUaAddress:
    """A parsed address: a node id (``id_type`` and ``identifier``) or a browse path (``path``)."""

    text: str
    namespace: int | None = None
    """The namespace index (node ids given with ``ns=``, or none: 0)."""
    namespace_uri: str | None = None
    """The namespace URI (``nsu=`` node ids), resolved to an index on the server."""
    id_type: IdType | None = None
    identifier: int | str | uuid.UUID | bytes | None = None
    path: tuple[PathSegment, ...] = ()

    @property
    def is_path(self) -> bool:
        return bool(self.path)

    @property
    def needs_resolving(self) -> bool:
        """True when only the server can say which node this is (a path or an ``nsu=`` id)."""
        return self.is_path or self.namespace_uri is not None


def parse_address(text: str) -> OpcUaAddress:
    """Parse ``text``; ``ValueError`` saying what is wrong with it."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("an OPC UA address must be a non-empty node id or browse path")
    if text != text.strip():
        raise ValueError(f"OPC UA address {text!r} has leading or trailing spaces")
    rest = text
    namespace: int | None = None
    namespace_uri: str | None = None
    match = _NS_INDEX.match(rest)
    if match is not None:
        namespace = int(match.group(1))
        if namespace > _MAX_NAMESPACE:
            raise ValueError(f"OPC UA address {text!r}: namespace index {namespace} is above 65535")
        rest = rest[match.end() :]
    else:
        match = _NSU.match(rest)
        if match is not None:
            namespace_uri = match.group(1)
            rest = rest[match.end() :]
    if rest.startswith("/"):
        if namespace is not None:
            raise ValueError(
                f"OPC UA address {text!r}: a browse path takes no ns=<index>; give each segment "
                "its index (/2:Plant) or the path a namespace URI (nsu=<uri>;/Plant)"
            )
        segments = _parse_path(text, rest, namespace_uri)
        return OpcUaAddress(text, path=segments)
    id_type, identifier = _parse_identifier(text, rest)
    if namespace is None and namespace_uri is None:
        namespace = 0
    return OpcUaAddress(text, namespace, namespace_uri, id_type, identifier)


def _parse_identifier(text: str, rest: str) -> tuple[IdType, int | str | uuid.UUID | bytes]:
    kind, sep, value = rest.partition("=")
    if not sep or kind not in ("i", "s", "g", "b"):
        raise ValueError(
            f"OPC UA address {text!r}: expected a node id (ns=<index>;i=|s=|g=|b=<identifier>, or "
            "nsu=<uri>;...) or a browse path starting with '/'"
        )
    if kind == "i":
        if not value.isdigit() or int(value) > _UINT32:
            raise ValueError(f"OPC UA address {text!r}: a numeric identifier is an integer 0..4294967295")
        return "i", int(value)
    if kind == "s":
        if not value:
            raise ValueError(f"OPC UA address {text!r}: the string identifier is empty")
        return "s", value
    if kind == "g":
        try:
            return "g", uuid.UUID(value)
        except ValueError:
            raise ValueError(f"OPC UA address {text!r}: {value!r} is not a GUID") from None
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"OPC UA address {text!r}: {value!r} is not base64") from None
    if not data:
        raise ValueError(f"OPC UA address {text!r}: the opaque identifier is empty")
    return "b", data


def _parse_path(text: str, rest: str, default_uri: str | None) -> tuple[PathSegment, ...]:
    segments: list[PathSegment] = []
    for raw in _split_unescaped(text, rest[1:]):
        if not raw:
            raise ValueError(f"OPC UA address {text!r}: a browse path has an empty segment")
        segments.append(_parse_segment(text, raw, default_uri))
    return tuple(segments)


def _split_unescaped(text: str, body: str) -> list[str]:
    # Segments keep their escapes; _parse_segment removes them, after reading the prefix.
    parts: list[str] = []
    current: list[str] = []
    chars = iter(body)
    for char in chars:
        if char == "&":
            following = next(chars, None)
            if following is None:
                raise ValueError(f"OPC UA address {text!r}: '&' at the end escapes nothing")
            current.append(char + following)
        elif char == "/":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _unescape(raw: str) -> str:
    out: list[str] = []
    escaped = False
    for char in raw:
        if escaped:
            out.append(char)
            escaped = False
        elif char == "&":
            escaped = True
        else:
            out.append(char)
    return "".join(out)


def _parse_segment(text: str, raw: str, default_uri: str | None) -> PathSegment:
    if raw.startswith("{"):
        close = raw.find("}")
        if close <= 1:
            raise ValueError(f"OPC UA address {text!r}: segment {raw!r} needs {{<namespace uri>}}<name>")
        name = _unescape(raw[close + 1 :])
        if not name:
            raise ValueError(f"OPC UA address {text!r}: segment {raw!r} has no name")
        return PathSegment(name, namespace_uri=raw[1:close])
    head, sep, tail = raw.partition(":")
    if sep and head.isdigit():
        index = int(head)
        if index > _MAX_NAMESPACE:
            raise ValueError(f"OPC UA address {text!r}: namespace index {index} is above 65535")
        name = _unescape(tail)
        if not name:
            raise ValueError(f"OPC UA address {text!r}: segment {raw!r} has no name")
        return PathSegment(name, namespace=index)
    name = _unescape(raw)
    if default_uri is not None:
        return PathSegment(name, namespace_uri=default_uri)
    return PathSegment(name, namespace=0)
