"""Browse-path patterns for discovery: ``/2:Plant/*/2:Temperature``, ``/2:Plant/**/2:Alarm*``.

Pure. A pattern is a browse path (the address grammar's, see ``address``) whose names are globs:
``*`` and ``?`` within one name, ``**`` for any number of levels (none included). A segment's
namespace (``2:``, ``{uri}``, or a leading ``nsu=<uri>;``) must match when given. Matching is an
NFA over the segments, so a browse can tell after each level whether anything below a node can
still match, and not descend where nothing can.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Final

from flowcollect.readers.opcua.address import PathSegment

__all__ = ["PathPattern", "parse_pattern"]

_ANY_DEPTH: Final = "**"
_NSU: Final = re.compile(r"nsu=([^;]+);")
_INDEX: Final = re.compile(r"(\d+):")


@dataclass(frozen=True)
class PathPattern:
    text: str
    segments: tuple[PathSegment, ...]

    def start(self) -> frozenset[int]:
        return self._closure({0})

    def advance(self, states: frozenset[int], name: str, namespace: int, uri: str) -> frozenset[int]:
        """The states after one more browse name (in ``namespace``, whose URI is ``uri``)."""
        out: set[int] = set()
        last = len(self.segments)
        for i in states:
            if i >= last:
                continue
            segment = self.segments[i]
            if segment.name == _ANY_DEPTH:
                out.add(i)
            elif _same_namespace(segment, namespace, uri) and fnmatch.fnmatchcase(name, segment.name):
                out.add(i + 1)
        return self._closure(out)

    def matches(self, states: frozenset[int]) -> bool:
        return len(self.segments) in states

    def may_continue(self, states: frozenset[int]) -> bool:
        """Whether a node below could still match (else the browse need not descend)."""
        return any(i < len(self.segments) for i in states)

    def _closure(self, states: set[int]) -> frozenset[int]:
        out = set(states)
        for i in states:
            j = i
            while j < len(self.segments) and self.segments[j].name == _ANY_DEPTH:
                j += 1
                out.add(j)
        return frozenset(out)


def _same_namespace(segment: PathSegment, namespace: int, uri: str) -> bool:
    if segment.namespace_uri is not None:
        return segment.namespace_uri == uri
    if segment.namespace is not None:
        return segment.namespace == namespace
    return True


def parse_pattern(text: str) -> PathPattern:
    """Parse a pattern; ``ValueError`` names what is wrong. A segment without a namespace matches
    names in any namespace (unlike an address, where it means namespace 0). A bare glob
    (``Temp*``) means ``/**/Temp*``: that name at any depth."""
    source = text.strip()
    default_uri: str | None = None
    match = _NSU.match(source)
    if match is not None:
        default_uri = match.group(1)
        source = source[match.end() :]
    if source and not source.startswith("/"):
        source = "/**/" + source
    parts = _split(source[1:]) if source.startswith("/") else []
    if not parts or any(not name for _, name in parts):
        raise ValueError(f"pattern {text!r}: must be a browse path such as /2:Plant/*/2:Temperature")
    segments = []
    for raw, name in parts:
        if raw.startswith("{"):
            uri, _, rest = name.partition("}")
            segments.append(PathSegment(rest, None, uri[1:]))
        elif (index := _INDEX.match(raw)) is not None:
            segments.append(PathSegment(name[index.end() :], int(index.group(1)), None))
        else:
            segments.append(PathSegment(name, None, default_uri))
    return PathPattern(text, tuple(segments))


def _split(path: str) -> list[tuple[str, str]]:
    """Segments of a path as (raw text, name with ``&`` escapes undone); empty on an empty one."""
    out: list[tuple[str, str]] = []
    raw: list[str] = []
    name: list[str] = []
    escaped = False
    for char in path:
        if escaped:
            raw.append(char)
            name.append(char)
            escaped = False
        elif char == "&":
            raw.append("&")
            escaped = True
        elif char == "/":
            out.append(("".join(raw), "".join(name)))
            raw, name = [], []
        else:
            raw.append(char)
            name.append(char)
    out.append(("".join(raw), "".join(name)))
    return [(r, n) if n else ("", "") for r, n in out]
